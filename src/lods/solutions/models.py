"""Installed solution versions, their approvals and site deployments, and the vendor inbox."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false

from lods.db import Base, UTCDateTime, utcnow


class VersionState(StrEnum):
    INSTALLED = "installed"
    APPROVED = "approved"
    RETIRED = "retired"


class DeploymentMode(StrEnum):
    #: Runs; results hidden from clinicians, kept for local validation.
    SHADOW = "shadow"
    #: Runs and shows results to the clinicians of a pilot.
    PILOT = "pilot"
    LIVE = "live"


class DeploymentState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class SolutionVersion(Base):
    """One installed, immutable version of a solution package."""

    __tablename__ = "solution_versions"
    __table_args__ = (UniqueConstraint("solution_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    solution_id: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200))
    vendor: Mapped[str] = mapped_column(String(200))
    runtime_kind: Mapped[str] = mapped_column(String(20))
    input_kind: Mapped[str] = mapped_column(String(20))
    #: The manifest exactly as installed, and its SHA-256 (verified with the files).
    manifest_text: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    #: {relative path: sha256} of every file, as the manifest lists them.
    files: Mapped[dict[str, str]] = mapped_column(JSON)
    #: Folder under the data dir's solutions/ holding the installed files.
    package_path: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(16), default=VersionState.INSTALLED.value)
    installed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    installed_by: Mapped[str] = mapped_column(String(100))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    approval_evidence: Mapped[str | None] = mapped_column(Text)
    #: The local validation report the approver cited, if any (`validation_reports`).
    approval_report_fk: Mapped[int | None] = mapped_column(
        ForeignKey("validation_reports.id", use_alter=True)
    )
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_by: Mapped[str | None] = mapped_column(String(100))
    #: Set when a load found files that differ from their hashes; cleared never.
    integrity_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    integrity_detail: Mapped[str | None] = mapped_column(Text)
    last_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    deployments: Mapped[list[Deployment]] = relationship(back_populates="version")

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


class Deployment(Base):
    """A version put to use at one site, in a mode; suspended by the kill switch."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("version_fk", "site_fk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_fk: Mapped[int] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    site_fk: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=DeploymentState.ACTIVE.value, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(100))
    #: Why it was suspended or retired (kill switch note, integrity failure, ...).
    state_reason: Mapped[str | None] = mapped_column(Text)
    #: Send an UNVERIFIED DICOM SR to the site's PACS as soon as the AI has answered
    #: (IHE AI Results); the VERIFIED one follows the radiologist's sign-off either way.
    export_unverified_sr: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )

    version: Mapped[SolutionVersion] = relationship(back_populates="deployments")


class VendorAnswer(Base):
    """A DICOM object a vendor appliance sent back (SR, secondary capture), kept apart
    from the clinical study until the `dicom_node` runtime has read it."""

    __tablename__ = "vendor_answers"
    __table_args__ = (Index("ix_vendor_answers_lookup", "study_uid", "calling_ae", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
