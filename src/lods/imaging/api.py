"""JSON API under /api: the study list, one study, and intake statistics for administrators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from lods.audit.service import record
from lods.auth.deps import AdminUser, ImagingReader, SessionDep
from lods.imaging import browse
from lods.imaging.schemas import (
    IntakeStatsOut,
    RejectionOut,
    StudyDetailOut,
    StudyPage,
    StudySearch,
    StudySummary,
)

router = APIRouter(prefix="/api", tags=["imaging"])


@router.get("/studies", response_model=StudyPage)
def list_studies(
    params: Annotated[StudySearch, Query()], db: SessionDep, user: ImagingReader
) -> StudyPage:
    """Search studies, newest first."""
    found = browse.find_studies(
        db, study_filter=params.to_filter(), limit=params.limit, offset=params.offset
    )
    record(
        db,
        actor=user.username,
        action="study.list",
        source=user.source,
        detail={
            "filter": params.model_dump(mode="json", exclude_defaults=True),
            "results": len(found.rows),
            "via": "api",
        },
    )
    items = [StudySummary.from_rows(r.study, r.patient, r.site) for r in found.rows]
    return StudyPage(items=items, total=found.total, limit=params.limit, offset=params.offset)


@router.get("/studies/{study_uid}", response_model=StudyDetailOut)
def get_study(study_uid: str, db: SessionDep, user: ImagingReader) -> StudyDetailOut:
    """Return one study with its series and current instances."""
    detail = browse.get_study(db, study_uid=study_uid)
    if detail is None:
        raise HTTPException(404, "study not found")
    record(
        db,
        actor=user.username,
        action="study.view",
        source=user.source,
        study_uid=study_uid,
        patient_id=detail.patient.patient_id,
        detail={"via": "api"},
    )
    return StudyDetailOut.from_detail(detail)


@router.get("/intake/rejections", response_model=list[RejectionOut])
def list_rejections(
    db: SessionDep,
    user: AdminUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    channel: Annotated[str | None, Query(max_length=16)] = None,
) -> list[RejectionOut]:
    """Return refused inputs with their reasons, newest first."""
    rows = browse.recent_rejections(db, limit=limit, offset=offset, channel=channel)
    record(
        db,
        actor=user.username,
        action="intake.rejections.view",
        source=user.source,
        detail={"results": len(rows), "channel": channel},
    )
    return [RejectionOut.from_row(r) for r in rows]


@router.get("/intake/stats", response_model=IntakeStatsOut)
def intake_stats(
    db: SessionDep, user: AdminUser, since: Annotated[datetime | None, Query()] = None
) -> IntakeStatsOut:
    """Return intake counts by channel and status, and the latest refusals."""
    stats = browse.intake_stats(db, since=since)
    recent = browse.recent_rejections(db, limit=20)
    record(db, actor=user.username, action="intake.stats.view", source=user.source)
    return IntakeStatsOut.from_stats(stats, recent)
