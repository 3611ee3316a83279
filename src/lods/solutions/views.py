"""Web pages for AI solutions: the catalogue, a version's facts, and its lifecycle forms.

Clinicians (radiologists, physicians) may read what is installed and what it is for;
AI owners and administrators install, deploy, suspend (the kill switch), verify and
retire; only AI owners approve. Forms post with the CSRF token and answer with a
redirect back to the page (or the page with every reason when refused). The services
audit every change with the user's name and address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, RuntimeDep, SessionDep, SettingsDep
from lods.sites.service import get_site_by_code_or_raise, list_sites
from lods.solutions import service
from lods.solutions.api import (
    OPERATION_ERRORS,
    SOLUTION_APPROVERS,
    SOLUTION_OPERATORS,
    SolutionApprover,
    SolutionOperator,
    SolutionReader,
    approver_of,
    find_version,
    install_upload,
    site_map,
)
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.solutions.packaging import PackageError
from lods.solutions.schemas import MAX_NOTE_CHARS, VersionDetail, catalogue, problem_of
from lods.validation import service as validation
from lods.validation.api import ValidationReportOut
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

NOTICES = frozenset(
    {
        "installed",
        "approved",
        "deployed",
        "mode_changed",
        "suspended",
        "deployment_retired",
        "retired",
        "verified",
        "verify_failed",
    }
)
MODES = tuple(mode.value for mode in DeploymentMode)
_ERROR_KEYS = {
    404: "solutions.error.not_found",
    409: "solutions.error.conflict",
    422: "solutions.error.invalid",
}


def _roles_context(user: Principal) -> dict[str, bool]:
    return {
        "can_operate": user.has_any(SOLUTION_OPERATORS),
        "can_approve": user.has_any(SOLUTION_APPROVERS),
    }


def _notice(done: str | None) -> str | None:
    return f"solutions.notice.{done}" if done in NOTICES else None


def _error_context(exc: Exception) -> tuple[int, dict[str, Any]]:
    code, problem = problem_of(exc)
    return code, {
        "error": _ERROR_KEYS[code],
        "reason": problem.detail,
        "problems": problem.problems,
    }


def _catalogue_page(
    request: Request, db: Session, user: Principal, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    page: dict[str, Any] = {
        "solutions": catalogue(service.list_versions(db), site_map(db)),
        **_roles_context(user),
    }
    page.update(context)
    return render(request, "solutions/catalogue.html", page, status_code=status_code)


def _version_page(
    request: Request,
    db: Session,
    user: Principal,
    version: SolutionVersion,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    reports = validation.list_reports(db, version_id=version.id)
    cited = next((r for r in reports if r.id == version.approval_report_fk), None)
    page: dict[str, Any] = {
        "v": VersionDetail.of(version, site_map(db)),
        "reports": [ValidationReportOut.of(r, version) for r in reports],
        "cited_report": ValidationReportOut.of(cited, version) if cited else None,
        "sites": list_sites(db),
        "modes": MODES,
        "max_note": MAX_NOTE_CHARS,
        "form": {},
        **_roles_context(user),
    }
    page.update(context)
    return render(request, "solutions/version.html", page, status_code=status_code)


def _refused(
    request: Request,
    db: Session,
    user: Principal,
    version: SolutionVersion,
    exc: Exception,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    # Services check before they change anything, so the page shows the current truth.
    code, context = _error_context(exc)
    return _version_page(request, db, user, version, status_code=code, form=form or {}, **context)


def version_url(version: SolutionVersion) -> str:
    return f"/solutions/{quote(version.solution_id, safe='')}/{quote(version.version, safe='')}"


def _done(version: SolutionVersion, notice: str, anchor: str = "") -> RedirectResponse:
    fragment = f"#{quote(anchor)}" if anchor else ""
    return RedirectResponse(f"{version_url(version)}?done={notice}{fragment}", status_code=303)


def _deployment_of(version: SolutionVersion, deployment_id: int, db: Session) -> Deployment:
    deployment = service.get_deployment(db, deployment_id=deployment_id)
    if deployment.version_fk != version.id:
        raise service.SolutionNotFound(f"{version.label} has no deployment {deployment_id}")
    return deployment


def _operate(
    request: Request,
    db: Session,
    user: Principal,
    ref: tuple[str, str],
    operation: Callable[[SolutionVersion], tuple[str, str]],
    form: dict[str, str] | None = None,
) -> Response:
    """Find the version, run `operation` on it (returning the notice and anchor to show),
    and answer: a redirect back to the version page, or the page with the refusal.

    A changed installed file found on the way is handled as a failed load would be
    (deployments suspended, alert, audit) and shown; errors are answered, not raised, so
    what the services recorded is committed.
    """
    try:
        row = find_version(db, *ref)
    except OPERATION_ERRORS as exc:
        code, context = _error_context(exc)
        return _catalogue_page(request, db, user, status_code=code, **context)
    try:
        notice, anchor = operation(row)
    except service.IntegrityFailure as exc:
        service.record_integrity_failure(db, version_id=row.id, problems=exc.problems)
        return _refused(request, db, user, row, exc)
    except OPERATION_ERRORS as exc:
        return _refused(request, db, user, row, exc, form)
    return _done(row, notice, anchor)


# --- the catalogue --------------------------------------------------------------------------


@router.get("/solutions", response_class=HTMLResponse)
def catalogue_page(
    request: Request, db: SessionDep, user: SolutionReader, done: str | None = None
) -> HTMLResponse:
    """Every installed solution with its versions, regulatory status and deployments."""
    return _catalogue_page(request, db, user, notice=_notice(done))


@router.post("/solutions", response_model=None)
def install(
    request: Request,
    runtime: RuntimeDep,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    package: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Install an uploaded package .zip; show every problem when it is refused."""
    try:
        if package is None:
            raise PackageError(["choose a package .zip to upload"])
        version_id = install_upload(runtime, package, actor=user.username, source=user.source)
        version = service.get_version(db, version_id=version_id)
    except OPERATION_ERRORS as exc:
        code, context = _error_context(exc)
        return _catalogue_page(request, db, user, status_code=code, **context)
    return _done(version, "installed")


