"""Turn a runtime's raw output into stored, preliminary findings; read them back by role.

Certainty comes from the manifest's operating points: score ≥ sure → "sure", ≥ doubtful
→ "doubtful", else "none". The study-level outcome is positive when any finding (or the
study score) is sure, uncertain when the strongest is doubtful, negative otherwise.
`replace_job_results` deletes a job's earlier rows before inserting, in the caller's
transaction (the job's compare-and-set completion), so a re-run never duplicates them.
Nothing here can mark AI output final: the status column only admits "preliminary".
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lods.auth.models import Role
from lods.findings.models import PRELIMINARY, Finding, StudyResult
from lods.solutions.manifest import Manifest, OperatingPoints
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.solutions.runtimes.base import FindingResult, RunResult

SURE, DOUBTFUL, NONE = "sure", "doubtful", "none"
POSITIVE, UNCERTAIN, NEGATIVE = "positive", "uncertain", "negative"
_RANK = {SURE: 2, DOUBTFUL: 1, NONE: 0}
#: Roles that may see shadow-mode output (clinicians never do).
SHADOW_ROLES = frozenset({Role.AI_OWNER})


def certainty(score: float, points: OperatingPoints) -> str:
    if score >= points.sure:
        return SURE
    if score >= points.doubtful:
        return DOUBTFUL
    return NONE


@dataclass(frozen=True)
class StudyOutcome:
    outcome: str
    text: str
    score: float | None
    certainty: str


def study_outcome(
    manifest: Manifest, result: RunResult, certainties: Sequence[str]
) -> StudyOutcome:
    """The study-level answer from the findings' certainties and the study score."""
    outputs = manifest.outputs
    score = result.study_score
    if score is None and result.findings:
        score = max(f.score for f in result.findings)
    best = max((_RANK[c] for c in certainties), default=0)
    if score is not None:
        best = max(best, _RANK[certainty(score, outputs.operating_points)])
    level = {2: SURE, 1: DOUBTFUL, 0: NONE}[best]
    outcome = {SURE: POSITIVE, DOUBTFUL: UNCERTAIN, NONE: NEGATIVE}[level]
    labels = outputs.study_result
    text = {POSITIVE: labels.positive, UNCERTAIN: labels.uncertain, NEGATIVE: labels.negative}[
        outcome
    ]
    return StudyOutcome(outcome=outcome, text=text, score=score, certainty=level)


def finding_key_for(manifest: Manifest, found: FindingResult) -> str | None:
    """The manifest's finding key for a runtime finding (matched by code), or None."""
    for output in manifest.outputs.findings:
        if (output.code.scheme, output.code.value) == (found.code.scheme, found.code.value):
            return output.key
    return None


def provenance(version: SolutionVersion) -> str:
    return json.dumps(
        {
            "solution": version.solution_id,
            "version": version.version,
            "manifest_sha256": version.manifest_sha256,
            "files": version.files,
        },
        sort_keys=True,
    )


def replace_job_results(
    db: Session,
    *,
    job_id: int,
    study_id: int | None,
    version: SolutionVersion,
    deployment: Deployment | None,
    mode: str,
    manifest: Manifest,
    result: RunResult,
    heatmaps: dict[int, str] | None = None,
) -> StudyResult:
    """Store the job's findings and study result, replacing any earlier rows of the job.

    `heatmaps` maps the index of a finding in `result.findings` to the SHA-256 of its
    heatmap PNG already in the blob store. Findings whose code the manifest does not
    declare are not stored (the runtimes drop them earlier; this is the last guard).
    """
    db.execute(delete(Finding).where(Finding.job_fk == job_id))
    db.execute(delete(StudyResult).where(StudyResult.job_fk == job_id))
    certainties: list[str] = []
    stored = 0
    for index, found in enumerate(result.findings):
        key = finding_key_for(manifest, found)
        if key is None:
            continue
        output = manifest.outputs.finding(key)
        level = certainty(found.score, manifest.outputs.points_for(key))
        certainties.append(level)
        box = found.box
        db.add(
            Finding(
                job_fk=job_id,
                study_fk=study_id,
                version_fk=version.id,
                deployment_fk=deployment.id if deployment else None,
                mode=mode,
                finding_key=key,
                code_scheme=output.code.scheme,
                code_value=output.code.value,
                code_meaning=output.code.meaning,
                label=found.label or output.label,
                score=float(found.score),
                certainty=level,
                sop_instance_uid=found.sop_instance_uid,
                frame=found.frame,
                box_x0=box.x0 if box else None,
                box_y0=box.y0 if box else None,
                box_x1=box.x1 if box else None,
                box_y1=box.y1 if box else None,
                heatmap_sha256=(heatmaps or {}).get(index),
                status=PRELIMINARY,
            )
        )
        stored += 1
    outcome = study_outcome(manifest, result, certainties)
    study_result = StudyResult(
        job_fk=job_id,
        study_fk=study_id,
        version_fk=version.id,
        deployment_fk=deployment.id if deployment else None,
        mode=mode,
        outcome=outcome.outcome,
        text=outcome.text,
        score=outcome.score,
        certainty=outcome.certainty,
        num_findings=stored,
        provenance=provenance(version),
        status=PRELIMINARY,
    )
    db.add(study_result)
    db.flush()
    return study_result


def can_see_shadow(roles: Collection[Role | str]) -> bool:
    return any(Role(r) in SHADOW_ROLES for r in roles)


def visible_modes(roles: Collection[Role | str]) -> list[str]:
    modes = [DeploymentMode.PILOT.value, DeploymentMode.LIVE.value]
    if can_see_shadow(roles):
        modes.append(DeploymentMode.SHADOW.value)
    return modes


def study_results(
    db: Session, *, study_id: int, roles: Collection[Role | str]
) -> list[tuple[StudyResult, list[Finding]]]:
    """The study's AI results the user may see, newest first, each with its findings."""
    modes = visible_modes(roles)
    results = list(
        db.scalars(
            select(StudyResult)
            .where(StudyResult.study_fk == study_id, StudyResult.mode.in_(modes))
            .order_by(StudyResult.created_at.desc(), StudyResult.id.desc())
        )
    )
    if not results:
        return []
    findings = db.scalars(
        select(Finding)
        .where(Finding.job_fk.in_([r.job_fk for r in results]))
        .order_by(Finding.score.desc(), Finding.id)
    ).all()
    by_job: dict[int, list[Finding]] = {}
    for finding in findings:
        by_job.setdefault(finding.job_fk, []).append(finding)
    return [(r, by_job.get(r.job_fk, [])) for r in results]
