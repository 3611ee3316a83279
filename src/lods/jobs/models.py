"""The job table: the queue every executor (embedded processes now, Celery later) shares."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Job(Base):
    """One run of one solution version on one input (a study, or a vitals/sensor subject)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "state", "not_before", "priority", "id"),
        Index("ix_jobs_lease", "state", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Which handler runs it ("solution" = run a solution version through its runtime).
    kind: Mapped[str] = mapped_column(String(32), default="solution")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    version_fk: Mapped[int | None] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    deployment_fk: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    #: What to run on, as plain data (e.g. {"sop_instance_uids": [...]}).
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Lower runs first.
    priority: Mapped[int] = mapped_column(Integer, default=100)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    timeout_seconds: Mapped[float] = mapped_column(default=120.0)
    #: Not claimable before this time (retry back-off).
    not_before: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The last error in words, and its kind: transient, permanent, timeout, lost, cancelled.
    last_error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(16))
    #: Details the handler kept (timings, vendor ids); JSON.
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
