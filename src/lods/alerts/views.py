"""The alerts page (open alerts, acknowledge, resolve) and the menu's open-alerts badge.

For administrators and AI owners, each seeing the alerts addressed to their roles.
Acknowledging and resolving are audited by `lods.alerts.service`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from lods.alerts import service
from lods.alerts.api import (
    MAX_RESOLUTION_CHARS,
    AlertReader,
    open_for,
    role_names,
    visible_alert,
)
from lods.alerts.models import AlertState
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

NOTICES = frozenset({"acknowledged", "resolved"})
RECENTLY_RESOLVED = 20
_ERROR_KEYS = {
    service.AlertNotFound: ("alerts.error.not_found", 404),
    service.IllegalAlertTransition: ("alerts.error.conflict", 409),
}


def _page(
    request: Request, db: Session, user: Principal, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    recent = service.recent_alerts(db, roles=role_names(user), limit=200)
    page: dict[str, Any] = {
        "alerts": open_for(db, user),
        "resolved": [a for a in recent if a.state == AlertState.RESOLVED.value][:RECENTLY_RESOLVED],
        "max_resolution": MAX_RESOLUTION_CHARS,
    }
    page.update(context)
    return render(request, "alerts/alerts.html", page, status_code=status_code)


def _refused(
    request: Request, db: Session, user: Principal, exc: service.AlertError
) -> HTMLResponse:
    key, code = _ERROR_KEYS.get(type(exc), ("alerts.error.invalid", 422))
    return _page(request, db, user, status_code=code, error=key, reason=str(exc))


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(
    request: Request, db: SessionDep, user: AlertReader, done: str | None = None
) -> HTMLResponse:
    """Open alerts for the user's roles, most severe first, and the recently resolved."""
    notice = f"alerts.notice.{done}" if done in NOTICES else None
    return _page(request, db, user, notice=notice)


@router.get("/alerts/badge", response_class=HTMLResponse)
def alerts_badge(request: Request, db: SessionDep, user: AlertReader) -> HTMLResponse:
    """The menu's count of open alerts (an htmx fragment; empty when there are none)."""
    alerts = open_for(db, user)
    urgent = any(a.severity == "urgent" for a in alerts)
    return render(request, "alerts/_badge.html", {"count": len(alerts), "urgent": urgent})


@router.post("/alerts/{alert_id}/acknowledge", response_model=None)
def acknowledge(
    alert_id: int, request: Request, db: SessionDep, user: AlertReader, _csrf: CsrfProtected
) -> Response:
    """Say that you have seen the alert and are taking it on."""
    try:
        visible_alert(db, alert_id, role_names(user))
        service.acknowledge(db, alert_id=alert_id, actor=user.username, source=user.source)
    except service.AlertError as exc:
        return _refused(request, db, user, exc)
    return RedirectResponse(f"/alerts?done=acknowledged#alert-{alert_id}", status_code=303)


@router.post("/alerts/{alert_id}/resolve", response_model=None)
def resolve(
    alert_id: int,
    request: Request,
    db: SessionDep,
    user: AlertReader,
    _csrf: CsrfProtected,
    resolution: Annotated[str, Form(max_length=MAX_RESOLUTION_CHARS)] = "",
) -> Response:
    """Close the alert with a note of what was done."""
    try:
        visible_alert(db, alert_id, role_names(user))
        service.resolve(
            db, alert_id=alert_id, actor=user.username, resolution=resolution, source=user.source
        )
    except service.AlertError as exc:
        return _refused(request, db, user, exc)
    return RedirectResponse("/alerts?done=resolved", status_code=303)
