"""Install, verify, approve, deploy, suspend and retire solution versions.

The lifecycle (checked in one place, `_VERSION_MOVES` / `_DEPLOYMENT_MOVES`):

    version:    installed ──approve (ai_owner + evidence)──▶ approved ──▶ retired
    deployment: (approved version) ──deploy(site, mode)──▶ active ⇄ suspended ──▶ retired

Installed versions are immutable: the files are copied under the data dir, made
read-only, and their hashes (and the manifest's) are checked again on every load
(`verify_version`). A mismatch suspends every deployment of the version, cancels its
jobs, raises an alert for admins and AI owners and is audited (`record_integrity_failure`).
Every change is audited in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.alerts.service import raise_alert
from lods.audit.service import record
from lods.auth.models import Role, User
from lods.config import Settings
from lods.db import utcnow
from lods.jobs import service as jobs
from lods.jobs.models import Job, JobState
from lods.runtime import Runtime
from lods.sites.models import Site
from lods.solutions.manifest import MANIFEST_NAME, Manifest, parse_manifest
from lods.solutions.models import (
    Deployment,
    DeploymentMode,
    DeploymentState,
    SolutionVersion,
    VersionState,
)
from lods.solutions.packaging import (
    PackageError,
    open_package,
    package_problems,
    read_manifest,
)
from lods.validation.models import ValidationReport

_VERSION_MOVES = {
    (VersionState.INSTALLED, VersionState.APPROVED),
    (VersionState.INSTALLED, VersionState.RETIRED),
    (VersionState.APPROVED, VersionState.RETIRED),
}
_DEPLOYMENT_MOVES = {
    (DeploymentState.ACTIVE, DeploymentState.SUSPENDED),
    (DeploymentState.SUSPENDED, DeploymentState.ACTIVE),
    (DeploymentState.ACTIVE, DeploymentState.RETIRED),
    (DeploymentState.SUSPENDED, DeploymentState.RETIRED),
}
#: Who may change deployments (the UI and API check the same set).
LIFECYCLE_ROLES = frozenset({Role.AI_OWNER.value, Role.ADMIN.value})
MIN_EVIDENCE_CHARS = 10


class SolutionError(Exception):
    """A solution operation that cannot be done as asked."""


class SolutionNotFound(SolutionError):
    pass


class IllegalLifecycleMove(SolutionError):
    pass


class IntegrityFailure(SolutionError):
    """The installed files no longer match their hashes."""

    def __init__(self, label: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{label}: installed files do not match: " + "; ".join(problems))


def _move_version(version: SolutionVersion, new: VersionState) -> None:
    old = VersionState(version.state)
    if (old, new) not in _VERSION_MOVES:
        raise IllegalLifecycleMove(f"{version.label} is {old.value}; it cannot become {new.value}")
    version.state = new.value


def _move_deployment(deployment: Deployment, new: DeploymentState) -> None:
    old = DeploymentState(deployment.state)
    if (old, new) not in _DEPLOYMENT_MOVES:
        raise IllegalLifecycleMove(
            f"deployment {deployment.id} is {old.value}; it cannot become {new.value}"
        )
    deployment.state = new.value


# --- finding versions ---------------------------------------------------------------------


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'org.x.fracture@1.0' -> ('org.x.fracture', '1.0'); no '@' -> (id, None)."""
    solution_id, _, version = ref.partition("@")
    return solution_id.strip(), (version.strip() or None)


def get_version(db: Session, *, version_id: int) -> SolutionVersion:
    version = db.get(SolutionVersion, version_id)
    if version is None:
        raise SolutionNotFound(f"no solution version {version_id}")
    return version


def find_version(db: Session, *, ref: str) -> SolutionVersion:
    """The version named 'id@version', or the newest installed version of 'id'."""
    solution_id, version = parse_ref(ref)
    query = select(SolutionVersion).where(SolutionVersion.solution_id == solution_id)
    if version is not None:
        query = query.where(SolutionVersion.version == version)
    rows = list(
        db.scalars(query.order_by(SolutionVersion.installed_at.desc(), SolutionVersion.id.desc()))
    )
    if not rows:
        raise SolutionNotFound(f"no installed solution {ref!r}")
    return rows[0]


