"""Local validation reports: how an installed solution version did on a hospital's own cases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class ValidationReport(Base):
    """One `lods validate` run: headline figures here, everything else in its report folder.

    The figures describe performance on the cases given (their labels file is identified
    by its SHA-256), not on any other population. `report_path` is the folder holding
    `report.json` and `report.html`, relative to the data dir.
    """

    __tablename__ = "validation_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_fk: Mapped[int] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    #: Where the cases come from (informational; not necessarily a site in Lods).
    site_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    labels_sha256: Mapped[str] = mapped_column(String(64))
    #: Scored cases (in the intended use, run without error, with a label).
    n_cases: Mapped[int] = mapped_column(Integer)
    n_positive: Mapped[int] = mapped_column(Integer)
    n_excluded: Mapped[int] = mapped_column(Integer)
    n_failed: Mapped[int] = mapped_column(Integer)
    auc: Mapped[float | None] = mapped_column(Float)
    auc_low: Mapped[float | None] = mapped_column(Float)
    auc_high: Mapped[float | None] = mapped_column(Float)
    sens_doubtful: Mapped[float | None] = mapped_column(Float)
    spec_doubtful: Mapped[float | None] = mapped_column(Float)
    sens_sure: Mapped[float | None] = mapped_column(Float)
    spec_sure: Mapped[float | None] = mapped_column(Float)
    #: The aggregate figures (no per-case rows, no patient data).
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report_path: Mapped[str] = mapped_column(String(300))
