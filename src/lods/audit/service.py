"""Append to the audit trail, verify its chain, and purge it past its retention period.

Each event's hash is SHA-256 over its own fields and the previous event's hash, so an
edited, deleted, inserted or reordered row breaks the chain where it happened. Appends
start by updating the single `audit_head` row, which serialises concurrent writers on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from lods.audit.models import AuditEvent, AuditHead, AuditPurgeWindow
from lods.config import MIN_AUDIT_RETENTION_DAYS
from lods.db import utcnow

GENESIS_HASH = "0" * 64


def _canonical_time(value: datetime) -> str:
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
            _canonical_time(occurred_at),
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


def _stored_hash(ev: AuditEvent) -> str:
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


@dataclass(frozen=True)
class ChainProblem:
    """One place where the stored trail disagrees with its chain."""

    seq: int | None
    event_id: int | None
    kind: str  # "edited", "deleted", "reordered", "inserted", "tip"
    message: str


def _iter_events(db: Session, batch: int = 5000) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        rows = db.scalars(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
        db.expunge_all()


def verify(db: Session) -> tuple[int, list[ChainProblem]]:
    """Walk the trail in insertion order; return the number of events and every problem.

    Rows are read in primary-key (insertion) order. An edited row no longer matches its
    own hash; a deleted row leaves a gap in `seq` and a broken link; a reordered row
    (its content swapped with another's) shows `seq` out of order and broken links.
    """
    head = db.get(AuditHead, 1)
    if head is None:
        return 0, [ChainProblem(None, None, "tip", "the audit head row is missing")]
    problems: list[ChainProblem] = []
    expected_seq = head.anchor_seq + 1
    expected_prev = head.anchor_hash
    count = 0
    last_seq = head.anchor_seq
    last_hash = head.anchor_hash
    for ev in _iter_events(db):
        count += 1
        if _stored_hash(ev) != ev.hash:
            problems.append(
                ChainProblem(ev.seq, ev.id, "edited", f"event {ev.seq} was changed after it was written")
            )
        if ev.seq < expected_seq:
            problems.append(
                ChainProblem(ev.seq, ev.id, "reordered", f"event {ev.seq} is out of order (expected {expected_seq})")
            )
        elif ev.seq > expected_seq:
            missing = ev.seq - expected_seq
            problems.append(
                ChainProblem(
                    ev.seq,
                    ev.id,
                    "deleted",
                    f"{missing} event(s) before event {ev.seq} are missing "
                    f"(seq {expected_seq}..{ev.seq - 1})",
                )
            )
        elif ev.prev_hash != expected_prev:
            problems.append(
                ChainProblem(ev.seq, ev.id, "inserted", f"event {ev.seq} does not link to its predecessor")
            )
        expected_seq = max(expected_seq, ev.seq) + 1
        expected_prev = ev.hash
        last_seq, last_hash = ev.seq, ev.hash
    if last_seq != head.seq or last_hash != head.hash:
        problems.append(
            ChainProblem(
                head.seq,
                None,
                "deleted",
                f"the trail ends at event {last_seq} but the chain head is event {head.seq}",
            )
        )
    return count, problems


def purge(db: Session, *, actor: str, retention_days: int, now: datetime | None = None) -> int:
    """Delete events older than the retention period, re-anchoring the chain; return count.

    Refuses a retention below the legal minimum. The purge itself is audited, and the
    new anchor (seq and hash of the last purged event) lets `verify` check what remains.
    """
    if retention_days < MIN_AUDIT_RETENTION_DAYS:
        raise ValueError(f"retention must be at least {MIN_AUDIT_RETENTION_DAYS} days")
    now = now or utcnow()
    cutoff = now - timedelta(days=retention_days)
    last = db.scalars(
        select(AuditEvent).where(AuditEvent.occurred_at < cutoff).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    if last is None:
        return 0
    db.add(AuditPurgeWindow(purge_before=cutoff, created_at=now, actor=actor))
    db.flush()
    result = db.execute(delete(AuditEvent).where(AuditEvent.seq <= last.seq))
    db.execute(
        update(AuditHead).where(AuditHead.id == 1).values(anchor_seq=last.seq, anchor_hash=last.hash)
    )
    removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    record(
        db,
        actor=actor,
        action="audit.purge",
        detail={"removed": removed, "before": cutoff.isoformat(), "through_seq": last.seq},
    )
    return removed
