"""The outbox: every send is a row before it is tried and after every attempt.

States (checked here, in one place):

    pending ──claim──▶ sending ──success──────────────▶ sent
       ▲                  │ ──transient error──▶ pending (attempts+1, back-off)
       │                  │ ──permanent error / too many attempts──▶ failed
       │                  └─ lease expired (sender died) ──▶ pending (retried at once)
       └──────────── failed ──admin retry (attempts reset)

- **Enqueue is idempotent**: `dedupe_key` is unique; enqueueing the same thing for the same
  place again returns the existing row (INSERT … ON CONFLICT DO NOTHING on both SQLite and
  PostgreSQL, so two racing callers cannot make two rows).
- **Claim by compare-and-set**: a due pending row becomes `sending` by an UPDATE that
  repeats the expected state and must change one row; it counts the attempt and sets
  `lease_until`. The attempt number is the fencing token: only the sender that made
  attempt n can finish attempt n, so a sender that lost its lease cannot overwrite the
  outcome of the one that took over.
- **Nothing is lost**: a transient failure puts the row back to pending with
  `next_attempt_at` = now + `backoff_seconds * 2**(attempts-1)`, at most
  `backoff_max_seconds`; a sender that dies mid-send leaves a `sending` row whose lease
  expires and which is then retried. After `max_attempts` attempts (0: never) or on a
  permanent error the row is `failed`, an alert is raised for admins, and it stays until
  an admin retries it.
- **Delivery is at least once**: a sender that dies after the peer stored the payload
  but before the row is marked sent sends it again. DICOM payloads keep their SOP
  Instance UID, so a PACS stores such a repeat as the same instance.

Functions take a `Session` whose transaction the caller owns; the loop that claims, sends
and records (`lods.exports.sender.deliver_due`) keeps those transactions short and holds
none while a peer is slow.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Result, and_, func, not_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lods.alerts.service import raise_alert
from lods.audit import service as audit
from lods.config import Settings
from lods.db import utcnow
from lods.exports.errors import SendError
from lods.exports.models import OutboxItem, OutboxState
from lods.imaging.models import Patient, Study

PENDING = OutboxState.PENDING.value
SENDING = OutboxState.SENDING.value
SENT = OutboxState.SENT.value
FAILED = OutboxState.FAILED.value
STATES = (PENDING, SENDING, SENT, FAILED)

#: Longest error text kept on a row.
MAX_ERROR_CHARS = 4000
#: Most rows one `list_items` page returns.
MAX_PAGE = 1000
#: What a row gets when its sender vanished during an attempt.
LOST_ERROR = "the sender stopped during the attempt (lease expired)"
#: The alert kind raised for a send that failed for good.
ALERT_KIND = "export.failed"

_TRANSITIONS = {
    (PENDING, SENDING),
    (SENDING, SENT),
    (SENDING, PENDING),
    (SENDING, FAILED),
    (FAILED, PENDING),
}


class IllegalTransition(ValueError):
    """An outbox state change the state machine does not allow."""


def check_transition(old: str, new: str) -> None:
    """Raise `IllegalTransition` unless `old` → `new` is an allowed outbox state change."""
    if (old, new) not in _TRANSITIONS:
        raise IllegalTransition(f"an outbox row cannot go from {old!r} to {new!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a send is retried."""

    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 900.0
    #: Attempts before a transiently failing send is marked failed; 0 = retry for ever.
    max_attempts: int = 100
    lease_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.backoff_seconds < 0 or self.backoff_max_seconds < 0:
            raise ValueError("back-off delays are not negative")
        if self.max_attempts < 0:
            raise ValueError("max_attempts is 0 (no limit) or more")
        if self.lease_seconds <= 0:
            raise ValueError("a lease lasts more than 0 seconds")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            backoff_seconds=settings.export_backoff_seconds,
            backoff_max_seconds=settings.export_backoff_max_seconds,
            max_attempts=settings.export_max_attempts,
            lease_seconds=settings.export_lease_seconds,
        )

    def delay(self, attempts: int) -> float:
        """Return the wait before the next try after `attempts` tries: doubling, capped."""
        exponent = min(max(attempts - 1, 0), 62)
        return float(min(self.backoff_max_seconds, self.backoff_seconds * 2**exponent))

    def exhausted(self, attempts: int) -> bool:
        """Return whether `attempts` tries are all a send gets."""
        return self.max_attempts > 0 and attempts >= self.max_attempts


