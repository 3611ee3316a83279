"""The DICOM node: a pynetdicom SCP for C-ECHO and C-STORE of every storage SOP class.

An adapter at the edge: it answers every request with a precise DICOM status and never
lets an exception escape into pynetdicom. Per C-STORE it reads the data set as received
(never decoding pixel data), stores it durably, indexes it in one short transaction and
only then answers success (see `lods.imaging.service` for the policy).

Associations: the called AE title must be ours; the calling AE title must belong to an
active DICOM node in the database (read per association with a two-second cache, so a
node added by another process is honoured at once), else the association is rejected
(A-ASSOCIATE-RJ, "calling AE title not recognised") unless unknown callers are accepted
into the "unassigned" site. Audit: one `study.received` event per association and
study, written with the study's first stored instance, actor `dicom:<calling AE>`; the
per-instance hot path writes no audit row.

Speed: a sender waits for each answer before it sends the next image, so everything
after the last byte arrives is on its critical path. Large data sets are therefore
streamed to disk while they arrive (`_Spool`): a worker thread hashes and writes each
MiB (O_DIRECT) as the transfer goes on, and the answer waits only for the last block,
a metadata fsync, the rename and one short transaction. The maximum PDU we accept is
`settings.dicom_max_pdu` (DCMTK senders cap it at 128 KiB), and PDUs are read with as
few system calls as possible (`_BulkSocket`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from lods.audit.service import record
from lods.imaging.ingest import (
    DUPLICATE,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    REJECTED,
    SUCCESS,
    IngestResult,
    IntakeError,
    file_meta,
)
from lods.imaging.quarantine import disk_error, reject
from lods.imaging.service import Prepared, index_instance, prepare_dataset
from lods.imaging.store import BlobStore, BlobWriter, Staged
from lods.runtime import Runtime
from lods.sites.service import known_ae_titles, site_for_calling_ae
from lods.solutions.inbox import answer_ae_titles, file_answer

log = logging.getLogger(__name__)

#: Every transfer syntax pydicom knows except the SMPTE ST 2110 ones (real-time video,
#: not storage): uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/HEVC.
STORAGE_TRANSFER_SYNTAXES = [
    ts for ts in AllTransferSyntaxes if not ts.startswith("1.2.840.10008.1.2.7.")
]
_VERIFICATION_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
#: A calling AE title that cannot occur (backslash is not allowed in an AE title).
_NOBODY = "\\nobody\\"
_AE_CACHE_SECONDS = 2.0
_DB_ATTEMPTS = 5


def _status(code: int, comment: str = "") -> Dataset:
    """Return a C-STORE response status, with an Error Comment (LO, 64 chars) if given."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


@dataclass
class _Association:
    """What Lods remembers about one open association."""

    calling_ae: str
    peer: str
    site_id: int | None = None
    audited_studies: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    spool: _Spool | None = None
    #: (study UID, series UID) -> (study id, series id), for series committed here.
    known_series: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


#: A data set at least this large is also streamed to disk while its fragments arrive,
#: so hashing, writing and write-back overlap the transfer; smaller ones stay in memory.
_STREAM_FROM = 512 * 1024
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101


