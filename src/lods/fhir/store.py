"""Read a study's results from the database as the plain values the builders take.

Only what may leave Lods is read: AI results and findings of pilot and live deployments
(the mode the job ran in; shadow output is never read here, whoever asks), and a report
only once it is signed or amended, with its decisions, revisions and the people named.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session, aliased

from lods.auth.models import Role, User
from lods.fhir.resources import patient_identifier_system
from lods.fhir.values import (
    AiFinding,
    AiResult,
    Box,
    Code,
    DecisionInfo,
    PatientInfo,
    PersonInfo,
    ReportInfo,
    RevisionInfo,
    SolutionInfo,
    StudyInfo,
    StudyResults,
)
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import Instance, Patient, Series, Study
from lods.review.models import FindingDecision, Report, ReportRevision, ReportState
from lods.sites.models import Site
from lods.solutions.bodyparts import normalise_body_part
from lods.solutions.models import DeploymentMode, SolutionVersion

#: The modes whose output clinicians see; shadow output never leaves through FHIR or HL7.
CLINICAL_MODES = (DeploymentMode.PILOT.value, DeploymentMode.LIVE.value)
#: Report states that are results (a draft is not).
SIGNED_STATES = (ReportState.SIGNED.value, ReportState.AMENDED.value)
#: Users who can be Practitioners: the roles that decide on findings and sign reports.
PRACTITIONER_ROLES = frozenset({Role.RADIOLOGIST, Role.PHYSICIAN})


# --- ORM rows → values ----------------------------------------------------------------------


def patient_info(patient: Patient) -> PatientInfo:
    return PatientInfo(
        patient_id=patient.patient_id,
        issuer=patient.issuer or "",
        name=patient.name or "",
        birth_date=patient.birth_date,
        sex=patient.sex or "",
    )


def study_info(study: Study, site: Site | None) -> StudyInfo:
    return StudyInfo(
        study_uid=study.study_uid,
        accession_number=study.accession_number or "",
        study_date=study.study_date,
        description=study.description or "",
        modalities=study.modalities or "",
        site_code=site.code if site else "",
        site_name=site.name if site else "",
    )


def solution_info(version: SolutionVersion) -> SolutionInfo:
    return SolutionInfo(
        key=version.id,
        solution_id=version.solution_id,
        version=version.version,
        name=version.name,
        vendor=version.vendor,
        manifest_sha256=version.manifest_sha256,
    )


def person_info(user: User) -> PersonInfo:
    return PersonInfo(key=user.id, username=user.username, full_name=user.full_name or "")


def _box(
    sop_instance_uid: str | None,
    frame: int | None,
    corners: tuple[float | None, float | None, float | None, float | None],
) -> Box | None:
    x0, y0, x1, y1 = corners
    if sop_instance_uid is None or x0 is None or y0 is None or x1 is None or y1 is None:
        return None
    return Box(sop_instance_uid=sop_instance_uid, x0=x0, y0=y0, x1=x1, y1=y1, frame=frame)


def _finding(row: Finding, body_parts: dict[str, str]) -> AiFinding:
    return AiFinding(
        key=row.id,
        code=Code(row.code_scheme, row.code_value, row.code_meaning),
        label=row.label,
        score=float(row.score),
        certainty=row.certainty,
        box=_box(row.sop_instance_uid, row.frame, (row.box_x0, row.box_y0, row.box_x1, row.box_y1)),
        body_part=body_parts.get(row.sop_instance_uid or "", ""),
    )


def _body_parts(db: Session, study_id: int, sop_uids: Iterable[str | None]) -> dict[str, str]:
    """Body Part Examined (normalised) of the study's images with these SOP UIDs."""
    wanted = {uid for uid in sop_uids if uid}
    if not wanted:
        return {}
    rows = db.execute(
        select(Instance.sop_instance_uid, Series.body_part)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == study_id, Instance.sop_instance_uid.in_(wanted))
    ).all()
    return {str(uid): normalise_body_part(part) for uid, part in rows if part}


# --- a study's results --------------------------------------------------------------------------


def _deployment_key(result: StudyResult) -> tuple[str, int]:
    return ("d", result.deployment_fk) if result.deployment_fk else ("v", result.version_fk)


