"""Append to the audit trail, read and verify it, and purge it past its retention period.

Each event's hash is SHA-256 over its own fields and the previous event's hash, so an
edited, deleted or inserted row breaks the chain where it happened; rows whose contents
were swapped keep valid hashes but sit out of storage order, which `verify` checks too.
Appends start by updating the single `audit_head` row, which serialises concurrent
writers on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, Row, create_engine, delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from lods.audit.models import AuditEvent, AuditHead, AuditPurgeWindow
from lods.config import MIN_AUDIT_RETENTION_DAYS
from lods.db import utcnow

GENESIS_HASH = "0" * 64
#: The most events one page of `list_events` returns.
MAX_PAGE = 500


def canonical_time(value: datetime) -> str:
    """Return the timestamp text the chain hash covers (ISO 8601, microseconds, UTC)."""
    return value.isoformat(timespec="microseconds")


def event_hash(
    *,
    prev_hash: str,
    seq: int,
    occurred_at: datetime,
    actor: str,
    action: str,
    outcome: str,
    patient_id: str | None,
    study_uid: str | None,
    object_ref: str | None,
    source: str,
    detail: str,
) -> str:
    """Return the chain hash of one event given its fields and its predecessor's hash."""
    body = json.dumps(
        [
            prev_hash,
            seq,
            canonical_time(occurred_at),
            actor,
            action,
            outcome,
            patient_id,
            study_uid,
            object_ref,
            source,
            detail,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _stored_hash(ev: AuditEvent | Row[Any]) -> str:
    return event_hash(
        prev_hash=ev.prev_hash,
        seq=ev.seq,
        occurred_at=ev.occurred_at,
        actor=ev.actor,
        action=ev.action,
        outcome=ev.outcome,
        patient_id=ev.patient_id,
        study_uid=ev.study_uid,
        object_ref=ev.object_ref,
        source=ev.source,
        detail=ev.detail,
    )


def record(
    db: Session,
    *,
    actor: str,
    action: str,
    outcome: str = "success",
    patient_id: str | None = None,
    study_uid: str | None = None,
    object_ref: str | None = None,
    source: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction and return it.

    `actor` is a user name, `dicom:<AE title>` or `system`; `action` is a dotted verb such
    as `auth.login`, `study.view`, `user.create`; `source` is the client address.
    """
    head = db.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq + 1)
        .returning(AuditHead.seq, AuditHead.hash)
    ).one()
    seq, prev_hash = int(head[0]), str(head[1])
    # Taken while holding the head, so time order and chain order agree.
    occurred_at = utcnow()
    detail_json = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False, default=str)
    fields: dict[str, Any] = {
        "seq": seq,
        "occurred_at": occurred_at,
        "actor": actor[:100],
        "action": action,
        "outcome": outcome,
        "patient_id": patient_id,
        "study_uid": study_uid,
        "object_ref": object_ref,
        "source": source[:100],
        "detail": detail_json,
    }
    digest = event_hash(prev_hash=prev_hash, **fields)
    event = AuditEvent(prev_hash=prev_hash, hash=digest, **fields)
    db.add(event)
    db.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=digest))
    db.flush()
    return event


# --- verification --------------------------------------------------------------------------

#: What `verify` can find wrong with an event.
ProblemKind = Literal["edited", "deleted", "reordered", "inserted"]


@dataclass(frozen=True)
class ChainProblem:
    """One place where the stored trail disagrees with its chain."""

    seq: int | None
    event_id: int | None
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str
    anchor_seq: int
    anchor_hash: str


def _read_head(db: Session) -> _Head | None:
    # Read columns, not the ORM object: an identity-map copy could be stale.
    row = db.execute(
        select(AuditHead.seq, AuditHead.hash, AuditHead.anchor_seq, AuditHead.anchor_hash).where(
            AuditHead.id == 1
        )
    ).one_or_none()
    return None if row is None else _Head(int(row[0]), str(row[1]), int(row[2]), str(row[3]))


def _rows_by_seq(db: Session, *, up_to: int, batch: int = 5000) -> Iterator[Row[Any]]:
    table = AuditEvent.__table__
    last: int | None = None
    while True:
        query = select(table).where(table.c.seq <= up_to).order_by(table.c.seq).limit(batch)
        if last is not None:
            query = query.where(table.c.seq > last)
        rows = db.execute(query).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def _seqs_by_id(
    db: Session, *, after: int, up_to: int, batch: int = 20000
) -> Iterator[Row[int, int]]:
    last_id = 0
    while True:
        rows = db.execute(
            select(AuditEvent.id, AuditEvent.seq)
            .where(AuditEvent.id > last_id, AuditEvent.seq > after, AuditEvent.seq <= up_to)
            .order_by(AuditEvent.id)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id


class _ChainWalk:
    """Follows the events in `seq` order and notes edited, deleted and inserted ones."""

    def __init__(self, head: _Head) -> None:
        self.head = head
        self.count = 0
        self.problems: list[ChainProblem] = []
        self.expected_seq = head.anchor_seq + 1
        self.prev_hash = head.anchor_hash
        self.prev: tuple[int, int] | None = None  # (seq, id) of the previous event

    def _note(self, kind: ProblemKind, at: tuple[int, int | None], message: str) -> None:
        if any(p.seq == at[0] and p.kind == kind for p in self.problems[-2:]):
            return  # one event, one problem of a kind: the first description stands
        self.problems.append(ChainProblem(at[0], at[1], kind, message))

    def step(self, ev: Row[Any]) -> None:
        self.count += 1
        at = (ev.seq, ev.id)
        if ev.seq <= self.head.anchor_seq:
            start = self.head.anchor_seq + 1
            self._note("inserted", at, f"event {ev.seq} lies before the chain's start ({start})")
            return
        if _stored_hash(ev) != ev.hash:
            self._note("edited", at, f"event {ev.seq} was changed after it was written")
        if ev.seq > self.expected_seq:
            gap = _missing(self.expected_seq, ev.seq - 1)
            self._note("deleted", (self.expected_seq, None), gap)
        elif ev.prev_hash != self.prev_hash:
            self._broken_link(ev)
        self.expected_seq, self.prev_hash, self.prev = ev.seq + 1, ev.hash, at

    def _broken_link(self, ev: Row[Any]) -> None:
        # `ev` holds the hash its predecessor had when `ev` was written; the stored
        # predecessor has another, so the predecessor was rewritten, hash and all.
        if self.prev is None:
            msg = f"event {ev.seq} does not continue from the chain's anchor: one was changed"
            self._note("edited", (ev.seq, ev.id), msg)
        else:
            msg = f"event {self.prev[0]} was rewritten: event {ev.seq} was chained to another"
            self._note("edited", self.prev, msg)

    def finish(self) -> None:
        if self.expected_seq <= self.head.seq:
            gap = _missing(self.expected_seq, self.head.seq)
            self._note("deleted", (self.expected_seq, None), gap)
        elif self.prev is not None and self.prev_hash != self.head.hash:
            msg = f"event {self.prev[0]} was rewritten: the chain head holds another hash"
            self._note("edited", self.prev, msg)


def _missing(first: int, last: int) -> str:
    if first == last:
        return f"event {first} is missing (deleted)"
    return f"events {first} to {last} are missing (deleted)"


def _beyond_head(db: Session) -> list[ChainProblem]:
    # One statement, so the head and the events are read from the same snapshot.
    head_seq = select(AuditHead.seq).where(AuditHead.id == 1).scalar_subquery()
    rows = db.execute(
        select(AuditEvent.seq, AuditEvent.id)
        .where(AuditEvent.seq > head_seq)
        .order_by(AuditEvent.seq)
        .limit(1000)
    ).all()
    message = "event {} lies beyond the chain head: Lods did not write it"
    return [ChainProblem(seq, id_, "inserted", message.format(seq)) for seq, id_ in rows]


def _out_of_place(seqs: Sequence[int]) -> list[int]:
    """Return the positions outside one longest increasing run of `seqs`: the moved rows.

    Rows are stored in `seq` order, so in a trail nobody reordered the `seq` of the rows,
    read in storage (id) order, only ever increases.
    """
    tail_values: list[int] = []
    tail_positions: list[int] = []
    parent = array("q", [-1]) * len(seqs)
    for pos, seq in enumerate(seqs):
        k = bisect_left(tail_values, seq)
        parent[pos] = tail_positions[k - 1] if k else -1
        if k == len(tail_values):
            tail_values.append(seq)
            tail_positions.append(pos)
        else:
            tail_values[k], tail_positions[k] = seq, pos
    on_run = bytearray(len(seqs))
    pos = tail_positions[-1] if tail_positions else -1
    while pos >= 0:
        on_run[pos] = 1
        pos = parent[pos]
    return [p for p in range(len(seqs)) if not on_run[p]]


def _reordered(db: Session, head: _Head) -> list[ChainProblem]:
    """Return a problem for each event stored out of its place in the chain."""
    last = None
    for row in _seqs_by_id(db, after=head.anchor_seq, up_to=head.seq):
        if last is not None and row.seq < last:
            break
        last = row.seq
    else:
        return []  # the common case, checked in constant memory
    ids, seqs = array("q"), array("q")
    for row in _seqs_by_id(db, after=head.anchor_seq, up_to=head.seq):
        ids.append(row.id)
        seqs.append(row.seq)
    return [
        ChainProblem(
            seqs[p],
            ids[p],
            "reordered",
            f"event {seqs[p]} is stored out of order (row {ids[p]}, after event "
            f"{seqs[p - 1] if p else head.anchor_seq})",
        )
        for p in _out_of_place(seqs)
    ]


def verify(db: Session) -> tuple[int, list[ChainProblem]]:
    """Return the number of events checked and every problem found, ordered by seq.

    The chain is walked in `seq` order: an edited event no longer matches its own hash;
    an event rewritten together with its hash breaks its successor's link (or the
    head's); a deleted one leaves a gap. Reordering rows (swapping their contents)
    keeps every hash valid, so storage order is checked too. Events appended while
    this runs are not checked: only those up to the head read at the start.
    """
    head = _read_head(db)
    if head is None:
        return 0, [ChainProblem(None, None, "deleted", "the audit chain head row is missing")]
    walk = _ChainWalk(head)
    for ev in _rows_by_seq(db, up_to=head.seq):
        walk.step(ev)
    walk.finish()
    problems = walk.problems + _reordered(db, head) + _beyond_head(db)
    problems.sort(key=lambda p: (p.seq if p.seq is not None else -1, p.kind))
    return walk.count, problems


@contextmanager
def unlocked_reader(engine: Engine) -> Iterator[Session]:
    """Yield a read-only session that does not hold SQLite's write lock while it reads.

    Lods' engines begin every SQLite transaction with BEGIN IMMEDIATE; a long read such
    as `verify` or an export must not block DICOM intake meanwhile. With WAL, plain
    reads need no lock; each statement sees its own snapshot, which the chain checks
    allow for by bounding their reads by the head.
    """
    if engine.dialect.name != "sqlite":
        with Session(engine) as session:
            try:
                yield session
            finally:
                session.rollback()
        return
    reader = create_engine(
        engine.url, poolclass=NullPool, connect_args={"check_same_thread": False, "timeout": 30}
    )
    try:
        with Session(reader) as session:
            yield session
    finally:
        reader.dispose()


def verify_audited(
    db: Session, *, engine: Engine, actor: str, source: str = ""
) -> tuple[int, list[ChainProblem]]:
    """Return `verify`'s result, read outside `db`'s transaction, after auditing the check.

    The walk runs in an `unlocked_reader`: on a long trail it must not hold SQLite's
    write lock (DICOM intake would wait on it); only the audit event is written in `db`.
    """
    with unlocked_reader(engine) as reader:
        count, problems = verify(reader)
    record(
        db,
        actor=actor,
        action="audit.verify",
        source=source,
        detail={"events": count, "problems": len(problems)},
    )
    return count, problems


# --- retention -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgePlan:
    """What a purge with a given retention would remove."""

    cutoff: datetime
    count: int
    through_seq: int | None


def plan_purge(db: Session, *, retention_days: int, now: datetime | None = None) -> PurgePlan:
    """Return which events a purge would remove: all before the first one to keep.

    Only a run of the oldest events goes, so the rest stays one unbroken chain; an old
    event that comes after a newer one (a clock stepped back) waits for the next purge.
    """
    if retention_days < MIN_AUDIT_RETENTION_DAYS:
        raise ValueError(f"retention must be at least {MIN_AUDIT_RETENTION_DAYS} days")
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    first_kept = db.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.occurred_at >= cutoff))
    removable = [AuditEvent.seq < first_kept] if first_kept is not None else []
    count, through = db.execute(
        select(func.count(), func.max(AuditEvent.seq)).where(*removable)
    ).one()
    return PurgePlan(cutoff=cutoff, count=int(count), through_seq=through)


def purge(db: Session, *, actor: str, retention_days: int, now: datetime | None = None) -> int:
    """Delete events older than the retention period, re-anchoring the chain; return count.

    Refuses a retention below the legal minimum. The purge itself is audited, and the
    new anchor (seq and hash of the last purged event) lets `verify` check what remains.
    """
    now = now or utcnow()
    plan = plan_purge(db, retention_days=retention_days, now=now)
    if plan.through_seq is None:
        return 0
    last_hash = db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == plan.through_seq))
    db.add(AuditPurgeWindow(purge_before=plan.cutoff, created_at=now, actor=actor))
    db.flush()
    result = db.execute(delete(AuditEvent).where(AuditEvent.seq <= plan.through_seq))
    db.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(anchor_seq=plan.through_seq, anchor_hash=last_hash)
    )
    removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    record(
        db,
        actor=actor,
        action="audit.purge",
        detail={
            "removed": removed,
            "before": plan.cutoff.isoformat(),
            "through_seq": plan.through_seq,
            "retention_days": retention_days,
        },
    )
    return removed


# --- reading and export --------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Which events to read; a field left at None matches everything; `until` is exclusive."""

    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        """Return the SQL conditions this filter stands for."""
        found: list[ColumnElement[bool]] = []
        for column, value in (
            (AuditEvent.actor, self.actor),
            (AuditEvent.action, self.action),
            (AuditEvent.outcome, self.outcome),
            (AuditEvent.patient_id, self.patient_id),
            (AuditEvent.study_uid, self.study_uid),
        ):
            if value:
                found.append(column == value)
        if self.since is not None:
            found.append(AuditEvent.occurred_at >= self.since)
        if self.until is not None:
            found.append(AuditEvent.occurred_at < self.until)
        return found

    def described(self) -> dict[str, str]:
        """Return the filter's set fields as strings, for the audit trail of a read."""
        return {
            key: value.isoformat() if isinstance(value, datetime) else str(value)
            for key, value in asdict(self).items()
            if value
        }


def list_events(
    db: Session, *, filters: EventFilter | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[AuditEvent], int]:
    """Return one page of matching events, newest first, and how many match in all."""
    conditions = (filters or EventFilter()).conditions()
    total = db.scalar(select(func.count()).select_from(AuditEvent).where(*conditions)) or 0
    rows = db.scalars(
        select(AuditEvent)
        .where(*conditions)
        .order_by(AuditEvent.seq.desc())
        .limit(max(0, min(limit, MAX_PAGE)))
        .offset(max(0, offset))
    ).all()
    return list(rows), int(total)


def iter_events(
    db: Session, *, filters: EventFilter | None = None, batch: int = 2000
) -> Iterator[AuditEvent]:
    """Yield every matching event in chain order, a batch at a time (for exports)."""
    conditions = (filters or EventFilter()).conditions()
    last_seq: int | None = None
    while True:
        query = select(AuditEvent).where(*conditions).order_by(AuditEvent.seq).limit(batch)
        if last_seq is not None:
            query = query.where(AuditEvent.seq > last_seq)
        rows = db.scalars(query).all()
        if not rows:
            return
        yield from rows
        last_seq = rows[-1].seq
        db.expunge_all()
