"""The AI results of a study: what each deployed solution decided, ran and suggested.

`study_ai` gathers, per deployment, the newest routing decision (a job, or a skip with
every unmet criterion), its job, and the newest result the user may see, with its
findings. Shadow-mode output is shown only to AI owners (`findings.service`): for
anyone else shadow deployments do not appear at all. The study page renders this
(`imaging/_ai_panel.html`) and `GET /api/studies/{study_uid}/ai` returns it as JSON;
both are audited as access to patient data.

Every AI result is preliminary: a suggestion, not verified by a clinician.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.deps import ImagingReader, SessionDep
from lods.auth.models import Role
from lods.findings.models import PRELIMINARY, Finding, StudyResult
from lods.findings.service import can_see_shadow, study_results
from lods.imaging.models import Patient, Study
from lods.jobs.api import JobOut
from lods.jobs.models import Job
from lods.routing.models import RouteDecision
from lods.routing.service import decisions_for_study
from lods.solutions.manifest import Manifest
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.solutions.service import manifest_of

router = APIRouter(prefix="/api", tags=["findings"])

#: The label every AI result carries, in the API (the pages translate it).
PRELIMINARY_LABEL = "AI suggestion — preliminary, not verified by a clinician"
SHADOW = DeploymentMode.SHADOW.value


@dataclass(frozen=True)
class AiEntry:
    """One deployed solution's part in a study, as the user may see it."""

    version: SolutionVersion
    deployment_id: int | None
    mode: str
    decision: RouteDecision | None
    job: Job | None
    result: StudyResult | None
    findings: list[Finding] = field(default_factory=list)
    #: The manifest's regulatory statement and known limitations, shown with results.
    statement: str = ""
    limitations: list[str] = field(default_factory=list)

    @property
    def shadow(self) -> bool:
        return self.mode == SHADOW

    @property
    def result_is_current(self) -> bool:
        """Whether the result comes from the job of the newest decision."""
        return (
            self.result is not None and self.job is not None and self.result.job_fk == self.job.id
        )


def _decision_mode(db: Session, decision: RouteDecision, job: Job | None) -> str:
    """The mode the deployment ran (or would have run) in for this decision."""
    mode = (job.inputs or {}).get("mode") if job is not None else None
    if isinstance(mode, str) and mode:
        return mode
    deployment = db.get(Deployment, decision.deployment_fk)
    return deployment.mode if deployment is not None else SHADOW


def study_ai(db: Session, *, study_id: int, roles: Collection[Role | str]) -> list[AiEntry]:
    """Per deployment: the newest decision, its job and the newest visible result.

    Shadow-mode decisions and results are left out unless `roles` may see them; a result
    whose deployment has no decision (yet) is listed on its own.
    """
    shadow_ok = can_see_shadow(roles)
    newest: dict[tuple[str, int], tuple[StudyResult, list[Finding]]] = {}
    for result, found in study_results(db, study_id=study_id, roles=roles):
        key = ("d", result.deployment_fk) if result.deployment_fk else ("v", result.version_fk)
        newest.setdefault(key, (result, found))
    manifests: dict[int, Manifest] = {}

    def entry(
        version: SolutionVersion,
        *,
        deployment_id: int | None,
        mode: str,
        decision: RouteDecision | None,
        job: Job | None,
        shown: tuple[StudyResult, list[Finding]] | None,
    ) -> AiEntry:
        if version.id not in manifests:
            manifests[version.id] = manifest_of(version)
        manifest = manifests[version.id]
        return AiEntry(
            version=version,
            deployment_id=deployment_id,
            mode=mode,
            decision=decision,
            job=job,
            result=shown[0] if shown else None,
            findings=list(shown[1]) if shown else [],
            statement=manifest.regulatory.statement,
            limitations=list(manifest.intended_use.limitations),
        )

    entries: list[AiEntry] = []
    for decision, version, job in decisions_for_study(db, study_id=study_id):
        mode = _decision_mode(db, decision, job)
        if mode == SHADOW and not shadow_ok:
            continue  # an earlier result it may see (from pilot or live) is listed below
        shown = newest.pop(("d", decision.deployment_fk), None)
        entries.append(
            entry(
                version,
                deployment_id=decision.deployment_fk,
                mode=mode,
                decision=decision,
                job=job,
                shown=shown,
            )
        )
    for (_kind, _key), shown in newest.items():
        result = shown[0]
        owner = db.get(SolutionVersion, result.version_fk)
        if owner is None:
            continue
        entries.append(
            entry(
                owner,
                deployment_id=result.deployment_fk,
                mode=result.mode,
                decision=None,
                job=db.get(Job, result.job_fk),
                shown=shown,
            )
        )
    return entries


# --- JSON -----------------------------------------------------------------------------------


