"""Reading the image catalogue: searches, one study in full, and intake statistics.

Typed, keyword-only functions that run in the caller's transaction; the conditions they
take come from `lods.imaging.query` (QIDO-RS matching keys or the study list's filter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from lods.imaging.models import Instance, IntakeRejection, Patient, Series, Study
from lods.imaging.query import Level, StudyFilter, filter_conditions, prepare_session
from lods.sites.models import Site


@dataclass(frozen=True)
class InstanceRow:
    """A current instance with its series, study and patient."""

    instance: Instance | None
    series: Series | None
    study: Study
    patient: Patient
    site: Site | None = None


@dataclass
class Page:
    """One page of search results, and whether more lie beyond it."""

    rows: list[InstanceRow] = field(default_factory=list)
    more: bool = False


def _select(level: Level) -> Any:
    """Return the SELECT of a level's rows, joined up to the patient, in display order."""
    if level == "study":
        return (
            select(Study, Patient, Site)
            .join(Patient, Study.patient_fk == Patient.id)
            .outerjoin(Site, Site.id == Study.site_id)
            .order_by(Study.study_date.desc().nulls_last(), Study.id.desc())
        )
    if level == "series":
        return (
            select(Series, Study, Patient)
            .join(Study, Series.study_fk == Study.id)
            .join(Patient, Study.patient_fk == Patient.id)
            .order_by(Study.id.desc(), Series.series_number.nulls_last(), Series.id)
        )
    stmt = (
        select(Instance, Series, Study, Patient)
        .join(Series, Instance.series_fk == Series.id)
        .join(Study, Series.study_fk == Study.id)
        .join(Patient, Study.patient_fk == Patient.id)
        .where(Instance.superseded_at.is_(None))
    )
    return stmt.order_by(
        Study.id.desc(),
        Series.series_number.nulls_last(),
        Series.id,
        Instance.instance_number.nulls_last(),
        Instance.id,
    )


def _row(level: Level, values: Sequence[Any]) -> InstanceRow:
    if level == "study":
        return InstanceRow(None, None, values[0], values[1], values[2])
    if level == "series":
        return InstanceRow(None, values[0], values[1], values[2])
    return InstanceRow(values[0], values[1], values[2], values[3])


def search(
    db: Session,
    *,
    level: Level,
    where: Sequence[ColumnElement[bool]],
    limit: int,
    offset: int = 0,
) -> Page:
    """Return one page of studies, series or current instances matching every condition."""
    prepare_session(db)
    stmt = _select(level).where(*where).limit(limit + 1).offset(offset)
    rows = [_row(level, r) for r in db.execute(stmt).all()]
    return Page(rows=rows[:limit], more=len(rows) > limit)


def scope_conditions(
    *, study_uid: str | None = None, series_uid: str | None = None
) -> list[ColumnElement[bool]]:
    """Return the conditions that restrict a search to a study and/or series."""
    where: list[ColumnElement[bool]] = []
    if study_uid is not None:
        where.append(Study.study_uid == study_uid)
    if series_uid is not None:
        where.append(Series.series_uid == series_uid)
    return where


def current_instances(
    db: Session,
    *,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[InstanceRow]:
    """Return the current instances of a study, series or single instance, in order."""
    prepare_session(db)
    where = scope_conditions(study_uid=study_uid, series_uid=series_uid)
    if sop_instance_uid is not None:
        where.append(Instance.sop_instance_uid == sop_instance_uid)
    return [_row("instance", r) for r in db.execute(_select("instance").where(*where)).all()]


def count(db: Session, *, where: Sequence[ColumnElement[bool]]) -> int:
    """Return how many studies match every condition."""
    prepare_session(db)
    stmt = select(func.count(Study.id)).join(Patient, Study.patient_fk == Patient.id)
    return int(db.scalar(stmt.where(*where)) or 0)


# --- one study -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesDetail:
    """A series and its current instances, in instance-number order."""

    series: Series
    instances: list[Instance]


@dataclass(frozen=True)
class StudyDetail:
    """A study with its patient, site and series."""

    study: Study
    patient: Patient
    site: Site | None
    series: list[SeriesDetail]


def get_study(db: Session, *, study_uid: str) -> StudyDetail | None:
    """Return the study with its series and current instances, or None."""
    found = db.execute(
        select(Study, Patient, Site)
        .join(Patient, Study.patient_fk == Patient.id)
        .outerjoin(Site, Site.id == Study.site_id)
        .where(Study.study_uid == study_uid)
    ).first()
    if found is None:
        return None
    study, patient, site = found
    grouped: dict[int, SeriesDetail] = {}
    for row in current_instances(db, study_uid=study_uid):
        assert row.series is not None and row.instance is not None
        detail = grouped.setdefault(row.series.id, SeriesDetail(row.series, []))
        detail.instances.append(row.instance)
    return StudyDetail(study, patient, site, list(grouped.values()))


# --- intake --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntakeStats:
    """What came in since a moment: stored instance versions and refusals."""

    since: datetime | None
    received: dict[str, int]  # channel -> instance versions stored
    rejected: dict[str, int]  # channel -> refusals
    rejected_by_status: dict[int, int]  # DICOM status -> refusals


def intake_stats(db: Session, *, since: datetime | None = None) -> IntakeStats:
    """Return intake counts by channel and refusal status, since `since` (or ever)."""
    received = select(Instance.channel, func.count(Instance.id)).group_by(Instance.channel)
    rejected = select(IntakeRejection.channel, func.count(IntakeRejection.id)).group_by(
        IntakeRejection.channel
    )
    statuses = select(IntakeRejection.status, func.count(IntakeRejection.id)).group_by(
        IntakeRejection.status
    )
    if since is not None:
        received = received.where(Instance.received_at >= since)
        rejected = rejected.where(IntakeRejection.received_at >= since)
        statuses = statuses.where(IntakeRejection.received_at >= since)
    return IntakeStats(
        since=since,
        received={str(c): int(n) for c, n in db.execute(received).all()},
        rejected={str(c): int(n) for c, n in db.execute(rejected).all()},
        rejected_by_status={int(s): int(n) for s, n in db.execute(statuses).all()},
    )


def recent_rejections(
    db: Session, *, limit: int = 50, offset: int = 0, channel: str | None = None
) -> list[IntakeRejection]:
    """Return refusals, newest first."""
    stmt = select(IntakeRejection).order_by(IntakeRejection.id.desc())
    if channel:
        stmt = stmt.where(IntakeRejection.channel == channel)
    return list(db.scalars(stmt.limit(limit).offset(offset)))


# --- the study list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyList:
    """One page of the study list and how many studies match in all."""

    rows: list[InstanceRow]
    total: int


def find_studies(db: Session, *, study_filter: StudyFilter, limit: int, offset: int) -> StudyList:
    """Return a page of studies matching the filter, newest first, and the total count."""
    where = filter_conditions(study_filter)
    page = search(db, level="study", where=where, limit=limit, offset=offset)
    return StudyList(rows=page.rows, total=count(db, where=where))
