"""The outbox: idempotent enqueue, compare-and-set claims with a lease, back-off on
transient failures, permanent failures shown to admins, and nothing lost when a sender dies.

Runs on SQLite and (when LODS_TEST_POSTGRES_URL is set) PostgreSQL. Time is a clock the
tests move, so back-off is checked without sleeping.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from datetime import timedelta
from pathlib import Path

import pytest
from exports_support import Clock
from sqlalchemy import func, select

from lods.alerts.models import Alert
from lods.audit.models import AuditEvent
from lods.exports import outbox, transports
from lods.exports.dicom import StatusKind, classify_status
from lods.exports.errors import PermanentSendError, TransientSendError
from lods.exports.models import OutboxItem
from lods.exports.outbox import Message, RetryPolicy
from lods.exports.sender import ExportSender, PassReport, deliver_due
from lods.exports.transports import SendContext
from lods.imaging.store import BlobStore
from lods.runtime import Runtime

POLICY = RetryPolicy(backoff_seconds=10, backoff_max_seconds=60, max_attempts=5, lease_seconds=30)


def _enqueue(rt: Runtime, key: str = "k1", destination: str = "pacs-1", **kw: object) -> int:
    with rt.sessions() as db, db.begin():
        return outbox.enqueue(
            db,
            transport=str(kw.pop("transport", "test")),
            destination=destination,
            what="sr-verified",
            dedupe_key=key,
            payload="hello",
            **kw,  # type: ignore[arg-type]
        )


def _row(rt: Runtime, item_id: int) -> OutboxItem:
    with rt.sessions() as db:
        row = db.get(OutboxItem, item_id)
        assert row is not None
        return row


class Peer:
    """A transport double: records what it was given, fails as told."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.sent: list[Message] = []

    def __call__(self, message: Message) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(message)


def _pass(rt: Runtime, peer: Peer, clock: Clock, policy: RetryPolicy = POLICY) -> PassReport:
    return deliver_due(rt.sessions, peer, policy=policy, now=clock)


# --- enqueue -------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_by_dedupe_key(runtime: Runtime) -> None:
    first = _enqueue(runtime, "same")
    again = _enqueue(runtime, "same")
    other = _enqueue(runtime, "other")
    assert first == again != other
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(OutboxItem)) == 2
    row = _row(runtime, first)
    assert (row.state, row.attempts, row.payload) == ("pending", 0, "hello")


def test_enqueue_wants_one_payload(runtime: Runtime) -> None:
    with runtime.sessions() as db, db.begin():
        with pytest.raises(ValueError, match="not both or neither"):
            outbox.enqueue(
                db,
                transport="dicom",
                destination="1",
                what="sc",
                dedupe_key="x",
                payload="a",
                payload_sha256="0" * 64,
            )
        with pytest.raises(ValueError, match="not both or neither"):
            outbox.enqueue(db, transport="dicom", destination="1", what="sc", dedupe_key="x")


# --- claims --------------------------------------------------------------------------------------