def list_versions(db: Session) -> list[SolutionVersion]:
    return list(
        db.scalars(
            select(SolutionVersion).order_by(SolutionVersion.solution_id, SolutionVersion.id)
        )
    )


def manifest_of(version: SolutionVersion) -> Manifest:
    return parse_manifest(version.manifest_text)


def package_dir(settings: Settings, version: SolutionVersion) -> Path:
    return settings.solutions_dir / version.package_path


# --- install --------------------------------------------------------------------------------


def _make_read_only(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def install(
    db: Session, *, settings: Settings, path: Path, actor: str, source: str = ""
) -> SolutionVersion:
    """Verify the package at `path` and install it as a new immutable version.

    Refuses (PackageError, listing every problem) a package whose manifest is invalid,
    which has files that are unlisted, missing or differ from their hashes, or whose
    id and version are already installed.
    """
    with open_package(path) as folder:
        manifest, text = read_manifest(folder)
        problems = package_problems(folder, manifest.files)
        if problems:
            raise PackageError(problems)
        existing = db.scalars(
            select(SolutionVersion).where(
                SolutionVersion.solution_id == manifest.id,
                SolutionVersion.version == manifest.version,
            )
        ).first()
        if existing is not None:
            raise PackageError(
                [
                    f"{manifest.label} ({manifest.id}@{manifest.version}) is already installed; "
                    "installed versions never change: give the package a new version"
                ]
            )
        rel = Path(manifest.id) / manifest.version
        target = settings.solutions_dir / rel
        if target.exists():  # left by an install whose transaction did not commit
            target.chmod(0o755)
            for p in target.rglob("*"):
                p.chmod(0o755 if p.is_dir() else 0o644)
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
        for name in [*manifest.files, MANIFEST_NAME]:
            dst = staging / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, dst)
        # The copy is checked again: what is installed is what was verified.
        copied = package_problems(staging, manifest.files)
        if copied:
            shutil.rmtree(staging)
            raise PackageError([f"copy failed verification: {p}" for p in copied])
        _fsync_tree(staging)
        staging.rename(target)
        _make_read_only(target)
    version = SolutionVersion(
        solution_id=manifest.id,
        version=manifest.version,
        name=manifest.name,
        vendor=manifest.vendor,
        runtime_kind=manifest.runtime.kind,
        input_kind=manifest.intended_use.input_kind.value,
        manifest_text=text,
        manifest_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        files=dict(manifest.files),
        package_path=rel.as_posix(),
        installed_by=actor,
        last_verified_at=utcnow(),
    )
    db.add(version)
    db.flush()
    record(
        db,
        actor=actor,
        action="solution.install",
        object_ref=f"solution:{manifest.id}@{manifest.version}",
        source=source,
        detail={
            "name": manifest.name,
            "vendor": manifest.vendor,
            "runtime": manifest.runtime.kind,
            "regulatory": manifest.regulatory.summary(),
            "manifest_sha256": version.manifest_sha256,
            "files": manifest.files,
        },
    )
    return version


def install_package(runtime: Runtime, *, path: Path, actor: str, source: str = "") -> int:
    """Install in a transaction of its own; a refusal is audited (in another) and re-raised.

    What the CLI and the UI call: the refusal must stay in the audit trail although the
    install's own transaction rolls back.
    """
    try:
        with runtime.sessions() as db, db.begin():
            return install(db, settings=runtime.settings, path=path, actor=actor, source=source).id
    except PackageError as exc:
        with runtime.sessions() as db, db.begin():
            record(
                db,
                actor=actor,
                action="solution.install",
                outcome="failure",
                object_ref=f"package:{path.name}",
                source=source,
                detail={"problems": exc.problems},
            )
        raise


# --- integrity ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedPackage:
    folder: Path
    manifest: Manifest


def verify_files(
    settings: Settings, *, package_path: str, manifest_text: str, files: dict[str, str]
) -> list[str]:
    """Every difference between the installed folder and what was installed (pure file check)."""
    folder = settings.solutions_dir / package_path
    if not folder.is_dir():
        return [f"the installed folder {package_path} is missing"]
    problems: list[str] = []
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        problems.append(f"{MANIFEST_NAME} is missing")
    elif manifest_path.read_bytes() != manifest_text.encode("utf-8"):
        problems.append(f"{MANIFEST_NAME} was changed after installation")
    problems.extend(package_problems(folder, files))
    return problems