# --- one version ----------------------------------------------------------------------------


@router.get("/solutions/{solution_id}/{version}", response_class=HTMLResponse)
def version_page(
    solution_id: str,
    version: str,
    request: Request,
    db: SessionDep,
    user: SolutionReader,
    done: str | None = None,
) -> HTMLResponse:
    """A version's facts: manifest, regulatory status, intended use, outputs and files."""
    try:
        row = find_version(db, solution_id, version)
    except OPERATION_ERRORS as exc:
        code, context = _error_context(exc)
        return _catalogue_page(request, db, user, status_code=code, **context)
    return _version_page(request, db, user, row, notice=_notice(done))


@router.post("/solutions/{solution_id}/{version}/approve", response_model=None)
def approve(
    solution_id: str,
    version: str,
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    user: SolutionApprover,
    _csrf: CsrfProtected,
    evidence: Annotated[str, Form(max_length=MAX_NOTE_CHARS)] = "",
    report_id: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Approve the version for deployment, with the evidence it rests on (optionally
    citing one of its local validation reports)."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        if len(evidence.strip()) < service.MIN_EVIDENCE_CHARS:
            raise ValueError(
                "approval needs an evidence note of at least "
                f"{service.MIN_EVIDENCE_CHARS} characters, e.g. the local validation report"
            )
        cited: int | None = None
        note = evidence.strip()
        if report_id.strip():
            if not report_id.strip().isdigit():
                raise ValueError("choose a validation report from the list")
            try:
                report = validation.get_report(
                    db, report_id=int(report_id.strip()), version_id=row.id
                )
            except validation.ReportNotFound as exc:
                raise service.SolutionError(
                    f"{row.label} has no validation report {report_id.strip()}"
                ) from exc
            cited = report.id
            if f"#{report.id}" not in note:
                note = f"{note}\n{validation.citation(report)}"
        service.approve(
            db,
            settings=settings,
            version_id=row.id,
            approver=approver_of(db, user),
            evidence=note,
            source=user.source,
            report_id=cited,
        )
        return "approved", ""

    ref = (solution_id, version)
    form = {"evidence": evidence, "report_id": report_id}
    return _operate(request, db, user, ref, operation, form)


@router.post("/solutions/{solution_id}/{version}/deploy", response_model=None)
def deploy(
    solution_id: str,
    version: str,
    request: Request,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    site_code: Annotated[str, Form(max_length=32)] = "",
    mode: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Deploy the approved version at a hospital in a mode (or change the mode there)."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        if mode not in MODES:
            raise ValueError("choose a mode: shadow, pilot or live")
        site = get_site_by_code_or_raise(db, code=site_code.strip())
        deployment = service.deploy(
            db,
            version_id=row.id,
            site_id=site.id,
            mode=mode,
            actor=user.username,
            source=user.source,
        )
        return "deployed", f"deployment-{deployment.id}"

    form = {"site_code": site_code, "mode": mode}
    return _operate(request, db, user, (solution_id, version), operation, form)


@router.post("/solutions/{solution_id}/{version}/verify", response_model=None)
def verify(
    solution_id: str,
    version: str,
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
) -> Response:
    """Check the installed files against their hashes now (a mismatch suspends the version)."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        problems = service.check_integrity(
            db, settings=settings, version_id=row.id, actor=user.username, source=user.source
        )
        return ("verify_failed" if problems else "verified"), "integrity"

    return _operate(request, db, user, (solution_id, version), operation)


@router.post("/solutions/{solution_id}/{version}/retire", response_model=None)
def retire_version(
    solution_id: str,
    version: str,
    request: Request,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    reason: Annotated[str, Form(max_length=MAX_NOTE_CHARS)] = "",
) -> Response:
    """Retire the version everywhere; its deployments end."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        service.retire(
            db, version_id=row.id, actor=user.username, reason=reason, source=user.source
        )
        return "retired", ""

    return _operate(request, db, user, (solution_id, version), operation)


# --- one deployment -------------------------------------------------------------------------


@router.post(
    "/solutions/{solution_id}/{version}/deployments/{deployment_id}/suspend", response_model=None
)
def suspend(
    solution_id: str,
    version: str,
    deployment_id: int,
    request: Request,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    reason: Annotated[str, Form(max_length=MAX_NOTE_CHARS)] = "",
) -> Response:
    """The kill switch: stop the deployment now and cancel its queued and running jobs."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        deployment = _deployment_of(row, deployment_id, db)
        if not reason.strip():
            raise ValueError("say why the deployment is suspended")
        service.suspend(
            db, deployment_id=deployment.id, actor=user.username, reason=reason, source=user.source
        )
        return "suspended", f"deployment-{deployment_id}"

    return _operate(request, db, user, (solution_id, version), operation)


@router.post(
    "/solutions/{solution_id}/{version}/deployments/{deployment_id}/mode", response_model=None
)
def change_mode(
    solution_id: str,
    version: str,
    deployment_id: int,
    request: Request,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    mode: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Resume a suspended deployment, or change the mode of an active one."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        deployment = _deployment_of(row, deployment_id, db)
        if mode not in MODES:
            raise ValueError("choose a mode: shadow, pilot or live")
        service.deploy(
            db,
            version_id=row.id,
            site_id=deployment.site_fk,
            mode=mode,
            actor=user.username,
            source=user.source,
        )
        return "mode_changed", f"deployment-{deployment_id}"

    return _operate(request, db, user, (solution_id, version), operation)


@router.post(
    "/solutions/{solution_id}/{version}/deployments/{deployment_id}/retire", response_model=None
)
def retire_deployment(
    solution_id: str,
    version: str,
    deployment_id: int,
    request: Request,
    db: SessionDep,
    user: SolutionOperator,
    _csrf: CsrfProtected,
    reason: Annotated[str, Form(max_length=MAX_NOTE_CHARS)] = "",
) -> Response:
    """End the deployment for good."""

    def operation(row: SolutionVersion) -> tuple[str, str]:
        deployment = _deployment_of(row, deployment_id, db)
        service.retire_deployment(
            db, deployment_id=deployment.id, actor=user.username, reason=reason, source=user.source
        )
        return "deployment_retired", f"deployment-{deployment_id}"

    return _operate(request, db, user, (solution_id, version), operation)
