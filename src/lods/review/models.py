"""Clinical review: who is reading a study, the human decision on each AI finding, and the
report that only a named clinician can make final.

AI output (`findings`, `study_results`) stays preliminary for ever; what a clinician
decides lives here, next to it, never in place of it. A report row is a draft until a
signer signs it; the database itself refuses a signed or amended report without a signer
and a signing time (`report_final_needs_signer`), whatever code writes it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class ReportState(StrEnum):
    DRAFT = "draft"
    SIGNED = "signed"
    AMENDED = "amended"


class Decision(StrEnum):
    """A clinician's answer to one AI finding, or a finding the AI missed."""

    AGREE = "agree"
    DISAGREE = "disagree"
    AMEND = "amend"
    ADDED = "added"


class StudyClaim(Base):
    """A study someone is reading now: locked for the others until released or stale."""

    __tablename__ = "study_claims"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Report(Base):
    """The clinician's report of a study: draft → signed (final) → amended."""

    __tablename__ = "reports"
    __table_args__ = (
        CheckConstraint(
            "state = 'draft' OR (signer_fk IS NOT NULL AND signed_at IS NOT NULL)",
            name="report_final_needs_signer",
        ),
        CheckConstraint("state IN ('draft', 'signed', 'amended')", name="report_state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=ReportState.DRAFT.value, index=True)
    #: Free text (findings and impression), as the radiologist wrote it.
    text: Mapped[str] = mapped_column(Text, default="")
    #: The overall human conclusion: positive / negative / uncertain, or "" in a draft.
    conclusion: Mapped[str] = mapped_column(String(16), default="")
    #: Counts up with every signing (1 = first signed version, 2 = first amendment, ...).
    version: Mapped[int] = mapped_column(Integer, default=0)
    author_fk: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    signer_fk: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: Why the signed report was amended (the latest amendment).
    amendment_reason: Mapped[str | None] = mapped_column(Text)


class ReportRevision(Base):
    """Each signed version of a report, kept as it was signed."""

    __tablename__ = "report_revisions"
    __table_args__ = (UniqueConstraint("report_fk", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_fk: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    conclusion: Mapped[str] = mapped_column(String(16))
    #: The decisions as signed (JSON list), so an amendment never rewrites history.
    decisions: Mapped[str] = mapped_column(Text)
    signer_fk: Mapped[int] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)


class FindingDecision(Base):
    """One clinician decision: agree / disagree / amend an AI finding, or add a missed one.

    One row per (report, AI finding); a changed mind updates it (and is audited). Added
    findings have no AI finding. Amended and added findings carry the clinician's code and
    box; the AI's own row is never touched.
    """

    __tablename__ = "finding_decisions"
    __table_args__ = (
        UniqueConstraint("report_fk", "finding_fk"),
        CheckConstraint(
            "(decision = 'added') = (finding_fk IS NULL)", name="added_has_no_ai_finding"
        ),
        CheckConstraint(
            "decision IN ('agree', 'disagree', 'amend', 'added')", name="decision_kind"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    report_fk: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    finding_fk: Mapped[int | None] = mapped_column(ForeignKey("findings.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    code_scheme: Mapped[str | None] = mapped_column(String(16))
    code_value: Mapped[str | None] = mapped_column(String(64))
    code_meaning: Mapped[str | None] = mapped_column(String(200))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(Integer)
    box_x0: Mapped[float | None] = mapped_column(Float)
    box_y0: Mapped[float | None] = mapped_column(Float)
    box_x1: Mapped[float | None] = mapped_column(Float)
    box_y1: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str] = mapped_column(Text, default="")
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScreeningRead(Base):
    """One human read of a screening exam: recall or no recall.

    `kind` is "read" (an independent read) or "consensus" (settles two discordant reads).
    A reader reads an exam once: a second read by the same person is refused, so it can
    never count as the second of two independent reads.
    """

    __tablename__ = "screening_reads"
    __table_args__ = (
        UniqueConstraint("study_fk", "reader_fk", "kind"),
        CheckConstraint("kind IN ('read', 'consensus')", name="screening_read_kind"),
        CheckConstraint("outcome IN ('recall', 'no_recall')", name="screening_read_outcome"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    reader_fk: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    #: The AI exam score the reader was shown (None: the strategy hid it, or there was none).
    ai_score_shown: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