@dataclass(frozen=True)
class Message:
    """A claimed outbox row as plain values: what a transport needs to send it."""

    id: int
    transport: str
    destination: str
    what: str
    payload: str | None
    payload_sha256: str | None
    #: This attempt's number, from 1; also the token that finishes it.
    attempt: int
    study_id: int | None = None
    report_id: int | None = None


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        text = str(error).strip() or type(error).__name__
    else:
        text = error.strip() or "unknown error"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# --- enqueue ----------------------------------------------------------------------------------


def enqueue(
    db: Session,
    *,
    transport: str,
    destination: str,
    what: str,
    dedupe_key: str,
    payload: str | None = None,
    payload_sha256: str | None = None,
    study_id: int | None = None,
    report_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Return the id of the row for `dedupe_key`, adding it (pending, due now) if new.

    The payload is either inline text (`payload`: FHIR JSON, HL7) or a blob in the store
    (`payload_sha256`: a DICOM file), never both.
    """
    if not transport or len(transport) > 16:
        raise ValueError("a transport name is 1 to 16 characters")
    if not destination or len(destination) > 300:
        raise ValueError("a destination is 1 to 300 characters")
    if not what or len(what) > 40:
        raise ValueError("`what` is 1 to 40 characters")
    if not dedupe_key or len(dedupe_key) > 300:
        raise ValueError("a dedupe key is 1 to 300 characters")
    if (payload is None) == (payload_sha256 is None):
        raise ValueError("give the payload inline or as a blob SHA-256, not both or neither")
    now = _now(now)
    values = {
        "transport": transport,
        "destination": destination,
        "what": what,
        "dedupe_key": dedupe_key,
        "payload": payload,
        "payload_sha256": payload_sha256,
        "study_fk": study_id,
        "report_fk": report_id,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        db.execute(
            postgresql.insert(OutboxItem)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )
    elif dialect == "sqlite":
        db.execute(
            sqlite.insert(OutboxItem)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )
    else:  # pragma: no cover - Lods runs on SQLite and PostgreSQL only
        if db.scalar(select(OutboxItem.id).where(OutboxItem.dedupe_key == dedupe_key)) is None:
            db.add(OutboxItem(**values))
            db.flush()
    item_id = db.scalar(select(OutboxItem.id).where(OutboxItem.dedupe_key == dedupe_key))
    assert item_id is not None
    return int(item_id)


# --- claim and finish ---------------------------------------------------------------------------


def _due(now: datetime) -> list[ColumnElement[bool]]:
    return [OutboxItem.state == PENDING, OutboxItem.next_attempt_at <= now]


def _message(row: Any) -> Message:
    return Message(
        id=row.id,
        transport=row.transport,
        destination=row.destination,
        what=row.what,
        payload=row.payload,
        payload_sha256=row.payload_sha256,
        attempt=row.attempts,
        study_id=row.study_fk,
        report_id=row.report_fk,
    )


_MESSAGE_COLUMNS = (
    OutboxItem.id,
    OutboxItem.transport,
    OutboxItem.destination,
    OutboxItem.what,
    OutboxItem.payload,
    OutboxItem.payload_sha256,
    OutboxItem.attempts,
    OutboxItem.study_fk,
    OutboxItem.report_fk,
)


def claim(
    db: Session, item_id: int, *, lease_seconds: float, now: datetime | None = None
) -> Message | None:
    """Claim one due pending row (→ sending, attempt counted); None when it is not due or
    another sender took it first."""
    check_transition(PENDING, SENDING)
    if lease_seconds <= 0:
        raise ValueError("a lease lasts more than 0 seconds")
    now = _now(now)
    row = db.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item_id, *_due(now))
        .values(
            state=SENDING,
            attempts=OutboxItem.attempts + 1,
            lease_until=now + timedelta(seconds=lease_seconds),
        )
        .returning(*_MESSAGE_COLUMNS)
    ).one_or_none()
    return None if row is None else _message(row)


def claim_next(
    db: Session,
    *,
    lease_seconds: float,
    now: datetime | None = None,
    skip: Collection[tuple[str, str]] = (),
    batch: int = 8,
) -> Message | None:
    """Claim the oldest due row, or return None.

    `skip` lists (transport, destination) pairs not to try now, e.g. a PACS that just
    failed in this pass: its other rows wait for the next pass instead of each waiting
    for the same time-out. On PostgreSQL candidates are locked `FOR UPDATE SKIP LOCKED`,
    so concurrent senders pick different rows.
    """
    now = _now(now)
    skip_locked = db.get_bind().dialect.name == "postgresql"
    query = (
        select(OutboxItem.id)
        .where(*_due(now))
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(1 if skip_locked else batch)
    )
    for transport, destination in skip:
        query = query.where(
            not_(and_(OutboxItem.transport == transport, OutboxItem.destination == destination))
        )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    for _ in range(4):
        candidates = list(db.scalars(query))
        if not candidates:
            return None
        for item_id in candidates:
            claimed = claim(db, item_id, lease_seconds=lease_seconds, now=now)
            if claimed is not None:
                return claimed
    return None


def _ours(message: Message) -> list[ColumnElement[bool]]:
    return [
        OutboxItem.id == message.id,
        OutboxItem.state == SENDING,
        OutboxItem.attempts == message.attempt,
    ]


def mark_sent(db: Session, message: Message, *, now: datetime | None = None) -> bool:
    """Record that attempt `message.attempt` delivered; False when the attempt is no longer
    ours (its lease expired and another sender took the row over)."""
    check_transition(SENDING, SENT)
    now = _now(now)
    changed = db.execute(
        update(OutboxItem).where(*_ours(message)).values(state=SENT, sent_at=now, lease_until=None)
    )
    if _rowcount(changed) != 1:
        return False
    _audit(db, message, action="export.sent", outcome="success")
    return True


def mark_failed_attempt(
    db: Session,
    message: Message,
    error: BaseException | str,
    *,
    policy: RetryPolicy,
    permanent: bool | None = None,
    now: datetime | None = None,
) -> str | None:
    """Record a failed attempt and return the row's new state (pending or failed); None
    when the attempt is no longer ours.

    A `SendError` says itself whether it is permanent; any other error is transient
    unless `permanent` says otherwise. A transient failure waits for the back-off, or
    fails the row when it was the last attempt the policy allows.
    """
    now = _now(now)
    if permanent is None:
        permanent = isinstance(error, SendError) and error.permanent
    text = _error_text(error)
    if permanent:
        new_state, reason = FAILED, text
    elif policy.exhausted(message.attempt):
        new_state, reason = FAILED, f"gave up after {message.attempt} attempts: {text}"
    else:
        new_state, reason = PENDING, text
    check_transition(SENDING, new_state)
    values: dict[str, Any] = {"state": new_state, "lease_until": None, "last_error": reason}
    if new_state == PENDING:
        values["next_attempt_at"] = now + timedelta(seconds=policy.delay(message.attempt))
    changed = db.execute(update(OutboxItem).where(*_ours(message)).values(**values))
    if _rowcount(changed) != 1:
        return None
    if new_state == FAILED:
        _failed(db, message, reason, now=now)
    return new_state


def _failed(db: Session, message: Message, reason: str, *, now: datetime) -> None:
    """Tell admins: one open alert per destination, counting repeats, and an audit event."""
    raise_alert(
        db,
        kind=ALERT_KIND,
        subject=f"{message.transport}:{message.destination}"[:100],
        title=f"A {message.what} could not be sent ({message.transport} {message.destination})",
        detail=f"outbox row {message.id}: {reason}"[:2000],
        severity="warning",
        audience=("admin",),
        now=now,
    )
    _audit(db, message, action="export.failed", outcome="failure", reason=reason)


def _subject(db: Session, study_id: int | None) -> tuple[str | None, str | None]:
    """Return (Study Instance UID, patient id) of a study, for the audit trail."""
    if study_id is None:
        return None, None
    found = db.execute(
        select(Study.study_uid, Patient.patient_id)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(Study.id == study_id)
    ).one_or_none()
    return (None, None) if found is None else (found[0], found[1])


def _audit(
    db: Session, message: Message, *, action: str, outcome: str, reason: str | None = None
) -> None:
    """Record that data about a patient left Lods (or could not)."""
    study_uid, patient_id = _subject(db, message.study_id)
    detail: dict[str, Any] = {
        "transport": message.transport,
        "destination": message.destination,
        "what": message.what,
        "attempt": message.attempt,
    }
    if reason is not None:
        detail["error"] = reason[:500]
    audit.record(
        db,
        actor="system",
        action=action,
        outcome=outcome,
        patient_id=patient_id,
        study_uid=study_uid,
        object_ref=f"outbox:{message.id}",
        detail=detail,
    )


def release_expired(db: Session, *, policy: RetryPolicy, now: datetime | None = None) -> int:
    """Return how many `sending` rows whose lease expired (their sender died) were put
    back to pending, due at once; one that had its last allowed attempt is failed."""
    now = _now(now)
    expired = [OutboxItem.state == SENDING, OutboxItem.lease_until < now]
    released = 0
    if policy.max_attempts > 0:
        check_transition(SENDING, FAILED)
        lost = db.execute(
            select(*_MESSAGE_COLUMNS).where(*expired, OutboxItem.attempts >= policy.max_attempts)
        ).all()
        for row in lost:
            message = _message(row)
            reason = f"gave up after {message.attempt} attempts: {LOST_ERROR}"
            changed = db.execute(
                update(OutboxItem)
                .where(*_ours(message), OutboxItem.lease_until < now)
                .values(state=FAILED, lease_until=None, last_error=reason)
            )
            if _rowcount(changed) == 1:
                _failed(db, message, reason, now=now)
                released += 1
    check_transition(SENDING, PENDING)
    result = db.execute(
        update(OutboxItem)
        .where(*expired)
        .values(state=PENDING, lease_until=None, next_attempt_at=now, last_error=LOST_ERROR)
    )
    return released + _rowcount(result)


# --- administration -------------------------------------------------------------------------------


def retry(
    db: Session, item_id: int, *, actor: str, source: str = "", now: datetime | None = None
) -> bool:
    """Put a failed row back in the queue, due now, attempts reset; False if not failed."""
    check_transition(FAILED, PENDING)
    now = _now(now)
    row = db.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item_id, OutboxItem.state == FAILED)
        .values(state=PENDING, attempts=0, next_attempt_at=now, lease_until=None)
        .returning(*_MESSAGE_COLUMNS)
    ).one_or_none()
    if row is None:
        return False
    message = _message(row)
    study_uid, patient_id = _subject(db, message.study_id)
    audit.record(
        db,
        actor=actor,
        action="export.retry",
        patient_id=patient_id,
        study_uid=study_uid,
        object_ref=f"outbox:{item_id}",
        source=source,
        detail={"transport": message.transport, "destination": message.destination},
    )
    return True


def get_item(db: Session, item_id: int) -> OutboxItem | None:
    return db.get(OutboxItem, item_id)


def counts(db: Session) -> dict[str, int]:
    """Return how many rows are in each state (every state present, 0 when none)."""
    rows = db.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state))
    found = {state: int(count) for state, count in rows}
    return {state: int(found.get(state, 0)) for state in STATES}


def list_items(
    db: Session,
    *,
    states: Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[OutboxItem]:
    """Return rows, newest first, optionally only those in `states`."""
    query = select(OutboxItem).order_by(OutboxItem.id.desc())
    if states:
        query = query.where(OutboxItem.state.in_(list(states)))
    return list(db.scalars(query.limit(max(1, min(limit, MAX_PAGE))).offset(max(0, offset))))
