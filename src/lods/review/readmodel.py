"""What the review pages and `/api/review` show: worklist rows, the emergency department's
view, and the whole state of one study under review, as JSON-ready models.

Pure reads: nothing here writes or audits; the routes audit each read of patient data.
AI output is always labelled preliminary; a report is final only when signed by a named
radiologist (`review.service`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.auth.deps import Principal
from lods.auth.models import Role, User
from lods.findings.api import PRELIMINARY_LABEL, study_ai
from lods.findings.models import Finding
from lods.imaging.browse import StudyDetail
from lods.imaging.dicomweb_common import PREFIX
from lods.imaging.models import Instance, Series
from lods.review.models import FindingDecision, Report, ReportState
from lods.review.service import (
    CLINICAL_MODES,
    CONCLUSIONS,
    Code,
    claims_for,
    clinical_findings,
    decisions_of,
    report_of,
    revisions,
)
from lods.review.worklist import URGENCY_LABELS, WorklistRow
from lods.solutions.models import SolutionVersion
from lods.solutions.service import manifest_of

#: What the emergency department sees on every AI answer (the pages translate it).
ED_LABEL = "AI suggestion — not verified by a radiologist"

#: The codes a reader picks from for a finding the AI missed (SNOMED CT).
ADDED_CODES: dict[str, Code] = {
    "fracture": Code("SCT", "125605004", "Fracture of bone"),
    "mass": Code("SCT", "4147007", "Mass"),
    "calcification": Code("SCT", "18115005", "Pathologic calcification"),
    "other": Code("SCT", "404684003", "Clinical finding"),
}

#: Series that hold no pictures to show as a thumbnail.
_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV"})


def _names(db: Session, user_ids: Iterable[int | None]) -> dict[int, User]:
    ids = {i for i in user_ids if i is not None}
    if not ids:
        return {}
    return {u.id: u for u in db.scalars(select(User).where(User.id.in_(ids)))}


def _full_name(user: User | None) -> str:
    return (user.full_name or user.username) if user is not None else ""


def _box(x0: float | None, y0: float | None, x1: float | None, y1: float | None) -> list[float]:
    corners = [c for c in (x0, y0, x1, y1) if c is not None]
    return [float(c) for c in corners] if len(corners) == 4 else []


def instance_url(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The WADO-RS address of one instance (add `/rendered` or `/frames/n/rendered`)."""
    return f"{PREFIX}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def heatmap_url(study_uid: str, finding_id: int) -> str:
    return f"/api/review/studies/{study_uid}/findings/{finding_id}/heatmap"


# --- worklist -------------------------------------------------------------------------------


class ClaimOut(BaseModel):
    username: str
    full_name: str
    claimed_at: datetime
    #: Whether the user asking holds the claim.
    mine: bool


class AiAnswerOut(BaseModel):
    #: 3 sure, 2 doubtful, 1 negative, 0 not analysed.
    urgency: int
    urgency_label: str
    outcome: str | None
    text: str | None
    score: float | None


class WorklistRowOut(BaseModel):
    study_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    description: str
    modalities: str
    received_at: datetime
    waiting_seconds: int
    ai: AiAnswerOut
    claim: ClaimOut | None
    report_state: str | None

    @classmethod
    def of(cls, row: WorklistRow, user: Principal) -> WorklistRowOut:
        claim = row.claim
        return cls(
            study_uid=row.study_uid,
            patient_id=row.patient_id,
            patient_name=row.patient_name,
            accession_number=row.accession_number,
            description=row.description,
            modalities=row.modalities,
            received_at=row.received_at,
            waiting_seconds=max(0, int(row.waiting.total_seconds())),
            ai=AiAnswerOut(
                urgency=row.urgency,
                urgency_label=URGENCY_LABELS.get(row.urgency, "not analysed"),
                outcome=row.ai_outcome,
                text=row.ai_text,
                score=row.ai_score,
            ),
            claim=(
                ClaimOut(
                    username=claim.username,
                    full_name=claim.full_name or claim.username,
                    claimed_at=claim.claimed_at,
                    mine=claim.user_id == user.user_id,
                )
                if claim is not None
                else None
            ),
            report_state=row.report_state,
        )


class WorklistOut(BaseModel):
    site: str | None
    #: AI results are preliminary: a suggestion, not verified by a clinician.
    label: str
    rows: list[WorklistRowOut]