def test_a_claim_is_compare_and_set_and_counts_the_attempt(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    with runtime.sessions() as db, db.begin():
        claimed = outbox.claim_next(db, lease_seconds=30, now=clock())
        assert claimed is not None and claimed.id == item and claimed.attempt == 1
        assert outbox.claim_next(db, lease_seconds=30, now=clock()) is None
        assert outbox.claim(db, item, lease_seconds=30, now=clock()) is None
    row = _row(runtime, item)
    assert row.state == "sending" and row.lease_until == clock() + timedelta(seconds=30)


def test_a_row_is_not_claimed_before_it_is_due(runtime: Runtime) -> None:
    clock = Clock()
    with runtime.sessions() as db, db.begin():
        outbox.enqueue(
            db,
            transport="test",
            destination="d",
            what="sc",
            dedupe_key="later",
            payload="x",
            now=clock.now + timedelta(seconds=5),
        )
        assert outbox.claim_next(db, lease_seconds=30, now=clock()) is None
        assert outbox.claim_next(db, lease_seconds=30, now=clock.now + timedelta(seconds=5))


# --- outcomes ------------------------------------------------------------------------------------


def test_success_marks_the_row_sent_and_audits_it(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    peer, clock = Peer(), Clock()
    report = _pass(runtime, peer, clock)
    assert (report.sent, report.retrying, report.failed) == (1, 0, 0)
    assert [m.payload for m in peer.sent] == ["hello"]
    row = _row(runtime, item)
    assert (row.state, row.attempts, row.sent_at, row.lease_until) == ("sent", 1, clock(), None)
    with runtime.sessions() as db:
        actions = db.scalars(
            select(AuditEvent.action).where(AuditEvent.object_ref == f"outbox:{item}")
        )
        assert list(actions) == ["export.sent"]
    assert _pass(runtime, peer, clock).attempted == 0  # sent once, never again


def test_transient_failures_back_off_exponentially_up_to_the_cap(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    peer = Peer(*(TransientSendError("PACS down") for _ in range(4)))
    delays = []
    for attempt in range(1, 5):
        report = _pass(runtime, peer, clock)
        assert report.retrying == 1
        row = _row(runtime, item)
        assert (row.state, row.attempts, row.last_error) == ("pending", attempt, "PACS down")
        delays.append((row.next_attempt_at - clock()).total_seconds())
        assert _pass(runtime, peer, clock).attempted == 0  # not due yet: no early retry
        clock.now = row.next_attempt_at
    assert delays == [10, 20, 40, 60]  # doubling, capped at backoff_max_seconds
    assert _pass(runtime, peer, clock).sent == 1
    assert _row(runtime, item).state == "sent"


def test_too_many_transient_failures_fail_the_row_and_alert_admins(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    policy = RetryPolicy(backoff_seconds=0, backoff_max_seconds=0, max_attempts=3)
    peer = Peer(*(TransientSendError("refused") for _ in range(5)))
    for _ in range(3):
        _pass(runtime, peer, clock, policy)
    row = _row(runtime, item)
    assert (row.state, row.attempts) == ("failed", 3)
    assert row.last_error == "gave up after 3 attempts: refused"
    with runtime.sessions() as db:
        alert = db.scalars(select(Alert).where(Alert.kind == outbox.ALERT_KIND)).one()
        assert alert.subject == "test:pacs-1" and "refused" in alert.detail


def test_a_permanent_failure_fails_at_once_with_its_reason(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    report = _pass(
        runtime, Peer(PermanentSendError("status 0xA900: data set does not match")), clock
    )
    assert report.failed == 1
    row = _row(runtime, item)
    assert (row.state, row.attempts) == ("failed", 1)
    assert row.last_error == "status 0xA900: data set does not match"
    clock.advance(3600)
    assert _pass(runtime, Peer(), clock).attempted == 0  # failed rows wait for an admin
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Alert)) == 1
        actions = db.scalars(
            select(AuditEvent.action).where(AuditEvent.object_ref == f"outbox:{item}")
        )
        assert list(actions) == ["export.failed"]


def test_an_unexpected_error_is_retried_not_dropped(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    _pass(runtime, Peer(KeyError("bug")), Clock())
    row = _row(runtime, item)
    assert row.state == "pending" and row.attempts == 1 and "bug" in (row.last_error or "")


def test_a_failing_destination_is_tried_once_per_pass(runtime: Runtime) -> None:
    down = [_enqueue(runtime, f"down-{i}", destination="down") for i in range(3)]
    up = _enqueue(runtime, "up", destination="up")
    clock = Clock()

    class DownIsDown(Peer):
        def __call__(self, message: Message) -> None:
            if message.destination == "down":
                raise TransientSendError("connection refused")
            self.sent.append(message)

    report = _pass(runtime, DownIsDown(), clock)
    assert (report.sent, report.retrying) == (1, 1)
    assert _row(runtime, up).state == "sent"
    assert sorted(_row(runtime, i).attempts for i in down) == [0, 0, 1]


# --- a sender that dies ---------------------------------------------------------------------------


def test_a_dead_senders_row_is_retried_after_its_lease_and_it_cannot_finish_late(
    runtime: Runtime,
) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    with runtime.sessions() as db, db.begin():
        dead = outbox.claim_next(db, lease_seconds=POLICY.lease_seconds, now=clock())
    assert dead is not None  # ... and its sender process dies here, mid-send
    assert _pass(runtime, Peer(), clock).attempted == 0  # the lease still holds
    clock.advance(POLICY.lease_seconds + 1)
    peer = Peer()
    report = _pass(runtime, peer, clock)
    assert (report.released, report.sent) == (1, 1)
    assert [m.attempt for m in peer.sent] == [2]
    with runtime.sessions() as db, db.begin():
        assert not outbox.mark_sent(db, dead, now=clock())  # attempt 1 is not its to finish
        assert outbox.mark_failed_attempt(db, dead, "late", policy=POLICY, now=clock()) is None
    row = _row(runtime, item)
    assert (row.state, row.attempts) == ("sent", 2)


def test_a_lease_expiring_on_the_last_attempt_fails_the_row(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    policy = RetryPolicy(max_attempts=1, lease_seconds=5)
    with runtime.sessions() as db, db.begin():
        assert outbox.claim_next(db, lease_seconds=5, now=clock())
    clock.advance(6)
    assert _pass(runtime, Peer(), clock, policy).released == 1
    row = _row(runtime, item)
    assert row.state == "failed" and outbox.LOST_ERROR in (row.last_error or "")


# --- administration ------------------------------------------------------------------------------


def test_an_admin_retry_requeues_a_failed_row_with_attempts_reset(runtime: Runtime) -> None:
    item = _enqueue(runtime)
    clock = Clock()
    _pass(runtime, Peer(PermanentSendError("unknown SOP class")), clock)
    with runtime.sessions() as db, db.begin():
        assert outbox.retry(db, item, actor="ada", source="10.0.0.1", now=clock())
        assert not outbox.retry(db, item, actor="ada", now=clock())  # no longer failed
    row = _row(runtime, item)
    assert (row.state, row.attempts, row.last_error) == ("pending", 0, "unknown SOP class")
    assert _pass(runtime, Peer(), clock).sent == 1
    with runtime.sessions() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.retry")).one()
        assert (event.actor, event.object_ref) == ("ada", f"outbox:{item}")
        assert outbox.counts(db) == {"pending": 0, "sending": 0, "sent": 1, "failed": 0}


def test_the_state_machine_refuses_other_transitions() -> None:
    outbox.check_transition("pending", "sending")
    for old, new in (("sent", "pending"), ("pending", "sent"), ("failed", "sent")):
        with pytest.raises(outbox.IllegalTransition):
            outbox.check_transition(old, new)


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(backoff_seconds=5, backoff_max_seconds=300, max_attempts=0)
    assert [policy.delay(n) for n in (1, 2, 3, 7, 8, 100)] == [5, 10, 20, 300, 300, 300]
    assert not policy.exhausted(10_000)  # 0: retry for ever
    with pytest.raises(ValueError):
        RetryPolicy(lease_seconds=0)


# --- transports and the sender thread -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0x0000, StatusKind.SUCCESS),
        (0xB000, StatusKind.WARNING),
        (0xB007, StatusKind.WARNING),
        (0xA700, StatusKind.TRANSIENT),
        (0xA7FF, StatusKind.TRANSIENT),
        (0x0110, StatusKind.TRANSIENT),
        (0x0213, StatusKind.TRANSIENT),
        (0xA900, StatusKind.PERMANENT),
        (0xC000, StatusKind.PERMANENT),
        (0x0122, StatusKind.PERMANENT),
        (0x0124, StatusKind.PERMANENT),
    ],
)
def test_cstore_statuses_are_classified(code: int, kind: StatusKind) -> None:
    assert classify_status(code) is kind


def _context(rt: Runtime) -> SendContext:
    return SendContext(rt.settings, BlobStore.from_settings(rt.settings), rt.sessions)


def _message(transport: str, payload: str | None = "MSH|...") -> Message:
    return Message(1, transport, "somewhere:2575", "hl7-oru", payload, None, 1)


def test_the_fhir_and_hl7_slots_call_their_senders(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, str, float]] = []
    for name in ("fhir_push", "hl7"):
        module = types.ModuleType(f"lods.exports.{name}")

        def send(destination: str, payload: str, *, timeout: float, _n: str = name) -> None:
            calls.append((_n, destination, payload, timeout))

        module.send = send  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"lods.exports.{name}", module)
    context = _context(sqlite_runtime)
    transports.dispatch(_message("fhir"), context)
    transports.dispatch(_message("hl7"), context)
    timeout = sqlite_runtime.settings.export_timeout_seconds
    assert calls == [
        ("fhir_push", "somewhere:2575", "MSH|...", timeout),
        ("hl7", "somewhere:2575", "MSH|...", timeout),
    ]
    with pytest.raises(PermanentSendError, match="no inline payload"):
        transports.dispatch(_message("hl7", payload=None), context)


def test_a_missing_transport_is_a_permanent_failure(sqlite_runtime: Runtime) -> None:
    with pytest.raises(PermanentSendError, match="no transport named 'carrier-pigeon'"):
        transports.dispatch(_message("carrier-pigeon"), _context(sqlite_runtime))
    with pytest.raises(PermanentSendError, match="not installed"):
        transports._text_sender("lods.exports.no_such_sender")


def test_the_sender_thread_delivers_and_stops(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    item = _enqueue(sqlite_runtime)
    delivered = threading.Event()

    def send(message: Message, context: SendContext) -> None:
        assert context.settings is sqlite_runtime.settings
        delivered.set()

    sender = ExportSender(sqlite_runtime, interval=0.02, send=send)
    sender.start()
    try:
        assert delivered.wait(10)
        deadline = time.monotonic() + 10
        while _row(sqlite_runtime, item).state != "sent" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sender.stop()
    assert _row(sqlite_runtime, item).state == "sent"