class ReasonOut(BaseModel):
    criterion: str
    text: str


class DecisionOut(BaseModel):
    #: "job" (a job was queued), "skipped" (outside the intended use), "unchanged".
    outcome: str
    reasons: list[ReasonOut]
    decided_at: datetime
    num_instances: int
    eligible_instances: int


class FindingOut(BaseModel):
    id: int
    label: str
    code_scheme: str
    code_value: str
    code_meaning: str
    score: float
    #: sure / doubtful / none, from the manifest's operating points.
    certainty: str
    sop_instance_uid: str | None
    frame: int | None
    #: [x0, y0, x1, y1] in pixels of the stored image, or None.
    box: list[float] | None
    status: str

    @classmethod
    def of(cls, finding: Finding) -> FindingOut:
        corners = (finding.box_x0, finding.box_y0, finding.box_x1, finding.box_y1)
        box = [float(c) for c in corners if c is not None]
        return cls(
            id=finding.id,
            label=finding.label,
            code_scheme=finding.code_scheme,
            code_value=finding.code_value,
            code_meaning=finding.code_meaning,
            score=finding.score,
            certainty=finding.certainty,
            sop_instance_uid=finding.sop_instance_uid,
            frame=finding.frame,
            box=box if len(box) == 4 else None,
            status=finding.status,
        )


class ResultOut(BaseModel):
    job_id: int
    #: The deployment's mode when the job ran; "shadow" only ever reaches AI owners.
    mode: str
    #: positive / uncertain / negative, and the manifest's words for it.
    outcome: str
    text: str
    score: float | None
    certainty: str
    num_findings: int
    status: str
    label: str
    created_at: datetime
    provenance: dict[str, Any]
    findings: list[FindingOut]

    @classmethod
    def of(cls, result: StudyResult, findings: list[Finding]) -> ResultOut:
        try:
            provenance = json.loads(result.provenance)
        except ValueError:
            provenance = {}
        return cls(
            job_id=result.job_fk,
            mode=result.mode,
            outcome=result.outcome,
            text=result.text,
            score=result.score,
            certainty=result.certainty,
            num_findings=result.num_findings,
            status=result.status,
            label=PRELIMINARY_LABEL,
            created_at=result.created_at,
            provenance=provenance if isinstance(provenance, dict) else {},
            findings=[FindingOut.of(f) for f in findings],
        )


class AiEntryOut(BaseModel):
    solution_id: str
    version: str
    label: str
    deployment_id: int | None
    mode: str
    shadow: bool
    regulatory_statement: str
    limitations: list[str]
    decision: DecisionOut | None
    job: JobOut | None
    result: ResultOut | None


class StudyAiOut(BaseModel):
    study_uid: str
    #: Always "preliminary": AI output is never final.
    status: str
    label: str
    entries: list[AiEntryOut]


def entry_out(entry: AiEntry, study_uid: str) -> AiEntryOut:
    decision = entry.decision
    return AiEntryOut(
        solution_id=entry.version.solution_id,
        version=entry.version.version,
        label=entry.version.label,
        deployment_id=entry.deployment_id,
        mode=entry.mode,
        shadow=entry.shadow,
        regulatory_statement=entry.statement,
        limitations=entry.limitations,
        decision=(
            DecisionOut(
                outcome=decision.outcome,
                reasons=[ReasonOut.model_validate(r) for r in decision.reasons or []],
                decided_at=decision.created_at,
                num_instances=decision.num_instances,
                eligible_instances=len(decision.eligible or []),
            )
            if decision is not None
            else None
        ),
        job=JobOut.of(entry.job, entry.version, study_uid) if entry.job is not None else None,
        result=ResultOut.of(entry.result, entry.findings) if entry.result is not None else None,
    )


@router.get("/studies/{study_uid}/ai", response_model=StudyAiOut)
def study_ai_results(study_uid: str, db: SessionDep, user: ImagingReader) -> StudyAiOut:
    """What each solution deployed at the study's site did with it, and its suggestions.

    Shadow-mode output only for AI owners. Audited as access to patient data.
    """
    study = db.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise HTTPException(404, "study not found")
    patient = db.get(Patient, study.patient_fk)
    entries = study_ai(db, study_id=study.id, roles=user.roles)
    record(
        db,
        actor=user.username,
        action="study.ai.view",
        source=user.source,
        study_uid=study_uid,
        patient_id=patient.patient_id if patient else None,
        detail={
            "via": "api",
            "entries": len(entries),
            "results": sum(1 for e in entries if e.result is not None),
            "shadow": sum(1 for e in entries if e.shadow),
        },
    )
    return StudyAiOut(
        study_uid=study_uid,
        status=PRELIMINARY,
        label=PRELIMINARY_LABEL,
        entries=[entry_out(e, study_uid) for e in entries],
    )
