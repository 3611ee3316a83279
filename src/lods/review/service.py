"""Reading a study: claim it, decide on each AI finding, write and sign the report.

The rules, enforced here and (for the last one) by the database too:

- Only a radiologist reads imaging: claims, decisions, drafts, signing and amendments all
  need the radiologist role. A physician sees the AI's preliminary answer, never edits.
- A claimed study is locked for other readers until its reader releases it, signs it, or
  the claim is older than `CLAIM_STALE_MINUTES` (a reader who went home).
- Every AI finding a clinician can see (pilot and live deployments) that the AI flagged
  (sure or doubtful) needs a decision — agree, disagree or amend — before the report can
  be signed; a reader may add findings
  the AI missed. Decisions are stored per finding, never written over the AI's row.
- No report becomes final without a named human signer: `sign` and `amend` are the only
  ways to a final state, both record the signer and time, and the `reports` table refuses
  a signed or amended row without them, whatever the AI said.

Every step is audited with the patient and study it touched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lods.audit import service as audit
from lods.auth.deps import Principal
from lods.auth.models import Role, User
from lods.db import utcnow
from lods.findings.models import Finding
from lods.imaging.models import Instance, Patient, Series, Study
from lods.review.models import (
    Decision,
    FindingDecision,
    Report,
    ReportRevision,
    ReportState,
    StudyClaim,
)
from lods.solutions.models import DeploymentMode

#: A claim older than this no longer locks the study.
CLAIM_STALE_MINUTES = 30
#: The human conclusions a report can state.
CONCLUSIONS = ("positive", "negative", "uncertain")
#: Deployment modes whose findings clinicians see, and so must decide on.
CLINICAL_MODES = (DeploymentMode.PILOT.value, DeploymentMode.LIVE.value)
#: Certainties of findings the AI flagged (sure: solid box, doubtful: dashed box).
FLAGGED = ("sure", "doubtful")


class ReviewError(Exception):
    """A review step that is not allowed now; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0) or min(self.x0, self.y0) < 0:
            raise ReviewError("a box needs x0 < x1 and y0 < y1, inside the image", 400)


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class ClaimInfo:
    study_id: int
    user_id: int
    username: str
    full_name: str
    claimed_at: datetime


def _require_radiologist(user: Principal) -> None:
    if Role.RADIOLOGIST not in user.roles:
        raise ReviewError("only a radiologist reads and signs imaging studies", 403)


def study_and_patient(db: Session, study_id: int) -> tuple[Study, Patient]:
    study = db.get(Study, study_id)
    if study is None:
        raise ReviewError(f"no study {study_id}", 404)
    patient = db.get(Patient, study.patient_fk)
    assert patient is not None
    return study, patient


def audit_step(
    db: Session,
    user: Principal,
    action: str,
    study: Study,
    patient: Patient,
    *,
    object_ref: str | None = None,
    detail: dict[str, object] | None = None,
) -> None:
    audit.record(
        db,
        actor=user.username,
        action=action,
        patient_id=patient.patient_id,
        study_uid=study.study_uid,
        object_ref=object_ref,
        source=user.source,
        detail=detail,
    )


# --- claims ---------------------------------------------------------------------------------


def _stale(claim: StudyClaim, now: datetime) -> bool:
    return claim.claimed_at < now - timedelta(minutes=CLAIM_STALE_MINUTES)


def claim(db: Session, *, study_id: int, user: Principal) -> StudyClaim:
    """Lock the study for `user` (again: refreshes the claim). Raises when another
    reader holds a fresh claim or the report is already signed."""
    _require_radiologist(user)
    study, patient = study_and_patient(db, study_id)
    report = report_of(db, study_id)
    if report is not None and report.state != ReportState.DRAFT.value:
        raise ReviewError("the report is signed; amend it to change it")
    now = utcnow()
    existing = db.scalar(select(StudyClaim).where(StudyClaim.study_fk == study_id))
    if existing is not None:
        if existing.user_fk != user.user_id and not _stale(existing, now):
            holder = db.get(User, existing.user_fk)
            name = holder.full_name if holder else "another reader"
            raise ReviewError(f"{name} is reading this study")
        taken_over = existing.user_fk != user.user_id
        existing.user_fk, existing.claimed_at = user.user_id, now
        db.flush()
        if taken_over:
            audit_step(db, user, "review.claim", study, patient, detail={"took_over_stale": True})
        return existing
    row = StudyClaim(study_fk=study_id, user_fk=user.user_id, claimed_at=now)
    db.add(row)
    db.flush()
    audit_step(db, user, "review.claim", study, patient)
    return row


