"""Alerts for people, one lifecycle for every source (system faults, early-warning scores,
fall alarms): raised → notified → (repeated / escalated) → acknowledged → resolved.
Each step is kept with who and when (`alert_events`) and audited."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class AlertState(StrEnum):
    RAISED = "raised"
    #: Delivered to the board and handed to the notification outbox; repeats and
    #: escalations happen in this state.
    NOTIFIED = "notified"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: What kind of thing happened, e.g. "solution.integrity", "ews.band", "fall.alarm".
    kind: Mapped[str] = mapped_column(String(40), index=True)
    #: info / warning / urgent
    severity: Mapped[str] = mapped_column(String(16))
    #: Comma-separated roles that must see it, e.g. "admin,ai_owner".
    audience: Mapped[str] = mapped_column(String(100))
    site_fk: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    #: The ward and bed it concerns (ward-board alerts), and the patient, if any.
    ward_fk: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"))
    patient_fk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    #: What it is about, e.g. "solution_version:3"; one open alert per kind and subject.
    subject: Mapped[str] = mapped_column(String(100), index=True)
    title: Mapped[str] = mapped_column(String(300))
    detail: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=AlertState.RAISED.value, index=True)
    #: How often it was raised again while open.
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Repeat policy: seconds between notifications until acknowledged (None: no repeat),
    #: and after how many notifications it escalates to everyone on the ward.
    repeat_seconds: Mapped[int | None] = mapped_column(Integer)
    escalate_after: Mapped[int | None] = mapped_column(Integer)
    #: Notifications sent so far (the first one included).
    notifications: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_notify_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: 0: the bed's nurses; 1: all staff on the ward.
    escalation_level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution: Mapped[str | None] = mapped_column(Text)
    #: Coded outcome when resolved (fall alarms: fall / near_fall / false_alarm).
    outcome: Mapped[str | None] = mapped_column(String(32))
    #: Source facts shown on the board (score, band, event kind, confidence...).
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AlertEvent(Base):
    """One step of an alert's life: raised, notified, repeated, escalated, acknowledged,
    resolved — with who (a user or "system") and when."""

    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_fk: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    step: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