# --- the emergency department's view ----------------------------------------------------------


@dataclass(frozen=True)
class EdImage:
    """One image of a study with the AI's boxes on it (`boxes` may be empty)."""

    sop_instance_uid: str
    series_uid: str
    rows: int
    columns: int
    frame: int
    url: str
    boxes: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class EdEntry:
    row: WorklistRow
    images: list[EdImage]
    #: A series thumbnail when no finding points at an image.
    thumbnail: str | None
    findings: list[Finding]
    report: Report | None
    signer: User | None


def findings_by_study(db: Session, study_ids: Sequence[int]) -> dict[int, list[Finding]]:
    """Per study, the AI findings clinicians see: the newest job per deployment (as
    `service.clinical_findings`, for many studies in one query), strongest first."""
    if not study_ids:
        return {}
    newest: dict[tuple[int, int | None], int] = {}
    found: dict[int, list[Finding]] = defaultdict(list)
    for f in db.scalars(
        select(Finding)
        .where(Finding.study_fk.in_(list(study_ids)), Finding.mode.in_(CLINICAL_MODES))
        .order_by(Finding.created_at.desc(), Finding.id)
    ):
        assert f.study_fk is not None
        if newest.setdefault((f.study_fk, f.deployment_fk), f.job_fk) == f.job_fk:
            found[f.study_fk].append(f)
    for items in found.values():
        items.sort(key=lambda f: -f.score)
    return dict(found)


def ed_entries(db: Session, rows: Sequence[WorklistRow], *, max_images: int = 4) -> list[EdEntry]:
    """The ED view of `rows`: the images the AI pointed at, with its boxes, and the report."""
    ids = [r.study_id for r in rows]
    findings = findings_by_study(db, ids)
    uids = {f.sop_instance_uid for fs in findings.values() for f in fs if f.sop_instance_uid}
    located: dict[tuple[int, str], tuple[Instance, Series]] = {}
    if uids:
        for inst, series in db.execute(
            select(Instance, Series)
            .join(Series, Series.id == Instance.series_fk)
            .where(
                Instance.sop_instance_uid.in_(uids),
                Instance.superseded_at.is_(None),
                Series.study_fk.in_(ids),
            )
        ).all():
            located[(series.study_fk, inst.sop_instance_uid)] = (inst, series)
    first_series: dict[int, str] = {}
    if ids:
        for study_fk, series_uid, modality in db.execute(
            select(Series.study_fk, Series.series_uid, Series.modality)
            .where(Series.study_fk.in_(ids))
            .order_by(Series.study_fk, Series.series_number, Series.id)
        ).all():
            if modality not in _NON_IMAGE_MODALITIES:
                first_series.setdefault(study_fk, series_uid)
    reports: dict[int, Report] = {}
    if ids:
        reports = {
            r.study_fk: r for r in db.scalars(select(Report).where(Report.study_fk.in_(ids)))
        }
    signers = _names(db, (r.signer_fk for r in reports.values()))
    entries = []
    for row in rows:
        images: dict[tuple[str, int], EdImage] = {}
        for f in findings.get(row.study_id, []):
            if not f.sop_instance_uid:
                continue
            hit = located.get((row.study_id, f.sop_instance_uid))
            if hit is None or not hit[0].rows or not hit[0].columns:
                continue
            inst, series = hit
            frame = f.frame or 1
            key = (inst.sop_instance_uid, frame)
            if key not in images:
                if len(images) >= max_images:
                    continue
                base = instance_url(row.study_uid, series.series_uid, inst.sop_instance_uid)
                url = base + (f"/frames/{frame}" if (inst.number_of_frames or 1) > 1 else "")
                images[key] = EdImage(
                    sop_instance_uid=inst.sop_instance_uid,
                    series_uid=series.series_uid,
                    rows=int(inst.rows or 0),
                    columns=int(inst.columns or 0),
                    frame=frame,
                    url=url + "/rendered?accept=image/png&viewport=320,320",
                )
            if _box(f.box_x0, f.box_y0, f.box_x1, f.box_y1):
                images[key].boxes.append(f)
        first = first_series.get(row.study_id)
        thumbnail = (
            f"{PREFIX}/studies/{row.study_uid}/series/{first}/thumbnail"
            if first and not images
            else None
        )
        report = reports.get(row.study_id)
        entries.append(
            EdEntry(
                row=row,
                images=list(images.values()),
                thumbnail=thumbnail,
                findings=findings.get(row.study_id, []),
                report=report,
                signer=signers.get(report.signer_fk) if report and report.signer_fk else None,
            )
        )
    return entries


