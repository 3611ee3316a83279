"""The durable job queue: enqueue, claim, heartbeat, complete, fail, cancel, reap, retry.

The `jobs` table is the queue. Every state change is a compare-and-set: an UPDATE whose
WHERE clause repeats the state (and, for a running job, the lease owner) it expects, and
which counts only when it changed exactly one row. Two workers racing for one job, a
worker finishing a job that was just cancelled, or a worker that lost its lease to the
reaper therefore cannot both win. Functions take a `Session` whose transaction the caller
owns; keep those transactions short (SQLite takes its write lock at BEGIN).

Everything a worker needs travels as plain values (`ClaimedJob`, ids), so the same table
drives the embedded executor and, later, Celery tasks that call `claim` with a job id.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Result, func, select, update
from sqlalchemy.orm import Session

# Every table, so the job table's foreign keys resolve in a process that imports only us.
import lods.models  # noqa: F401
from lods.audit.service import record
from lods.db import utcnow
from lods.jobs.models import Job, JobState
from lods.jobs.states import check_transition

QUEUED = JobState.QUEUED.value
RUNNING = JobState.RUNNING.value
SUCCEEDED = JobState.SUCCEEDED.value
FAILED = JobState.FAILED.value
CANCELLED = JobState.CANCELLED.value

#: What `reap_expired` writes on a job whose worker vanished.
LOST_ERROR = "worker stopped renewing its lease"
#: Longest error text kept on a job.
MAX_ERROR_CHARS = 8000
#: Most jobs one `list_jobs` page returns.
MAX_PAGE = 1000
#: The owner column's width.
MAX_OWNER_CHARS = 100


@dataclass(frozen=True)
class ClaimedJob:
    """A job claimed by one worker, as plain values (picklable, no session attached)."""

    id: int
    kind: str
    version_id: int | None
    deployment_id: int | None
    study_id: int | None
    inputs: dict[str, Any]
    #: This run's attempt number, from 1.
    attempt: int
    max_attempts: int
    timeout_seconds: float
    lease_owner: str


_CLAIMED_COLUMNS = (
    Job.id,
    Job.kind,
    Job.version_fk,
    Job.deployment_fk,
    Job.study_fk,
    Job.inputs,
    Job.attempts,
    Job.max_attempts,
    Job.timeout_seconds,
    Job.lease_owner,
)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _lease_until(now: datetime, lease_seconds: float) -> datetime:
    if lease_seconds <= 0:
        raise ValueError("a lease lasts more than 0 seconds")
    return now + timedelta(seconds=lease_seconds)


def _check_owner(owner: str) -> str:
    if not owner or len(owner) > MAX_OWNER_CHARS:
        raise ValueError(f"a lease owner is 1 to {MAX_OWNER_CHARS} characters")
    return owner


def _error_text(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"


def backoff_delay(attempts: int, *, backoff_seconds: float, backoff_max_seconds: float) -> float:
    """Return the wait before the next try after `attempts` tries: doubling, capped."""
    exponent = min(max(attempts - 1, 0), 62)
    return float(min(backoff_max_seconds, backoff_seconds * 2**exponent))


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


def _owned_by(job_id: int, owner: str) -> list[ColumnElement[bool]]:
    return [Job.id == job_id, Job.state == RUNNING, Job.lease_owner == owner]


# --- enqueue and claim ---------------------------------------------------------------------


def enqueue(
    db: Session,
    *,
    kind: str = "solution",
    version_id: int | None,
    deployment_id: int | None,
    study_id: int | None = None,
    inputs: dict[str, Any],
    max_attempts: int,
    timeout_seconds: float,
    priority: int = 100,
    now: datetime | None = None,
) -> int:
    """Add a queued job, claimable at once, and return its id."""
    if not kind or len(kind) > 32:
        raise ValueError("a job kind is 1 to 32 characters")
    if max_attempts < 1:
        raise ValueError("a job needs at least one attempt")
    if timeout_seconds <= 0:
        raise ValueError("a job's time-out is more than 0 seconds")
    now = _now(now)
    job = Job(
        kind=kind,
        state=QUEUED,
        version_fk=version_id,
        deployment_fk=deployment_id,
        study_fk=study_id,
        inputs=dict(inputs),
        priority=priority,
        attempts=0,
        max_attempts=max_attempts,
        timeout_seconds=float(timeout_seconds),
        not_before=now,
        created_at=now,
        result={},
    )
    db.add(job)
    db.flush()
    return job.id


def claim(
    db: Session,
    job_id: int,
    *,
    owner: str,
    lease_seconds: float,
    now: datetime | None = None,
) -> ClaimedJob | None:
    """Claim one queued, due job for `owner`; None when it is not (or no longer) claimable.

    This is the Celery path: a task given a job id claims it here, then executes it.
    """
    check_transition(QUEUED, RUNNING)
    now = _now(now)
    row = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == QUEUED, Job.not_before <= now)
        .values(
            state=RUNNING,
            attempts=Job.attempts + 1,
            started_at=now,
            finished_at=None,
            lease_owner=_check_owner(owner),
            lease_expires_at=_lease_until(now, lease_seconds),
            heartbeat_at=now,
        )
        .returning(*_CLAIMED_COLUMNS)
    ).one_or_none()
    if row is None:
        return None
    return ClaimedJob(
        id=row.id,
        kind=row.kind,
        version_id=row.version_fk,
        deployment_id=row.deployment_fk,
        study_id=row.study_fk,
        inputs=dict(row.inputs or {}),
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        timeout_seconds=float(row.timeout_seconds),
        lease_owner=row.lease_owner,
    )


def claim_next(
    db: Session,
    *,
    owner: str,
    lease_seconds: float,
    kinds: Collection[str] | None = None,
    now: datetime | None = None,
    batch: int = 8,
) -> ClaimedJob | None:
    """Claim the first due queued job (by priority, then age) for `owner`, or return None.

    Candidates are read first and claimed by compare-and-set; a candidate another worker
    took in between is skipped. On PostgreSQL the candidate is locked with
    `FOR UPDATE SKIP LOCKED`, so concurrent workers pick different jobs.
    """
    if kinds is not None and not kinds:
        return None
    now = _now(now)
    skip_locked = db.get_bind().dialect.name == "postgresql"
    query = (
        select(Job.id)
        .where(Job.state == QUEUED, Job.not_before <= now)
        .order_by(Job.priority, Job.id)
        .limit(1 if skip_locked else batch)
    )
    if kinds is not None:
        query = query.where(Job.kind.in_(sorted(kinds)))
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    for _ in range(4):
        candidates = list(db.scalars(query))
        if not candidates:
            return None
        for job_id in candidates:
            claimed = claim(db, job_id, owner=owner, lease_seconds=lease_seconds, now=now)
            if claimed is not None:
                return claimed
    return None


# --- while running ---------------------------------------------------------------------------


def heartbeat(
    db: Session,
    job_id: int,
    *,
    owner: str,
    lease_seconds: float,
    now: datetime | None = None,
) -> bool:
    """Renew `owner`'s lease; False when the job is no longer running under this owner."""
    now = _now(now)
    result = db.execute(
        update(Job)
        .where(*_owned_by(job_id, owner))
        .values(lease_expires_at=_lease_until(now, lease_seconds), heartbeat_at=now)
    )
    return _rowcount(result) == 1