def release(db: Session, *, study_id: int, user: Principal) -> None:
    """Give the study back to the list (only its holder can)."""
    study, patient = study_and_patient(db, study_id)
    existing = db.scalar(select(StudyClaim).where(StudyClaim.study_fk == study_id))
    if existing is None:
        return
    if existing.user_fk != user.user_id:
        raise ReviewError("only the reader who claimed the study can release it", 403)
    db.delete(existing)
    db.flush()
    audit_step(db, user, "review.release", study, patient)


def claims_for(db: Session, study_ids: Sequence[int]) -> dict[int, ClaimInfo]:
    """Fresh claims of the given studies."""
    if not study_ids:
        return {}
    now = utcnow()
    rows = db.execute(
        select(StudyClaim, User)
        .join(User, User.id == StudyClaim.user_fk)
        .where(StudyClaim.study_fk.in_(list(study_ids)))
    ).all()
    return {
        c.study_fk: ClaimInfo(c.study_fk, u.id, u.username, u.full_name, c.claimed_at)
        for c, u in rows
        if not _stale(c, now)
    }


def _ensure_holder(db: Session, study_id: int, user: Principal) -> None:
    """Writing needs the study claimed by `user` (a stale or missing claim is taken)."""
    claim(db, study_id=study_id, user=user)


# --- report and decisions ----------------------------------------------------------------------


def report_of(db: Session, study_id: int) -> Report | None:
    return db.scalar(select(Report).where(Report.study_fk == study_id))


def _draft(db: Session, study_id: int, user: Principal) -> Report:
    """The study's report, created as a draft if there is none; a final one refuses edits."""
    report = report_of(db, study_id)
    if report is None:
        report = Report(study_fk=study_id, author_fk=user.user_id, state=ReportState.DRAFT.value)
        db.add(report)
        db.flush()
    elif report.state != ReportState.DRAFT.value:
        raise ReviewError("the report is signed; amend it to change it")
    return report


def clinical_findings(db: Session, study_id: int) -> list[Finding]:
    """The AI findings of the study that clinicians see (pilot and live deployments), of
    the newest result per deployment — the ones a reader must decide on."""
    findings = db.scalars(
        select(Finding)
        .where(Finding.study_fk == study_id, Finding.mode.in_(CLINICAL_MODES))
        .order_by(Finding.created_at.desc(), Finding.id)
    ).all()
    newest_job: dict[int | None, int] = {}
    for f in findings:
        newest_job.setdefault(f.deployment_fk, f.job_fk)
    return [f for f in findings if newest_job[f.deployment_fk] == f.job_fk]


def decisions_of(db: Session, report_id: int) -> list[FindingDecision]:
    return list(
        db.scalars(
            select(FindingDecision)
            .where(FindingDecision.report_fk == report_id)
            .order_by(FindingDecision.id)
        )
    )


