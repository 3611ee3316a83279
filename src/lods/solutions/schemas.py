"""What the solutions API accepts and returns, and how service errors become answers.

The response models are built from the installed version and its manifest; the manifest's
own models (`Regulatory`, `Outputs`, `DataEgress`, `Limits`) are returned as they are, so
the API shows exactly what the vendor declared and the platform verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from lods.sites.models import Site
from lods.sites.service import NotFoundError as SiteNotFound
from lods.sites.service import SiteError
from lods.solutions.intended_use import describe
from lods.solutions.manifest import DataEgress, Limits, Outputs, Regulatory
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.solutions.packaging import PackageError
from lods.solutions.service import (
    MIN_EVIDENCE_CHARS,
    IllegalLifecycleMove,
    IntegrityFailure,
    SolutionError,
    SolutionNotFound,
    manifest_of,
)

MAX_NOTE_CHARS = 4000

# --- requests -------------------------------------------------------------------------------


class ApproveIn(BaseModel):
    evidence: str = Field(
        max_length=MAX_NOTE_CHARS,
        description="What the approval rests on, e.g. the local validation report and result",
        examples=["Local validation report LV-2024-07: sensitivity 0.93 on 412 studies"],
    )

    @field_validator("evidence")
    @classmethod
    def _enough(cls, value: str) -> str:
        value = value.strip()
        if len(value) < MIN_EVIDENCE_CHARS:
            raise ValueError(
                f"approval needs an evidence note of at least {MIN_EVIDENCE_CHARS} characters"
            )
        return value


class DeployIn(BaseModel):
    site_code: str = Field(min_length=1, max_length=32, examples=["AUH"])
    mode: DeploymentMode = Field(
        description="shadow: runs, results hidden from clinicians; pilot or live: results shown"
    )


class SuspendIn(BaseModel):
    reason: str = Field(max_length=MAX_NOTE_CHARS, examples=["Wrong laterality in 2 results"])

    @field_validator("reason")
    @classmethod
    def _given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("say why the deployment is suspended")
        return value


class RetireIn(BaseModel):
    reason: str = Field("", max_length=MAX_NOTE_CHARS)


# --- responses ------------------------------------------------------------------------------


class DeploymentOut(BaseModel):
    """A version put to use at one hospital, in a mode; suspended by the kill switch."""

    id: int
    site_code: str
    site_name: str
    mode: str
    state: str
    state_reason: str | None
    created_at: datetime
    created_by: str
    changed_at: datetime
    changed_by: str

    @classmethod
    def of(cls, deployment: Deployment, site: Site | None) -> DeploymentOut:
        return cls(
            id=deployment.id,
            site_code=site.code if site else "",
            site_name=site.name if site else "",
            mode=deployment.mode,
            state=deployment.state,
            state_reason=deployment.state_reason,
            created_at=deployment.created_at,
            created_by=deployment.created_by,
            changed_at=deployment.changed_at,
            changed_by=deployment.changed_by,
        )


class VersionSummary(BaseModel):
    """One installed version as the catalogue lists it."""

    id: int
    solution_id: str
    version: str
    label: str
    name: str
    vendor: str
    state: str
    runtime_kind: str
    input_kind: str
    regulatory_summary: str
    installed_at: datetime
    installed_by: str
    approved_at: datetime | None
    approved_by: str | None
    retired_at: datetime | None
    integrity_failed_at: datetime | None
    integrity_detail: str | None
    last_verified_at: datetime | None
    deployments: list[DeploymentOut]

    @property
    def integrity_failed(self) -> bool:
        return self.integrity_failed_at is not None

    @classmethod
    def fields_of(cls, version: SolutionVersion, sites: Mapping[int, Site]) -> dict[str, object]:
        manifest = manifest_of(version)
        deployments = sorted(version.deployments, key=lambda d: d.id)
        return {
            "id": version.id,
            "solution_id": version.solution_id,
            "version": version.version,
            "label": version.label,
            "name": version.name,
            "vendor": version.vendor,
            "state": version.state,
            "runtime_kind": version.runtime_kind,
            "input_kind": version.input_kind,
            "regulatory_summary": manifest.regulatory.summary(),
            "installed_at": version.installed_at,
            "installed_by": version.installed_by,
            "approved_at": version.approved_at,
            "approved_by": version.approved_by,
            "retired_at": version.retired_at,
            "integrity_failed_at": version.integrity_failed_at,
            "integrity_detail": version.integrity_detail,
            "last_verified_at": version.last_verified_at,
            "deployments": [DeploymentOut.of(d, sites.get(d.site_fk)) for d in deployments],
        }

    @classmethod
    def of(cls, version: SolutionVersion, sites: Mapping[int, Site]) -> VersionSummary:
        return cls.model_validate(cls.fields_of(version, sites))


class SolutionOut(BaseModel):
    """A solution with every installed version, oldest first."""

    solution_id: str
    name: str
    vendor: str
    versions: list[VersionSummary]


class IntendedUseOut(BaseModel):
    summary: str
    #: Each criterion in plain words ("Modalities: DX", "Patients aged 18 or older").
    criteria: list[str]
    limitations: list[str]


class ApprovalOut(BaseModel):
    approved_at: datetime
    approved_by: str
    evidence: str


class FileOut(BaseModel):
    path: str
    sha256: str


class VersionDetail(VersionSummary):
    """Everything about one version: manifest facts, intended use, outputs, files."""

    description: str
    manifest_sha256: str
    retired_by: str | None
    regulatory: Regulatory
    intended_use: IntendedUseOut
    outputs: Outputs
    data_egress: DataEgress
    limits: Limits
    approval: ApprovalOut | None
    files: list[FileOut]

    @classmethod
    def of(cls, version: SolutionVersion, sites: Mapping[int, Site]) -> VersionDetail:
        manifest = manifest_of(version)
        use = manifest.intended_use
        approval = None
        if version.approved_at is not None and version.approved_by:
            approval = ApprovalOut(
                approved_at=version.approved_at,
                approved_by=version.approved_by,
                evidence=version.approval_evidence or "",
            )
        fields = cls.fields_of(version, sites)
        fields.update(
            description=manifest.description,
            manifest_sha256=version.manifest_sha256,
            retired_by=version.retired_by,
            regulatory=manifest.regulatory,
            intended_use=IntendedUseOut(
                summary=use.summary, criteria=describe(use), limitations=list(use.limitations)
            ),
            outputs=manifest.outputs,
            data_egress=manifest.data_egress,
            limits=manifest.limits,
            approval=approval,
            files=[FileOut(path=p, sha256=h) for p, h in sorted(version.files.items())],
        )
        return cls.model_validate(fields)


class VerifyOut(BaseModel):
    """The outcome of checking the installed files again; a failure suspended the version."""

    ok: bool
    problems: list[str]
    version: VersionDetail


class SuspendOut(BaseModel):
    deployment: DeploymentOut
    #: Queued or running jobs of the deployment that the kill switch cancelled.
    cancelled_jobs: list[int]


class ProblemOut(BaseModel):
    """An error answer: the service's message, and every problem where there are several."""

    detail: str
    problems: list[str] = []


