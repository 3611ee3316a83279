"""What the router decided for each input and deployment: a job, or a skip with reasons."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class RouteDecision(Base):
    __tablename__ = "route_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    event_fk: Mapped[int | None] = mapped_column(ForeignKey("study_events.id"), index=True)
    deployment_fk: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    version_fk: Mapped[int] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    #: "job" (a job was queued), "skipped" (outside intended use), "unchanged" (no new
    #: images since the last run: nothing to do).
    outcome: Mapped[str] = mapped_column(String(16))
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    #: [{"criterion": ..., "text": ...}] for a skip.
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: SOP Instance UIDs the solution may read.
    eligible: Mapped[list[str]] = mapped_column(JSON, default=list)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
