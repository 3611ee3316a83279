"""The outbox: one row per thing to send, before and after every attempt."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class OutboxState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class OutboxItem(Base):
    """One send: what (`what`, the payload), where (`transport` + `destination`), and how
    it went (`state`, attempts, the last error, when to try next)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: dicom / fhir / hl7
    transport: Mapped[str] = mapped_column(String(16))
    #: Where to: a DICOM node id, a FHIR base URL, an MLLP host:port.
    destination: Mapped[str] = mapped_column(String(300))
    #: What it is, e.g. "sr-verified", "sr-unverified", "sc", "fhir-report", "hl7-oru".
    what: Mapped[str] = mapped_column(String(40))
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    report_fk: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), index=True)
    #: Idempotent enqueue: the same thing for the same place is one row.
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    #: The payload in the blob store (DICOM files) or inline (FHIR JSON, HL7 text).
    payload_sha256: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: While a sender works on it; a crashed sender's row is picked up after this.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
