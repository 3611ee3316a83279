"""Every pydicom test file through C-STORE into a live server, and back through WADO-RS.

Each file is sent by a pynetdicom SCU (calling AE `MODALITY`) in a presentation context
of its own SOP class and transfer syntax, with the data set bytes exactly as they lie in
the file. It must either be stored and come back from WADO-RS with identical data set
bytes, or be refused (a failure status, or its presentation context not accepted). Only
files pydicom cannot read at all are skipped, and counted. The server must survive.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
from dicom_builders import split_multipart_response
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode_file_meta, split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass
class Tally:
    stored: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # file -> why
    unreadable: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)


def dataset_bytes(part10: bytes) -> bytes:
    """Return the data set of a Part-10 file (after the meta, whose group length says where)."""
    assert part10[128:132] == b"DICM"
    (meta_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + meta_length :]


@dataclass
class Outgoing:
    """What is sent for one file: the C-STORE argument, its context, and the bytes on the wire."""

    payload: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    wire: bytes


def read(path: Path) -> tuple[Dataset, bool]:
    """Return the data set of `path` and whether it is a Part-10 file (with preamble)."""
    try:
        return pydicom.dcmread(path), True
    except pydicom.errors.InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
        if not ds.get("SOPClassUID"):
            raise  # forced reading of a text or archive file gives junk: not DICOM
        return ds, False


def outgoing(path: Path, scratch: Path) -> Outgoing:
    """Return how to send `path`: its data set bytes as they lie in the file.

    A file without a complete file meta is re-wrapped in `scratch` with one that declares
    its encoding and its SOP Class/Instance UIDs, or made-up UIDs when it has none (then
    Lods must refuse it, as the data set does not match the request).
    """
    ds, is_part10 = read(path)  # raises for files pydicom cannot read at all
    meta, offset = split_dataset(path) if is_part10 else (Dataset(), 0)
    wire = path.read_bytes()[offset:]
    needed = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    if all(meta.get(k) for k in needed):
        return Outgoing(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            wire,
        )
    implicit, little = ds.original_encoding
    new_meta = FileMetaDataset()
    new_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or SecondaryCaptureImageStorage
    new_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or generate_uid()
    new_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    wrapped = scratch / f"{path.name}.dcm"
    wrapped.write_bytes(b"\0" * 128 + b"DICM" + encode_file_meta(new_meta) + wire)
    return Outgoing(
        wrapped,
        str(new_meta.MediaStorageSOPClassUID),
        str(new_meta.MediaStorageSOPInstanceUID),
        str(new_meta.TransferSyntaxUID),
        wire,
    )


def send(port: int, item: Outgoing) -> int | str:
    """Return the C-STORE status, or why the association or context was refused."""
    ae = AE(ae_title="MODALITY")
    try:
        ae.add_requested_context(item.sop_class, item.transfer_syntax)
    except ValueError as exc:
        return f"context not proposable: {exc}"
    assoc = ae.associate("127.0.0.1", port, ae_title="LODS")
    if not assoc.is_established:
        return "association refused"
    try:
        if not assoc.accepted_contexts:
            return "presentation context not accepted"
        status = assoc.send_c_store(item.payload)
        return int(status.Status) if "Status" in status else "no response"
    finally:
        assoc.release()


def retrieve(base: str, token: str, sop_instance: str) -> bytes | str:
    """Return the stored file of an instance found by QIDO, through WADO-RS."""
    headers = {"Authorization": f"Bearer {token}"}
    found = httpx.get(
        f"{base}/dicom-web/instances",
        params={"SOPInstanceUID": sop_instance},
        headers=headers,
        timeout=30,
    )
    if found.status_code != 200 or len(found.json()) != 1:
        return f"QIDO answered {found.status_code}: {found.text[:200]}"
    url = found.json()[0]["00081190"]["Value"][0]
    response = httpx.get(url, headers=headers, timeout=60)
    if response.status_code != 200:
        return f"WADO answered {response.status_code}"
    ((_type, content),) = split_multipart_response(
        response.headers["content-type"], response.content
    )
    return content


def test_every_testdata_file_is_stored_identically_or_refused(live_server, monkeypatch, tmp_path):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send file bytes as-is
    token = live_server.cli("token", "create", "rita").stdout.strip().splitlines()[-1]
    tally = Tally()
    files = sorted(p for p in map(Path, get_testdata_files()) if p.is_file())
    for path in files:
        name = str(path.relative_to(path.parents[1]))
        try:
            item = outgoing(path, tmp_path)
        except Exception:
            tally.unreadable.append(name)
            continue
        status = send(live_server.dicom_port, item)
        if isinstance(status, str) or status not in SUCCESS_OR_WARNING:
            tally.refused[name] = status if isinstance(status, str) else f"status 0x{status:04X}"
            continue
        stored = retrieve(live_server.base_url, token, item.sop_instance)
        if isinstance(stored, str):
            tally.mismatched[name] = stored
        elif dataset_bytes(stored) != item.wire:
            tally.mismatched[name] = "retrieved data set bytes differ from the sent ones"
        else:
            tally.stored.append(name)
    print("\n".join(f"refused {k}: {v}" for k, v in sorted(tally.refused.items())))
    print(
        f"\n{len(files)} files: {len(tally.stored)} stored and identical, "
        f"{len(tally.refused)} refused, {len(tally.unreadable)} unreadable by pydicom"
    )
    assert tally.mismatched == {}
    assert len(tally.stored) + len(tally.refused) + len(tally.unreadable) == len(files)
    assert len(tally.stored) > len(files) // 2, tally.refused  # most are valid DICOM
    for damaged in ("MR_truncated.dcm", "rtplan_truncated.dcm", "nested_priv_SQ.dcm"):
        assert f"test_files/{damaged}" in tally.refused  # truncated, or without UIDs
    assert live_server.proc.poll() is None, "the server died"
    assert httpx.get(live_server.base_url + "/healthz", timeout=10).status_code == 200
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", live_server.dicom_port, ae_title="LODS")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
