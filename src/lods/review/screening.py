"""The screening reading strategy: how many humans read a mammography exam, and what they
may see while they do.

Per site (`Site.screening_double_read_from`, default 8), from the exam's AI score (1–10,
the most suspicious clinically visible result):

- score ≥ threshold → two independent reads; the second reader does not see the first
  read (nor the AI score: a blind second read), and discordant reads (one recall, one
  not) need a consensus read;
- score < threshold, or no AI score → one read, with the AI score shown.

No exam is ever closed without at least one human read, whatever the AI said: an exam
with no reads is "awaiting first read" even with score 1. A read by the same person twice
is refused, so it never counts as two independent reads; the database holds that too
(one read per reader and kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lods.auth.deps import Principal
from lods.auth.models import Role
from lods.db import utcnow
from lods.findings.models import StudyResult
from lods.imaging.models import Patient, Study
from lods.review.models import ScreeningRead
from lods.review.service import CLINICAL_MODES, ReviewError, audit_step, study_and_patient
from lods.sites.models import Site

OUTCOMES = ("recall", "no_recall")
SCREENING_MODALITY = "MG"


class ExamState(StrEnum):
    AWAITING_FIRST = "awaiting first read"
    AWAITING_SECOND = "awaiting second read"
    AWAITING_CONSENSUS = "awaiting consensus"
    DONE = "done"


@dataclass(frozen=True)
class ExamStatus:
    study_id: int
    ai_score: float | None
    threshold: int
    reads_needed: int
    reads: list[ScreeningRead]
    consensus: ScreeningRead | None
    state: ExamState
    #: recall / no_recall once done, else None.
    outcome: str | None


def exam_score(db: Session, study_id: int) -> float | None:
    """The exam's AI score: the highest study score of its clinically visible results."""
    value = db.scalar(
        select(func.max(StudyResult.score)).where(
            StudyResult.study_fk == study_id, StudyResult.mode.in_(CLINICAL_MODES)
        )
    )
    return float(value) if value is not None else None


def _threshold(db: Session, study: Study) -> int:
    site = db.get(Site, study.site_id)
    return site.screening_double_read_from if site is not None else 8


def status(db: Session, study_id: int) -> ExamStatus:
    """Where the exam stands in the strategy."""
    study, _ = study_and_patient(db, study_id)
    score = exam_score(db, study_id)
    threshold = _threshold(db, study)
    needed = 2 if score is not None and score >= threshold else 1
    rows = list(
        db.scalars(
            select(ScreeningRead)
            .where(ScreeningRead.study_fk == study_id)
            .order_by(ScreeningRead.created_at, ScreeningRead.id)
        )
    )
    reads = [r for r in rows if r.kind == "read"]
    consensus = next((r for r in rows if r.kind == "consensus"), None)
    outcome: str | None = None
    if len(reads) < 1:
        state = ExamState.AWAITING_FIRST
    elif needed == 1:
        state, outcome = ExamState.DONE, reads[0].outcome
    elif len(reads) < 2:
        state = ExamState.AWAITING_SECOND
    elif reads[0].outcome == reads[1].outcome:
        state, outcome = ExamState.DONE, reads[0].outcome
    elif consensus is None:
        state = ExamState.AWAITING_CONSENSUS
    else:
        state, outcome = ExamState.DONE, consensus.outcome
    return ExamStatus(study_id, score, threshold, needed, reads, consensus, state, outcome)


@dataclass(frozen=True)
class ReaderView:
    """What the strategy lets `user` see of an exam now."""

    show_ai_score: bool
    #: Earlier reads this reader may see (none for a blind second read).
    visible_reads: list[ScreeningRead]
    can_read: bool
    can_give_consensus: bool


def reader_view(db: Session, study_id: int, user: Principal) -> ReaderView:
    return view_of(status(db, study_id), user)


def view_of(exam: ExamStatus, user: Principal) -> ReaderView:
    """What the strategy lets `user` see of `exam` (pure)."""
    own = [r for r in exam.reads if r.reader_fk == user.user_id]
    radiologist = Role.RADIOLOGIST in user.roles
    if exam.state is ExamState.AWAITING_CONSENSUS or exam.state is ExamState.DONE or own:
        return ReaderView(
            show_ai_score=True,
            visible_reads=exam.reads,
            can_read=False,
            can_give_consensus=radiologist and exam.state is ExamState.AWAITING_CONSENSUS,
        )
    # Reading now: the first reader of a double-read exam and a single reader see the AI
    # score (single reading is "with the AI shown"); the second reader reads blind.
    second = exam.reads_needed == 2 and len(exam.reads) == 1
    return ReaderView(
        show_ai_score=not second,
        visible_reads=[],
        can_read=radiologist,
        can_give_consensus=False,
    )


