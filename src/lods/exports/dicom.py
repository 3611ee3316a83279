"""DICOM transport: C-STORE SCU of one stored Part-10 file to a PACS (a `DicomNode`).

The outbox row names the node by id (`destination`), so a PACS that moves to another host
or port is reached at its new address by rows already queued. The file is read from the
blob store and offered in the transfer syntax it is stored in (plus the two
uncompressed little-endian ones when it is uncompressed, so pynetdicom can re-encode it
for a PACS that prefers implicit VR).

What counts as what (PS3.4 Annex B.2.3 and PS3.7 Annex C):

- success: status 0x0000; warnings 0x0001, 0xB000, 0xB006, 0xB007 (stored, with
  coercion or elements discarded) are successes, logged.
- transient (`TransientSendError`): the peer is not reachable (refused, time-out), it
  rejected or aborted the association, it gave no response, or it answered "out of
  resources" (0xA7xx), "processing failure" (0x0110) or "resource limitation" (0x0213).
  An association rejection is retried too: it usually means the PACS does not know our
  AE title yet, which its administrator fixes without changing the payload.
- permanent (`PermanentSendError`): the PACS says the data is bad or unwanted —
  "data set does not match SOP class" (0xA9xx), "cannot understand" (0xCxxx), "SOP class
  not supported" (0x0122), "not authorised" (0x0124) and every other failure status — or
  it accepts none of the presentation contexts offered; the node no longer exists or is
  inactive; the payload is missing from the blob store or is not a DICOM file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from sqlalchemy.orm import Session, sessionmaker

from lods.exports.errors import PermanentSendError, TransientSendError
from lods.exports.outbox import Message
from lods.imaging.store import BlobStore
from lods.sites.models import DicomNode

log = logging.getLogger(__name__)

#: Node kinds a result may be sent to.
EXPORT_NODE_KINDS = ("pacs",)
_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
#: Failure statuses worth a retry besides 0xA7xx: processing failure, resource limitation.
_TRANSIENT_FAILURES = frozenset({0x0110, 0x0213})
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class StatusKind(StrEnum):
    SUCCESS = "success"
    WARNING = "warning"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify_status(code: int) -> StatusKind:
    """Return what a C-STORE response status means for the outbox."""
    if code == 0x0000:
        return StatusKind.SUCCESS
    if code in _WARNINGS:
        return StatusKind.WARNING
    if 0xA700 <= code <= 0xA7FF or code in _TRANSIENT_FAILURES:
        return StatusKind.TRANSIENT
    return StatusKind.PERMANENT


@dataclass(frozen=True)
class NodeAddress:
    """Where a DICOM node listens."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def node_address(db: Session, destination: str) -> NodeAddress:
    """Return the address of the active node `destination` (its id) names."""
    try:
        node_id = int(destination)
    except ValueError:
        raise PermanentSendError(f"DICOM destination {destination!r} is not a node id") from None
    node = db.get(DicomNode, node_id)
    if node is None:
        raise PermanentSendError(f"DICOM node {node_id} no longer exists")
    if not node.is_active:
        raise PermanentSendError(f"DICOM node {node.ae_title} is inactive")
    if not node.host or not node.port:
        raise PermanentSendError(f"DICOM node {node.ae_title} has no host and port")
    return NodeAddress(node.ae_title, node.host, int(node.port))


@dataclass
class _Connection:
    """Whether TCP ever connected (refused vs. rejected vs. silent peer)."""

    connected: bool = False

    def on_open(self, _event: evt.Event) -> None:
        self.connected = True


def _association_failure(assoc: Association, conn: _Connection, where: str, waited: float) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        if primitive is not None:
            return (
                f"{where} rejected the association: {primitive.reason_str} "
                f"({primitive.result_str}, {primitive.source_str})"
            )
        return f"{where} rejected the association"
    if not conn.connected:
        return f"{where} is not reachable (connection refused or timed out after {waited:.1f} s)"
    return f"{where} aborted the association or did not answer in time"


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise PermanentSendError(
            f"the payload {path.name} is missing from the blob store"
        ) from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PermanentSendError(f"the payload {path.name} is not a DICOM file: {exc}") from exc


def _status_text(code: int, status: Dataset) -> str:
    comment = str(status.get("ErrorComment") or "").strip()
    return f"0x{code:04X}" + (f" ({comment})" if comment else "")


def store_file(path: Path, address: NodeAddress, *, calling_ae: str, timeout: float) -> StatusKind:
    """C-STORE the Part-10 file at `path` to `address`; return SUCCESS or WARNING, or raise
    `TransientSendError` / `PermanentSendError`."""
    ds = _read(path)
    sop_class = UID(str(ds.file_meta.MediaStorageSOPClassUID))
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    syntaxes = [stored] + [s for s in _UNCOMPRESSED if s != stored and not stored.is_compressed]
    where = f"the PACS {address}"
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(sop_class, syntaxes)
    conn = _Connection()
    asked = time.monotonic()
    assoc = ae.associate(
        address.host,
        address.port,
        ae_title=address.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, conn.on_open)],
    )
    if not assoc.is_established:
        if conn.connected and assoc.rejected_contexts and not assoc.accepted_contexts:
            raise PermanentSendError(f"{where} does not accept {sop_class.name}")
        raise TransientSendError(_association_failure(assoc, conn, where, time.monotonic() - asked))
    try:
        if not assoc.accepted_contexts:
            raise PermanentSendError(f"{where} does not accept {sop_class.name}")
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:  # cannot be encoded in any accepted transfer syntax
            raise PermanentSendError(f"{path.name} cannot be sent to {where}: {exc}") from exc
        except RuntimeError as exc:  # the association ended under us
            raise TransientSendError(f"{where}: the association ended: {exc}") from exc
        if not status or "Status" not in status:
            raise TransientSendError(f"{where} gave no C-STORE response (time-out or abort)")
        code = int(status.Status)
        kind = classify_status(code)
        text = f"{where} answered status {_status_text(code, status)} to {sop_class.name}"
        if kind is StatusKind.TRANSIENT:
            raise TransientSendError(text)
        if kind is StatusKind.PERMANENT:
            raise PermanentSendError(text)
        if kind is StatusKind.WARNING:
            log.warning("%s (stored)", text)
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return kind


def deliver(
    message: Message,
    *,
    store: BlobStore,
    sessions: sessionmaker[Session],
    calling_ae: str,
    timeout: float,
) -> None:
    """Send the blob of outbox `message` to the DICOM node its destination names."""
    if message.payload_sha256 is None:
        raise PermanentSendError(f"outbox row {message.id} has no DICOM payload")
    with sessions() as db:
        address = node_address(db, message.destination)
    store_file(
        store.path_for(message.payload_sha256), address, calling_ae=calling_ae, timeout=timeout
    )
