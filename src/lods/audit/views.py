"""The audit trail's web page, for auditors: search, page through, verify the chain."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from lods.audit import service
from lods.audit.schemas import parse_timestamp
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import AuditorUser, Principal, RuntimeDep, SessionDep
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
FILTER_FIELDS = ("actor", "action", "outcome", "patient_id", "study_uid", "since", "until")


def _filter_from(form: dict[str, str]) -> tuple[service.EventFilter, str | None]:
    """Return the filter the form asks for, or an empty one and the field that is wrong."""
    texts = {k: form.get(k, "").strip()[:200] for k in FILTER_FIELDS[:5]}
    try:
        since = parse_timestamp(form["since"]) if form.get("since") else None
        until = parse_timestamp(form["until"], end_of_day=True) if form.get("until") else None
    except ValueError:
        return service.EventFilter(), "audit.error.time"
    return service.EventFilter(
        **{k: v or None for k, v in texts.items()}, since=since, until=until
    ), None


def _page(
    request: Request, db: Session, auditor: Principal, *, page: int, **context: Any
) -> HTMLResponse:
    form = {k: request.query_params.get(k, "").strip() for k in FILTER_FIELDS}
    filters, error = _filter_from(form)
    offset = (page - 1) * PAGE_SIZE
    events, total = service.list_events(db, filters=filters, limit=PAGE_SIZE, offset=offset)
    service.record(
        db,
        actor=auditor.username,
        action="audit.read",
        source=auditor.source,
        detail={"filters": filters.described(), "offset": offset, "returned": len(events)},
    )
    query = {k: v for k, v in form.items() if v}
    page_ctx: dict[str, Any] = {
        "events": events,
        "total": total,
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "form": form,
        "error": error,
        "query": urlencode(query),
        "export_query": urlencode(filters.described()),
    }
    page_ctx.update(context)
    return render(request, "audit/audit.html", page_ctx)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request, db: SessionDep, auditor: AuditorUser, page: int = 1
) -> HTMLResponse:
    """Return the audit trail page: a filter form and one page of events, newest first."""
    return _page(request, db, auditor, page=max(1, page))


@router.post("/audit/verify", response_class=HTMLResponse)
def verify_chain(
    request: Request,
    db: SessionDep,
    runtime: RuntimeDep,
    auditor: AuditorUser,
    _csrf: CsrfProtected,
) -> HTMLResponse:
    """Walk the whole chain and show the result above the first page of events."""
    count, problems = service.verify_audited(
        db, engine=runtime.engine, actor=auditor.username, source=auditor.source
    )
    result = {"ok": not problems, "events": count, "problems": problems}
    return _page(request, db, auditor, page=1, verify=result)
