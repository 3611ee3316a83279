"""Route new input to the solutions deployed at its site: a job, or a skip with reasons.

For each "stable" study event the router reads the headers of the study's current
instances (outside any transaction), asks the intended-use matcher about every active
deployment at the study's site, and then — in one short transaction that first claims
the event by compare-and-set — queues a job for each match and records a skip with the
unmet criteria for each non-match. Both are `RouteDecision` rows, shown on the study page.

Re-trigger policy for instances that arrive after a study was stable (the watcher marks
it stable again, and a new event comes here):
- a deployment whose eligible images are unchanged (same instances, none received since
  its last job was queued) gets an "unchanged" decision and no new job;
- otherwise a new job runs on the full, current set of eligible images; a job of the same
  deployment and study that is still queued is cancelled as superseded (a running one
  finishes); the study page shows the newest result of each solution;
- a study that no longer matches records a skip; earlier results stay, with their date.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lods.db import utcnow
from lods.imaging.models import Instance, Series, Study, StudyEvent
from lods.imaging.store import BlobStore
from lods.jobs import service as jobs
from lods.jobs.models import Job, JobState
from lods.routing.models import RouteDecision
from lods.solutions.intended_use import MatchResult, StudyFacts, match, study_facts_from_datasets
from lods.solutions.manifest import InputKind, Manifest, parse_manifest
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.solutions.service import active_deployments

log = logging.getLogger(__name__)

JOB, SKIPPED, UNCHANGED = "job", "skipped", "unchanged"
#: Results clinicians see first are computed first.
PRIORITY = {
    DeploymentMode.LIVE.value: 10,
    DeploymentMode.PILOT.value: 20,
    DeploymentMode.SHADOW.value: 50,
}


@dataclass(frozen=True)
class CurrentInstance:
    sop_instance_uid: str
    sha256: str
    received_at: datetime


@dataclass(frozen=True)
class StudyInput:
    """What the router read about a study, before deciding."""

    event_id: int
    study_id: int
    site_id: int
    num_instances: int
    instances: tuple[CurrentInstance, ...]
    #: (deployment id, version id, mode, manifest) of the active deployments at the site.
    deployments: tuple[tuple[int, int, str, Manifest], ...]


def pending_events(db: Session, *, limit: int = 50) -> list[int]:
    return list(
        db.scalars(
            select(StudyEvent.id)
            .where(StudyEvent.kind == "stable", StudyEvent.consumed_at.is_(None))
            .order_by(StudyEvent.id)
            .limit(limit)
        )
    )


def read_input(db: Session, *, event_id: int) -> StudyInput | None:
    event = db.get(StudyEvent, event_id)
    if event is None or event.consumed_at is not None:
        return None
    study = db.get(Study, event.study_fk)
    if study is None:
        return None
    rows = db.execute(
        select(Instance.sop_instance_uid, Instance.sha256, Instance.received_at)
        .join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id, Instance.superseded_at.is_(None))
        .order_by(Series.id, Instance.instance_number, Instance.id)
    ).all()
    deployments = tuple(
        (d.id, d.version_fk, d.mode, parse_manifest(d.version.manifest_text))
        for d in active_deployments(
            db, site_id=study.site_id, input_kind=InputKind.DICOM_STUDY.value
        )
    )
    return StudyInput(
        event_id=event.id,
        study_id=study.id,
        site_id=study.site_id,
        num_instances=event.num_instances,
        instances=tuple(CurrentInstance(r[0], r[1], r[2]) for r in rows),
        deployments=deployments,
    )


def read_facts(store: BlobStore, instances: Sequence[CurrentInstance]) -> StudyFacts:
    """The intended-use facts of the study from the stored headers (pixel data not read)."""
    datasets = []
    for inst in instances:
        path: Path = store.path_for(inst.sha256)
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, InvalidDicomError) as exc:
            log.warning("cannot read header of %s: %s", inst.sop_instance_uid, exc)
    return study_facts_from_datasets(datasets, input_kind=InputKind.DICOM_STUDY)


def _last_job_decision(db: Session, *, study_id: int, deployment_id: int) -> RouteDecision | None:
    return db.scalars(
        select(RouteDecision)
        .where(
            RouteDecision.study_fk == study_id,
            RouteDecision.deployment_fk == deployment_id,
            RouteDecision.outcome == JOB,
        )
        .order_by(RouteDecision.id.desc())
        .limit(1)
    ).first()


def _unchanged(
    previous: RouteDecision | None, result: MatchResult, received: dict[str, datetime]
) -> bool:
    if previous is None or sorted(previous.eligible) != sorted(result.eligible):
        return False
    return all(received[uid] <= previous.created_at for uid in result.eligible)


def decide(
    db: Session, *, study_input: StudyInput, facts: StudyFacts, now: datetime | None = None
) -> list[RouteDecision]:
    """Claim the event and record a decision per deployment; returns [] if already claimed."""
    now = now or utcnow()
    claimed = db.execute(
        update(StudyEvent)
        .where(StudyEvent.id == study_input.event_id, StudyEvent.consumed_at.is_(None))
        .values(consumed_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return []
    received = {i.sop_instance_uid: i.received_at for i in study_input.instances}
    decisions: list[RouteDecision] = []
    for deployment_id, version_id, mode, manifest in study_input.deployments:
        deployment = db.get(Deployment, deployment_id)
        if deployment is None or deployment.state != "active":
            continue  # suspended between reading and deciding
        result = match(manifest.intended_use, facts)
        decision = RouteDecision(
            study_fk=study_input.study_id,
            event_fk=study_input.event_id,
            deployment_fk=deployment_id,
            version_fk=version_id,
            num_instances=study_input.num_instances,
            eligible=list(result.eligible),
            reasons=[{"criterion": u.criterion, "text": u.text} for u in result.unmet],
            created_at=now,
        )
        if not result.matched:
            decision.outcome = SKIPPED
        elif _unchanged(
            _last_job_decision(db, study_id=study_input.study_id, deployment_id=deployment_id),
            result,
            received,
        ):
            decision.outcome = UNCHANGED
        else:
            superseded = list(
                db.scalars(
                    select(Job.id).where(
                        Job.study_fk == study_input.study_id,
                        Job.deployment_fk == deployment_id,
                        Job.state == JobState.QUEUED.value,
                    )
                )
            )
            if superseded:
                jobs.cancel(db, job_ids=superseded, reason="superseded: the study changed", now=now)
            decision.outcome = JOB
            decision.job_fk = jobs.enqueue(
                db,
                version_id=version_id,
                deployment_id=deployment_id,
                study_id=study_input.study_id,
                inputs={"sop_instance_uids": list(result.eligible), "mode": mode},
                max_attempts=manifest.limits.max_attempts,
                timeout_seconds=manifest.limits.timeout_seconds,
                priority=PRIORITY.get(mode, 50),
                now=now,
            )
        db.add(decision)
        decisions.append(decision)
    db.flush()
    return decisions


def decisions_for_study(
    db: Session, *, study_id: int
) -> list[tuple[RouteDecision, SolutionVersion, Job | None]]:
    """The newest decision per deployment for the study page, with its version and job."""
    rows = db.scalars(
        select(RouteDecision)
        .where(RouteDecision.study_fk == study_id)
        .order_by(RouteDecision.id.desc())
    ).all()
    newest: dict[int, RouteDecision] = {}
    for row in rows:
        newest.setdefault(row.deployment_fk, row)
    out = []
    for decision in sorted(newest.values(), key=lambda d: d.id):
        version = db.get(SolutionVersion, decision.version_fk)
        assert version is not None
        job_id = decision.job_fk
        if decision.outcome == UNCHANGED:
            previous = _last_job_decision(
                db, study_id=study_id, deployment_id=decision.deployment_fk
            )
            job_id = previous.job_fk if previous else None
        job = db.get(Job, job_id) if job_id else None
        out.append((decision, version, job))
    return out