class EdBoxOut(BaseModel):
    finding_id: int
    label: str
    score: float
    certainty: str
    #: [x0, y0, x1, y1] in pixels of the stored image.
    box: list[float]


class EdImageOut(BaseModel):
    sop_instance_uid: str
    series_uid: str
    rows: int
    columns: int
    frame: int
    rendered_url: str
    boxes: list[EdBoxOut]


class FinalReportOut(BaseModel):
    """The signed (or amended) report; drafts are not shown outside the reading room."""

    state: str
    text: str
    conclusion: str
    version: int
    signer: str
    signed_at: datetime | None
    amendment_reason: str | None


class EdRowOut(WorklistRowOut):
    #: "AI suggestion — not verified by a radiologist".
    label: str
    images: list[EdImageOut]
    report: FinalReportOut | None

    @classmethod
    def of_entry(cls, entry: EdEntry, user: Principal) -> EdRowOut:
        base = WorklistRowOut.of(entry.row, user).model_dump()
        report = entry.report
        final = report is not None and report.state != ReportState.DRAFT.value
        return cls(
            **base,
            label=ED_LABEL,
            images=[
                EdImageOut(
                    sop_instance_uid=i.sop_instance_uid,
                    series_uid=i.series_uid,
                    rows=i.rows,
                    columns=i.columns,
                    frame=i.frame,
                    rendered_url=i.url,
                    boxes=[
                        EdBoxOut(
                            finding_id=f.id,
                            label=f.label,
                            score=f.score,
                            certainty=f.certainty,
                            box=_box(f.box_x0, f.box_y0, f.box_x1, f.box_y1),
                        )
                        for f in i.boxes
                    ],
                )
                for i in entry.images
            ],
            report=(
                FinalReportOut(
                    state=report.state,
                    text=report.text,
                    conclusion=report.conclusion,
                    version=report.version,
                    signer=_full_name(entry.signer),
                    signed_at=report.signed_at,
                    amendment_reason=report.amendment_reason,
                )
                if report is not None and final
                else None
            ),
        )


class EdOut(BaseModel):
    site: str | None
    hours: float
    label: str
    rows: list[EdRowOut]


# --- one study under review -------------------------------------------------------------------


class CodeOut(BaseModel):
    scheme: str
    value: str
    meaning: str


class CodeChoiceOut(CodeOut):
    key: str


class ImageOut(BaseModel):
    index: int
    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    sop_instance_uid: str
    instance_number: int | None
    rows: int
    columns: int
    frames: int
    #: WADO-RS address of the instance; the viewer adds `/rendered` (or a frame).
    url: str
    thumbnail: str


class DecisionOut(BaseModel):
    id: int
    finding_id: int | None
    decision: str
    code: CodeOut | None
    sop_instance_uid: str | None
    frame: int | None
    box: list[float] | None
    comment: str
    by: str
    by_username: str
    decided_at: datetime


class ReviewFindingOut(BaseModel):
    id: int
    solution: str
    version: str
    label: str
    code: CodeOut
    score: float
    certainty: str
    sop_instance_uid: str | None
    frame: int | None
    box: list[float] | None
    heatmap_url: str | None
    status: str
    decision: DecisionOut | None


class AiResultOut(BaseModel):
    outcome: str
    text: str
    score: float | None
    certainty: str
    created_at: datetime


class AiSolutionOut(BaseModel):
    solution_id: str
    name: str
    version: str
    mode: str
    intended_use: str
    statement: str
    limitations: list[str]
    result: AiResultOut | None
    finding_ids: list[int]


class RevisionOut(BaseModel):
    version: int
    state: str
    text: str
    conclusion: str
    signer: str
    signed_at: datetime
    reason: str | None


class ReportOut(BaseModel):
    id: int
    state: str
    text: str
    conclusion: str
    version: int
    author: str
    signer: str | None
    signer_username: str | None
    signed_at: datetime | None
    updated_at: datetime
    amendment_reason: str | None
    revisions: list[RevisionOut]