# --- building answers -----------------------------------------------------------------------


def catalogue(versions: list[SolutionVersion], sites: Mapping[int, Site]) -> list[SolutionOut]:
    """Group versions by solution id; name and vendor come from the newest version."""
    grouped: dict[str, list[SolutionVersion]] = {}
    for version in versions:
        grouped.setdefault(version.solution_id, []).append(version)
    out = []
    for solution_id in sorted(grouped):
        rows = sorted(grouped[solution_id], key=lambda v: (v.installed_at, v.id))
        newest = rows[-1]
        out.append(
            SolutionOut(
                solution_id=solution_id,
                name=newest.name,
                vendor=newest.vendor,
                versions=[VersionSummary.of(v, sites) for v in rows],
            )
        )
    return out


def problem_of(exc: Exception) -> tuple[int, ProblemOut]:
    """The HTTP status and body for an error a solution operation raised."""
    problems: list[str] = []
    if isinstance(exc, SolutionNotFound | SiteNotFound):
        status = 404
    elif isinstance(exc, PackageError):
        status, problems = 422, list(exc.problems)
    elif isinstance(exc, IntegrityFailure):
        status, problems = 409, list(exc.problems)
    elif isinstance(exc, IllegalLifecycleMove | SolutionError):
        status = 409
    elif isinstance(exc, SiteError | ValueError):
        status = 422
    else:
        raise TypeError(f"not a solution error: {exc!r}") from exc
    return status, ProblemOut(detail=str(exc), problems=problems)
