"""Every ORM table, imported in one place for Alembic and `create_all` in tests."""

from lods.audit.models import AuditEvent, AuditHead, AuditPurgeWindow
from lods.auth.models import ApiToken, User, UserSession
from lods.db import Base
from lods.imaging.models import (
    Instance,
    IntakeRejection,
    Patient,
    Series,
    Study,
    StudyEvent,
)
from lods.sites.models import Department, DicomNode, Site

__all__ = [
    "ApiToken",
    "AuditEvent",
    "AuditHead",
    "AuditPurgeWindow",
    "Base",
    "Department",
    "DicomNode",
    "Instance",
    "IntakeRejection",
    "Patient",
    "Series",
    "Site",
    "Study",
    "StudyEvent",
    "User",
    "UserSession",
]
