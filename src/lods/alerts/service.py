"""Raise, acknowledge and resolve alerts; every transition is audited.

One open alert per (kind, subject): raising it again while it is open counts an
occurrence instead of adding a second row, so a repeating fault does not bury the list.
The transitions are checked in one place (`_ALLOWED`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.orm import Session

from lods.alerts.models import Alert, AlertState
from lods.audit.service import record
from lods.db import utcnow

SEVERITIES = ("info", "warning", "urgent")
_ALLOWED = {
    (AlertState.RAISED, AlertState.ACKNOWLEDGED),
    (AlertState.RAISED, AlertState.RESOLVED),
    (AlertState.ACKNOWLEDGED, AlertState.RESOLVED),
}


class AlertError(Exception):
    """An alert operation that cannot be done as asked."""


class IllegalAlertTransition(AlertError):
    pass


class AlertNotFound(AlertError):
    pass


def raise_alert(
    db: Session,
    *,
    kind: str,
    subject: str,
    title: str,
    detail: str = "",
    severity: str = "warning",
    audience: Collection[str] = ("admin",),
    site_id: int | None = None,
    now: datetime | None = None,
) -> Alert:
    """Open an alert (or count another occurrence of the open one) and audit it."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")
    now = now or utcnow()
    existing = db.scalars(
        select(Alert).where(
            Alert.kind == kind,
            Alert.subject == subject,
            Alert.state != AlertState.RESOLVED.value,
        )
    ).first()
    if existing is not None:
        existing.occurrences += 1
        existing.last_raised_at = now
        existing.detail = detail or existing.detail
        db.flush()
        return existing
    alert = Alert(
        kind=kind,
        severity=severity,
        audience=",".join(sorted(set(audience))),
        site_fk=site_id,
        subject=subject,
        title=title,
        detail=detail,
        raised_at=now,
        last_raised_at=now,
    )
    db.add(alert)
    db.flush()
    record(
        db,
        actor="system",
        action="alert.raise",
        object_ref=f"alert:{alert.id}",
        detail={"kind": kind, "subject": subject, "title": title, "severity": severity},
    )
    return alert


def _get(db: Session, alert_id: int) -> Alert:
    alert = db.get(Alert, alert_id)
    if alert is None:
        raise AlertNotFound(f"no alert {alert_id}")
    return alert


def _move(alert: Alert, new: AlertState) -> None:
    old = AlertState(alert.state)
    if (old, new) not in _ALLOWED:
        raise IllegalAlertTransition(
            f"alert {alert.id} is {old.value}; it cannot become {new.value}"
        )
    alert.state = new.value


def acknowledge(db: Session, *, alert_id: int, actor: str, source: str = "") -> Alert:
    """Someone has seen it and takes it on."""
    alert = _get(db, alert_id)
    _move(alert, AlertState.ACKNOWLEDGED)
    alert.acknowledged_at = utcnow()
    alert.acknowledged_by = actor
    db.flush()
    record(
        db, actor=actor, action="alert.acknowledge", object_ref=f"alert:{alert.id}", source=source
    )
    return alert


def resolve(db: Session, *, alert_id: int, actor: str, resolution: str, source: str = "") -> Alert:
    """Close it with what was done; an unacknowledged alert is acknowledged by the same act."""
    if not resolution.strip():
        raise AlertError("say how the alert was resolved")
    alert = _get(db, alert_id)
    now = utcnow()
    if alert.state == AlertState.RAISED.value:
        alert.acknowledged_at, alert.acknowledged_by = now, actor
    _move(alert, AlertState.RESOLVED)
    alert.resolved_at, alert.resolved_by, alert.resolution = now, actor, resolution.strip()
    db.flush()
    record(
        db,
        actor=actor,
        action="alert.resolve",
        object_ref=f"alert:{alert.id}",
        source=source,
        detail={"resolution": alert.resolution},
    )
    return alert


def _for_roles(roles: Collection[str]) -> ColumnElement[bool]:
    return or_(false(), *[Alert.audience.contains(role) for role in roles])


def open_alerts(db: Session, *, roles: Collection[str], limit: int = 200) -> list[Alert]:
    """Alerts not yet resolved whose audience includes one of `roles`, newest first."""
    audience = list(roles)
    if not audience:
        return []
    rows = db.scalars(
        select(Alert)
        .where(Alert.state != AlertState.RESOLVED.value, _for_roles(audience))
        .order_by(Alert.raised_at.desc())
        .limit(limit)
    )
    return [a for a in rows if set(a.audience.split(",")) & set(audience)]


def recent_alerts(db: Session, *, roles: Collection[str], limit: int = 200) -> list[Alert]:
    """Open and resolved alerts for `roles`, newest first."""
    if not roles:
        return []
    rows = db.scalars(
        select(Alert).where(_for_roles(roles)).order_by(Alert.raised_at.desc()).limit(limit)
    )
    return [a for a in rows if set(a.audience.split(",")) & set(roles)]