def load_study_results(db: Session, study_id: int) -> StudyResults | None:
    """The study's clinically visible AI results and its signed report, or None when
    there is no such study."""
    study = db.get(Study, study_id)
    if study is None:
        return None
    patient = db.get(Patient, study.patient_fk)
    if patient is None:
        return None
    site = db.get(Site, study.site_id)

    result_rows = list(
        db.scalars(
            select(StudyResult)
            .where(StudyResult.study_fk == study_id, StudyResult.mode.in_(CLINICAL_MODES))
            .order_by(StudyResult.created_at.desc(), StudyResult.id.desc())
        )
    )
    finding_rows = (
        list(
            db.scalars(
                select(Finding)
                .where(
                    Finding.job_fk.in_([r.job_fk for r in result_rows]),
                    Finding.mode.in_(CLINICAL_MODES),
                )
                .order_by(Finding.score.desc(), Finding.id)
            )
        )
        if result_rows
        else []
    )
    report = db.scalar(
        select(Report).where(Report.study_fk == study_id, Report.state.in_(SIGNED_STATES))
    )
    decision_rows = (
        list(
            db.scalars(
                select(FindingDecision)
                .where(FindingDecision.report_fk == report.id)
                .order_by(FindingDecision.id)
            )
        )
        if report is not None
        else []
    )
    # Decisions may concern findings of an older job of the deployment.
    known = {f.id for f in finding_rows}
    missing = {d.finding_fk for d in decision_rows if d.finding_fk and d.finding_fk not in known}
    extra_findings = (
        list(
            db.scalars(
                select(Finding).where(Finding.id.in_(missing), Finding.mode.in_(CLINICAL_MODES))
            )
        )
        if missing
        else []
    )
    body_parts = _body_parts(
        db,
        study_id,
        [f.sop_instance_uid for f in (*finding_rows, *extra_findings)]
        + [d.sop_instance_uid for d in decision_rows],
    )
    versions = {
        v.id: solution_info(v)
        for v in db.scalars(
            select(SolutionVersion).where(
                SolutionVersion.id.in_({r.version_fk for r in result_rows})
            )
        )
    }
    findings_by_job: dict[int, list[AiFinding]] = {}
    ai_findings: dict[int, AiFinding] = {}
    for row in finding_rows:
        value = ai_findings[row.id] = _finding(row, body_parts)
        findings_by_job.setdefault(row.job_fk, []).append(value)
    for row in extra_findings:
        ai_findings[row.id] = _finding(row, body_parts)
    seen_deployments: set[tuple[str, int]] = set()
    ai_results: list[AiResult] = []
    for result in result_rows:
        key = _deployment_key(result)
        current = key not in seen_deployments
        seen_deployments.add(key)
        ai_results.append(
            AiResult(
                key=result.id,
                solution=versions[result.version_fk],
                outcome=result.outcome,
                text=result.text,
                score=result.score,
                certainty=result.certainty,
                created_at=result.created_at,
                mode=result.mode,
                findings=tuple(findings_by_job.get(result.job_fk, [])),
                current=current,
            )
        )

    report_info: ReportInfo | None = None
    decisions: list[DecisionInfo] = []
    if report is not None:
        revisions = list(
            db.scalars(
                select(ReportRevision)
                .where(ReportRevision.report_fk == report.id)
                .order_by(ReportRevision.version)
            )
        )
        user_ids = {report.author_fk, *(d.user_fk for d in decision_rows)}
        user_ids |= {r.signer_fk for r in revisions}
        if report.signer_fk is not None:
            user_ids.add(report.signer_fk)
        people = {
            u.id: person_info(u) for u in db.scalars(select(User).where(User.id.in_(user_ids)))
        }
        report_info = ReportInfo(
            key=report.id,
            state=report.state,
            version=report.version,
            text=report.text,
            conclusion=report.conclusion,
            author=people.get(report.author_fk),
            signer=people.get(report.signer_fk) if report.signer_fk is not None else None,
            signed_at=report.signed_at,
            amendment_reason=report.amendment_reason,
            revisions=tuple(
                RevisionInfo(
                    version=r.version,
                    state=r.state,
                    signer=people[r.signer_fk],
                    signed_at=r.signed_at,
                    reason=r.reason,
                )
                for r in revisions
            ),
        )
        for d in decision_rows:
            ai_finding = ai_findings.get(d.finding_fk) if d.finding_fk else None
            if d.finding_fk and ai_finding is None:
                continue  # a decision on a finding that is not clinical output (never made)
            code = (
                Code(d.code_scheme or "", d.code_value, d.code_meaning or d.code_value)
                if d.code_value
                else None
            )
            decisions.append(
                DecisionInfo(
                    key=d.id,
                    decision=d.decision,
                    by=people[d.user_fk],
                    decided_at=d.decided_at,
                    ai_finding=ai_finding,
                    code=code,
                    box=_box(d.sop_instance_uid, d.frame, (d.box_x0, d.box_y0, d.box_x1, d.box_y1)),
                    comment=d.comment or "",
                    body_part=body_parts.get(d.sop_instance_uid or "", ""),
                )
            )
    return StudyResults(
        patient=patient_info(patient),
        study=study_info(study, site),
        ai_results=tuple(ai_results),
        report=report_info,
        decisions=tuple(decisions),
    )


# --- what an id belongs to ----------------------------------------------------------------------


def study_of_ai_result(db: Session, result_key: int) -> int | None:
    return db.scalar(
        select(StudyResult.study_fk).where(
            StudyResult.id == result_key,
            StudyResult.mode.in_(CLINICAL_MODES),
            StudyResult.study_fk.is_not(None),
        )
    )


