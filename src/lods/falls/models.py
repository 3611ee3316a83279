"""Fall-risk screening (Morse Fall Scale) and fall incidents (from alarms or entered by hand)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow

#: Outcomes of a fall alarm or an incident report.
OUTCOMES = ("fall", "near_fall", "false_alarm")
#: Injury grades of a confirmed fall.
INJURY_GRADES = ("none", "minor", "moderate", "severe", "death")


class FallRiskAssessment(Base):
    """One Morse Fall Scale entry: the six items, their total and the risk level by the
    cut-offs in force when it was entered."""

    __tablename__ = "fall_risk_assessments"
    __table_args__ = (Index("ix_fall_risk_patient_time", "patient_fk", "assessed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_fk: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), index=True)
    #: {item key: chosen answer key}
    items: Mapped[dict[str, Any]] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(Integer)
    #: low / moderate / high
    level: Mapped[str] = mapped_column(String(16))
    #: The cut-offs used, e.g. {"moderate": 25, "high": 45}.
    cutoffs: Mapped[dict[str, Any]] = mapped_column(JSON)
    assessed_by: Mapped[str] = mapped_column(String(100))
    assessed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FallIncident(Base):
    """What happened: a confirmed fall (with injury grade), a near fall, or a false alarm.
    From resolving a fall alarm (`alert_fk`) or from a manual incident entry."""

    __tablename__ = "fall_incidents"
    __table_args__ = (Index("ix_fall_incidents_ward_time", "ward_fk", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ward_fk: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"))
    patient_fk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_fk: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    alert_fk: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: alarm / manual
    source: Mapped[str] = mapped_column(String(8))
    outcome: Mapped[str] = mapped_column(String(16))
    injury_grade: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    recorded_by: Mapped[str] = mapped_column(String(100))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
