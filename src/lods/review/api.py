"""JSON API of the clinical review under /api/review: the acute worklist, the emergency
department's view, one study's review state and the reader's actions on it.

Reading needs a login with the right role (worklist: radiologist or admin; ED view and a
study's state: also physicians); every read of patient data is audited here, every
write by `review.service`. Writes need the radiologist role, and the CSRF token when they
come with a session cookie. A refused step (`ReviewError`) answers its own status with
`{"detail": ...}`. Each write answers the study's new review state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, SettingsDep, role_dependency
from lods.auth.models import Role
from lods.db import utcnow
from lods.exports import service as exports_service
from lods.findings.api import PRELIMINARY_LABEL
from lods.findings.models import Finding
from lods.imaging import browse
from lods.imaging.dicomweb_common import NO_STORE
from lods.imaging.models import Instance, Series
from lods.imaging.store import BlobStore
from lods.review import service
from lods.review.models import Decision, ReportState
from lods.review.readmodel import (
    ADDED_CODES,
    ED_LABEL,
    EdOut,
    EdRowOut,
    ReviewOut,
    WorklistOut,
    WorklistRowOut,
    ed_entries,
    review_state,
)
from lods.review.service import Box, Code, ReviewError
from lods.review.worklist import acute_worklist, recent_fingerprint, recent_studies
from lods.sites.service import get_site_by_code

router = APIRouter(prefix="/api/review", tags=["review"])

#: Who sees the acute worklist (radiologists act on it; admins watch it).
WORKLIST_ROLES = frozenset({Role.RADIOLOGIST, Role.ADMIN})
#: Who sees the ED view and a study's review state (physicians read, never edit).
REVIEW_VIEWERS = frozenset({Role.RADIOLOGIST, Role.PHYSICIAN, Role.ADMIN})
#: Who reads imaging: claims, decides, drafts, signs and amends.
READERS = frozenset({Role.RADIOLOGIST})

WorklistViewer = Annotated[Principal, Depends(role_dependency(*WORKLIST_ROLES))]
ReviewViewer = Annotated[Principal, Depends(role_dependency(*REVIEW_VIEWERS))]
Reader = Annotated[Principal, Depends(role_dependency(*READERS))]

MAX_TEXT = 20_000
MAX_COMMENT = 2_000


@contextmanager
def review_errors() -> Iterator[None]:
    """Answer a refused review step with its status and `{"detail": message}`."""
    try:
        yield
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def site_id_of(db: Session, code: str) -> int | None:
    """The id of the site with `code` ("" = all sites); 404 for an unknown code."""
    if not code:
        return None
    site = get_site_by_code(db, code=code)
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no site with code {code!r}")
    return site.id


def study_detail(db: Session, study_uid: str) -> browse.StudyDetail:
    detail = browse.get_study(db, study_uid=study_uid)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "study not found")
    return detail


def audit_view(db: Session, user: Principal, detail: browse.StudyDetail, via: str) -> None:
    record(
        db,
        actor=user.username,
        action="study.view",
        source=user.source,
        study_uid=detail.study.study_uid,
        patient_id=detail.patient.patient_id,
        detail={"via": via},
    )


def audit_list(
    db: Session, user: Principal, action: str, filters: dict[str, object], results: int
) -> None:
    record(
        db,
        actor=user.username,
        action=action,
        source=user.source,
        detail={"filter": {k: v for k, v in filters.items() if v}, "results": results},
    )


def _state(db: Session, study_uid: str, user: Principal) -> ReviewOut:
    """The new review state after a write (the write itself is the audited access)."""
    return review_state(db, study_detail(db, study_uid), user, now=utcnow())


# --- reading ---------------------------------------------------------------------------------


@router.get("/worklist", response_model=WorklistOut)
def worklist(
    db: SessionDep,
    user: WorklistViewer,
    site: Annotated[str, Query(max_length=32)] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorklistOut:
    """The acute X-ray list: unsigned DX/CR studies, most urgent AI result first, then
    longest waiting; with who is reading each one."""
    rows = acute_worklist(db, site_id=site_id_of(db, site), limit=limit, offset=offset)
    audit_list(db, user, "worklist.view", {"site": site, "offset": offset, "via": "api"}, len(rows))
    return WorklistOut(
        site=site or None,
        label=PRELIMINARY_LABEL,
        rows=[WorklistRowOut.of(r, user) for r in rows],
    )


@router.get("/ed", response_model=EdOut)
def ed_view(
    db: SessionDep,
    user: ReviewViewer,
    site: Annotated[str, Query(max_length=32)] = "",
    hours: Annotated[float, Query(gt=0, le=168)] = 12.0,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> EdOut:
    """Studies of the last `hours` with the AI's preliminary answer and boxes, and the
    final report once a radiologist has signed it."""
    rows = recent_studies(db, site_id=site_id_of(db, site), hours=hours, limit=limit)
    entries = ed_entries(db, rows)
    audit_list(db, user, "ed.view", {"site": site, "hours": hours, "via": "api"}, len(rows))
    return EdOut(
        site=site or None,
        hours=hours,
        label=ED_LABEL,
        rows=[EdRowOut.of_entry(e, user) for e in entries],
    )


class EdChangesOut(BaseModel):
    fingerprint: str


@router.get("/ed/changes", response_model=EdChangesOut)
def ed_changes(
    db: SessionDep,
    user: ReviewViewer,
    site: Annotated[str, Query(max_length=32)] = "",
    hours: Annotated[float, Query(gt=0, le=168)] = 12.0,
) -> EdChangesOut:
    """A fingerprint of the ED view that changes when a study, an AI answer or a report
    arrives; no patient data (the ED page polls it and reloads when it changes)."""
    return EdChangesOut(
        fingerprint=recent_fingerprint(db, site_id=site_id_of(db, site), hours=hours)
    )


@router.get("/studies/{study_uid}", response_model=ReviewOut)
def study_review(study_uid: str, db: SessionDep, user: ReviewViewer) -> ReviewOut:
    """The study, its images, the AI's findings with the decisions on them, the report
    and who is reading it."""
    detail = study_detail(db, study_uid)
    audit_view(db, user, detail, "review-api")
    return review_state(db, detail, user, now=utcnow())


@router.get("/studies/{study_uid}/findings/{finding_id}/heatmap")
def finding_heatmap(
    study_uid: str, finding_id: int, db: SessionDep, settings: SettingsDep, user: ReviewViewer
) -> Response:
    """The AI's heatmap of one finding: an 8-bit grey PNG on the image's grid."""
    detail = study_detail(db, study_uid)
    finding = db.get(Finding, finding_id)
    if (
        finding is None
        or finding.study_fk != detail.study.id
        or finding.mode not in service.CLINICAL_MODES
        or not finding.heatmap_sha256
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no heatmap for this finding")
    record(
        db,
        actor=user.username,
        action="ai.heatmap.view",
        source=user.source,
        study_uid=study_uid,
        patient_id=detail.patient.patient_id,
        object_ref=f"finding:{finding_id}",
    )
    try:
        png = BlobStore.from_settings(settings).read(finding.heatmap_sha256)
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the heatmap file is missing") from None
    return Response(png, media_type="image/png", headers=NO_STORE)


# --- acting ----------------------------------------------------------------------------------


class CodeIn(BaseModel):
    scheme: str = Field(min_length=1, max_length=16)
    value: str = Field(min_length=1, max_length=64)
    meaning: str = Field(min_length=1, max_length=200)


#: [x0, y0, x1, y1] in pixels of the stored image.
BoxIn = Annotated[list[float], Field(min_length=4, max_length=4)]


class DecisionIn(BaseModel):
    decision: str = Field(description="agree, disagree or amend")
    box: BoxIn | None = None
    #: A key of the short list (fracture, mass, calcification, other) or a code.
    code: CodeIn | str | None = None
    comment: str = Field("", max_length=MAX_COMMENT)


class AddedIn(BaseModel):
    code: CodeIn | str
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    box: BoxIn
    frame: int | None = Field(None, ge=1)
    comment: str = Field("", max_length=MAX_COMMENT)


class ReportIn(BaseModel):
    text: str = Field("", max_length=MAX_TEXT)
    conclusion: str = Field("", max_length=16)


class SignIn(BaseModel):
    text: str | None = Field(None, max_length=MAX_TEXT)
    conclusion: str | None = Field(None, max_length=16)


class AmendIn(BaseModel):
    text: str = Field(max_length=MAX_TEXT)
    conclusion: str = Field(max_length=16)
    reason: str = Field(max_length=MAX_COMMENT)


def _code(value: CodeIn | str) -> Code:
    if isinstance(value, str):
        code = ADDED_CODES.get(value)
        if code is None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, f"code must be one of {', '.join(ADDED_CODES)}"
            )
        return code
    return Code(value.scheme, value.value, value.meaning)


def _box_on_image(db: Session, study_id: int, sop_uid: str | None, corners: list[float]) -> Box:
    """The box, checked to lie on the image (when the image is known)."""
    with review_errors():
        box = Box(*corners)
    if sop_uid:
        size = db.execute(
            select(Instance.columns, Instance.rows)
            .join(Series, Series.id == Instance.series_fk)
            .where(
                Series.study_fk == study_id,
                Instance.sop_instance_uid == sop_uid,
                Instance.superseded_at.is_(None),
            )
        ).first()
        if size is not None and size[0] and size[1] and (box.x1 > size[0] or box.y1 > size[1]):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the box lies outside the image")
    return box


@router.post("/studies/{study_uid}/claim", response_model=ReviewOut)
def claim(study_uid: str, db: SessionDep, user: Reader, _csrf: CsrfProtected) -> ReviewOut:
    """Start reading the study: it is locked for other readers (409 if one holds it)."""
    detail = study_detail(db, study_uid)
    report = service.report_of(db, detail.study.id)
    if report is not None and report.state != ReportState.DRAFT:
        raise HTTPException(status.HTTP_409_CONFLICT, "the report is signed; amend it instead")
    with review_errors():
        service.claim(db, study_id=detail.study.id, user=user)
    return _state(db, study_uid, user)


@router.post("/studies/{study_uid}/release", response_model=ReviewOut)
def release(study_uid: str, db: SessionDep, user: Reader, _csrf: CsrfProtected) -> ReviewOut:
    """Give the study back to the list."""
    detail = study_detail(db, study_uid)
    with review_errors():
        service.release(db, study_id=detail.study.id, user=user)
    return _state(db, study_uid, user)


@router.post("/studies/{study_uid}/findings/{finding_id}/decision", response_model=ReviewOut)
def decide(
    study_uid: str,
    finding_id: int,
    body: DecisionIn,
    db: SessionDep,
    user: Reader,
    _csrf: CsrfProtected,
) -> ReviewOut:
    """Agree, disagree or amend (a new box and/or code) one AI finding."""
    detail = study_detail(db, study_uid)
    study_id = detail.study.id
    box = None
    if body.box is not None:
        finding = db.get(Finding, finding_id)
        box = _box_on_image(db, study_id, finding.sop_instance_uid if finding else None, body.box)
    code = _code(body.code) if body.code is not None else None
    with review_errors():
        service.decide(
            db,
            study_id=study_id,
            finding_id=finding_id,
            decision=_decision_kind(body.decision),
            user=user,
            box=box,
            code=code,
            comment=body.comment,
        )
    return _state(db, study_uid, user)


def _decision_kind(value: str) -> Decision:
    try:
        return Decision(value)
    except ValueError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "decision must be agree, disagree or amend"
        ) from None


@router.post("/studies/{study_uid}/added", response_model=ReviewOut)
def add_finding(
    study_uid: str, body: AddedIn, db: SessionDep, user: Reader, _csrf: CsrfProtected
) -> ReviewOut:
    """Record a finding the AI missed: a box on one image of the study and a code."""
    detail = study_detail(db, study_uid)
    box = _box_on_image(db, detail.study.id, body.sop_instance_uid, body.box)
    with review_errors():
        service.add_finding(
            db,
            study_id=detail.study.id,
            user=user,
            code=_code(body.code),
            sop_instance_uid=body.sop_instance_uid,
            box=box,
            frame=body.frame,
            comment=body.comment,
        )
    return _state(db, study_uid, user)


@router.delete("/studies/{study_uid}/added/{decision_id}", response_model=ReviewOut)
def remove_added(
    study_uid: str, decision_id: int, db: SessionDep, user: Reader, _csrf: CsrfProtected
) -> ReviewOut:
    """Take back a finding the reader added (while the report is a draft)."""
    detail = study_detail(db, study_uid)
    with review_errors():
        service.remove_added(db, study_id=detail.study.id, decision_id=decision_id, user=user)
    return _state(db, study_uid, user)


@router.put("/studies/{study_uid}/report", response_model=ReviewOut)
def save_draft(
    study_uid: str, body: ReportIn, db: SessionDep, user: Reader, _csrf: CsrfProtected
) -> ReviewOut:
    """Store the draft's text and conclusion (positive / negative / uncertain)."""
    detail = study_detail(db, study_uid)
    with review_errors():
        service.save_draft(
            db, study_id=detail.study.id, user=user, text=body.text, conclusion=body.conclusion
        )
    return _state(db, study_uid, user)