class StudyOut(BaseModel):
    uid: str
    accession_number: str
    description: str
    modalities: str
    study_date: str | None
    site: str | None
    received_at: datetime
    waiting_seconds: int


class PatientOut(BaseModel):
    patient_id: str
    name: str
    birth_date: str | None
    sex: str


class YouOut(BaseModel):
    username: str
    full_name: str
    #: A radiologist: may claim, decide and sign.
    reader: bool
    #: Holds the study's claim now.
    holder: bool
    #: May change decisions and the draft now (reader, holder, report not final).
    editable: bool


class ReviewOut(BaseModel):
    #: AI output is a preliminary suggestion, never final.
    label: str
    study: StudyOut
    patient: PatientOut
    images: list[ImageOut]
    solutions: list[AiSolutionOut]
    findings: list[ReviewFindingOut]
    added: list[DecisionOut]
    report: ReportOut | None
    claim: ClaimOut | None
    #: AI findings still without a decision (signing needs none).
    undecided: int
    conclusions: list[str]
    codes: list[CodeChoiceOut]
    you: YouOut


def _decision_out(d: FindingDecision, users: dict[int, User]) -> DecisionOut:
    user = users.get(d.user_fk)
    box = _box(d.box_x0, d.box_y0, d.box_x1, d.box_y1)
    return DecisionOut(
        id=d.id,
        finding_id=d.finding_fk,
        decision=d.decision,
        code=(
            CodeOut(scheme=d.code_scheme or "", value=d.code_value, meaning=d.code_meaning or "")
            if d.code_value
            else None
        ),
        sop_instance_uid=d.sop_instance_uid,
        frame=d.frame,
        box=box or None,
        comment=d.comment or "",
        by=_full_name(user),
        by_username=user.username if user else "",
        decided_at=d.decided_at,
    )


def _images(detail: StudyDetail) -> list[ImageOut]:
    out: list[ImageOut] = []
    study_uid = detail.study.study_uid
    for s in detail.series:
        for inst in s.instances:
            if not inst.rows or not inst.columns:
                continue
            url = instance_url(study_uid, s.series.series_uid, inst.sop_instance_uid)
            out.append(
                ImageOut(
                    index=len(out),
                    series_uid=s.series.series_uid,
                    series_number=s.series.series_number,
                    series_description=s.series.description,
                    modality=s.series.modality,
                    sop_instance_uid=inst.sop_instance_uid,
                    instance_number=inst.instance_number,
                    rows=int(inst.rows),
                    columns=int(inst.columns),
                    frames=int(inst.number_of_frames or 1),
                    url=url,
                    thumbnail=url + "/thumbnail",
                )
            )
    return out


def _solutions(
    db: Session, study_id: int, user: Principal, findings: list[Finding]
) -> tuple[list[AiSolutionOut], dict[int, SolutionVersion]]:
    entries = study_ai(db, study_id=study_id, roles=user.roles)
    versions: dict[int, SolutionVersion] = {e.version.id: e.version for e in entries}
    out: list[AiSolutionOut] = []
    claimed: set[int] = set()
    for e in entries:
        if e.shadow:
            continue  # never on the clinical review screen
        mine = [
            f.id
            for f in findings
            if f.id not in claimed
            and (
                f.deployment_fk == e.deployment_id
                if e.deployment_id is not None
                else f.version_fk == e.version.id
            )
        ]
        claimed.update(mine)
        r = e.result
        out.append(
            AiSolutionOut(
                solution_id=e.version.solution_id,
                name=e.version.label,
                version=e.version.version,
                mode=e.mode,
                intended_use=manifest_of(e.version).intended_use.summary,
                statement=e.statement,
                limitations=list(e.limitations),
                result=(
                    AiResultOut(
                        outcome=r.outcome,
                        text=r.text,
                        score=r.score,
                        certainty=r.certainty,
                        created_at=r.created_at,
                    )
                    if r is not None
                    else None
                ),
                finding_ids=mine,
            )
        )
    for f in findings:
        if f.version_fk not in versions:
            version = db.get(SolutionVersion, f.version_fk)
            if version is not None:
                versions[version.id] = version
    return out, versions


