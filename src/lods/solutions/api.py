"""JSON API for AI solutions: the catalogue, install, approve, deploy, the kill switch.

Radiologists, physicians, AI owners and administrators may read the catalogue; AI owners
and administrators install, deploy, suspend, verify and retire; only an AI owner approves
(the service checks that too). Every change is audited by `lods.solutions.service`.

Errors are answered with the service's own message: 404 for an unknown version, site or
deployment, 409 for a move the lifecycle does not allow, 422 (with every problem) for a
package that cannot be installed. They are returned rather than raised, so that what the
service recorded on the way (a refused install, a failed integrity check) is committed.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, RuntimeDep, SessionDep, SettingsDep, role_dependency
from lods.auth.models import Role, User
from lods.runtime import Runtime
from lods.sites.models import Site
from lods.sites.service import SiteError, get_site_by_code_or_raise, list_sites
from lods.solutions import service
from lods.solutions.models import SolutionVersion
from lods.solutions.packaging import MAX_PACKAGE_BYTES, PackageError
from lods.solutions.schemas import (
    ApproveIn,
    DeployIn,
    DeploymentOut,
    ProblemOut,
    RetireIn,
    SolutionOut,
    SuspendIn,
    SuspendOut,
    VerifyOut,
    VersionDetail,
    catalogue,
    problem_of,
)

router = APIRouter(prefix="/api", tags=["solutions"])

#: Who may read the catalogue: the clinicians who see results, and those who run solutions.
SOLUTION_READERS = frozenset({Role.RADIOLOGIST, Role.PHYSICIAN, Role.AI_OWNER, Role.ADMIN})
#: Who may install, deploy, suspend, verify and retire (the service's own set).
SOLUTION_OPERATORS = frozenset(Role(r) for r in service.LIFECYCLE_ROLES)
#: Who may approve a version for use.
SOLUTION_APPROVERS = frozenset({Role.AI_OWNER})

SolutionReader = Annotated[Principal, Depends(role_dependency(*SOLUTION_READERS))]
SolutionOperator = Annotated[Principal, Depends(role_dependency(*SOLUTION_OPERATORS))]
SolutionApprover = Annotated[Principal, Depends(role_dependency(*SOLUTION_APPROVERS))]

#: The errors a solution operation answers with a 4xx (see `schemas.problem_of`).
OPERATION_ERRORS = (service.SolutionError, PackageError, SiteError, ValueError)

_UPLOAD_CHUNK = 1 << 20
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": ProblemOut, "description": "No such solution version, site or deployment"},
    409: {"model": ProblemOut, "description": "Not allowed in the current lifecycle state"},
    422: {"model": ProblemOut, "description": "Not accepted, with every problem"},
}


# --- shared with the web pages --------------------------------------------------------------


def site_map(db: Session) -> dict[int, Site]:
    return {site.id: site for site in list_sites(db)}


def find_version(db: Session, solution_id: str, version: str) -> SolutionVersion:
    """The installed version `solution_id@version`; raise SolutionNotFound otherwise."""
    row = service.find_version(db, ref=f"{solution_id}@{version}")
    if row.solution_id != solution_id or row.version != version:
        raise service.SolutionNotFound(f"no installed solution {solution_id}@{version}")
    return row


def approver_of(db: Session, user: Principal) -> User:
    row = db.get(User, user.user_id)
    if row is None:
        raise service.SolutionError(f"{user.username} is not a known user")
    return row


def _upload_name(filename: str | None) -> str:
    name = _UNSAFE_NAME_CHARS.sub("_", Path(filename or "").name).strip("._")[:100]
    return name or "package.zip"


def save_upload(upload: UploadFile, folder: Path) -> Path:
    """Write the uploaded file into `folder` (keeping a safe form of its name)."""
    target = folder / _upload_name(upload.filename)
    written = 0
    with target.open("wb") as out:
        while chunk := upload.file.read(_UPLOAD_CHUNK):
            written += len(chunk)
            if written > MAX_PACKAGE_BYTES:
                raise PackageError(["the uploaded package is larger than 2 GiB"])
            out.write(chunk)
    if written == 0:
        raise PackageError(["the uploaded file is empty; choose a package .zip"])
    return target


def install_upload(runtime: Runtime, upload: UploadFile, *, actor: str, source: str) -> int:
    """Save the upload to a temporary file and install it; return the new version's id.

    The install runs in a transaction of its own (a refusal is audited even though the
    install rolls back); raises PackageError with every problem when refused.
    """
    tmp_root = runtime.settings.tmp_dir
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=tmp_root) as tmp:
        path = save_upload(upload, Path(tmp))
        return service.install_package(runtime, path=path, actor=actor, source=source)


def _problem(exc: Exception) -> JSONResponse:
    code, body = problem_of(exc)
    return JSONResponse(body.model_dump(), status_code=code)


# --- reading --------------------------------------------------------------------------------


@router.get("/solutions", response_model=list[SolutionOut])
def list_solutions(db: SessionDep, _user: SolutionReader) -> list[SolutionOut]:
    """Every installed solution with its versions, their state and deployments."""
    return catalogue(service.list_versions(db), site_map(db))


@router.get(
    "/solutions/{solution_id}/{version}", response_model=VersionDetail, responses=ERROR_RESPONSES
)
def get_version(
    solution_id: str, version: str, db: SessionDep, _user: SolutionReader
) -> VersionDetail | JSONResponse:
    """One version: manifest, regulatory facts, intended use, outputs, files, deployments."""
    try:
        row = find_version(db, solution_id, version)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return VersionDetail.of(row, site_map(db))


# --- install and lifecycle ------------------------------------------------------------------


@router.post(
    "/solutions",
    response_model=VersionDetail,
    status_code=status.HTTP_201_CREATED,
    responses=ERROR_RESPONSES,
)
def install(
    runtime: RuntimeDep,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    package: Annotated[UploadFile, File(description="The solution package, a .zip")],
) -> VersionDetail | JSONResponse:
    """Verify every file of the uploaded package and install it as a new version.

    A refused package answers 422 with every problem; the refusal is audited.
    """
    try:
        version_id = install_upload(runtime, package, actor=user.username, source=user.source)
        row = service.get_version(db, version_id=version_id)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return VersionDetail.of(row, site_map(db))


@router.post(
    "/solutions/{solution_id}/{version}/approve",
    response_model=VersionDetail,
    responses=ERROR_RESPONSES,
)
def approve(
    solution_id: str,
    version: str,
    body: ApproveIn,
    db: SessionDep,
    settings: SettingsDep,
    user: SolutionApprover,
    _csrf: CsrfProtected,
) -> VersionDetail | JSONResponse:
    """Approve a version for deployment (AI owners only, with an evidence note).

    The files are verified first; a mismatch is recorded like any failed load.
    """
    try:
        row = find_version(db, solution_id, version)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    try:
        service.approve(
            db,
            settings=settings,
            version_id=row.id,
            approver=approver_of(db, user),
            evidence=body.evidence,
            source=user.source,
        )
    except service.IntegrityFailure as exc:
        service.record_integrity_failure(db, version_id=row.id, problems=exc.problems)
        return _problem(exc)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return VersionDetail.of(row, site_map(db))


@router.post(
    "/solutions/{solution_id}/{version}/deployments",
    response_model=DeploymentOut,
    responses=ERROR_RESPONSES,
)
def deploy(
    solution_id: str,
    version: str,
    body: DeployIn,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
) -> DeploymentOut | JSONResponse:
    """Deploy an approved version at a hospital, or change its mode, or resume it there."""
    try:
        row = find_version(db, solution_id, version)
        site = get_site_by_code_or_raise(db, code=body.site_code.strip())
        deployment = service.deploy(
            db,
            version_id=row.id,
            site_id=site.id,
            mode=body.mode.value,
            actor=user.username,
            source=user.source,
        )
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return DeploymentOut.of(deployment, site)


@router.post(
    "/solutions/{solution_id}/{version}/verify", response_model=VerifyOut, responses=ERROR_RESPONSES
)
def verify(
    solution_id: str,
    version: str,
    db: SessionDep,
    settings: SettingsDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
) -> VerifyOut | JSONResponse:
    """Check the installed files against their hashes now.

    On a mismatch every deployment of the version is suspended, its jobs are cancelled and
    an alert is raised; the answer lists every problem.
    """
    try:
        row = find_version(db, solution_id, version)
        problems = service.check_integrity(
            db, settings=settings, version_id=row.id, actor=user.username, source=user.source
        )
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return VerifyOut(
        ok=not problems, problems=problems, version=VersionDetail.of(row, site_map(db))
    )


@router.post(
    "/solutions/{solution_id}/{version}/retire",
    response_model=VersionDetail,
    responses=ERROR_RESPONSES,
)
def retire_version(
    solution_id: str,
    version: str,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    body: RetireIn | None = None,
) -> VersionDetail | JSONResponse:
    """Retire a version everywhere: its deployments end and its queued jobs are cancelled."""
    try:
        row = find_version(db, solution_id, version)
        service.retire(
            db,
            version_id=row.id,
            actor=user.username,
            reason=body.reason if body else "",
            source=user.source,
        )
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return VersionDetail.of(row, site_map(db))


@router.post(
    "/deployments/{deployment_id}/suspend", response_model=SuspendOut, responses=ERROR_RESPONSES
)
def suspend(
    deployment_id: int,
    body: SuspendIn,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
) -> SuspendOut | JSONResponse:
    """The kill switch: stop the deployment now; its queued and running jobs are cancelled."""
    try:
        cancelled = service.suspend(
            db,
            deployment_id=deployment_id,
            actor=user.username,
            reason=body.reason,
            source=user.source,
        )
        deployment = service.get_deployment(db, deployment_id=deployment_id)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return SuspendOut(
        deployment=DeploymentOut.of(deployment, db.get(Site, deployment.site_fk)),
        cancelled_jobs=cancelled,
    )


@router.post(
    "/deployments/{deployment_id}/retire", response_model=DeploymentOut, responses=ERROR_RESPONSES
)
def retire_deployment(
    deployment_id: int,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    body: RetireIn | None = None,
) -> DeploymentOut | JSONResponse:
    """End a deployment for good; its queued and running jobs are cancelled."""
    try:
        deployment = service.retire_deployment(
            db,
            deployment_id=deployment_id,
            actor=user.username,
            reason=body.reason if body else "",
            source=user.source,
        )
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return DeploymentOut.of(deployment, db.get(Site, deployment.site_fk))
