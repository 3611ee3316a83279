"""Web pages for administrators: hospitals, their departments, wards' beds and DICOM nodes."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import AdminUser, SessionDep
from lods.sites import service
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

NOTICES = frozenset({"site_created", "department_added", "bed_added", "node_added", "node_removed"})


def _page(request: Request, db: Session, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    sites = service.list_sites(db)
    departments = {s.id: service.list_departments(db, site_id=s.id) for s in sites}
    page: dict[str, Any] = {
        "sites": sites,
        "nodes": {s.id: service.list_nodes(db, site_id=s.id, include_inactive=True) for s in sites},
        "departments": departments,
        "beds": {
            d.id: service.list_beds(db, ward_id=d.id)
            for depts in departments.values()
            for d in depts
            if d.kind in service.BED_KINDS
        },
        "node_kinds": sorted(service.NODE_KINDS),
        "department_kinds": sorted(service.DEPARTMENT_KINDS),
        "form": {},
    }
    page.update(context)
    return render(request, "sites/sites.html", page, status_code=status_code)


def _error(request: Request, db: Session, exc: Exception, form: dict[str, str]) -> HTMLResponse:
    # Service functions check before they change anything, so the page shows the truth.
    if isinstance(exc, service.NotFoundError):
        key, code = "sites.error.not_found", 404
    elif isinstance(exc, service.ConflictError):
        key, code = "sites.error.conflict", 409
    else:
        key, code = "sites.error.invalid", 422
    return _page(request, db, status_code=code, error=key, reason=str(exc), form=form)


def _done(notice: str, anchor: str = "") -> RedirectResponse:
    fragment = f"#{quote(anchor)}" if anchor else ""
    return RedirectResponse(f"/admin/sites?done={notice}{fragment}", status_code=303)


@router.get("/sites")
def sites_shortcut(_admin: AdminUser) -> RedirectResponse:
    """Send the menu's short address to the administration page."""
    return RedirectResponse("/admin/sites", status_code=303)


@router.get("/admin/sites", response_class=HTMLResponse)
def sites_page(
    request: Request, db: SessionDep, _admin: AdminUser, done: str | None = None
) -> HTMLResponse:
    """Return the page listing every hospital with its departments and DICOM nodes."""
    notice = f"sites.notice.{done}" if done in NOTICES else None
    return _page(request, db, notice=notice)


@router.post("/admin/sites", response_model=None)
def create_site(
    request: Request,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    code: Annotated[str, Form(max_length=32)],
    name: Annotated[str, Form(max_length=200)],
) -> Response:
    """Create a hospital and go back to the list."""
    try:
        service.create_site(db, code=code, name=name, actor=admin.username, source=admin.source)
    except (service.SiteError, ValueError) as exc:
        return _error(request, db, exc, {"code": code, "name": name})
    return _done("site_created", f"site-{code}")


@router.post("/admin/sites/{code}/departments", response_model=None)
def add_department(
    request: Request,
    code: str,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    dept_code: Annotated[str, Form(max_length=32)],
    name: Annotated[str, Form(max_length=200)],
    kind: Annotated[str, Form(max_length=32)] = "other",
) -> Response:
    """Add a department to a hospital and go back to the list."""
    try:
        site = service.get_site_by_code_or_raise(db, code=code)
        service.add_department(
            db,
            site_id=site.id,
            code=dept_code,
            name=name,
            kind=kind,
            actor=admin.username,
            source=admin.source,
        )
    except (service.SiteError, ValueError) as exc:
        return _error(request, db, exc, {"site": code, "dept_code": dept_code, "name": name})
    return _done("department_added", f"site-{code}")


@router.post("/admin/sites/{code}/departments/{dept_code}/beds", response_model=None)
def add_bed(
    request: Request,
    code: str,
    dept_code: str,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    bed_code: Annotated[str, Form(max_length=32)],
    room: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Add a bed to a ward (monitors, room sensors and ADT name it) and go back."""
    try:
        site = service.get_site_by_code_or_raise(db, code=code)
        ward = service.get_department(db, site_id=site.id, code=dept_code)
        service.add_bed(
            db,
            ward_id=ward.id,
            code=bed_code.strip(),
            room=room.strip(),
            actor=admin.username,
            source=admin.source,
        )
    except (service.SiteError, ValueError) as exc:
        return _error(request, db, exc, {"site": code, "bed_code": bed_code, "room": room})
    return _done("bed_added", f"ward-{code}-{dept_code}")


def _port(value: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError("a port is a number between 1 and 65535")
    return int(value)


@router.post("/admin/sites/{code}/nodes", response_model=None)
def add_node(
    request: Request,
    code: str,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    ae_title: Annotated[str, Form(max_length=64)],
    kind: Annotated[str, Form(max_length=16)] = "modality",
    department: Annotated[str, Form(max_length=32)] = "",
    host: Annotated[str, Form(max_length=255)] = "",
    port: Annotated[str, Form(max_length=8)] = "",
    description: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Register a DICOM node (AE title) for a hospital and go back to the list."""
    form = {"site": code, "ae_title": ae_title, "host": host, "port": port}
    try:
        site = service.get_site_by_code_or_raise(db, code=code)
        dept = service.get_department(db, site_id=site.id, code=department) if department else None
        service.add_dicom_node(
            db,
            site_id=site.id,
            ae_title=ae_title,
            kind=kind,
            department_id=dept.id if dept else None,
            host=host.strip() or None,
            port=_port(port),
            description=description,
            actor=admin.username,
            source=admin.source,
        )
    except (service.SiteError, ValueError) as exc:
        return _error(request, db, exc, form)
    return _done("node_added", f"site-{code}")


@router.post("/admin/sites/{code}/nodes/remove", response_model=None)
def remove_node(
    request: Request,
    code: str,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    ae_title: Annotated[str, Form(max_length=64)],
) -> Response:
    """Deactivate a DICOM node of a hospital and go back to the list."""
    try:
        site = service.get_site_by_code_or_raise(db, code=code)
        node = service.get_node(db, ae_title=ae_title)
        if node is None or node.site_id != site.id:
            raise service.NotFoundError(f"site {code!r} has no node {ae_title.strip()!r}")
        service.remove_dicom_node(
            db, ae_title=node.ae_title, actor=admin.username, source=admin.source
        )
    except (service.SiteError, ValueError) as exc:
        return _error(request, db, exc, {})
    return _done("node_removed", f"site-{code}")