def complete(
    db: Session,
    job_id: int,
    *,
    owner: str,
    result: dict[str, Any],
    write: Callable[[Session], None] | None = None,
    now: datetime | None = None,
) -> bool:
    """Mark `owner`'s running job succeeded and call `write(db)`; False (nothing written)
    when the job is no longer ours, e.g. cancelled or re-queued after a lost lease.

    `write` stores the job's output in the same transaction, so output exists exactly
    when the job succeeded; a writer deletes any earlier rows of its job before inserting.
    An earlier attempt's `last_error` stays, as history.
    """
    check_transition(RUNNING, SUCCEEDED)
    now = _now(now)
    changed = db.execute(
        update(Job)
        .where(*_owned_by(job_id, owner))
        .values(
            state=SUCCEEDED,
            finished_at=now,
            lease_expires_at=None,
            result=dict(result),
        )
    )
    if _rowcount(changed) != 1:
        return False
    if write is not None:
        write(db)
    return True


def _requeue_or_fail(
    db: Session,
    job_id: int,
    *,
    where: list[ColumnElement[bool]],
    retry: bool,
    error: str,
    error_kind: str,
    backoff_seconds: float,
    backoff_max_seconds: float,
    now: datetime,
) -> str:
    """Move a running job matching `where` back to queued (if `retry` and attempts remain)
    or to failed; return the new state, or "" when the compare-and-set found nothing."""
    row = db.execute(select(Job.attempts, Job.max_attempts).where(*where)).one_or_none()
    if row is None:
        return ""
    attempts, max_attempts = int(row[0]), int(row[1])
    cas = [*where, Job.attempts == attempts]
    if retry and attempts < max_attempts:
        check_transition(RUNNING, QUEUED)
        delay = backoff_delay(
            attempts, backoff_seconds=backoff_seconds, backoff_max_seconds=backoff_max_seconds
        )
        values: dict[str, Any] = {
            "state": QUEUED,
            "not_before": now + timedelta(seconds=delay),
            "lease_owner": None,
            "lease_expires_at": None,
        }
        new_state = QUEUED
    else:
        check_transition(RUNNING, FAILED)
        values = {"state": FAILED, "finished_at": now, "lease_expires_at": None}
        new_state = FAILED
    values.update(last_error=_error_text(error), error_kind=error_kind[:16])
    changed = db.execute(update(Job).where(*cas).values(**values))
    return new_state if _rowcount(changed) == 1 else ""


