"""The `dicom_node` runtime against a real `lods-vendor-sim` process and small fake peers.

A pynetdicom storage SCP in the test stands in for Lods' own DICOM node (the "inbox"): it
files what the appliance sends back under <folder>/<calling AE>/<study UID>/, and
`FolderInbox` is the `InboxWaiter` over that folder.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt

from lods.solutions.manifest import Manifest, manifest_from_dict
from lods.solutions.runtimes import get_runtime
from lods.solutions.runtimes.base import (
    InputImage,
    PermanentRuntimeError,
    RunContext,
    TransientRuntimeError,
)
from lods.solutions.runtimes.dicom_node import DicomNodeRuntime, pseudonym_key, pseudonymise
from lods.solutions.toymodels import bright_spot_model

FRACTURE = {"scheme": "SCT", "value": "125605004", "meaning": "Fracture of bone"}
VENDOR_AE = "VENDORAI"
LOCAL_AE = "LODS"
SECRET = "test-secret"
PATIENT_NAME = "Hansen^Karen"
PATIENT_ID = "0101801234"
#: Where the bright square is drawn on the first image (rows, columns).
SQUARE = (32, 64, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20
) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"lods-vendor-sim exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


# --- the study -------------------------------------------------------------------------------


def make_image(study_uid: str, index: int, *, bright: bool) -> Dataset:
    """A 128x128 12-bit CR image, a bright 32x32 square on it when `bright`."""
    pixels = np.full((128, 128), 300, dtype=np.uint16)
    if bright:
        row, col, size = SQUARE
        pixels[row : row + size, col : col + size] = 4000
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = "19800101", "F"
    ds.OtherPatientIDs = "OTHER-77"
    ds.AccessionNumber = "ACC42"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240501", "101500", "ST1"
    ds.ReferringPhysicianName = "Doctor^Who"
    ds.Modality = "CR"
    ds.SeriesNumber, ds.InstanceNumber = index + 1, 1
    ds.BodyPartExamined = "WRIST"
    ds.ImageLaterality = "L"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_study(folder: Path, count: int = 3) -> tuple[str, list[InputImage]]:
    study_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        ds = make_image(study_uid, index, bright=index == 0)
        path = folder / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        images.append(
            InputImage(
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                path=path,
            )
        )
    return study_uid, images


# --- Lods' stand-in inbox ----------------------------------------------------------------------


class FolderInbox:
    """A storage SCP filing answers by calling AE and study, and the waiter over its folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ae = AE(ae_title=LOCAL_AE)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax)
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        calling = str(event.assoc.requestor.ae_title).strip()
        target = self.folder / calling / str(ds.StudyInstanceUID)
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{ds.SOPInstanceUID}.tmp"
        ds.save_as(tmp, enforce_file_format=True)
        tmp.rename(target / f"{ds.SOPInstanceUID}.dcm")
        return 0x0000

    def files(self, study_uid: str, calling_ae: str, since: float) -> list[Path]:
        folder = self.folder / calling_ae / study_uid
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.dcm") if p.stat().st_mtime >= since)

    def __call__(self, study_uid: str, calling_ae: str, since: float, timeout: float) -> list[Path]:
        until = time.monotonic() + timeout
        while True:
            found = self.files(study_uid, calling_ae, since)
            if found or time.monotonic() >= until:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FolderInbox]:
    box = FolderInbox(tmp_path_factory.mktemp("inbox"))
    yield box
    box.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bright_spot_model(tmp_path_factory.mktemp("model") / "bright.onnx")


def sim_command(*args: str) -> list[str]:
    script = shutil.which("lods-vendor-sim") or str(Path(sys.executable).parent / "lods-vendor-sim")
    if Path(script).exists():
        return [script, *args]
    return [sys.executable, "-m", "lods.vendor_sim.cli", *args]


class Sim:
    """A `lods-vendor-sim` process on a free loopback port."""

    def __init__(self, model: Path, return_port: int, keep: Path, *extra: str) -> None:
        self.port = free_port()
        self.keep = keep
        self.proc = subprocess.Popen(
            sim_command(
                "--ae-title",
                VENDOR_AE,
                "--port",
                str(self.port),
                "--return",
                f"127.0.0.1:{return_port}",
                "--return-ae",
                LOCAL_AE,
                "--model",
                str(model),
                "--quiet-seconds",
                "0.3",
                "--keep-dir",
                str(keep),
                "--network-timeout",
                "5",
                *extra,
            ),
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_listening(self.port, self.proc)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=15)
        return err.decode(errors="replace")


