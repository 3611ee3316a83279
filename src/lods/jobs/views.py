"""The job monitor page: counts per state, the jobs (filterable by state), retry and cancel.

For administrators and AI owners. Retry and cancel are audited by the job service
("job.retry", "job.cancel") with the user's name and address.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import SessionDep
from lods.jobs import service
from lods.jobs.api import MAX_REASON_CHARS, JobOperator, cancel_reason, describe_jobs
from lods.jobs.models import JobState
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
STATES = tuple(state.value for state in JobState)
NOTICES = frozenset({"retried", "cancelled"})


def _state(value: str) -> str:
    return value if value in STATES else ""


def _page(
    request: Request,
    db: Session,
    *,
    state: str,
    offset: int,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    jobs = service.list_jobs(
        db, states=[state] if state else None, limit=PAGE_SIZE + 1, offset=offset
    )
    page: dict[str, Any] = {
        "counts": service.counts(db),
        "states": STATES,
        "state": state,
        "jobs": describe_jobs(db, jobs[:PAGE_SIZE]),
        "offset": offset,
        "page_size": PAGE_SIZE,
        "has_more": len(jobs) > PAGE_SIZE,
        "max_reason": MAX_REASON_CHARS,
    }
    page.update(context)
    return render(request, "jobs/jobs.html", page, status_code=status_code)


def _back(state: str, notice: str, job_id: int) -> RedirectResponse:
    query = {"state": state, "done": notice} if state else {"done": notice}
    return RedirectResponse(f"/jobs?{urlencode(query)}#job-{job_id}", status_code=303)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    db: SessionDep,
    _user: JobOperator,
    state: Annotated[str, Query(max_length=16)] = "",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    done: str | None = None,
) -> HTMLResponse:
    """Show the queue: how many jobs are in each state, and the jobs, newest first."""
    notice = f"jobs.notice.{done}" if done in NOTICES else None
    return _page(request, db, state=_state(state), offset=offset, notice=notice)


@router.post("/jobs/{job_id}/retry", response_model=None)
def retry(
    job_id: int,
    request: Request,
    db: SessionDep,
    user: JobOperator,
    _csrf: CsrfProtected,
    state: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Put a failed job back in the queue with its attempts reset."""
    back = _state(state)
    job = service.get_job(db, job_id)
    if job is None:
        return _page(
            request, db, state=back, offset=0, status_code=404, error="jobs.error.not_found"
        )
    if not service.retry(db, job.id, actor=user.username, source=user.source):
        return _page(
            request, db, state=back, offset=0, status_code=409, error="jobs.error.not_failed"
        )
    return _back(back, "retried", job_id)


@router.post("/jobs/{job_id}/cancel", response_model=None)
def cancel(
    job_id: int,
    request: Request,
    db: SessionDep,
    user: JobOperator,
    _csrf: CsrfProtected,
    state: Annotated[str, Form(max_length=16)] = "",
    reason: Annotated[str, Form(max_length=MAX_REASON_CHARS)] = "",
) -> Response:
    """Cancel a queued or running job; a running one will not store its results."""
    back = _state(state)
    job = service.get_job(db, job_id)
    if job is None:
        return _page(
            request, db, state=back, offset=0, status_code=404, error="jobs.error.not_found"
        )
    cancelled = service.cancel(
        db,
        job_ids=[job.id],
        reason=cancel_reason(user, reason),
        actor=user.username,
        source=user.source,
    )
    if not cancelled:
        return _page(
            request, db, state=back, offset=0, status_code=409, error="jobs.error.not_active"
        )
    return _back(back, "cancelled", job_id)
