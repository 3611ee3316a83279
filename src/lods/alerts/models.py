"""Alerts for people: raised → acknowledged → resolved, each step with who and when."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class AlertState(StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: What kind of thing happened, e.g. "solution.integrity".
    kind: Mapped[str] = mapped_column(String(40), index=True)
    #: info / warning / urgent
    severity: Mapped[str] = mapped_column(String(16))
    #: Comma-separated roles that must see it, e.g. "admin,ai_owner".
    audience: Mapped[str] = mapped_column(String(100))
    site_fk: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    #: What it is about, e.g. "solution_version:3"; one open alert per kind and subject.
    subject: Mapped[str] = mapped_column(String(100), index=True)
    title: Mapped[str] = mapped_column(String(300))
    detail: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=AlertState.RAISED.value, index=True)
    #: How often it was raised again while open.
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution: Mapped[str | None] = mapped_column(Text)