@pytest.fixture(scope="module")
def sim(model: Path, inbox: FolderInbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    process = Sim(model, inbox.port, tmp_path_factory.mktemp("received"))
    yield process
    process.stop()


# --- manifests and contexts --------------------------------------------------------------------


def manifest(
    port: int,
    *,
    pseudonymise: bool = False,
    code: dict[str, str] = FRACTURE,
    answer_timeout: float = 15.0,
) -> Manifest:
    egress: dict[str, Any] = {"kind": "external", "destination": "vendor appliance"}
    if pseudonymise:
        egress["pseudonymise"] = True
    return manifest_from_dict(
        {
            "id": "vendor.fracture",
            "name": "Vendor fracture AI",
            "version": "1.0",
            "vendor": "Vendor",
            "regulatory": {"status": "demonstration"},
            "intended_use": {
                "summary": "Finds bright squares in test radiographs.",
                "input_kind": "dicom-study",
                "modalities": ["CR"],
            },
            "runtime": {
                "kind": "dicom_node",
                "host": "127.0.0.1",
                "port": port,
                "ae_title": VENDOR_AE,
                "answer_timeout_seconds": answer_timeout,
                "network_timeout_seconds": 3,
            },
            "outputs": {
                "findings": [{"key": "fracture", "code": code, "label": "Fracture"}],
                "operating_points": {"sure": 0.8, "doubtful": 0.5},
            },
            "data_egress": egress,
            "files": {"README.md": "0" * 64},
        }
    )


class Beats:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def context(
    man: Manifest, study_uid: str, images: list[InputImage], inbox: Any, beats: Beats | None = None
) -> RunContext:
    return RunContext(
        job_id=1,
        package_dir=Path("."),
        manifest=man,
        study_uid=study_uid,
        images=images,
        deadline=time.monotonic() + 30,
        heartbeat=beats or Beats(),
        local_ae_title=LOCAL_AE,
        inbox=inbox,
    )


# --- round trips with the simulator process -----------------------------------------------------


def test_round_trip_finds_the_bright_square_on_the_right_image(
    sim: Sim, inbox: FolderInbox, tmp_path: Path
) -> None:
    study_uid, images = write_study(tmp_path / "study")
    beats = Beats()
    runtime = get_runtime("dicom_node")
    assert isinstance(runtime, DicomNodeRuntime)

    result = runtime.run(context(manifest(sim.port), study_uid, images, inbox, beats))

    boxed = [f for f in result.findings if f.box is not None]
    assert len(boxed) == 1
    finding = boxed[0]
    assert finding.sop_instance_uid == images[0].sop_instance_uid
    assert finding.code.value == "125605004" and finding.label == "Fracture"
    assert finding.score > 0.9
    row, col, size = SQUARE
    assert finding.box is not None
    assert finding.box.as_list() == pytest.approx([col, row, col + size, row + size], abs=2)
    study_level = [f for f in result.findings if f.sop_instance_uid is None]
    assert len(study_level) == 1 and study_level[0].score > 0.9
    details = result.details
    assert details["vendor"]["manufacturer"] == "Lods Vendor Simulator"
    assert details["vendor"]["algorithm_name"] == "bright"
    assert details["sent_instances"] == 3
    assert details["undeclared_findings"] == 0 and details["unreferenced_findings"] == 0
    assert details["pseudonymised"] is False
    assert set(details["timings"]) == {"send_seconds", "answer_seconds", "total_seconds"}
    assert beats.count >= 1
    # The files as sent are the files as stored (no pseudonymisation asked for).
    kept = pydicom.dcmread(sim.keep / study_uid / f"{images[1].sop_instance_uid}.dcm")
    assert kept.PatientID == PATIENT_ID


def test_pseudonymised_study_reaches_the_appliance_without_identifiers(
    sim: Sim, inbox: FolderInbox, tmp_path: Path
) -> None:
    study_uid, images = write_study(tmp_path / "study", count=2)
    before = [p.path.read_bytes() for p in images]
    runtime = DicomNodeRuntime(pseudonym_secret=SECRET)

    result = runtime.run(context(manifest(sim.port, pseudonymise=True), study_uid, images, inbox))

    assert result.details["pseudonymised"] is True
    assert any(f.sop_instance_uid == images[0].sop_instance_uid for f in result.findings)
    for image in images:
        kept = pydicom.dcmread(sim.keep / study_uid / f"{image.sop_instance_uid}.dcm")
        assert PATIENT_NAME not in str(kept.PatientName)
        assert kept.PatientID != PATIENT_ID and kept.PatientID.startswith("LP")
        assert "OtherPatientIDs" not in kept
        assert kept.StudyInstanceUID == study_uid
    assert [p.path.read_bytes() for p in images] == before


def test_findings_the_manifest_does_not_declare_are_dropped_and_counted(
    sim: Sim, inbox: FolderInbox, tmp_path: Path
) -> None:
    study_uid, images = write_study(tmp_path / "study", count=1)
    other = {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}

    result = DicomNodeRuntime().run(
        context(manifest(sim.port, code=other), study_uid, images, inbox)
    )

    assert result.findings == []
    assert result.details["undeclared_findings"] == 2


def test_appliance_that_never_answers_times_out(
    model: Path, inbox: FolderInbox, tmp_path: Path
) -> None:
    silent = Sim(model, inbox.port, tmp_path / "kept", "--fail-mode", "no-answer")
    try:
        study_uid, images = write_study(tmp_path / "study", count=1)
        man = manifest(silent.port, answer_timeout=1.5)
        started = time.monotonic()
        with pytest.raises(TransientRuntimeError, match=r"no answer from VENDORAI within 1.5 s"):
            DicomNodeRuntime().run(context(man, study_uid, images, inbox))
        assert time.monotonic() - started < 10
    finally:
        log = silent.stop()
    assert "fail mode no-answer" in log
    assert silent.proc.returncode == 0


# --- failures without the simulator process ------------------------------------------------------


def test_vendor_down_is_transient_with_the_reason(inbox: FolderInbox, tmp_path: Path) -> None:
    port = free_port()
    study_uid, images = write_study(tmp_path / "study", count=1)
    with pytest.raises(TransientRuntimeError) as caught:
        DicomNodeRuntime().run(context(manifest(port), study_uid, images, inbox))
    message = str(caught.value)
    assert f"vendor appliance AE at 127.0.0.1:{port} (VENDORAI)" in message
    assert "not reachable: connection refused" in message


class FakeAppliance:
    """A storage SCP answering each C-STORE with `status`; may reject every association."""

    def __init__(self, status: int = 0x0000, *, reject: bool = False) -> None:
        ae = AE(ae_title=VENDOR_AE)
        ae.add_supported_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        if reject:
            ae.require_calling_aet = ["SOMEBODY-ELSE"]
        self.status = status
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Any) -> Dataset:
        status = Dataset()
        status.Status = self.status
        status.ErrorComment = "fake says no"
        return status

    def __enter__(self) -> FakeAppliance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (0xA700, TransientRuntimeError),
        (0xA900, PermanentRuntimeError),
        (0xC123, PermanentRuntimeError),
    ],
)
def test_store_failures_map_to_transient_or_permanent(
    status: int, error: type[Exception], inbox: FolderInbox, tmp_path: Path
) -> None:
    study_uid, images = write_study(tmp_path / "study", count=1)
    with FakeAppliance(status) as fake, pytest.raises(error) as caught:
        DicomNodeRuntime().run(context(manifest(fake.port), study_uid, images, inbox))
    assert f"0x{status:04X}" in str(caught.value)
    assert "fake says no" in str(caught.value)


