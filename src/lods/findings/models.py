"""AI output: findings and study-level results, always preliminary."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow

#: The only status AI output can have; a clinician's report is a separate, signed thing.
PRELIMINARY = "preliminary"


class Finding(Base):
    """One AI finding: a code with a score and certainty, optionally located on an image."""

    __tablename__ = "findings"
    __table_args__ = (CheckConstraint("status = 'preliminary'", name="ai_output_preliminary"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    version_fk: Mapped[int] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    deployment_fk: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    #: The deployment's mode when the job ran: shadow findings are hidden from clinicians.
    mode: Mapped[str] = mapped_column(String(16))
    finding_key: Mapped[str] = mapped_column(String(40))
    code_scheme: Mapped[str] = mapped_column(String(16))
    code_value: Mapped[str] = mapped_column(String(64))
    code_meaning: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    #: sure / doubtful / none, from the manifest's operating points.
    certainty: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(Integer)
    box_x0: Mapped[float | None] = mapped_column(Float)
    box_y0: Mapped[float | None] = mapped_column(Float)
    box_x1: Mapped[float | None] = mapped_column(Float)
    box_y1: Mapped[float | None] = mapped_column(Float)
    #: Heatmap PNG in the blob store.
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=PRELIMINARY)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StudyResult(Base):
    """The study-level answer of one job: positive / uncertain / negative with its score."""

    __tablename__ = "study_results"
    __table_args__ = (CheckConstraint("status = 'preliminary'", name="ai_result_preliminary"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    version_fk: Mapped[int] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    deployment_fk: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    #: positive / uncertain / negative
    outcome: Mapped[str] = mapped_column(String(16))
    #: The words for the outcome from the manifest ("Fracture", "No fracture", ...).
    text: Mapped[str] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Float)
    certainty: Mapped[str] = mapped_column(String(16))
    num_findings: Mapped[int] = mapped_column(Integer, default=0)
    #: Provenance: solution id, version and the SHA-256 of every file that produced it.
    provenance: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PRELIMINARY)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