class _Spool:
    """Streams the C-STORE data sets of one association to disk as they arrive.

    Fed every P-DATA fragment from pynetdicom's EVT_PDU_RECV (the association's DUL
    thread) before pynetdicom assembles the message, so by the time the C-STORE handler
    runs, every byte is queued to a `BlobWriter` behind the file meta Lods writes for
    the UIDs the request declares. The handler `take`s the writer; anything that does not
    line up (another instance, a failed write) is discarded and the in-memory copy that
    pynetdicom keeps anyway is stored instead.
    """

    def __init__(self, store: BlobStore, syntaxes: dict[int, str]) -> None:
        self.store = store
        self.syntaxes = syntaxes  # presentation context id -> transfer syntax UID
        self._command = bytearray()
        self._prefix: bytes | None = None
        self._uid = ""
        self._pending: list[memoryview] = []
        self._pending_size = 0
        self._writer: BlobWriter | None = None
        self._done: tuple[str, BlobWriter] | None = None
        self._lock = threading.Lock()

    def feed(self, context_id: int, pdv: bytes) -> None:
        """Take one presentation data value (message control header + fragment)."""
        control, fragment = pdv[0], memoryview(pdv)[1:]
        if control & 1:  # command fragment
            self._command += fragment
            if control & 2:
                command, self._command = bytes(self._command), bytearray()
                self._begin(context_id, command)
            return
        if self._prefix is None:
            return
        if self._writer is not None:
            self._writer.write(fragment)
        else:
            self._pending.append(fragment)
            self._pending_size += len(fragment)
            if self._pending_size >= _STREAM_FROM:
                self._writer = BlobWriter(self.store, prefix=self._prefix)
                for chunk in self._pending:
                    self._writer.write(chunk)
                self._pending.clear()
        if control & 2:  # last fragment of the data set
            writer, self._writer = self._writer, None
            self.reset()
            if writer is not None:
                writer.end()
                with self._lock:
                    self._drop(self._done)
                    self._done = (self._uid, writer)

    def _begin(self, context_id: int, command: bytes) -> None:
        self.reset()
        cmd = read_dataset(BytesIO(command), True, True)
        syntax = self.syntaxes.get(context_id)
        wants_data = cmd.get("CommandDataSetType", _NO_DATA_SET) != _NO_DATA_SET
        if cmd.get("CommandField") != _C_STORE_RQ or not wants_data or syntax is None:
            return
        self._uid = str(cmd.get("AffectedSOPInstanceUID") or "").strip("\x00 ")
        sop_class = str(cmd.get("AffectedSOPClassUID") or "").strip("\x00 ")
        self._prefix = file_meta(
            sop_class_uid=sop_class, sop_instance_uid=self._uid, transfer_syntax_uid=syntax
        )

    def take(self, sop_instance_uid: str) -> BlobWriter | None:
        """Return the streamed writer of the data set just received, if it is this one."""
        with self._lock:
            done, self._done = self._done, None
        if done is not None and done[0] == sop_instance_uid.strip("\x00 "):
            return done[1]
        self._drop(done)
        return None

    def reset(self) -> None:
        """Forget the data set being received (its writer, if any, is aborted)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
        self._prefix = None
        self._pending.clear()
        self._pending_size = 0

    def close(self) -> None:
        """Abort everything still held (the association ended)."""
        self.reset()
        with self._lock:
            done, self._done = self._done, None
        self._drop(done)

    @staticmethod
    def _drop(done: tuple[str, BlobWriter] | None) -> None:
        if done is not None:
            done[1].abort()


class _BulkSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU with as few recv calls as the kernel allows.

    pynetdicom reads 4 KiB at a time; for a 128 KiB P-DATA PDU that is 32 system calls
    and as many buffer extensions, a tenth of the CPU an 8 MB image costs to receive.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        """Return `nr_bytes` from the socket (fewer only if the peer closed it)."""
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:
                del view
                return buffer[:received]
            received += count
        return buffer


class _LodsAE(AE):
    """An AE whose calling-AE allow-list comes from the database at each association."""

    def __init__(self, ae_title: str, allowed: Callable[[], list[str]]) -> None:
        super().__init__(ae_title)
        self._allowed = allowed

    @property
    def require_calling_aet(self) -> list[str]:
        """Return the AE titles allowed to call; an empty list lets anyone in."""
        return self._allowed()

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("Lods reads the allowed calling AE titles from the database")


class DicomServer:
    """The Lods DICOM node: `start()` listens in background threads, `stop()` ends it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.store = BlobStore.from_settings(runtime.settings)
        self._server: ThreadedAssociationServer | None = None
        self._associations: weakref.WeakKeyDictionary[Association, _Association] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._ae_cache: tuple[float, list[str]] | None = None
        self._vendor_cache: tuple[float, frozenset[str]] | None = None

    # lifecycle -------------------------------------------------------------------------

    def _make_ae(self) -> AE:
        ae = _LodsAE(self.settings.dicom_ae_title, self.allowed_calling_aets)
        ae.maximum_pdu_size = self.settings.dicom_max_pdu
        ae.require_called_aet = True
        ae.maximum_associations = 32
        ae.network_timeout = 60
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, _VERIFICATION_SYNTAXES)
        return ae

    def start(self) -> None:
        """Start listening on settings.host:settings.dicom_port; returns at once."""
        if self._server is not None:
            return
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_CONN_OPEN, self._on_connection),
        ]
        if removed := self.store.sweep_tmp():
            log.info("removed %d stale temporary files from an earlier run", removed)
        address = (self.settings.host, self.settings.dicom_port)
        self._server = self._make_ae().start_server(address, block=False, evt_handlers=handlers)
        log.info("DICOM node %s listening on %s:%d", self.settings.dicom_ae_title, *address)

    def stop(self) -> None:
        """Stop listening and abort open associations."""
        server, self._server = self._server, None
        if server is not None:
            for assoc in list(server.active_associations):
                assoc.abort()
            server.shutdown()

    @property
    def port(self) -> int:
        """Return the port the node listens on (useful when settings asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the DICOM node is not running")
        return int(self._server.server_address[1])

    # association control ---------------------------------------------------------------

    def allowed_calling_aets(self) -> list[str]:
        """Return the calling AE titles allowed in; [] (anyone) when unknown ones are accepted."""
        if self.settings.dicom_accept_unknown_ae:
            return []
        now = time.monotonic()
        cached = self._ae_cache
        if cached is not None and now - cached[0] < _AE_CACHE_SECONDS:
            return cached[1]
        vendors = self.vendor_ae_titles()
        try:
            with self.runtime.sessions() as db:
                titles = sorted(known_ae_titles(db) | vendors) or [_NOBODY]
        except DBAPIError:
            log.exception("cannot read the known AE titles; using the last list")
            return cached[1] if cached is not None else [_NOBODY]
        self._ae_cache = (now, titles)
        return titles

    def vendor_ae_titles(self) -> frozenset[str]:
        """Calling AE titles of AI appliances whose answers go to the vendor inbox."""
        now = time.monotonic()
        cached = self._vendor_cache
        if cached is not None and now - cached[0] < _AE_CACHE_SECONDS:
            return cached[1]
        try:
            with self.runtime.sessions() as db:
                titles = answer_ae_titles(db)
        except DBAPIError:
            log.exception("cannot read the AI appliance AE titles; using the last list")
            return cached[1] if cached is not None else frozenset()
        self._vendor_cache = (now, titles)
        return titles

    def _on_connection(self, event: evt.Event) -> None:
        # Before the association's threads start: swap in the bulk-reading socket.
        sock = event.assoc.dul.socket
        if type(sock) is AssociationSocket:
            sock.__class__ = _BulkSocket

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        requestor = assoc.requestor
        syntaxes = {
            int(cx.context_id): str(cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
            if cx.context_id is not None and cx.transfer_syntax
        }
        state = _Association(
            calling_ae=str(requestor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
            spool=_Spool(self.store, syntaxes),
        )
        with self._lock:
            self._associations[assoc] = state

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.warning(
            "rejected association from %r at %s (calling AE not recognised or wrong called AE)",
            requestor.ae_title,
            requestor.address,
        )

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            state = self._associations.pop(event.assoc, None)
        if state is not None and state.spool is not None:
            state.spool.close()
        if state is not None and state.counts:
            log.info(
                "association from %s (%s) ended: %s", state.calling_ae, state.peer, state.counts
            )

    def _on_pdu(self, event: evt.Event) -> None:
        """Feed P-DATA fragments to the association's spool (see `_Spool`)."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        with self._lock:
            state = self._associations.get(event.assoc)
        spool = state.spool if state is not None else None
        if spool is None:
            return
        try:
            for item in pdu.presentation_data_value_items:
                if item.presentation_context_id is not None and item.presentation_data_value:
                    spool.feed(item.presentation_context_id, item.presentation_data_value)
        except Exception:
            log.exception("streaming a data set to disk failed; it is kept in memory instead")
            spool.reset()

    def _state(self, assoc: Association) -> _Association:
        with self._lock:
            state = self._associations.get(assoc)
            if state is None:  # accepted before our handler was bound; rebuild it
                requestor = assoc.requestor
                state = _Association(str(requestor.ae_title).strip(), str(requestor.address))
                self._associations[assoc] = state
            return state

    # services --------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset:
        """Answer one C-STORE; every failure becomes a status, nothing escapes."""
        try:
            state = self._state(event.assoc)
            result = self._store(event, state)
        except Exception:
            log.exception("C-STORE handler failed")
            return _status(PROCESSING_FAILURE, "internal error in Lods; see the server log")
        with self._lock:
            state.counts[result.outcome] = state.counts.get(result.outcome, 0) + 1
        if result.ok:
            return _status(result.dicom_status)
        return _status(result.dicom_status, result.reason)

    def _store(self, event: evt.Event, state: _Association) -> IngestResult:
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None
        declared = {
            "transfer_syntax_uid": str(event.context.transfer_syntax),
            "sop_class_uid": str(request.AffectedSOPClassUID or ""),
            "sop_instance_uid": str(request.AffectedSOPInstanceUID or ""),
        }
        vendor = state.calling_ae in self.vendor_ae_titles()
        site_id = None if vendor else self._site_id(state)
        if site_id is None and not vendor:
            log.warning("C-STORE from %s refused: no longer a known node", state.calling_ae)
            return IngestResult(REJECTED, NOT_AUTHORIZED, "calling AE title is not a known node")
        dataset = request.DataSet.getvalue()
        try:
            prepared = prepare_dataset(
                store=self.store,
                dataset=dataset,
                transfer_syntax_uid=declared["transfer_syntax_uid"],
                sop_class_uid=declared["sop_class_uid"],
                sop_instance_uid=declared["sop_instance_uid"],
                staged=self._streamed(state, declared["sop_instance_uid"]),
            )
        except IntakeError as error:
            error.sop_instance_uid = error.sop_instance_uid or declared["sop_instance_uid"]
            return self._reject(error, [dataset], state, declared)
        except OSError as exc:
            return self._reject(disk_error(exc), [], state, declared)
        if vendor:
            return self._file_answer(prepared, state)
        assert site_id is not None
        return self._index(prepared, state, site_id)

    def _file_answer(self, prepared: Prepared, state: _Association) -> IngestResult:
        """An AI appliance's answer: kept in the vendor inbox, not in the clinical study."""
        header = prepared.header
        try:
            with self.runtime.sessions() as db, db.begin():
                file_answer(db, prepared=prepared, calling_ae=state.calling_ae)
        except DBAPIError:
            log.exception("filing the answer %s failed", header.sop_instance_uid)
            return IngestResult(
                REJECTED,
                OUT_OF_RESOURCES,
                "database unavailable; send again later",
                sop_instance_uid=header.sop_instance_uid,
            )
        log.info("AI appliance %s answered for study %s", state.calling_ae, header.study_uid)
        return IngestResult("stored", SUCCESS, sop_instance_uid=header.sop_instance_uid)

    def _streamed(self, state: _Association, sop_instance_uid: str) -> Staged | None:
        """Return the data set as already streamed to disk, or None to store it from memory."""
        writer = state.spool.take(sop_instance_uid) if state.spool is not None else None
        if writer is None:
            return None
        try:
            return writer.finish()
        except OSError:
            log.exception("streamed copy of %s failed; storing from memory", sop_instance_uid)
            return None

    def _site_id(self, state: _Association) -> int | None:
        if state.site_id is None:
            with self.runtime.sessions() as db, db.begin():
                site = site_for_calling_ae(
                    db,
                    ae_title=state.calling_ae,
                    accept_unknown=self.settings.dicom_accept_unknown_ae,
                )
                state.site_id = site.id if site is not None else None
        return state.site_id

    def _index(self, prepared: Prepared, state: _Association, site_id: int) -> IngestResult:
        """Return the indexing outcome, retrying transient database conflicts."""
        header = prepared.header
        for attempt in range(_DB_ATTEMPTS):
            try:
                with self.runtime.sessions() as db, db.begin():
                    result = index_instance(
                        db,
                        prepared=prepared,
                        channel="dicom",
                        source=state.calling_ae,
                        site_id=site_id,
                        known_series=state.known_series,
                    )
                    first = result.outcome != DUPLICATE and (
                        header.study_uid not in state.audited_studies
                    )
                    if first:
                        self._audit_study(db, prepared, state)
                if first:
                    state.audited_studies.add(header.study_uid)
                if result.study_pk is not None and result.series_pk is not None:
                    key = (header.study_uid, header.series_uid)
                    state.known_series[key] = (result.study_pk, result.series_pk)
                return result
            except (OperationalError, IntegrityError) as exc:
                state.known_series.clear()
                log.warning(
                    "indexing %s failed (attempt %d): %s", header.sop_instance_uid, attempt + 1, exc
                )
                time.sleep(0.05 * 2**attempt)
            except DBAPIError:
                log.exception("indexing %s failed", header.sop_instance_uid)
                break
        return IngestResult(
            REJECTED,
            OUT_OF_RESOURCES,
            "database unavailable; send again later",
            sop_instance_uid=header.sop_instance_uid,
        )

    def _audit_study(self, db: Any, prepared: Prepared, state: _Association) -> None:
        header = prepared.header
        record(
            db,
            actor=f"dicom:{state.calling_ae}",
            action="study.received",
            patient_id=header.patient_id or None,
            study_uid=header.study_uid,
            object_ref=f"study:{header.study_uid}",
            source=state.peer,
            detail={"channel": "dicom", "first_sop_instance_uid": header.sop_instance_uid},
        )

    def _reject(
        self,
        error: IntakeError,
        parts: list[bytes | memoryview],
        state: _Association,
        declared: dict[str, Any],
    ) -> IngestResult:
        try:
            with self.runtime.sessions() as db, db.begin():
                return reject(
                    db,
                    quarantine_dir=self.store.quarantine_dir,
                    error=error,
                    parts=parts,
                    part10=False,
                    channel="dicom",
                    source=state.calling_ae,
                    declared=declared,
                )
        except DBAPIError:
            log.exception("could not record the refusal of %s", error.sop_instance_uid)
            return IngestResult(
                REJECTED, error.status, error.reason, sop_instance_uid=error.sop_instance_uid
            )
