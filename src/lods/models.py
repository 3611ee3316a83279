"""Every ORM table, imported in one place for Alembic and `create_all` in tests."""

from lods.alerts.models import Alert
from lods.audit.models import AuditEvent, AuditHead, AuditPurgeWindow
from lods.auth.models import ApiToken, User, UserSession
from lods.db import Base
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import (
    Instance,
    IntakeRejection,
    Patient,
    Series,
    Study,
    StudyEvent,
)
from lods.jobs.models import Job
from lods.routing.models import RouteDecision
from lods.sites.models import Department, DicomNode, Site
from lods.solutions.models import Deployment, SolutionVersion, VendorAnswer
from lods.validation.models import ValidationReport

__all__ = [
    "Alert",
    "ApiToken",
    "AuditEvent",
    "AuditHead",
    "AuditPurgeWindow",
    "Base",
    "Department",
    "Deployment",
    "DicomNode",
    "Finding",
    "Instance",
    "IntakeRejection",
    "Job",
    "Patient",
    "RouteDecision",
    "Series",
    "Site",
    "SolutionVersion",
    "Study",
    "StudyEvent",
    "StudyResult",
    "User",
    "UserSession",
    "ValidationReport",
    "VendorAnswer",
]