def record_read(
    db: Session, *, study_id: int, user: Principal, outcome: str, comment: str = ""
) -> ExamStatus:
    """One independent read by `user` (a radiologist who has not read this exam)."""
    if Role.RADIOLOGIST not in user.roles:
        raise ReviewError("only a radiologist reads screening exams", 403)
    if outcome not in OUTCOMES:
        raise ReviewError(f"outcome must be one of {', '.join(OUTCOMES)}", 400)
    study, patient = study_and_patient(db, study_id)
    exam = status(db, study_id)
    if any(r.reader_fk == user.user_id for r in exam.reads):
        raise ReviewError("you have already read this exam; a second read needs another reader")
    if exam.state not in (ExamState.AWAITING_FIRST, ExamState.AWAITING_SECOND):
        raise ReviewError(f"the exam is {exam.state.value}; no further independent read")
    view = view_of(exam, user)
    db.add(
        ScreeningRead(
            study_fk=study_id,
            reader_fk=user.user_id,
            kind="read",
            outcome=outcome,
            comment=comment,
            ai_score_shown=exam.ai_score if view.show_ai_score else None,
            created_at=utcnow(),
        )
    )
    db.flush()
    audit_step(
        db,
        user,
        "screening.read",
        study,
        patient,
        detail={"outcome": outcome, "read": len(exam.reads) + 1, "needed": exam.reads_needed},
    )
    return status(db, study_id)


def record_consensus(
    db: Session, *, study_id: int, user: Principal, outcome: str, comment: str = ""
) -> ExamStatus:
    """Settle two discordant reads."""
    if Role.RADIOLOGIST not in user.roles:
        raise ReviewError("only a radiologist gives a consensus read", 403)
    if outcome not in OUTCOMES:
        raise ReviewError(f"outcome must be one of {', '.join(OUTCOMES)}", 400)
    study, patient = study_and_patient(db, study_id)
    exam = status(db, study_id)
    if exam.state is not ExamState.AWAITING_CONSENSUS:
        raise ReviewError(f"the exam is {exam.state.value}; no consensus is needed")
    db.add(
        ScreeningRead(
            study_fk=study_id,
            reader_fk=user.user_id,
            kind="consensus",
            outcome=outcome,
            comment=comment,
            ai_score_shown=exam.ai_score,
            created_at=utcnow(),
        )
    )
    db.flush()
    audit_step(db, user, "screening.consensus", study, patient, detail={"outcome": outcome})
    return status(db, study_id)


@dataclass(frozen=True)
class ScreeningRow:
    study_id: int
    study_uid: str
    patient_id: str
    patient_name: str
    received_at: datetime
    waiting: timedelta
    #: None when the strategy hides it from this reader (blind second read).
    ai_score: float | None
    state: ExamState
    reads_done: int
    reads_needed: int
    outcome: str | None
    #: What the strategy lets the listing reader see and do.
    view: ReaderView


def screening_worklist(
    db: Session,
    user: Principal,
    *,
    site_id: int | None = None,
    include_done: bool = False,
    limit: int = 200,
    now: datetime | None = None,
) -> list[ScreeningRow]:
    """Open exams (MG) for `user`: highest AI score first, then the longest waiting.

    The AI score is left out where the strategy makes `user` read blind.
    """
    now = now or utcnow()
    score = (
        select(StudyResult.study_fk.label("study_fk"), func.max(StudyResult.score).label("s"))
        .where(StudyResult.mode.in_(CLINICAL_MODES), StudyResult.study_fk.is_not(None))
        .group_by(StudyResult.study_fk)
        .subquery()
    )
    query = (
        select(Study, Patient)
        .join(Patient, Patient.id == Study.patient_fk)
        .outerjoin(score, score.c.study_fk == Study.id)
        .where(Study.modalities.like(f"%{SCREENING_MODALITY}%"))
        .order_by(func.coalesce(score.c.s, 0).desc(), Study.first_received_at, Study.id)
        .limit(limit)
    )
    if site_id is not None:
        query = query.where(Study.site_id == site_id)
    rows = []
    for study, patient in db.execute(query).all():
        exam = status(db, study.id)
        if exam.state is ExamState.DONE and not include_done:
            continue
        view = view_of(exam, user)
        rows.append(
            ScreeningRow(
                study_id=study.id,
                study_uid=study.study_uid,
                patient_id=patient.patient_id,
                patient_name=patient.name,
                received_at=study.first_received_at,
                waiting=now - study.first_received_at,
                ai_score=exam.ai_score if view.show_ai_score else None,
                state=exam.state,
                reads_done=len(exam.reads),
                reads_needed=exam.reads_needed,
                outcome=exam.outcome,
                view=view,
            )
        )
    return rows
