"""Every ORM table, imported in one place for Alembic and `create_all` in tests."""

from lods.alerts.models import Alert
from lods.audit.models import AuditEvent, AuditHead, AuditPurgeWindow
from lods.auth.models import ApiToken, User, UserSession
from lods.db import Base
from lods.exports.models import OutboxItem
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
from lods.review.models import (
    FindingDecision,
    Report,
    ReportRevision,
    ScreeningRead,
    StudyClaim,
)
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
    "FindingDecision",
    "Instance",
    "IntakeRejection",
    "Job",
    "OutboxItem",
    "Patient",
    "Report",
    "ReportRevision",
    "RouteDecision",
    "ScreeningRead",
    "Series",
    "Site",
    "SolutionVersion",
    "Study",
    "StudyClaim",
    "StudyEvent",
    "StudyResult",
    "User",
    "UserSession",
    "ValidationReport",
    "VendorAnswer",
]
