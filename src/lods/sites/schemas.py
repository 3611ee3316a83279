"""What the sites API accepts and returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from lods.sites.models import Department, DicomNode, Site
from lods.sites.service import DepartmentKind, NodeKind


class SiteCreate(BaseModel):
    code: str = Field(min_length=1, max_length=32, examples=["AUH"])
    name: str = Field(min_length=1, max_length=200, examples=["Aarhus University Hospital"])


class SiteRename(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class DepartmentCreate(BaseModel):
    code: str = Field(min_length=1, max_length=32, examples=["RAD"])
    name: str = Field(min_length=1, max_length=200, examples=["Radiology"])
    kind: DepartmentKind = "other"


class NodeCreate(BaseModel):
    ae_title: str = Field(min_length=1, max_length=16, examples=["CR_ROOM1"])
    kind: NodeKind = "modality"
    department: str | None = Field(None, description="Code of a department of the same site")
    host: str | None = Field(None, max_length=255)
    port: int | None = Field(None, ge=1, le=65535)
    description: str = Field("", max_length=200)


class SiteOut(BaseModel):
    """A hospital, as any clinical user may see it (for filters)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    name: str


class DepartmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    name: str
    kind: str


class NodeOut(BaseModel):
    """A DICOM node: an AE title, the site its data belongs to, and where it listens."""

    ae_title: str
    site: str
    department: str | None
    kind: str
    host: str | None
    port: int | None
    description: str
    active: bool

    @classmethod
    def of(cls, node: DicomNode, *, department: Department | None = None) -> NodeOut:
        return cls(
            ae_title=node.ae_title,
            site=node.site.code,
            department=department.code if department else None,
            kind=node.kind,
            host=node.host,
            port=node.port,
            description=node.description,
            active=node.is_active,
        )


class SiteDetail(SiteOut):
    """A hospital with its departments and DICOM nodes, for administrators."""

    created_at: datetime
    departments: list[DepartmentOut]
    nodes: list[NodeOut]

    @classmethod
    def of(cls, site: Site) -> SiteDetail:
        departments = {d.id: d for d in sorted(site.departments, key=lambda d: d.code)}
        nodes = sorted(site.nodes, key=lambda n: n.ae_title)
        return cls(
            id=site.id,
            code=site.code,
            name=site.name,
            created_at=site.created_at,
            departments=[DepartmentOut.model_validate(d) for d in departments.values()],
            nodes=[NodeOut.of(n, department=departments.get(n.department_id or -1)) for n in nodes],
        )
