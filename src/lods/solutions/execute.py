"""The "solution" job handler: run one solution version on one study, in a worker process.

Steps, each outside a database transaction except where said:
1. read the job's version, deployment and input instances (one short read);
2. stop if the deployment is no longer active (permanent: the kill switch won);
3. re-verify every installed file of the version (no transaction is held while hashing);
   a mismatch suspends its deployments, alerts and audits (one short write) and the job
   fails permanently;
4. run the runtime (`onnx`, `python`, `dicom_node`) with a deadline and heartbeats;
5. return a writer that stores findings and the study result; the worker calls it inside
   the transaction that completes the job by compare-and-set, so a cancelled or lost job
   never stores results, and a re-run replaces (never duplicates) them. The same
   transaction audits the AI use (model, version, inputs, output summary).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.exports import service as exports_service
from lods.findings.service import replace_job_results
from lods.imaging.models import Instance, Patient, Series, Study
from lods.imaging.store import BlobStore
from lods.jobs.errors import PermanentJobError, TransientJobError
from lods.jobs.worker import JobContext, JobOutcome
from lods.runtime import Runtime
from lods.solutions.manifest import parse_manifest
from lods.solutions.models import (
    Deployment,
    DeploymentState,
    SolutionVersion,
    VendorAnswer,
    VersionState,
)
from lods.solutions.runtimes import get_runtime
from lods.solutions.runtimes.base import (
    InputImage,
    RunContext,
    RunResult,
    RuntimeErrorBase,
)
from lods.solutions.service import IntegrityFailure, record_integrity_failure, verify_files

#: How long the inbox waits after a vendor's first answer for the rest of its objects.
ANSWER_SETTLE_SECONDS = 0.5


def make_inbox(
    runtime: Runtime, store: BlobStore, *, poll: float = 0.2
) -> Callable[[str, str, float, float], list[Path]]:
    """An InboxWaiter over the `vendor_answers` rows Lods' DICOM node files."""

    def wait(study_uid: str, calling_ae: str, since: float, timeout: float) -> list[Path]:
        since_dt = datetime.fromtimestamp(since, UTC)
        end = time.monotonic() + max(0.0, timeout)
        first_seen: float | None = None
        while True:
            with runtime.sessions() as db:
                rows = db.execute(
                    select(VendorAnswer.sha256)
                    .where(
                        VendorAnswer.study_uid == study_uid,
                        VendorAnswer.calling_ae == calling_ae,
                        VendorAnswer.received_at >= since_dt,
                    )
                    .order_by(VendorAnswer.id)
                ).all()
            now = time.monotonic()
            if rows and first_seen is None:
                first_seen = now
            if (
                rows
                and first_seen is not None
                and (now - first_seen >= ANSWER_SETTLE_SECONDS or now >= end)
            ):
                return [store.path_for(r[0]) for r in rows]
            if now >= end:
                return []
            time.sleep(min(poll, max(0.0, end - now)))

    return wait


@dataclass(frozen=True)
class _Input:
    """What a job runs on, read in one short transaction, as plain values."""

    solution: str
    label: str
    runtime_kind: str
    mode: str
    study_uid: str
    patient_id: str | None
    images: list[InputImage]
    package_path: str
    manifest_text: str
    files: dict[str, str]


def _load(
    db: Session,
    store: BlobStore,
    *,
    version_id: int,
    deployment_id: int | None,
    study_id: int | None,
    uids: list[str],
) -> _Input:
    version = db.get(SolutionVersion, version_id)
    if version is None:
        raise PermanentJobError(f"solution version {version_id} no longer exists")
    deployment = db.get(Deployment, deployment_id) if deployment_id else None
    if version.state != VersionState.APPROVED.value:
        raise PermanentJobError(f"{version.label} is {version.state}, not approved")
    if deployment is not None and deployment.state != DeploymentState.ACTIVE.value:
        reason = deployment.state_reason or ""
        raise PermanentJobError(f"deployment {deployment.id} is {deployment.state}: {reason}")
    study = db.get(Study, study_id) if study_id else None
    images: list[InputImage] = []
    patient_id = None
    if study is not None:
        patient = db.get(Patient, study.patient_fk)
        patient_id = patient.patient_id if patient is not None else None
        rows = db.execute(
            select(Instance, Series.series_uid)
            .join(Series, Instance.series_fk == Series.id)
            .where(
                Series.study_fk == study.id,
                Instance.superseded_at.is_(None),
                Instance.sop_instance_uid.in_(uids),
            )
        ).all()
        by_uid = {inst.sop_instance_uid: (inst, series_uid) for inst, series_uid in rows}
        missing = [u for u in uids if u not in by_uid]
        if missing:
            raise PermanentJobError(f"{len(missing)} input image(s) are no longer in the study")
        for uid in uids:
            inst, series_uid = by_uid[uid]
            images.append(
                InputImage(
                    sop_instance_uid=uid,
                    series_uid=series_uid,
                    sop_class_uid=inst.sop_class_uid,
                    path=store.path_for(inst.sha256),
                    number_of_frames=inst.number_of_frames or 1,
                )
            )
    return _Input(
        solution=f"{version.solution_id}@{version.version}",
        label=version.label,
        runtime_kind=version.runtime_kind,
        mode=deployment.mode if deployment else "shadow",
        study_uid=study.study_uid if study else "",
        patient_id=patient_id,
        images=images,
        package_path=version.package_path,
        manifest_text=version.manifest_text,
        files=dict(version.files),
    )


