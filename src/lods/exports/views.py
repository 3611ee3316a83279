"""The outbox page for administrators: counts per state, the sends (filterable by state),
each one's attempts and last error, and a retry button for the failed ones."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import AdminUser, SessionDep
from lods.exports import outbox
from lods.exports.api import describe
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
NOTICES = frozenset({"retried"})


def _state(value: str) -> str:
    return value if value in outbox.STATES else ""


def _page(
    request: Request,
    db: Session,
    *,
    state: str,
    offset: int,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    items = outbox.list_items(
        db, states=[state] if state else None, limit=PAGE_SIZE + 1, offset=offset
    )
    page: dict[str, Any] = {
        "counts": outbox.counts(db),
        "states": outbox.STATES,
        "state": state,
        "items": describe(db, items[:PAGE_SIZE]),
        "offset": offset,
        "page_size": PAGE_SIZE,
        "has_more": len(items) > PAGE_SIZE,
    }
    page.update(context)
    return render(request, "exports/exports.html", page, status_code=status_code)


@router.get("/exports", response_class=HTMLResponse)
def exports_page(
    request: Request,
    db: SessionDep,
    _user: AdminUser,
    state: Annotated[str, Query(max_length=16)] = "",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    done: str | None = None,
) -> HTMLResponse:
    """Show the outbox: how many sends are in each state, and the sends, newest first."""
    notice = f"exports.notice.{done}" if done in NOTICES else None
    return _page(request, db, state=_state(state), offset=offset, notice=notice)


@router.post("/exports/{item_id}/retry", response_model=None)
def retry(
    item_id: int,
    request: Request,
    db: SessionDep,
    user: AdminUser,
    _csrf: CsrfProtected,
    state: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Queue a failed send again, due now, with its attempts reset."""
    back = _state(state)
    if outbox.get_item(db, item_id) is None:
        return _page(
            request, db, state=back, offset=0, status_code=404, error="exports.error.not_found"
        )
    if not outbox.retry(db, item_id, actor=user.username, source=user.source):
        return _page(
            request, db, state=back, offset=0, status_code=409, error="exports.error.not_failed"
        )
    query = {"state": back, "done": "retried"} if back else {"done": "retried"}
    return RedirectResponse(f"/exports?{urlencode(query)}#export-{item_id}", status_code=303)
