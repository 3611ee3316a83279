"""Raise, notify, repeat, escalate, acknowledge and resolve alerts; every step is kept
(`alert_events`, with who and when) and audited.

One open alert per (kind, subject): raising it again while it is open counts an
occurrence instead of adding a second row, so a repeating fault does not bury the list.
The transitions are checked in one place (`_ALLOWED`).

Ward alerts (early-warning bands, fall alarms, overdue observations) carry a ward, bed
and patient and are *notified* at once: the board hears of it (`lods.alerts.live`) and,
when `LODS_NOTIFY_WEBHOOK_URL` is set, the hospital's nurse-call / phone system gets a
notification through the outbox (transport `webhook`). An alert with a repeat policy
(`repeat_seconds`) is notified again by `tick` until someone acknowledges it; after
`escalate_after` notifications it escalates to all staff on the ward. `tick` takes the
time as an argument, so tests drive it with a controlled clock.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.orm import Session

from lods.alerts import live
from lods.alerts.models import Alert, AlertEvent, AlertState
from lods.audit.service import record
from lods.db import utcnow

SEVERITIES = ("info", "warning", "urgent")
OPEN_STATES = (AlertState.RAISED.value, AlertState.NOTIFIED.value, AlertState.ACKNOWLEDGED.value)
_ALLOWED = {
    (AlertState.RAISED, AlertState.NOTIFIED),
    (AlertState.RAISED, AlertState.ACKNOWLEDGED),
    (AlertState.NOTIFIED, AlertState.ACKNOWLEDGED),
    (AlertState.RAISED, AlertState.RESOLVED),
    (AlertState.NOTIFIED, AlertState.RESOLVED),
    (AlertState.ACKNOWLEDGED, AlertState.RESOLVED),
}
#: The audit action of each step.
_ACTIONS = {
    "raised": "alert.raise",
    "notified": "alert.notify",
    "repeated": "alert.repeat",
    "escalated": "alert.escalate",
    "acknowledged": "alert.acknowledge",
    "resolved": "alert.resolve",
}
#: Who a notification is for, by escalation level.
RECIPIENTS = {0: "bed-team", 1: "ward-all"}


class AlertError(Exception):
    """An alert operation that cannot be done as asked."""


class IllegalAlertTransition(AlertError):
    pass


class AlertNotFound(AlertError):
    pass


def _step(
    db: Session,
    alert: Alert,
    step: str,
    *,
    actor: str,
    at: datetime,
    source: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Keep the step, audit it, and tell the alert's ward board once committed."""
    db.add(AlertEvent(alert_fk=alert.id, step=step, actor=actor, at=at, detail=detail))
    record(
        db,
        actor=actor,
        action=_ACTIONS[step],
        object_ref=f"alert:{alert.id}",
        source=source,
        detail={"kind": alert.kind, "subject": alert.subject, **(detail or {})},
    )
    if alert.ward_fk is not None:
        live.publish_after_commit(
            db,
            alert.ward_fk,
            {
                "type": "alert",
                "step": step,
                "alert_id": alert.id,
                "bed_id": alert.bed_fk,
                "kind": alert.kind,
                "severity": alert.severity,
                "state": alert.state,
            },
        )


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
    ward_id: int | None = None,
    bed_id: int | None = None,
    patient_id: int | None = None,
    facts: dict[str, Any] | None = None,
    notify: bool = False,
    repeat_seconds: int | None = None,
    escalate_after: int | None = None,
    webhook: str | None = None,
    now: datetime | None = None,
) -> Alert:
    """Open an alert (or count another occurrence of the open one) and audit it.

    `notify`: deliver it at once (board and notification outbox). `repeat_seconds`:
    notify again at that interval until acknowledged; `escalate_after`: from that many
    notifications on, notify all staff on the ward. `webhook`: the nurse-call / phone
    system URL (`settings.notify_webhook_url`) notifications are queued for, if any.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")
    if repeat_seconds is not None and repeat_seconds <= 0:
        raise ValueError("repeat_seconds must be positive")
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
        if facts is not None:
            existing.facts = facts
        db.flush()
        if existing.ward_fk is not None:
            live.publish_after_commit(
                db,
                existing.ward_fk,
                {"type": "alert", "step": "again", "alert_id": existing.id, "bed_id": bed_id},
            )
        return existing
    alert = Alert(
        kind=kind,
        severity=severity,
        audience=",".join(sorted(set(audience))),
        site_fk=site_id,
        ward_fk=ward_id,
        bed_fk=bed_id,
        patient_fk=patient_id,
        subject=subject,
        title=title,
        detail=detail,
        facts=facts,
        raised_at=now,
        last_raised_at=now,
        repeat_seconds=repeat_seconds,
        escalate_after=escalate_after,
        notifications=0,
        escalation_level=0,
    )
    db.add(alert)
    db.flush()
    _step(
        db,
        alert,
        "raised",
        actor="system",
        at=now,
        detail={"title": title, "severity": severity},
    )
    if notify:
        notify_alert(db, alert, now=now, webhook=webhook)
    return alert


def notification_payload(db: Session, alert: Alert, *, step: str, at: datetime) -> dict[str, Any]:
    """What the nurse-call / phone system receives: the alarm, the ward, room and bed,
    who should come, and how many times it was sent — no patient name or identifier."""
    from lods.sites.models import Bed, Department

    ward = db.get(Department, alert.ward_fk) if alert.ward_fk else None
    bed = db.get(Bed, alert.bed_fk) if alert.bed_fk else None
    return {
        "alert_id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "title": alert.title,
        "step": step,
        "notification": alert.notifications,
        "recipients": RECIPIENTS.get(alert.escalation_level, "ward-all"),
        "ward": ward.code if ward else None,
        "room": bed.room if bed else None,
        "bed": bed.code if bed else None,
        "raised_at": alert.raised_at.isoformat(),
        "at": at.isoformat(),
    }


def notify_alert(
    db: Session, alert: Alert, *, now: datetime, step: str = "notified", webhook: str | None = None
) -> None:
    """Send one notification (the first, a repeat or an escalation) and plan the next."""
    from lods.exports import outbox

    if alert.state == AlertState.RAISED.value:
        _move(alert, AlertState.NOTIFIED)
        alert.notified_at = now
    alert.notifications += 1
    alert.next_notify_at = (
        now + timedelta(seconds=alert.repeat_seconds) if alert.repeat_seconds else None
    )
    db.flush()
    payload = notification_payload(db, alert, step=step, at=now)
    if webhook:
        outbox.enqueue(
            db,
            transport="webhook",
            destination=webhook,
            what="alert-notify",
            dedupe_key=f"alert:{alert.id}:notify:{alert.notifications}",
            payload=json.dumps(payload, separators=(",", ":"), sort_keys=True),
            now=now,
        )
    _step(
        db,
        alert,
        step,
        actor="system",
        at=now,
        detail={"notification": alert.notifications, "recipients": payload["recipients"]},
    )


def tick(db: Session, *, now: datetime, webhook: str | None = None) -> list[Alert]:
    """Repeat every notified alert whose next notification is due; escalate those that
    reached their `escalate_after`. Returns the alerts notified. Call with the time the
    caller reads from its clock (tests pass a controlled one)."""
    due = list(
        db.scalars(
            select(Alert)
            .where(
                Alert.state == AlertState.NOTIFIED.value,
                Alert.next_notify_at.is_not(None),
                Alert.next_notify_at <= now,
            )
            .order_by(Alert.next_notify_at)
            .with_for_update(skip_locked=True)
        )
    )
    for alert in due:
        escalate = (
            alert.escalate_after is not None
            and alert.escalation_level == 0
            and alert.notifications >= alert.escalate_after
        )
        if escalate:
            alert.escalation_level = 1
            alert.escalated_at = now
        notify_alert(
            db, alert, now=now, step="escalated" if escalate else "repeated", webhook=webhook
        )
    return due


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


def acknowledge(
    db: Session, *, alert_id: int, actor: str, source: str = "", now: datetime | None = None
) -> Alert:
    """Someone has seen it and takes it on: repeats and escalation stop."""
    now = now or utcnow()
    alert = _get(db, alert_id)
    _move(alert, AlertState.ACKNOWLEDGED)
    alert.acknowledged_at = now
    alert.acknowledged_by = actor
    alert.next_notify_at = None
    db.flush()
    _step(db, alert, "acknowledged", actor=actor, at=now, source=source)
    return alert


def resolve(
    db: Session,
    *,
    alert_id: int,
    actor: str,
    resolution: str,
    outcome: str | None = None,
    source: str = "",
    now: datetime | None = None,
) -> Alert:
    """Close it with what was done (and a coded `outcome`, e.g. for fall alarms); an
    unacknowledged alert is acknowledged by the same act."""
    if not resolution.strip():
        raise AlertError("say how the alert was resolved")
    alert = _get(db, alert_id)
    now = now or utcnow()
    if alert.state in (AlertState.RAISED.value, AlertState.NOTIFIED.value):
        alert.acknowledged_at, alert.acknowledged_by = now, actor
    _move(alert, AlertState.RESOLVED)
    alert.resolved_at, alert.resolved_by, alert.resolution = now, actor, resolution.strip()
    alert.outcome = outcome
    alert.next_notify_at = None
    db.flush()
    _step(
        db,
        alert,
        "resolved",
        actor=actor,
        at=now,
        source=source,
        detail={"resolution": alert.resolution, "outcome": outcome},
    )
    return alert


def resolve_by_system(db: Session, *, alert: Alert, resolution: str, now: datetime) -> None:
    """Close an alert whose cause went away (e.g. the overdue set arrived, the patient
    is back in bed before anyone acknowledged a bed-exit alert)."""
    resolve(db, alert_id=alert.id, actor="system", resolution=resolution, now=now)


def history(db: Session, *, alert_id: int) -> list[AlertEvent]:
    """Every step of the alert, in order."""
    return list(
        db.scalars(
            select(AlertEvent).where(AlertEvent.alert_fk == alert_id).order_by(AlertEvent.id)
        )
    )


def _for_roles(roles: Collection[str]) -> ColumnElement[bool]:
    return or_(false(), *[Alert.audience.contains(role) for role in roles])


def open_alerts(db: Session, *, roles: Collection[str], limit: int = 200) -> list[Alert]:
    """Alerts not yet resolved whose audience includes one of `roles`, newest first."""
    audience = list(roles)
    if not audience:
        return []
    rows = db.scalars(
        select(Alert)
        .where(Alert.state.in_(OPEN_STATES), _for_roles(audience))
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
