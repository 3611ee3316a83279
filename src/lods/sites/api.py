"""JSON API for hospitals, departments and DICOM nodes under /api/sites.

Any user with a clinical or administrative role may list sites (for filters); only
administrators see a site's departments and nodes or change anything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import AdminUser, Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.sites import service
from lods.sites.models import Site
from lods.sites.schemas import (
    DepartmentCreate,
    DepartmentOut,
    NodeCreate,
    NodeOut,
    SiteCreate,
    SiteDetail,
    SiteOut,
    SiteRename,
)

router = APIRouter(prefix="/api/sites", tags=["sites"])

#: Everyone but the auditor works at a site and may pick one in a filter.
SITE_READERS = frozenset(Role) - {Role.AUDITOR, Role.INTEGRATION}
SiteReader = Annotated[Principal, Depends(role_dependency(*SITE_READERS))]


def _http_error(exc: Exception) -> HTTPException:
    if isinstance(exc, service.NotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, service.ConflictError):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


def _site(db: SessionDep, code: str) -> Site:
    try:
        return service.get_site_by_code_or_raise(db, code=code)
    except service.NotFoundError as exc:
        raise _http_error(exc) from exc


@router.get("", response_model=list[SiteOut])
def list_sites(db: SessionDep, _user: SiteReader) -> list[SiteOut]:
    """Return every hospital (code and name), ordered by code."""
    return [SiteOut.model_validate(s) for s in service.list_sites(db)]


@router.post("", response_model=SiteOut, status_code=status.HTTP_201_CREATED)
def create_site(
    body: SiteCreate, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> SiteOut:
    """Return the new hospital."""
    try:
        site = service.create_site(
            db, code=body.code, name=body.name, actor=admin.username, source=admin.source
        )
    except (service.SiteError, ValueError) as exc:
        raise _http_error(exc) from exc
    return SiteOut.model_validate(site)


@router.get("/{code}", response_model=SiteDetail)
def site_detail(code: str, db: SessionDep, _admin: AdminUser) -> SiteDetail:
    """Return a hospital with its departments and DICOM nodes (removed ones included)."""
    return SiteDetail.of(_site(db, code))


@router.patch("/{code}", response_model=SiteOut)
def rename_site(
    code: str, body: SiteRename, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> SiteOut:
    """Return the hospital after renaming it (its code never changes)."""
    site = _site(db, code)
    try:
        site = service.rename_site(
            db, site_id=site.id, name=body.name, actor=admin.username, source=admin.source
        )
    except (service.SiteError, ValueError) as exc:
        raise _http_error(exc) from exc
    return SiteOut.model_validate(site)


@router.post(
    "/{code}/departments", response_model=DepartmentOut, status_code=status.HTTP_201_CREATED
)
def add_department(
    code: str, body: DepartmentCreate, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> DepartmentOut:
    """Return the new department of the hospital."""
    site = _site(db, code)
    try:
        dept = service.add_department(
            db,
            site_id=site.id,
            code=body.code,
            name=body.name,
            kind=body.kind,
            actor=admin.username,
            source=admin.source,
        )
    except (service.SiteError, ValueError) as exc:
        raise _http_error(exc) from exc
    return DepartmentOut.model_validate(dept)


@router.get("/{code}/nodes", response_model=list[NodeOut])
def list_nodes(
    code: str, db: SessionDep, _admin: AdminUser, include_inactive: bool = False
) -> list[NodeOut]:
    """Return the hospital's DICOM nodes, ordered by AE title."""
    site = _site(db, code)
    departments = {d.id: d for d in site.departments}
    nodes = service.list_nodes(db, site_id=site.id, include_inactive=include_inactive)
    return [NodeOut.of(n, department=departments.get(n.department_id or -1)) for n in nodes]


@router.post("/{code}/nodes", response_model=NodeOut, status_code=status.HTTP_201_CREATED)
def add_node(
    code: str, body: NodeCreate, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> NodeOut:
    """Return the new DICOM node: data from this AE title now belongs to the hospital."""
    site = _site(db, code)
    try:
        dept = (
            service.get_department(db, site_id=site.id, code=body.department)
            if body.department
            else None
        )
        node = service.add_dicom_node(
            db,
            site_id=site.id,
            ae_title=body.ae_title,
            kind=body.kind,
            department_id=dept.id if dept else None,
            host=body.host,
            port=body.port,
            description=body.description,
            actor=admin.username,
            source=admin.source,
        )
    except (service.SiteError, ValueError) as exc:
        raise _http_error(exc) from exc
    return NodeOut.of(node, department=dept)


@router.delete("/{code}/nodes/{ae_title:path}", status_code=status.HTTP_204_NO_CONTENT)
def remove_node(
    code: str, ae_title: str, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> Response:
    """Deactivate a DICOM node: its AE title is refused (or unassigned) from now on."""
    site = _site(db, code)
    try:
        node = service.get_node(db, ae_title=ae_title)
        if node is None or node.site_id != site.id:
            raise service.NotFoundError(f"site {code!r} has no node {ae_title.strip()!r}")
        service.remove_dicom_node(
            db, ae_title=node.ae_title, actor=admin.username, source=admin.source
        )
    except (service.SiteError, ValueError) as exc:
        raise _http_error(exc) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
