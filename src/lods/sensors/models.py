"""Room and bed sensor events as they arrived (MQTT or HTTP). Events only: no video or
image is ever received or stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow

#: The event kinds a sensor may report.
EVENT_KINDS = ("bed_exit", "sitting_on_edge", "fall_detected", "person_on_floor", "back_in_bed")


class SensorEvent(Base):
    """One event; `event_id` makes redelivery (MQTT QoS 1, webhook retries) harmless."""

    __tablename__ = "sensor_events"
    __table_args__ = (Index("ix_sensor_events_ward_time", "ward_fk", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    ward_fk: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"), index=True)
    room: Mapped[str] = mapped_column(String(32), default="")
    #: The patient in that bed when the event arrived (from ADT), if any.
    encounter_fk: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), index=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confidence: Mapped[float | None] = mapped_column(Float)
    #: mqtt / http
    source: Mapped[str] = mapped_column(String(8))
    device_id: Mapped[str] = mapped_column(String(100), default="")
    #: What the falls policy made of it: "alarm", "bed_exit_alert", "ignored:<why>", "cleared".
    outcome: Mapped[str] = mapped_column(String(64), default="")
    alert_fk: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