def _heatmap_png(png: bytes) -> bytes:
    """Re-encode a heatmap as 8-bit grey PNG (bounded, predictable blobs)."""
    with Image.open(io.BytesIO(png)) as img:
        grey = np.asarray(img.convert("L"))
    out = io.BytesIO()
    Image.fromarray(grey).save(out, format="PNG", optimize=True)
    return out.getvalue()


def run_solution_job(ctx: JobContext) -> JobOutcome:
    """Handler for job kind "solution"."""
    runtime = ctx.runtime
    settings = runtime.settings
    store = BlobStore.from_settings(settings)
    job = ctx.job
    if job.version_id is None:
        raise PermanentJobError("the job names no solution version")
    uids = list(job.inputs.get("sop_instance_uids", []))
    with runtime.sessions() as db:
        loaded = _load(
            db,
            store,
            version_id=job.version_id,
            deployment_id=job.deployment_id,
            study_id=job.study_id,
            uids=uids,
        )
    # Hashing the files needs no database: it runs outside any transaction.
    problems = verify_files(
        settings,
        package_path=loaded.package_path,
        manifest_text=loaded.manifest_text,
        files=loaded.files,
    )
    if problems:
        with runtime.sessions() as db, db.begin():
            record_integrity_failure(
                db, version_id=job.version_id, problems=problems, running_job_id=job.id
            )
        raise PermanentJobError(str(IntegrityFailure(loaded.label, problems)))
    manifest = parse_manifest(loaded.manifest_text)
    images = loaded.images
    run_ctx = RunContext(
        job_id=job.id,
        package_dir=settings.solutions_dir / loaded.package_path,
        manifest=manifest,
        study_uid=loaded.study_uid,
        images=images,
        deadline=ctx.deadline,
        heartbeat=ctx.heartbeat,
        local_ae_title=settings.dicom_ae_title,
        inbox=make_inbox(runtime, store),
        payload=dict(job.inputs.get("payload", {})),
    )
    started = time.monotonic()
    try:
        result: RunResult = get_runtime(loaded.runtime_kind).run(run_ctx)
    except RuntimeErrorBase as exc:
        if exc.transient:
            raise TransientJobError(str(exc)) from exc
        raise PermanentJobError(str(exc)) from exc
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    heatmaps: dict[int, str] = {}
    for index, found in enumerate(result.findings):
        if found.heatmap_png:
            heatmaps[index] = store.put_bytes(_heatmap_png(found.heatmap_png)).sha256
    details = {
        **result.details,
        "runtime_ms": elapsed_ms,
        "images": len(images),
        "files": loaded.files,
    }

    def write(db: Session) -> None:
        version_row = db.get(SolutionVersion, job.version_id)
        assert version_row is not None
        deployment = db.get(Deployment, job.deployment_id) if job.deployment_id else None
        stored = replace_job_results(
            db,
            job_id=job.id,
            study_id=job.study_id,
            version=version_row,
            deployment=deployment,
            mode=loaded.mode,
            manifest=manifest,
            result=result,
            heatmaps=heatmaps,
        )
        record(
            db,
            actor=f"solution:{loaded.solution}",
            action="ai.result",
            patient_id=loaded.patient_id,
            study_uid=loaded.study_uid or None,
            object_ref=f"job:{job.id}",
            detail={
                "solution": loaded.solution,
                "mode": loaded.mode,
                "inputs": uids,
                "outcome": stored.outcome,
                "score": stored.score,
                "findings": stored.num_findings,
                "attempt": job.attempt,
            },
        )
        # IHE AI Results: an UNVERIFIED SR to the site's PACS when the deployment asks for
        # it (queued in this transaction; the outbox sender delivers it).
        exports_service.on_ai_result(db, job.id, settings)

    return JobOutcome(result=details, write=write)


#: The handler registry the executor's worker processes import ("module:attribute").
HANDLERS = {"solution": run_solution_job}
HANDLERS_PATH = "lods.solutions.execute:HANDLERS"