def review_state(db: Session, detail: StudyDetail, user: Principal, *, now: datetime) -> ReviewOut:
    """Everything the review screen shows of one study, for `user`."""
    study, patient = detail.study, detail.patient
    # Strongest first: the order a reader goes through them (N / P).
    findings = sorted(clinical_findings(db, study.id), key=lambda f: (-f.score, f.id))
    solutions, versions = _solutions(db, study.id, user, findings)
    report = report_of(db, study.id)
    decisions = decisions_of(db, report.id) if report else []
    history = revisions(db, report.id) if report else []
    users = _names(
        db,
        [d.user_fk for d in decisions]
        + [r.signer_fk for r in history]
        + ([report.author_fk, report.signer_fk] if report else []),
    )
    by_finding = {d.finding_fk: d for d in decisions if d.finding_fk is not None}
    claim = claims_for(db, [study.id]).get(study.id)
    reader = Role.RADIOLOGIST in user.roles
    holder = claim is not None and claim.user_id == user.user_id
    final = report is not None and report.state != ReportState.DRAFT.value
    findings_out = []
    for f in findings:
        version = versions.get(f.version_fk)
        decision = by_finding.get(f.id)
        findings_out.append(
            ReviewFindingOut(
                id=f.id,
                solution=version.label if version else "",
                version=version.version if version else "",
                label=f.label,
                code=CodeOut(scheme=f.code_scheme, value=f.code_value, meaning=f.code_meaning),
                score=f.score,
                certainty=f.certainty,
                sop_instance_uid=f.sop_instance_uid,
                frame=f.frame,
                box=_box(f.box_x0, f.box_y0, f.box_x1, f.box_y1) or None,
                heatmap_url=heatmap_url(study.study_uid, f.id) if f.heatmap_sha256 else None,
                status=f.status,
                decision=_decision_out(decision, users) if decision else None,
            )
        )
    site = detail.site
    return ReviewOut(
        label=PRELIMINARY_LABEL,
        study=StudyOut(
            uid=study.study_uid,
            accession_number=study.accession_number,
            description=study.description,
            modalities=study.modalities,
            study_date=study.study_date.isoformat() if study.study_date else None,
            site=site.name if site else None,
            received_at=study.first_received_at,
            waiting_seconds=max(0, int((now - study.first_received_at).total_seconds())),
        ),
        patient=PatientOut(
            patient_id=patient.patient_id,
            name=patient.name,
            birth_date=patient.birth_date.isoformat() if patient.birth_date else None,
            sex=patient.sex,
        ),
        images=_images(detail),
        solutions=solutions,
        findings=findings_out,
        added=[_decision_out(d, users) for d in decisions if d.finding_fk is None],
        report=(
            ReportOut(
                id=report.id,
                state=report.state,
                text=report.text,
                conclusion=report.conclusion,
                version=report.version,
                author=_full_name(users.get(report.author_fk)),
                signer=_full_name(users.get(report.signer_fk)) if report.signer_fk else None,
                signer_username=(
                    users[report.signer_fk].username
                    if report.signer_fk and report.signer_fk in users
                    else None
                ),
                signed_at=report.signed_at,
                updated_at=report.updated_at,
                amendment_reason=report.amendment_reason,
                revisions=[
                    RevisionOut(
                        version=r.version,
                        state=r.state,
                        text=r.text,
                        conclusion=r.conclusion,
                        signer=_full_name(users.get(r.signer_fk)),
                        signed_at=r.signed_at,
                        reason=r.reason,
                    )
                    for r in history
                ],
            )
            if report is not None
            else None
        ),
        claim=(
            ClaimOut(
                username=claim.username,
                full_name=claim.full_name or claim.username,
                claimed_at=claim.claimed_at,
                mine=holder,
            )
            if claim is not None
            else None
        ),
        undecided=sum(1 for f in findings if f.id not in by_finding),
        conclusions=list(CONCLUSIONS),
        codes=[
            CodeChoiceOut(key=key, scheme=c.scheme, value=c.value, meaning=c.meaning)
            for key, c in ADDED_CODES.items()
        ],
        you=YouOut(
            username=user.username,
            full_name=user.full_name or user.username,
            reader=reader,
            holder=holder,
            editable=reader and holder and not final,
        ),
    )


def waiting_parts(waiting: timedelta) -> dict[str, Any]:
    """Days, hours and minutes of a waiting time (for the pages to word)."""
    minutes = max(0, int(waiting.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return {"d": days, "h": hours, "m": mins}