def verify_version(settings: Settings, version: SolutionVersion) -> VerifiedPackage:
    """Re-check the installed files of `version`; raise IntegrityFailure on any difference."""
    problems = verify_files(
        settings,
        package_path=version.package_path,
        manifest_text=version.manifest_text,
        files=version.files,
    )
    if problems:
        raise IntegrityFailure(version.label, problems)
    return VerifiedPackage(folder=package_dir(settings, version), manifest=manifest_of(version))


def record_integrity_failure(
    db: Session,
    *,
    version_id: int,
    problems: list[str],
    running_job_id: int | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Suspend every deployment of the version, cancel its jobs, alert, audit.

    `running_job_id` is the job that found the mismatch: it is left to fail with the
    reason rather than be cancelled. Returns the ids of the deployments suspended. Safe to
    call again (idempotent apart from counting another alert occurrence).
    """
    now = now or utcnow()
    version = get_version(db, version_id=version_id)
    version.integrity_failed_at = version.integrity_failed_at or now
    version.integrity_detail = "; ".join(problems)
    reason = "integrity check failed: " + "; ".join(problems)
    suspended: list[int] = []
    for deployment in version.deployments:
        if deployment.state == DeploymentState.ACTIVE.value:
            _move_deployment(deployment, DeploymentState.SUSPENDED)
            deployment.state_reason = reason
            deployment.changed_at, deployment.changed_by = now, "system"
            suspended.append(deployment.id)
        pending = [
            job_id
            for job_id in db.scalars(
                select(Job.id).where(
                    Job.deployment_fk == deployment.id,
                    Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                )
            )
            if job_id != running_job_id
        ]
        if pending:
            jobs.cancel(db, job_ids=pending, reason=reason, now=now)
    db.flush()
    record(
        db,
        actor="system",
        action="solution.integrity_failed",
        outcome="failure",
        object_ref=f"solution:{version.solution_id}@{version.version}",
        detail={"problems": problems, "suspended_deployments": suspended},
    )
    raise_alert(
        db,
        kind="solution.integrity",
        subject=f"solution_version:{version.id}",
        title=f"{version.label} refused to run: its installed files were changed",
        detail=reason + (f". Deployments suspended: {suspended}" if suspended else ""),
        severity="urgent",
        audience=(Role.ADMIN.value, Role.AI_OWNER.value),
        now=now,
    )
    return suspended


def check_integrity(
    db: Session, *, settings: Settings, version_id: int, actor: str, source: str = ""
) -> list[str]:
    """Verify now (CLI/UI 'verify' button); on failure take the same steps as a load would."""
    version = get_version(db, version_id=version_id)
    try:
        verify_version(settings, version)
    except IntegrityFailure as exc:
        record_integrity_failure(db, version_id=version.id, problems=exc.problems)
        return exc.problems
    version.last_verified_at = utcnow()
    record(
        db,
        actor=actor,
        action="solution.verify",
        object_ref=f"solution:{version.solution_id}@{version.version}",
        source=source,
    )
    return []


# --- lifecycle ------------------------------------------------------------------------------


def approve(
    db: Session,
    *,
    settings: Settings,
    version_id: int,
    approver: User,
    evidence: str,
    source: str = "",
    report_id: int | None = None,
) -> SolutionVersion:
    """Approve a version for use; only an active ai_owner may, with an evidence note.

    A version is approved on its own: a new version of the same solution starts
    unapproved, whatever its predecessor was. `report_id` cites a local validation report
    of this version (`lods validate`); it is stored with the approval.
    """
    version = get_version(db, version_id=version_id)
    if report_id is not None:
        report = db.get(ValidationReport, report_id)
        if report is None or report.version_fk != version.id:
            raise SolutionError(f"{version.label} has no validation report {report_id}")
    if not approver.is_active or Role.AI_OWNER not in approver.role_set:
        raise SolutionError(
            f"{approver.username} is not an active ai_owner; only AI owners approve"
        )
    if len(evidence.strip()) < MIN_EVIDENCE_CHARS:
        raise SolutionError(
            "approval needs an evidence note (e.g. the local validation report and its result)"
        )
    if version.integrity_failed_at is not None:
        raise SolutionError(f"{version.label} failed its integrity check; install a clean copy")
    verify_version(settings, version)
    _move_version(version, VersionState.APPROVED)
    version.approved_at = utcnow()
    version.approved_by = approver.username
    version.approval_evidence = evidence.strip()
    version.approval_report_fk = report_id
    db.flush()
    detail: dict[str, object] = {"evidence": version.approval_evidence}
    if report_id is not None:
        detail["validation_report"] = report_id
    record(
        db,
        actor=approver.username,
        action="solution.approve",
        object_ref=f"solution:{version.solution_id}@{version.version}",
        source=source,
        detail=detail,
    )
    return version


def deploy(
    db: Session, *, version_id: int, site_id: int, mode: str, actor: str, source: str = ""
) -> Deployment:
    """Put an approved version to use at a site in `mode`, or change the mode / resume it.

    Only one version of a solution may show results (pilot or live) at a site at a time;
    a new version can run beside it in shadow mode.
    """
    version = get_version(db, version_id=version_id)
    wanted = DeploymentMode(mode)
    if version.state != VersionState.APPROVED.value:
        raise SolutionError(
            f"{version.label} is {version.state}; only approved versions are deployed"
        )
    if version.integrity_failed_at is not None:
        raise SolutionError(f"{version.label} failed its integrity check; it cannot be deployed")
    site = db.get(Site, site_id)
    if site is None:
        raise SolutionNotFound(f"no site {site_id}")
    if wanted is not DeploymentMode.SHADOW:
        others = db.scalars(
            select(Deployment)
            .join(SolutionVersion, Deployment.version_fk == SolutionVersion.id)
            .where(
                SolutionVersion.solution_id == version.solution_id,
                SolutionVersion.id != version.id,
                Deployment.site_fk == site_id,
                Deployment.state == DeploymentState.ACTIVE.value,
                Deployment.mode != DeploymentMode.SHADOW.value,
            )
        ).all()
        if others:
            other = others[0]
            raise SolutionError(
                f"{other.version.label} is {other.mode} at {site.code}; suspend or retire it "
                f"first, or deploy {version.version} in shadow mode beside it"
            )
    now = utcnow()
    deployment = db.scalars(
        select(Deployment).where(Deployment.version_fk == version.id, Deployment.site_fk == site_id)
    ).first()
    before = None
    if deployment is None:
        deployment = Deployment(
            version_fk=version.id,
            site_fk=site_id,
            mode=wanted.value,
            created_by=actor,
            created_at=now,
            changed_by=actor,
            changed_at=now,
        )
        db.add(deployment)
    else:
        before = {"mode": deployment.mode, "state": deployment.state}
        if deployment.state == DeploymentState.SUSPENDED.value:
            _move_deployment(deployment, DeploymentState.ACTIVE)
        elif deployment.state == DeploymentState.RETIRED.value:
            raise IllegalLifecycleMove(f"{version.label} was retired at {site.code}")
        deployment.mode = wanted.value
        deployment.state_reason = None
        deployment.changed_by, deployment.changed_at = actor, now
    db.flush()
    record(
        db,
        actor=actor,
        action="solution.deploy",
        object_ref=f"deployment:{deployment.id}",
        source=source,
        detail={
            "solution": f"{version.solution_id}@{version.version}",
            "site": site.code,
            "mode": wanted.value,
            "before": before,
        },
    )
    return deployment


def get_deployment(db: Session, *, deployment_id: int) -> Deployment:
    deployment = db.get(Deployment, deployment_id)
    if deployment is None:
        raise SolutionNotFound(f"no deployment {deployment_id}")
    return deployment


def suspend(
    db: Session, *, deployment_id: int, actor: str, reason: str, source: str = ""
) -> list[int]:
    """The kill switch: stop the deployment now. Queued jobs are cancelled and running
    ones will not have their results stored. Returns the cancelled job ids."""
    if not reason.strip():
        raise SolutionError("say why the deployment is suspended")
    deployment = get_deployment(db, deployment_id=deployment_id)
    _move_deployment(deployment, DeploymentState.SUSPENDED)
    now = utcnow()
    deployment.state_reason = reason.strip()
    deployment.changed_by, deployment.changed_at = actor, now
    cancelled = jobs.cancel(
        db, deployment_id=deployment.id, reason=f"suspended by {actor}: {reason}", now=now
    )
    db.flush()
    record(
        db,
        actor=actor,
        action="solution.suspend",
        object_ref=f"deployment:{deployment.id}",
        source=source,
        detail={
            "solution": f"{deployment.version.solution_id}@{deployment.version.version}",
            "reason": deployment.state_reason,
            "cancelled_jobs": cancelled,
        },
    )
    return cancelled


def retire_deployment(
    db: Session, *, deployment_id: int, actor: str, reason: str = "", source: str = ""
) -> Deployment:
    deployment = get_deployment(db, deployment_id=deployment_id)
    _move_deployment(deployment, DeploymentState.RETIRED)
    now = utcnow()
    deployment.state_reason = reason.strip() or "retired"
    deployment.changed_by, deployment.changed_at = actor, now
    cancelled = jobs.cancel(db, deployment_id=deployment.id, reason=f"retired by {actor}", now=now)
    db.flush()
    record(
        db,
        actor=actor,
        action="solution.retire_deployment",
        object_ref=f"deployment:{deployment.id}",
        source=source,
        detail={"reason": deployment.state_reason, "cancelled_jobs": cancelled},
    )
    return deployment


def retire(
    db: Session, *, version_id: int, actor: str, reason: str = "", source: str = ""
) -> SolutionVersion:
    """Retire a version everywhere: its deployments end and its queued jobs are cancelled."""
    version = get_version(db, version_id=version_id)
    _move_version(version, VersionState.RETIRED)
    now = utcnow()
    version.retired_at, version.retired_by = now, actor
    for deployment in version.deployments:
        if deployment.state != DeploymentState.RETIRED.value:
            _move_deployment(deployment, DeploymentState.RETIRED)
            deployment.state_reason = reason.strip() or "version retired"
            deployment.changed_by, deployment.changed_at = actor, now
        jobs.cancel(db, deployment_id=deployment.id, reason=f"version retired by {actor}", now=now)
    db.flush()
    record(
        db,
        actor=actor,
        action="solution.retire",
        object_ref=f"solution:{version.solution_id}@{version.version}",
        source=source,
        detail={"reason": reason},
    )
    return version


def active_deployments(db: Session, *, site_id: int, input_kind: str) -> list[Deployment]:
    """Deployments at `site_id` that should see new input of `input_kind`."""
    return list(
        db.scalars(
            select(Deployment)
            .join(SolutionVersion, Deployment.version_fk == SolutionVersion.id)
            .where(
                Deployment.site_fk == site_id,
                Deployment.state == DeploymentState.ACTIVE.value,
                SolutionVersion.state == VersionState.APPROVED.value,
                SolutionVersion.integrity_failed_at.is_(None),
                SolutionVersion.input_kind == input_kind,
            )
            .order_by(Deployment.id)
        )
    )


def set_unverified_sr_export(
    db: Session, *, deployment_id: int, enabled: bool, actor: str, source: str = ""
) -> Deployment:
    """Send (or stop sending) an UNVERIFIED DICOM SR of each AI answer of this deployment
    to the site's PACS as soon as it is stored (IHE AI Results). The VERIFIED SR after a
    radiologist's sign-off is sent either way; shadow output never leaves."""
    deployment = db.get(Deployment, deployment_id)
    if deployment is None:
        raise SolutionNotFound(f"no deployment {deployment_id}")
    before = deployment.export_unverified_sr
    deployment.export_unverified_sr = enabled
    deployment.changed_by, deployment.changed_at = actor, utcnow()
    db.flush()
    record(
        db,
        actor=actor,
        action="solution.export_unverified_sr",
        object_ref=f"deployment:{deployment.id}",
        source=source,
        detail={"before": before, "after": enabled},
    )
    return deployment


def deployments_of(db: Session, *, version_id: int) -> list[Deployment]:
    return list(
        db.scalars(
            select(Deployment).where(Deployment.version_fk == version_id).order_by(Deployment.id)
        )
    )
