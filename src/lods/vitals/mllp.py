"""The HL7 v2 MLLP listener: bedside monitors' ORU^R01 and the hospital's ADT in, ACKs out.

Two threads. An asyncio server (its own event loop) accepts any number of connections,
cuts each byte stream into messages (`hl7in.MllpFramer`: garbage before a start block is
skipped, a message waits for its end block, one closed mid-message is dropped unanswered
— the sender sends it again — and an oversize one is answered AR once it ends), and
writes the ACKs, one write per connection and batch. One writer thread stores them with
group commit: it takes what is queued (up to `BATCH_SIZE` messages, waiting at most
`BATCH_WAIT` seconds for more while some connection has not yet sent one), reads them
and their vital signs (`hl7in.read`, `hl7in.vital_readings`; before the transaction, so
SQLite's write lock is held only to store), handles the batch in one transaction
(`hl7intake.intake_hl7`) and only after the commit releases the ACKs, in order per
connection. So an ACK always means the message (its `hl7_messages` row, observations and
scores) is on disk, and one commit (one fsync) serves many messages. A sender that waits
for each ACK has one message in a batch, so the rate grows with the number of
connections (or with senders that pipeline several messages before reading the ACKs).

Scoring: with `LODS_HL7_SCORING=process` (the default) the batch's transaction stores a
score request instead of the scores, and the scorer process (`lods.vitals.scorer`) scores
it on the other core while the writer goes on with the next batch; the batch's ACKs wait
until it is scored. ACKs leave in the order the batches were stored, so a connection's
answers stay in order. With `inline`, scores are stored in the batch's own transaction.

A batch whose transaction fails is retried message by message, so one message that
breaks the database does not take the others with it; a message that still fails is
answered AE. The listener never stops on bad input: every complete message is answered.
A connection whose answers lag far behind (the writer is slower than it sends) stops
being read until the writer catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from lods.alerts.live import HUB
from lods.db import utcnow
from lods.runtime import Runtime
from lods.vitals import hl7in
from lods.vitals.hl7intake import Answer, Inbound, intake_hl7
from lods.vitals.models import ScoreRequest
from lods.vitals.scorer import Event, Request, ScorerProcess, WriteTurns

log = logging.getLogger(__name__)

#: Most messages handled in one transaction.
BATCH_SIZE = 64
#: Longest the writer waits for more messages to join a batch (seconds).
BATCH_WAIT = 0.005
#: A connection with this many unanswered messages is not read until it is down to
#: `RESUME_AT`.
PAUSE_AT = 2000
RESUME_AT = 200
#: Answer to a message that could not be stored, even alone.
NOT_STORED = Answer("AE", "not stored (internal error); send it again", hl7in.ERR_INTERNAL)


class _Connection(asyncio.Protocol):
    def __init__(self, listener: Hl7Listener) -> None:
        self.listener = listener
        self.framer = hl7in.MllpFramer(listener.max_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.outstanding = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.listener._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except Exception:  # the framer does not raise; never let a bug end the server
            log.exception("MLLP framing failed; dropping the connection's buffer")
            self.framer = hl7in.MllpFramer(self.listener.max_bytes)
            return
        for frame in frames:
            self.listener._submit(self, frame)
        if self.outstanding >= PAUSE_AT and self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    def answered(self, acks: list[bytes]) -> None:
        self.outstanding -= len(acks)
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"".join(acks))
        if self.paused and self.outstanding <= RESUME_AT:
            self.transport.resume_reading()
            self.paused = False


@dataclass
class _Job:
    frame: hl7in.Frame
    connection: _Connection
    #: The message as read (by the writer, before it takes the database's write lock).
    inbound: Inbound | None = None


@dataclass
class _Stored:
    """A stored batch whose ACKs wait for its score requests (and for the batches before
    it)."""

    batch: list[_Job]
    answers: list[Answer]
    #: The score requests stored with it, by id.
    requests: dict[int, Request] = field(default_factory=dict)


_STOP = object()


class Hl7Listener:
    """MLLP on `settings.host`:`settings.hl7_port` (0: a free port, see `.port`), started
    and stopped with `lods serve`."""

    def __init__(
        self, runtime: Runtime, *, batch_size: int = BATCH_SIZE, batch_wait: float = BATCH_WAIT
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.max_bytes = runtime.settings.hl7_max_message_bytes
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self._connections: set[_Connection] = set()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._loop_thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._port = 0
        #: Messages answered since start, by MSA-1 (for the log and tests).
        self.answered: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0}
        self.scorer: ScorerProcess | None = None
        #: Stored batches not yet answered, oldest first; guarded by `_release_lock`.
        self._unanswered: deque[_Stored] = deque()
        self._scored: set[int] = set()
        self._release_lock = threading.Lock()
        self._all_answered = threading.Condition(self._release_lock)
        self._turns: WriteTurns | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked when the settings say 0)."""
        return self._port

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in background threads; raises if the port cannot be bound."""
        if self._loop_thread is not None:
            return
        if self.settings.hl7_scoring == "process":
            self.scorer = ScorerProcess(self.settings, self._on_scored)
            self.scorer.start()
            self._turns = WriteTurns(self.settings)
        self._writer_thread = threading.Thread(target=self._write, name="hl7-writer", daemon=True)
        self._writer_thread.start()
        self._loop_thread = threading.Thread(target=self._serve, name="hl7-mllp", daemon=True)
        self._loop_thread.start()
        self._ready.wait(30)
        if self._error is not None:
            error, self._error = self._error, None
            self._queue.put(_STOP)
            self._writer_thread.join(10)
            self._loop_thread.join(10)
            self._loop_thread = self._writer_thread = None
            self._stop_scorer()
            raise error
        log.info("HL7 MLLP listener on %s:%d", self.settings.host, self._port)

    def stop(self) -> None:
        """Stop accepting, close the connections, store what is queued, end the threads."""
        loop, thread = self._loop, self._loop_thread
        if thread is None or loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        self._queue.put(_STOP)
        if self._writer_thread is not None:
            self._writer_thread.join(30)
        with self._all_answered:  # stored batches still being scored
            self._all_answered.wait_for(lambda: not self._unanswered, timeout=30)
        self._stop_scorer()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop_thread = self._writer_thread = None
        self._loop = None

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Connection(self),
                    host=self.settings.host,
                    port=self.settings.hl7_port,
                    reuse_address=True,
                )
            )
            sockets = self._server.sockets
            self._port = int(sockets[0].getsockname()[1]) if sockets else 0
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _stop_scorer(self) -> None:
        if self.scorer is not None:
            self.scorer.stop()
            self.scorer = None
        if self._turns is not None:
            self._turns.close()
            self._turns = None

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # --- in (event loop thread) ---------------------------------------------------------------

    def _submit(self, conn: _Connection, frame: hl7in.Frame) -> None:
        conn.outstanding += 1
        self._queue.put(_Job(frame, conn))

    def _read(self, job: _Job, received_at: datetime | None = None) -> Inbound:
        """The job's message read (parsed, or rejected with the reason), with an ORU's vital
        signs when `received_at` is given."""
        frame = job.frame
        try:
            if frame.oversize:
                message: hl7in.ParsedMessage | hl7in.Rejected = hl7in.oversize(
                    frame.data, frame.size, self.max_bytes
                )
            else:
                message = hl7in.read(hl7in.decode(frame.data))
        except Exception as exc:  # read() does not raise; belt and braces
            log.exception("reading an HL7 message failed")
            raw = hl7in.decode(frame.data[: hl7in.OVERSIZE_HEAD_BYTES])
            message = hl7in.Rejected(
                raw, hl7in.peek_header(raw), f"cannot read ({exc!r})", hl7in.ERR_INTERNAL
            )
        readings = None
        if received_at is not None and isinstance(message, hl7in.ParsedMessage) and message.is_oru:
            try:
                readings = hl7in.vital_readings(message, received_at=received_at)
            except Exception:  # intake reads them again and answers the message alone
                log.exception("reading the vital signs of %s failed", message.header.control_id)
        return Inbound(message, job.connection.peer, readings)

    # --- the writer thread --------------------------------------------------------------------

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and what joins it: up to `batch_size` jobs, waiting up to `batch_wait`
        while some open connection has no message in the batch yet."""
        batch = [first]
        senders = {id(first.connection)}
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or len(senders) >= len(self._connections):
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
            senders.add(id(item.connection))
        return batch, False

    def _write(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, stopping = self._collect(item)
            try:
                stored = self._store(batch)
            except Exception:  # never let the writer die
                log.exception("HL7 batch failed")
                stored = _Stored(batch, [NOT_STORED] * len(batch))
            self._release(stored)

    def _store(self, batch: list[_Job]) -> _Stored:
        # Read before the transaction: on SQLite the write lock is held only for storing.
        now = utcnow()
        for job in batch:
            job.inbound = self._read(job, now)
        inbound = [job.inbound for job in batch if job.inbound is not None]
        stored = _Stored(batch, [])
        try:
            with self._turn(), self.runtime.sessions() as db, db.begin():
                stored.answers = self._intake(db, inbound, now, stored.requests)
            return stored
        except Exception:
            stored.requests.clear()
            if len(batch) == 1:
                log.exception("HL7 message %s not stored", inbound[0].message.header.control_id)
                stored.answers = [NOT_STORED]
                return stored
            log.warning("HL7 batch of %d failed; storing one by one", len(batch), exc_info=True)
        for item in inbound:
            requests: dict[int, Request] = {}
            try:
                with self._turn(), self.runtime.sessions() as db, db.begin():
                    stored.answers += self._intake(db, [item], now, requests)
                stored.requests.update(requests)
            except Exception:
                log.exception("HL7 message %s not stored", item.message.header.control_id)
                stored.answers.append(NOT_STORED)
        return stored

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        return self._turns.turn() if self._turns is not None else contextlib.nullcontext()

    def _intake(
        self, db: Session, inbound: list[Inbound], now: datetime, requests: dict[int, Request]
    ) -> list[Answer]:
        """Store `inbound` in `db`'s transaction. With a scorer, the patients to score go
        into a request row (added to `requests`), sent to the scorer after commit."""
        if self.scorer is None:
            return intake_hl7(db, inbound, now=now, settings=self.settings)
        patients: list[int] = []
        answers = intake_hl7(db, inbound, now=now, settings=self.settings, score_later=patients)
        if patients:
            request = ScoreRequest(patient_fks=sorted(set(patients)), requested_at=now)
            db.add(request)
            db.flush()
            requests[request.id] = Request(request.id, tuple(request.patient_fks), now)
        return answers

    # --- answers (writer thread and the scorer's reader thread) -------------------------------

    def _release(self, stored: _Stored) -> None:
        """Queue a stored batch for answering and send its score requests; answer every
        batch at the head of the queue whose scores are stored."""
        with self._release_lock:
            self._unanswered.append(stored)
        if self.scorer is not None:
            for request_id in sorted(stored.requests):
                self.scorer.submit(stored.requests[request_id])
        self._answer_ready()

    def _on_scored(self, ids: list[int], events: list[Event]) -> None:
        for ward_id, payload in events:
            HUB.publish(ward_id, payload)
        with self._release_lock:
            self._scored.update(ids)
        self._answer_ready()

    def _answer_ready(self) -> None:
        with self._all_answered:
            while self._unanswered:
                head = self._unanswered[0]
                if not self._scored.issuperset(head.requests):
                    break
                self._unanswered.popleft()
                self._scored.difference_update(head.requests)
                try:
                    self._reply(head.batch, head.answers)
                except Exception:
                    log.exception("answering an HL7 batch failed")
            self._all_answered.notify_all()

    def _reply(self, batch: list[_Job], answers: list[Answer]) -> None:
        # One write per connection: its ACKs in order, joined.
        out: dict[_Connection, list[bytes]] = {}
        for job, answer in zip(batch, answers, strict=True):
            self.answered[answer.code] = self.answered.get(answer.code, 0) + 1
            inbound = job.inbound or self._read(job)
            ack = hl7in.build_ack(
                inbound.message.header, answer.code, answer.text, error_code=answer.error_code
            )
            out.setdefault(job.connection, []).append(hl7in.frame(ack))
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to answer
            loop.call_soon_threadsafe(_deliver, out)


def _deliver(out: dict[_Connection, list[bytes]]) -> None:
    for conn, acks in out.items():
        conn.answered(acks)
