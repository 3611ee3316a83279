"""JSON API for alerts under /api/alerts: list, acknowledge, resolve.

Administrators and AI owners see the alerts whose audience includes one of their roles,
and only those may they acknowledge or resolve. Every transition is audited by
`lods.alerts.service` with the user's name and address.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.orm import Session

from lods.alerts import service
from lods.alerts.models import Alert
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role

router = APIRouter(prefix="/api/alerts", tags=["alerts"])

#: Who is told about operational problems (integrity failures, stuck jobs, ...).
ALERT_READERS = frozenset({Role.ADMIN, Role.AI_OWNER})
AlertReader = Annotated[Principal, Depends(role_dependency(*ALERT_READERS))]

MAX_RESOLUTION_CHARS = 4000
_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(reversed(service.SEVERITIES))}


class AlertOut(BaseModel):
    id: int
    kind: str
    severity: str
    title: str
    detail: str
    subject: str
    audience: list[str]
    state: str
    occurrences: int
    raised_at: datetime
    last_raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None

    @classmethod
    def of(cls, alert: Alert) -> AlertOut:
        return cls(
            id=alert.id,
            kind=alert.kind,
            severity=alert.severity,
            title=alert.title,
            detail=alert.detail,
            subject=alert.subject,
            audience=[r for r in alert.audience.split(",") if r],
            state=alert.state,
            occurrences=alert.occurrences,
            raised_at=alert.raised_at,
            last_raised_at=alert.last_raised_at,
            acknowledged_at=alert.acknowledged_at,
            acknowledged_by=alert.acknowledged_by,
            resolved_at=alert.resolved_at,
            resolved_by=alert.resolved_by,
            resolution=alert.resolution,
        )


class ResolveIn(BaseModel):
    resolution: str = Field(max_length=MAX_RESOLUTION_CHARS, examples=["Reinstalled 1.0.2"])

    @field_validator("resolution")
    @classmethod
    def _given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("say how the alert was resolved")
        return value


def role_names(user: Principal) -> list[str]:
    return sorted(str(role) for role in user.roles)


def open_for(db: Session, user: Principal) -> list[Alert]:
    """The user's open alerts, most severe first, then newest first."""
    alerts = service.open_alerts(db, roles=role_names(user))
    alerts.sort(key=lambda a: a.raised_at, reverse=True)
    alerts.sort(key=lambda a: _SEVERITY_RANK.get(a.severity, len(_SEVERITY_RANK)))
    return alerts


def visible_alert(db: Session, alert_id: int, roles: Collection[str]) -> Alert:
    """The alert, if its audience includes one of `roles`; raise AlertNotFound otherwise."""
    alert = db.get(Alert, alert_id)
    if alert is None or not set(alert.audience.split(",")) & set(roles):
        raise service.AlertNotFound(f"no alert {alert_id}")
    return alert


def http_error(exc: service.AlertError) -> HTTPException:
    if isinstance(exc, service.AlertNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, service.IllegalAlertTransition):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


@router.get("", response_model=list[AlertOut])
def list_alerts(
    db: SessionDep,
    user: AlertReader,
    include_resolved: Annotated[
        bool, Query(description="Also the resolved alerts, newest first")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[AlertOut]:
    """The user's open alerts (most severe first), or every recent alert."""
    if include_resolved:
        rows = service.recent_alerts(db, roles=role_names(user), limit=limit)
    else:
        rows = open_for(db, user)[:limit]
    return [AlertOut.of(a) for a in rows]


@router.post("/{alert_id}/acknowledge", response_model=AlertOut)
def acknowledge(alert_id: int, db: SessionDep, user: AlertReader, _csrf: CsrfProtected) -> AlertOut:
    """Say that you have seen the alert and are taking it on."""
    try:
        visible_alert(db, alert_id, role_names(user))
        alert = service.acknowledge(db, alert_id=alert_id, actor=user.username, source=user.source)
    except service.AlertError as exc:
        raise http_error(exc) from exc
    return AlertOut.of(alert)


@router.post("/{alert_id}/resolve", response_model=AlertOut)
def resolve(
    alert_id: int, body: ResolveIn, db: SessionDep, user: AlertReader, _csrf: CsrfProtected
) -> AlertOut:
    """Close the alert with what was done about it."""
    try:
        visible_alert(db, alert_id, role_names(user))
        alert = service.resolve(
            db,
            alert_id=alert_id,
            actor=user.username,
            resolution=body.resolution,
            source=user.source,
        )
    except service.AlertError as exc:
        raise http_error(exc) from exc
    return AlertOut.of(alert)