def study_of_ai_finding(db: Session, finding_key: int) -> int | None:
    return db.scalar(
        select(Finding.study_fk).where(
            Finding.id == finding_key,
            Finding.mode.in_(CLINICAL_MODES),
            Finding.study_fk.is_not(None),
        )
    )


def study_of_report(db: Session, report_key: int) -> int | None:
    return db.scalar(
        select(Report.study_fk).where(Report.id == report_key, Report.state.in_(SIGNED_STATES))
    )


def study_of_decision(db: Session, decision_key: int) -> int | None:
    return db.scalar(
        select(FindingDecision.study_fk)
        .join(Report, Report.id == FindingDecision.report_fk)
        .where(FindingDecision.id == decision_key, Report.state.in_(SIGNED_STATES))
    )


def solution(db: Session, key: int) -> SolutionInfo | None:
    version = db.get(SolutionVersion, key)
    return solution_info(version) if version is not None else None


def practitioner(db: Session, key: int) -> PersonInfo | None:
    """A user who can act as a clinician (radiologist or physician), or None."""
    user = db.get(User, key)
    if user is None or not (user.role_set & PRACTITIONER_ROLES):
        return None
    return person_info(user)


# --- search -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DateBound:
    """One `date` search condition on the study date: `op` is eq / lt / le / gt / ge and
    [start, end] the range the value's precision covers."""

    op: str
    start: date
    end: date


@dataclass(frozen=True)
class ReportHit:
    """One DiagnosticReport a search found: AI ("ai") or signed ("report"), with its study."""

    kind: str
    key: int
    study_id: int
    study_date: date | None
    patient_issuer: str = ""


def _conditions(
    *, patient_ids: Collection[str] | None, dates: Sequence[DateBound]
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if patient_ids is not None:
        conditions.append(Patient.patient_id.in_(list(patient_ids)))
    column = Study.study_date
    for bound in dates:
        if bound.op == "eq":
            conditions += [column >= bound.start, column <= bound.end]
        elif bound.op == "ge":
            conditions.append(column >= bound.start)
        elif bound.op == "gt":
            conditions.append(column > bound.end)
        elif bound.op == "le":
            conditions.append(column <= bound.end)
        elif bound.op == "lt":
            conditions.append(column < bound.start)
        else:  # the API refuses other prefixes
            raise ValueError(f"unsupported date prefix {bound.op}")
    return conditions


def search_reports(
    db: Session,
    *,
    patient_ids: Collection[str] | None = None,
    patient_system: str | None = None,
    statuses: Collection[str] | None = None,
    dates: Sequence[DateBound] = (),
) -> list[ReportHit]:
    """Every DiagnosticReport matching, newest study first: current AI results of pilot
    and live deployments (status preliminary) and signed reports (final / amended).

    `patient_ids` are patient identifier values; `patient_system`, when given, must be
    the identifier system the builders give the patient (`patient_identifier_system`).
    """
    wanted = set(statuses) if statuses is not None else {"preliminary", "final", "amended"}
    conditions = _conditions(patient_ids=patient_ids, dates=dates)
    hits: list[ReportHit] = []
    if "preliminary" in wanted:
        newer = aliased(StudyResult)
        same_source = or_(
            newer.deployment_fk == StudyResult.deployment_fk,
            and_(
                newer.deployment_fk.is_(None),
                StudyResult.deployment_fk.is_(None),
                newer.version_fk == StudyResult.version_fk,
            ),
        )
        superseded = exists().where(
            newer.study_fk == StudyResult.study_fk,
            newer.mode.in_(CLINICAL_MODES),
            same_source,
            or_(
                newer.created_at > StudyResult.created_at,
                and_(newer.created_at == StudyResult.created_at, newer.id > StudyResult.id),
            ),
        )
        ai_query = (
            select(StudyResult.id, Study.id, Study.study_date, Patient.issuer)
            .join(Study, Study.id == StudyResult.study_fk)
            .join(Patient, Patient.id == Study.patient_fk)
            .where(StudyResult.mode.in_(CLINICAL_MODES), ~superseded, *conditions)
        )
        for key, study_id, study_date, issuer in db.execute(ai_query):
            hits.append(ReportHit("ai", int(key), int(study_id), study_date, issuer or ""))
    states = [s for s, status in (("signed", "final"), ("amended", "amended")) if status in wanted]
    if states:
        report_query = (
            select(Report.id, Study.id, Study.study_date, Patient.issuer)
            .join(Study, Study.id == Report.study_fk)
            .join(Patient, Patient.id == Study.patient_fk)
            .where(Report.state.in_(states), *conditions)
        )
        for key, study_id, study_date, issuer in db.execute(report_query):
            hits.append(ReportHit("report", int(key), int(study_id), study_date, issuer or ""))
    if patient_system is not None:
        hits = [h for h in hits if patient_identifier_system(h.patient_issuer) == patient_system]
    hits.sort(
        key=lambda h: (
            -(h.study_date.toordinal() if h.study_date else 0),
            -h.study_id,
            h.kind != "report",
            h.key,
        )
    )
    return hits