def decide(
    db: Session,
    *,
    study_id: int,
    finding_id: int,
    decision: Decision | str,
    user: Principal,
    box: Box | None = None,
    code: Code | None = None,
    comment: str = "",
) -> FindingDecision:
    """Agree, disagree or amend (a new box and/or code) one AI finding of the study."""
    _require_radiologist(user)
    kind = Decision(decision)
    if kind is Decision.ADDED:
        raise ReviewError("use add_finding for a finding the AI missed", 400)
    if kind is Decision.AMEND and box is None and code is None:
        raise ReviewError("an amendment gives a new box or a new code", 400)
    study, patient = study_and_patient(db, study_id)
    finding = db.get(Finding, finding_id)
    if finding is None or finding.study_fk != study_id:
        raise ReviewError(f"no AI finding {finding_id} in this study", 404)
    if finding.mode not in CLINICAL_MODES:
        raise ReviewError("shadow-mode findings are not for clinical decisions", 403)
    _ensure_holder(db, study_id, user)
    report = _draft(db, study_id, user)
    row = db.scalar(
        select(FindingDecision).where(
            FindingDecision.report_fk == report.id, FindingDecision.finding_fk == finding_id
        )
    )
    if row is None:
        row = FindingDecision(report_fk=report.id, study_fk=study_id, finding_fk=finding_id)
        db.add(row)
    amended = kind is Decision.AMEND
    row.decision = kind.value
    row.code_scheme = code.scheme if amended and code else None
    row.code_value = code.value if amended and code else None
    row.code_meaning = code.meaning if amended and code else None
    row.sop_instance_uid = finding.sop_instance_uid if amended and box else None
    row.frame = finding.frame if amended and box else None
    row.box_x0, row.box_y0, row.box_x1, row.box_y1 = (
        (box.x0, box.y0, box.x1, box.y1) if amended and box else (None, None, None, None)
    )
    row.comment = comment
    row.user_fk = user.user_id
    row.decided_at = utcnow()
    report.updated_at = row.decided_at
    db.flush()
    audit_step(
        db,
        user,
        "review.decision",
        study,
        patient,
        object_ref=f"finding:{finding_id}",
        detail={"decision": kind.value, "ai_score": round(finding.score, 4)},
    )
    return row


def add_finding(
    db: Session,
    *,
    study_id: int,
    user: Principal,
    code: Code,
    sop_instance_uid: str,
    box: Box,
    frame: int | None = None,
    comment: str = "",
) -> FindingDecision:
    """Record a finding the AI missed, drawn by the reader on one image of the study."""
    _require_radiologist(user)
    study, patient = study_and_patient(db, study_id)
    owner = db.scalar(
        select(Instance.id)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == study_id, Instance.sop_instance_uid == sop_instance_uid)
        .limit(1)
    )
    if owner is None:
        raise ReviewError("the image is not part of this study", 400)
    _ensure_holder(db, study_id, user)
    report = _draft(db, study_id, user)
    row = FindingDecision(
        report_fk=report.id,
        study_fk=study_id,
        finding_fk=None,
        decision=Decision.ADDED.value,
        code_scheme=code.scheme,
        code_value=code.value,
        code_meaning=code.meaning,
        sop_instance_uid=sop_instance_uid,
        frame=frame,
        box_x0=box.x0,
        box_y0=box.y0,
        box_x1=box.x1,
        box_y1=box.y1,
        comment=comment,
        user_fk=user.user_id,
        decided_at=utcnow(),
    )
    db.add(row)
    report.updated_at = row.decided_at
    db.flush()
    audit_step(
        db,
        user,
        "review.finding_added",
        study,
        patient,
        object_ref=f"decision:{row.id}",
        detail={"code": f"{code.scheme}:{code.value}"},
    )
    return row


def remove_added(db: Session, *, study_id: int, decision_id: int, user: Principal) -> None:
    """Take back a finding the reader added (while the report is a draft)."""
    _require_radiologist(user)
    study, patient = study_and_patient(db, study_id)
    row = db.get(FindingDecision, decision_id)
    if row is None or row.study_fk != study_id or row.decision != Decision.ADDED.value:
        raise ReviewError("no such added finding in this study", 404)
    _ensure_holder(db, study_id, user)
    _draft(db, study_id, user)
    db.execute(delete(FindingDecision).where(FindingDecision.id == decision_id))
    db.flush()
    audit_step(
        db, user, "review.finding_removed", study, patient, object_ref=f"decision:{decision_id}"
    )


def save_draft(
    db: Session, *, study_id: int, user: Principal, text: str, conclusion: str = ""
) -> Report:
    """Store the report's text and conclusion; it stays a draft."""
    _require_radiologist(user)
    if conclusion and conclusion not in CONCLUSIONS:
        raise ReviewError(f"conclusion must be one of {', '.join(CONCLUSIONS)}", 400)
    study, patient = study_and_patient(db, study_id)
    _ensure_holder(db, study_id, user)
    report = _draft(db, study_id, user)
    report.text, report.conclusion, report.updated_at = text, conclusion, utcnow()
    db.flush()
    audit_step(db, user, "report.draft_saved", study, patient, object_ref=f"report:{report.id}")
    return report


