"""Every ORM table, imported in one place for Alembic and `create_all` in tests."""

from lods.alerts.models import Alert, AlertEvent
from lods.audit.models import AuditEvent, AuditHead, AuditPurgeWindow
from lods.auth.models import ApiToken, User, UserSession
from lods.db import Base
from lods.exports.models import OutboxItem
from lods.falls.models import FallIncident, FallRiskAssessment
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
from lods.sensors.models import SensorEvent
from lods.sites.models import Bed, Department, DicomNode, Site
from lods.solutions.models import Deployment, SolutionVersion, VendorAnswer
from lods.validation.models import ValidationReport
from lods.vitals.models import (
    BedStay,
    EarlyWarningScore,
    Encounter,
    Hl7Message,
    LatestVital,
    PatientOption,
    VitalObservation,
)

__all__ = [
    "Alert",
    "AlertEvent",
    "ApiToken",
    "AuditEvent",
    "AuditHead",
    "AuditPurgeWindow",
    "Base",
    "Bed",
    "BedStay",
    "Department",
    "Deployment",
    "DicomNode",
    "EarlyWarningScore",
    "Encounter",
    "FallIncident",
    "FallRiskAssessment",
    "Finding",
    "FindingDecision",
    "Hl7Message",
    "Instance",
    "IntakeRejection",
    "Job",
    "LatestVital",
    "OutboxItem",
    "Patient",
    "PatientOption",
    "Report",
    "ReportRevision",
    "RouteDecision",
    "ScreeningRead",
    "SensorEvent",
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
    "VitalObservation",
]