def fail(
    db: Session,
    job_id: int,
    *,
    owner: str,
    error: str,
    transient: bool,
    error_kind: str | None = None,
    backoff_seconds: float,
    backoff_max_seconds: float,
    now: datetime | None = None,
) -> str:
    """Record that `owner`'s run of a job failed; return the job's new state.

    A transient error with attempts left re-queues the job after an exponential back-off
    (`backoff_seconds * 2**(attempts-1)`, at most `backoff_max_seconds`); anything else
    fails it. Returns "queued", "failed", or "" when the job is no longer ours.
    """
    return _requeue_or_fail(
        db,
        job_id,
        where=_owned_by(job_id, owner),
        retry=transient,
        error=error,
        error_kind=error_kind or ("transient" if transient else "permanent"),
        backoff_seconds=backoff_seconds,
        backoff_max_seconds=backoff_max_seconds,
        now=_now(now),
    )


# --- housekeeping and admin actions ----------------------------------------------------------


def cancel(
    db: Session,
    *,
    job_ids: Collection[int] | None = None,
    deployment_id: int | None = None,
    reason: str,
    actor: str = "system",
    source: str = "",
    now: datetime | None = None,
) -> list[int]:
    """Cancel queued and running jobs, by id and/or deployment; return the ids cancelled.

    A running job's worker learns of it at its next heartbeat, and its `complete` fails
    the compare-and-set, so a cancelled job never stores results. The act is audited.
    """
    if job_ids is None and deployment_id is None:
        raise ValueError("cancel needs job ids or a deployment id")
    check_transition(QUEUED, CANCELLED)
    check_transition(RUNNING, CANCELLED)
    now = _now(now)
    where: list[ColumnElement[bool]] = [Job.state.in_((QUEUED, RUNNING))]
    if job_ids is not None:
        if not job_ids:
            return []
        where.append(Job.id.in_(sorted(set(job_ids))))
    if deployment_id is not None:
        where.append(Job.deployment_fk == deployment_id)
    cancelled = sorted(
        db.scalars(
            update(Job)
            .where(*where)
            .values(
                state=CANCELLED,
                finished_at=now,
                lease_expires_at=None,
                last_error=_error_text(reason),
                error_kind="cancelled",
            )
            .returning(Job.id)
        )
    )
    if cancelled:
        if len(cancelled) == 1:
            ref = f"job:{cancelled[0]}"
        elif deployment_id is not None:
            ref = f"deployment:{deployment_id}"
        else:
            ref = "jobs"
        record(
            db,
            actor=actor,
            action="job.cancel",
            object_ref=ref,
            source=source,
            detail={"job_ids": cancelled, "deployment_id": deployment_id, "reason": reason},
        )
    return cancelled


def reap_expired(
    db: Session,
    *,
    now: datetime | None = None,
    backoff_seconds: float,
    backoff_max_seconds: float,
    limit: int = 100,
) -> list[int]:
    """Re-queue running jobs whose lease expired (their worker died), or fail them when
    their attempts are used up; return the ids handled."""
    now = _now(now)
    expired = list(
        db.scalars(
            select(Job.id)
            .where(Job.state == RUNNING, Job.lease_expires_at < now)
            .order_by(Job.lease_expires_at, Job.id)
            .limit(limit)
        )
    )
    reaped: list[int] = []
    for job_id in expired:
        state = _requeue_or_fail(
            db,
            job_id,
            where=[Job.id == job_id, Job.state == RUNNING, Job.lease_expires_at < now],
            retry=True,
            error=LOST_ERROR,
            error_kind="lost",
            backoff_seconds=backoff_seconds,
            backoff_max_seconds=backoff_max_seconds,
            now=now,
        )
        if state:
            reaped.append(job_id)
    return reaped


def retry(
    db: Session,
    job_id: int,
    *,
    actor: str = "system",
    source: str = "",
    now: datetime | None = None,
) -> bool:
    """Put a failed job back in the queue with its attempts reset; False unless it was
    failed. The previous error stays visible until the job runs again. Audited."""
    check_transition(FAILED, QUEUED)
    now = _now(now)
    changed = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == FAILED)
        .values(
            state=QUEUED,
            attempts=0,
            not_before=now,
            finished_at=None,
            lease_owner=None,
            lease_expires_at=None,
            heartbeat_at=None,
        )
    )
    if _rowcount(changed) != 1:
        return False
    record(db, actor=actor, action="job.retry", object_ref=f"job:{job_id}", source=source)
    return True


# --- reading -------------------------------------------------------------------------------


def get_job(db: Session, job_id: int) -> Job | None:
    """Return one job, read fresh from the database."""
    return db.get(Job, job_id, populate_existing=True)


def counts(db: Session) -> dict[str, int]:
    """Return the number of jobs in each state (every state present, zeros included)."""
    totals = {state.value: 0 for state in JobState}
    for state, number in db.execute(select(Job.state, func.count()).group_by(Job.state)):
        totals[str(state)] = int(number)
    return totals


def list_jobs(
    db: Session,
    *,
    states: Collection[str] | None = None,
    deployment_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    """Return jobs for a job monitor, newest first, optionally only some states."""
    query = select(Job).order_by(Job.id.desc())
    if states is not None:
        query = query.where(Job.state.in_(sorted({JobState(s).value for s in states})))
    if deployment_id is not None:
        query = query.where(Job.deployment_fk == deployment_id)
    query = query.limit(max(1, min(limit, MAX_PAGE))).offset(max(0, offset))
    return list(db.scalars(query.execution_options(populate_existing=True)))