@router.post("/studies/{study_uid}/sign", response_model=ReviewOut)
def sign(
    study_uid: str,
    body: SignIn,
    db: SessionDep,
    user: Reader,
    settings: SettingsDep,
    _csrf: CsrfProtected,
) -> ReviewOut:
    """Make the report final with you as its signer; refused while an AI finding has no
    decision or no conclusion is stated. The signed report is queued for the site's PACS
    (VERIFIED SR and captures) in the same transaction."""
    detail = study_detail(db, study_uid)
    with review_errors():
        report = service.sign(
            db, study_id=detail.study.id, user=user, text=body.text, conclusion=body.conclusion
        )
    exports_service.on_report_signed(db, report.id, settings)
    return _state(db, study_uid, user)


@router.post("/studies/{study_uid}/amend", response_model=ReviewOut)
def amend(
    study_uid: str,
    body: AmendIn,
    db: SessionDep,
    user: Reader,
    settings: SettingsDep,
    _csrf: CsrfProtected,
) -> ReviewOut:
    """Replace a signed report's text and conclusion, with a reason; signed at once and
    queued for the PACS as a new SR version."""
    detail = study_detail(db, study_uid)
    with review_errors():
        report = service.amend(
            db,
            study_id=detail.study.id,
            user=user,
            text=body.text,
            conclusion=body.conclusion,
            reason=body.reason,
        )
    exports_service.on_report_signed(db, report.id, settings)
    return _state(db, study_uid, user)
