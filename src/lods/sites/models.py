"""Hospitals (sites), their departments and wards, the wards' beds, and the DICOM nodes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from lods.db import Base, UTCDateTime, utcnow

UNASSIGNED_SITE_CODE = "unassigned"


class Site(Base):
    """A hospital of the region."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Screening reading strategy: exams with an AI score at or above this get two
    #: independent reads (the second blind to the first), others one read with the AI shown.
    screening_double_read_from: Mapped[int] = mapped_column(Integer, default=8, server_default="8")

    departments: Mapped[list[Department]] = relationship(back_populates="site")
    nodes: Mapped[list[DicomNode]] = relationship(back_populates="site")


class Department(Base):
    """A department or ward of a hospital (radiology, emergency, geriatric ward...)."""

    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("site_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="other")

    site: Mapped[Site] = relationship(back_populates="departments")
    beds: Mapped[list[Bed]] = relationship(back_populates="ward", order_by="Bed.code")


class Bed(Base):
    """A bed of a ward: where monitors, room sensors and ADT (PV1-3 ward^room^bed) meet."""

    __tablename__ = "beds"
    __table_args__ = (UniqueConstraint("ward_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ward_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    #: The bed's code as monitors and ADT send it (PV1-3.3), e.g. "12" or "12A".
    code: Mapped[str] = mapped_column(String(32))
    #: The room (PV1-3.2; room sensors report it), e.g. "R3".
    room: Mapped[str] = mapped_column(String(32), default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    ward: Mapped[Department] = relationship(back_populates="beds")


class DicomNode(Base):
    """A DICOM application entity we know: a modality or PACS, identified by its AE title."""

    __tablename__ = "dicom_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    kind: Mapped[str] = mapped_column(String(16), default="modality")
    description: Mapped[str] = mapped_column(String(200), default="")
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    site: Mapped[Site] = relationship(back_populates="nodes")