def undecided(db: Session, study_id: int, report: Report | None) -> list[Finding]:
    """The clinically visible AI findings at or above the doubtful operating point still
    without a decision in `report` (those below it are shown, and may be decided on, but
    the AI itself did not flag them)."""
    decided = {d.finding_fk for d in decisions_of(db, report.id)} if report else set()
    return [
        f for f in clinical_findings(db, study_id) if f.id not in decided and f.certainty in FLAGGED
    ]


def _decisions_json(db: Session, report: Report) -> str:
    return json.dumps(
        [
            {
                "finding": d.finding_fk,
                "decision": d.decision,
                "code": [d.code_scheme, d.code_value, d.code_meaning] if d.code_value else None,
                "box": [d.box_x0, d.box_y0, d.box_x1, d.box_y1] if d.box_x0 is not None else None,
                "sop_instance_uid": d.sop_instance_uid,
                "by": d.user_fk,
            }
            for d in decisions_of(db, report.id)
        ]
    )


def sign(
    db: Session,
    *,
    study_id: int,
    user: Principal,
    text: str | None = None,
    conclusion: str | None = None,
) -> Report:
    """Make the report final with `user` as the named signer.

    Refused unless `user` is a radiologist holding the study, every clinically visible AI
    finding has a decision, and the report states a conclusion.
    """
    _require_radiologist(user)
    study, patient = study_and_patient(db, study_id)
    _ensure_holder(db, study_id, user)
    report = _draft(db, study_id, user)
    if text is not None:
        report.text = text
    if conclusion is not None:
        if conclusion not in CONCLUSIONS:
            raise ReviewError(f"conclusion must be one of {', '.join(CONCLUSIONS)}", 400)
        report.conclusion = conclusion
    if not report.conclusion:
        raise ReviewError("state a conclusion before signing", 400)
    open_findings = undecided(db, study_id, report)
    if open_findings:
        raise ReviewError(
            f"{len(open_findings)} AI finding(s) still need agree, disagree or amend", 400
        )
    now = utcnow()
    report.state = ReportState.SIGNED.value
    report.signer_fk, report.signed_at, report.updated_at = user.user_id, now, now
    report.version = 1
    db.add(
        ReportRevision(
            report_fk=report.id,
            version=1,
            state=report.state,
            text=report.text,
            conclusion=report.conclusion,
            decisions=_decisions_json(db, report),
            signer_fk=user.user_id,
            signed_at=now,
        )
    )
    db.execute(delete(StudyClaim).where(StudyClaim.study_fk == study_id))
    db.flush()
    audit_step(
        db,
        user,
        "report.signed",
        study,
        patient,
        object_ref=f"report:{report.id}",
        detail={"version": 1, "conclusion": report.conclusion},
    )
    return report


def amend(
    db: Session,
    *,
    study_id: int,
    user: Principal,
    text: str,
    conclusion: str,
    reason: str,
) -> Report:
    """Replace a signed report's text and conclusion and sign the amendment at once."""
    _require_radiologist(user)
    if not reason.strip():
        raise ReviewError("an amendment needs a reason", 400)
    if conclusion not in CONCLUSIONS:
        raise ReviewError(f"conclusion must be one of {', '.join(CONCLUSIONS)}", 400)
    study, patient = study_and_patient(db, study_id)
    report = report_of(db, study_id)
    if report is None or report.state == ReportState.DRAFT.value:
        raise ReviewError("only a signed report can be amended; sign the draft instead")
    now = utcnow()
    report.text, report.conclusion, report.amendment_reason = text, conclusion, reason
    report.state = ReportState.AMENDED.value
    report.signer_fk, report.signed_at, report.updated_at = user.user_id, now, now
    report.version += 1
    db.add(
        ReportRevision(
            report_fk=report.id,
            version=report.version,
            state=report.state,
            text=text,
            conclusion=conclusion,
            decisions=_decisions_json(db, report),
            signer_fk=user.user_id,
            signed_at=now,
            reason=reason,
        )
    )
    db.flush()
    audit_step(
        db,
        user,
        "report.amended",
        study,
        patient,
        object_ref=f"report:{report.id}",
        detail={"version": report.version, "conclusion": conclusion},
    )
    return report


def revisions(db: Session, report_id: int) -> list[ReportRevision]:
    return list(
        db.scalars(
            select(ReportRevision)
            .where(ReportRevision.report_fk == report_id)
            .order_by(ReportRevision.version)
        )
    )
