"""Worklists: the acute X-ray list ordered by AI urgency, and the emergency department's
view of recent studies with the AI's preliminary answer and the signed report.

Urgency of a study (what the AI said, from results clinicians may see):
sure finding (3) > doubtful (2) > negative (1) > not analysed (0); within one urgency the
longest-waiting study comes first. When a study has several results (several solutions,
or a re-run) the most urgent one counts: a list must not bury a study because a second
run was calmer. Signed and amended studies leave the acute list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from lods.db import utcnow
from lods.findings.models import StudyResult
from lods.imaging.models import Patient, Study
from lods.review.models import Report, ReportState
from lods.review.service import CLINICAL_MODES, ClaimInfo, claims_for

#: The modalities of the acute X-ray list.
ACUTE_MODALITIES = ("DX", "CR")
URGENCY_LABELS = {3: "sure", 2: "doubtful", 1: "negative", 0: "not analysed"}


@dataclass(frozen=True)
class WorklistRow:
    study_id: int
    study_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    description: str
    modalities: str
    received_at: datetime
    waiting: timedelta
    #: 3 sure, 2 doubtful, 1 negative, 0 not analysed (see the module).
    urgency: int
    ai_outcome: str | None
    ai_text: str | None
    ai_score: float | None
    claim: ClaimInfo | None
    report_state: str | None


def _urgency():  # type: ignore[no-untyped-def]
    """The study's urgency as a correlated scalar subquery (evaluated per candidate study,
    through the index on `study_results.study_fk`)."""
    rank = case(
        (StudyResult.certainty == "sure", 3),
        (StudyResult.certainty == "doubtful", 2),
        else_=1,
    )
    return func.coalesce(
        select(func.max(rank))
        .where(StudyResult.study_fk == Study.id, StudyResult.mode.in_(CLINICAL_MODES))
        .correlate(Study)
        .scalar_subquery(),
        0,
    )


def _report_state():  # type: ignore[no-untyped-def]
    return (
        select(Report.state).where(Report.study_fk == Study.id).correlate(Study).scalar_subquery()
    )


def _modality_filter(modalities: tuple[str, ...]):  # type: ignore[no-untyped-def]
    return or_(*(Study.modalities.like(f"%{m}%") for m in modalities))


def _top_results(db: Session, study_ids: list[int]) -> dict[int, StudyResult]:
    """Per study: its most urgent clinically visible result (newest on a tie)."""
    if not study_ids:
        return {}
    order = {"sure": 3, "doubtful": 2}
    best: dict[int, StudyResult] = {}
    for result in db.scalars(
        select(StudyResult)
        .where(StudyResult.study_fk.in_(study_ids), StudyResult.mode.in_(CLINICAL_MODES))
        .order_by(StudyResult.created_at)
    ):
        assert result.study_fk is not None
        current = best.get(result.study_fk)
        if current is None or order.get(result.certainty, 1) >= order.get(current.certainty, 1):
            best[result.study_fk] = result
    return best


def _rows(
    db: Session, records: list[tuple[Study, Patient, int | None, str | None]], now: datetime
) -> list[WorklistRow]:
    ids = [study.id for study, *_ in records]
    claims = claims_for(db, ids)
    tops = _top_results(db, ids)
    rows = []
    for study, patient, urgency, state in records:
        top = tops.get(study.id)
        rows.append(
            WorklistRow(
                study_id=study.id,
                study_uid=study.study_uid,
                patient_id=patient.patient_id,
                patient_name=patient.name,
                accession_number=study.accession_number,
                description=study.description,
                modalities=study.modalities,
                received_at=study.first_received_at,
                waiting=now - study.first_received_at,
                urgency=int(urgency or 0),
                ai_outcome=top.outcome if top else None,
                ai_text=top.text if top else None,
                ai_score=top.score if top else None,
                claim=claims.get(study.id),
                report_state=state,
            )
        )
    return rows


def acute_worklist(
    db: Session,
    *,
    site_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
    now: datetime | None = None,
) -> list[WorklistRow]:
    """Unsigned DX/CR studies: most urgent first, then longest waiting."""
    now = now or utcnow()
    level = _urgency()
    signed = (
        select(Report.id)
        .where(Report.study_fk == Study.id, Report.state != ReportState.DRAFT.value)
        .correlate(Study)
        .exists()
    )
    query = (
        select(Study, Patient, level, _report_state())
        .join(Patient, Patient.id == Study.patient_fk)
        .where(_modality_filter(ACUTE_MODALITIES), ~signed)
        .order_by(level.desc(), Study.first_received_at, Study.id)
        .limit(limit)
        .offset(offset)
    )
    if site_id is not None:
        query = query.where(Study.site_id == site_id)
    records = [(s, p, u, st) for s, p, u, st in db.execute(query).all()]
    return _rows(db, records, now)


def recent_studies(
    db: Session,
    *,
    site_id: int | None = None,
    hours: float = 12.0,
    limit: int = 200,
    now: datetime | None = None,
) -> list[WorklistRow]:
    """The emergency department's view: studies of the last `hours`, newest first."""
    now = now or utcnow()
    query = (
        select(Study, Patient, _urgency(), _report_state())
        .join(Patient, Patient.id == Study.patient_fk)
        .where(Study.first_received_at >= now - timedelta(hours=hours))
        .order_by(Study.first_received_at.desc(), Study.id.desc())
        .limit(limit)
    )
    if site_id is not None:
        query = query.where(Study.site_id == site_id)
    records = [(s, p, u, st) for s, p, u, st in db.execute(query).all()]
    return _rows(db, records, now)


def recent_fingerprint(
    db: Session, *, site_id: int | None = None, hours: float = 12.0, now: datetime | None = None
) -> str:
    """A short text that changes whenever the ED view of the last `hours` would: a study
    arrives, an AI result is stored, a report is saved or signed. It holds no patient
    data, so the ED page can poll it cheaply (and without an audit event per poll)."""
    now = now or utcnow()
    recent = select(Study.id).where(Study.first_received_at >= now - timedelta(hours=hours))
    if site_id is not None:
        recent = recent.where(Study.site_id == site_id)
    ids = recent.scalar_subquery()
    studies = db.execute(
        select(func.count(), func.max(Study.first_received_at)).where(Study.id.in_(ids))
    ).one()
    results = db.execute(
        select(func.count(), func.max(StudyResult.id)).where(
            StudyResult.study_fk.in_(ids), StudyResult.mode.in_(CLINICAL_MODES)
        )
    ).one()
    reports = db.execute(
        select(func.count(), func.max(Report.updated_at)).where(Report.study_fk.in_(ids))
    ).one()
    parts = [*studies, *results, *reports]
    return "|".join("" if p is None else str(p) for p in parts)