def test_rejected_association_is_transient(inbox: FolderInbox, tmp_path: Path) -> None:
    study_uid, images = write_study(tmp_path / "study", count=1)
    with FakeAppliance(reject=True) as fake, pytest.raises(TransientRuntimeError) as caught:
        DicomNodeRuntime().run(context(manifest(fake.port), study_uid, images, inbox))
    assert "rejected the association" in str(caught.value)
    assert "Calling AE title not recognised" in str(caught.value)


def test_unaccepted_transfer_syntax_is_refused_before_sending(
    inbox: FolderInbox, tmp_path: Path
) -> None:
    study_uid, images = write_study(tmp_path / "study", count=1)
    ds = pydicom.dcmread(images[0].path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(images[0].path, enforce_file_format=True)
    with FakeAppliance() as fake, pytest.raises(PermanentRuntimeError, match="accepts none of"):
        DicomNodeRuntime().run(context(manifest(fake.port), study_uid, images, inbox))


# --- pseudonymisation as a function -----------------------------------------------------------


def test_pseudonymise_is_deterministic_keyed_and_keeps_uids() -> None:
    key = pseudonym_key(SECRET, "vendor.fracture")
    original = make_image(generate_uid(), 0, bright=False)
    first = pseudonymise(copy.deepcopy(original), key)
    again = pseudonymise(make_image(str(original.StudyInstanceUID), 1, bright=False), key)
    other = pseudonymise(copy.deepcopy(original), pseudonym_key(SECRET, "another.solution"))

    assert first.PatientID == again.PatientID != other.PatientID
    assert str(first.PatientName).startswith("Pseudonym^")
    assert first.PatientBirthDate == "19800101"[:4] + "0101"
    assert first.AccessionNumber != "ACC42" and first.StudyID != "ST1"
    assert first.ReferringPhysicianName == ""
    assert "OtherPatientIDs" not in first
    assert first.PatientIdentityRemoved == "YES"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert first[keyword].value == original[keyword].value
    assert original.PatientID == PATIENT_ID


def test_waiting_heartbeats_in_short_slices(sim: Sim, tmp_path: Path) -> None:
    study_uid, images = write_study(tmp_path / "study", count=1)
    calls: list[float] = []
    lock = threading.Lock()

    def never(study: str, calling_ae: str, since: float, timeout: float) -> list[Path]:
        with lock:
            calls.append(timeout)
        time.sleep(timeout)
        return []

    beats = Beats()
    with pytest.raises(TransientRuntimeError, match="no answer"):
        DicomNodeRuntime().run(
            context(manifest(sim.port, answer_timeout=1.5), study_uid, images, never, beats)
        )
    assert len(calls) >= 2 and max(calls) <= 1.0
    assert beats.count >= len(calls)
