"""JSON API for the job monitor under /api/jobs: counts, the list, retry and cancel.

For administrators and AI owners. Retrying a failed job and cancelling a queued or
running one are audited by `lods.jobs.service` with the user's name and address.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.imaging.models import Study
from lods.jobs import service
from lods.jobs.models import Job, JobState
from lods.solutions.models import SolutionVersion

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

#: Who watches the queue and acts on its jobs.
JOB_OPERATORS = frozenset({Role.ADMIN, Role.AI_OWNER})
JobOperator = Annotated[Principal, Depends(role_dependency(*JOB_OPERATORS))]

MAX_REASON_CHARS = 2000


class JobOut(BaseModel):
    """One job as the monitor shows it: what runs on what, how often it tried, why it failed."""

    id: int
    kind: str
    state: str
    solution_id: str | None
    version: str | None
    solution_label: str | None
    deployment_id: int | None
    #: The deployment's mode when the job was queued (shadow, pilot, live).
    mode: str | None
    study_uid: str | None
    priority: int
    attempts: int
    max_attempts: int
    created_at: datetime
    not_before: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    error_kind: str | None

    @classmethod
    def of(cls, job: Job, version: SolutionVersion | None, study_uid: str | None) -> JobOut:
        mode = (job.inputs or {}).get("mode")
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            solution_id=version.solution_id if version else None,
            version=version.version if version else None,
            solution_label=version.label if version else None,
            deployment_id=job.deployment_fk,
            mode=mode if isinstance(mode, str) else None,
            study_uid=study_uid,
            priority=job.priority,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            not_before=job.not_before,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_error=job.last_error,
            error_kind=job.error_kind,
        )


class JobPage(BaseModel):
    counts: dict[str, int] = Field(description="Jobs in each state, every state present")
    items: list[JobOut]
    limit: int
    offset: int


class CancelIn(BaseModel):
    reason: str = Field("", max_length=MAX_REASON_CHARS)


def describe_jobs(db: Session, jobs: Sequence[Job]) -> list[JobOut]:
    """The jobs with their solution version and study UID, read in two queries."""
    version_ids = {j.version_fk for j in jobs if j.version_fk is not None}
    study_ids = {j.study_fk for j in jobs if j.study_fk is not None}
    versions = (
        {
            v.id: v
            for v in db.scalars(select(SolutionVersion).where(SolutionVersion.id.in_(version_ids)))
        }
        if version_ids
        else {}
    )
    studies: dict[int, str] = (
        {
            row[0]: row[1]
            for row in db.execute(select(Study.id, Study.study_uid).where(Study.id.in_(study_ids)))
        }
        if study_ids
        else {}
    )
    return [
        JobOut.of(
            j,
            versions.get(j.version_fk) if j.version_fk is not None else None,
            studies.get(j.study_fk) if j.study_fk is not None else None,
        )
        for j in jobs
    ]


def cancel_reason(user: Principal, reason: str) -> str:
    note = reason.strip()
    return f"cancelled by {user.username}: {note}" if note else f"cancelled by {user.username}"


def _job(db: Session, job_id: int) -> Job:
    job = service.get_job(db, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id}")
    return job


def _one(db: Session, job_id: int) -> JobOut:
    return describe_jobs(db, [_job(db, job_id)])[0]


@router.get("", response_model=JobPage)
def list_jobs(
    db: SessionDep,
    _user: JobOperator,
    state: Annotated[list[JobState] | None, Query(description="Only jobs in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Counts per state, and the jobs (newest first), optionally only some states."""
    jobs = service.list_jobs(
        db, states=[s.value for s in state] if state else None, limit=limit, offset=offset
    )
    return JobPage(
        counts=service.counts(db), items=describe_jobs(db, jobs), limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, db: SessionDep, _user: JobOperator) -> JobOut:
    """One job."""
    return _one(db, job_id)


@router.post("/{job_id}/retry", response_model=JobOut)
def retry(job_id: int, db: SessionDep, user: JobOperator, _csrf: CsrfProtected) -> JobOut:
    """Put a failed job back in the queue with its attempts reset (409 unless it failed)."""
    job = _job(db, job_id)
    if not service.retry(db, job.id, actor=user.username, source=user.source):
        current = _job(db, job_id).state
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id} is {current}; only failed jobs are retried",
        )
    return _one(db, job_id)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(
    job_id: int,
    db: SessionDep,
    user: JobOperator,
    _csrf: CsrfProtected,
    body: CancelIn | None = None,
) -> JobOut:
    """Cancel a queued or running job (409 otherwise); a running one stores no results."""
    job = _job(db, job_id)
    cancelled = service.cancel(
        db,
        job_ids=[job.id],
        reason=cancel_reason(user, body.reason if body else ""),
        actor=user.username,
        source=user.source,
    )
    if not cancelled:
        current = _job(db, job_id).state
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id} is {current}; only queued or running jobs are cancelled",
        )
    return _one(db, job_id)
