"""Early-warning scores as FHIR R4: `Observation/ews-<id>` and its `Provenance/ews-<id>`.

A score is a rule engine's result, not AI, so it carries no `AIAST` security label; and
no clinician signed it, so its status is `preliminary` (a nurse acts on it). The total
is `valueInteger` with the table's code (NEWS2: SNOMED CT 1104051000000101); each
sub-score is a component coded as in the table (NEWS2: the UK SNOMED CT extension codes
of STANDARDS.md; SpO2 scale 1 and scale 2 have codes of their own); the risk band is the
interpretation; `derivedFrom` names the vital-sign Observations (`vs-<id>`) the score
was computed from. An incomplete set has no value (`dataAbsentReason`) and says what is
missing; a patient outside the intended use says why it was not scored.

The Provenance names the solution version that computed it as a Device (author), with
the readings as its sources. Shadow output is never served.

Readers: nurses, physicians and admins, by login session or bearer token; every read is
audited with the patient's identifier (`fhir.read`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.fhir import resources as fr
from lods.fhir.api import FhirError, FhirResponse, FhirRoute
from lods.fhir.store import solution_info
from lods.fhir.values import PatientInfo, SolutionInfo
from lods.imaging.models import Patient
from lods.solutions.manifest import ManifestError, parse_manifest
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.vitals.models import EarlyWarningScore, Encounter
from lods.vitals.scoring import NOT_SCORED

Json = dict[str, Any]

SCORE_ID_PREFIX = "ews-"
VITAL_ID_PREFIX = "vs-"
ID_SCORE = "urn:lods:ews-score"
ID_VISIT = "urn:lods:visit-number"
LODS_EWS = "urn:lods:codesystem:ews"
LODS_EWS_BAND = "urn:lods:codesystem:ews-band"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
SURVEY = {"system": fr.OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}
#: Who may read scores through FHIR: the ward's clinicians and admins.
SCORE_READERS = frozenset({Role.NURSE, Role.PHYSICIAN, Role.ADMIN})
ScoreReader = Annotated[Principal, Depends(role_dependency(*SCORE_READERS))]


def score_id(key: int) -> str:
    return f"{SCORE_ID_PREFIX}{key}"


def vital_reference(observation_id: int) -> Json:
    return {"reference": f"Observation/{VITAL_ID_PREFIX}{observation_id}"}


def band_label(band: str) -> str:
    """'low_medium' -> 'Low–medium' (the tables' own labels read the same way)."""
    return band.replace("_", "–").capitalize()


def _code(code: dict[str, Any] | None, *, score_name: str, key: str, label: str) -> Json:
    if code:
        coding = {
            "system": fr.system_for_scheme(str(code["scheme"])),
            "code": str(code["value"]),
            "display": str(code["meaning"]),
        }
        return {"coding": [coding], "text": label}
    local = {"system": f"{LODS_EWS}:{score_name.lower()}", "code": key, "display": label}
    return {"coding": [local], "text": label}


def total_code(version: SolutionVersion, score_name: str) -> Json:
    """The total's code: the manifest's `total` finding (the solution declares what it
    outputs), else a Lods-local code naming the score."""
    try:
        manifest = parse_manifest(version.manifest_text)
        finding = manifest.outputs.finding("total")
    except (ManifestError, KeyError):
        return _code(None, score_name=score_name, key="total", label=f"{score_name} total")
    code = finding.code.model_dump()
    return _code(code, score_name=score_name, key="total", label=finding.label)


def _part_component(key: str, part: dict[str, Any], score_name: str) -> Json:
    label = str(part.get("label") or key)
    component: Json = {
        "code": _code(part.get("code"), score_name=score_name, key=key, label=f"{label} score")
    }
    if part.get("points") is not None:
        component["valueInteger"] = int(part["points"])
    else:
        component["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "error", "display": "Error"}],
            "text": str(part.get("problem") or "not scorable"),
        }
    return component


def _notes(score: EarlyWarningScore) -> list[Json]:
    notes = []
    reason = (score.options or {}).get(NOT_SCORED)
    if reason:
        notes.append({"text": f"Not scored: {reason} (outside the solution's intended use)."})
    elif not score.complete:
        notes.append(
            {"text": "Incomplete set, no total: missing or stale " + ", ".join(score.missing)}
        )
    shown = {k: v for k, v in (score.options or {}).items() if k != NOT_SCORED}
    if "spo2_scale" in shown:
        notes.append({"text": f"SpO2 scale {shown['spo2_scale']} in force."})
    adjusted = [
        f"{key}: adjusted threshold by {part['adjusted'].get('set_by')} "
        f"({part['adjusted'].get('reason')})"
        for key, part in score.parts.items()
        if isinstance(part, dict) and part.get("adjusted")
    ]
    notes += [{"text": text} for text in adjusted]
    return notes


def score_observation(
    score: EarlyWarningScore,
    *,
    patient: PatientInfo,
    version: SolutionVersion,
    visit: str | None = None,
) -> Json:
    """The score as an R4 Observation (pure: everything comes in as arguments)."""
    resource: Json = {
        "resourceType": "Observation",
        "id": score_id(score.id),
        "identifier": [{"system": ID_SCORE, "value": str(score.id)}],
        "status": "preliminary",
        "category": [{"coding": [dict(SURVEY)], "text": "Early-warning score"}],
        "code": total_code(version, score.score_name),
        "subject": fr.patient_reference(patient),
    }
    if visit:
        resource["encounter"] = {
            "type": "Encounter",
            "identifier": {"system": ID_VISIT, "value": visit},
        }
    resource["effectiveDateTime"] = fr.instant(score.observed_at)
    resource["issued"] = fr.instant(score.computed_at)
    if score.complete and score.total is not None:
        resource["valueInteger"] = score.total
    else:
        reason = (score.options or {}).get(NOT_SCORED)
        code, display = ("not-applicable", "Not Applicable") if reason else ("unknown", "Unknown")
        resource["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": code, "display": display}],
            "text": f"not scored: {reason}" if reason else "incomplete set",
        }
    if score.band:
        label = band_label(score.band)
        resource["interpretation"] = [
            {
                "coding": [{"system": LODS_EWS_BAND, "code": score.band, "display": label}],
                "text": f"{score.score_name} {label}",
            }
        ]
    notes = _notes(score)
    if notes:
        resource["note"] = notes
    derived = [
        vital_reference(int(part["observation"]))
        for part in score.parts.values()
        if isinstance(part, dict) and part.get("observation") is not None
    ]
    if derived:
        resource["derivedFrom"] = derived
    components = [
        _part_component(key, part, score.score_name)
        for key, part in score.parts.items()
        if isinstance(part, dict)
    ]
    if components:
        resource["component"] = components
    return resource


def score_provenance(score: EarlyWarningScore, *, solution: SolutionInfo) -> Json:
    """Who computed the score: the solution version as a Device, from which readings."""
    entities = [
        {"role": "source", "what": vital_reference(int(part["observation"]))}
        for part in score.parts.values()
        if isinstance(part, dict) and part.get("observation") is not None
    ]
    resource: Json = {
        "resourceType": "Provenance",
        "id": score_id(score.id),
        "target": [{"reference": f"Observation/{score_id(score.id)}"}],
        "recorded": fr.instant(score.computed_at),
        "activity": {
            "coding": [{"system": fr.DATA_OPERATION, "code": "CREATE", "display": "create"}]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {"system": fr.PARTICIPANT_TYPE, "code": "author", "display": "Author"}
                    ]
                },
                "who": fr.device_reference(solution),
            }
        ],
    }
    if entities:
        resource["entity"] = entities
    return resource


# --- the routes --------------------------------------------------------------------------


router = APIRouter(
    prefix="/fhir", tags=["FHIR"], route_class=FhirRoute, default_response_class=FhirResponse
)


def _load(db: Session, key: int, kind: str) -> tuple[EarlyWarningScore, Patient, SolutionVersion]:
    """A score shown to clinicians (not shadow output), its patient and solution version."""
    score = db.get(EarlyWarningScore, key)
    deployment = db.get(Deployment, score.deployment_fk) if score is not None else None
    if score is None or deployment is None or deployment.mode == DeploymentMode.SHADOW.value:
        raise FhirError(404, "not-found", f"{kind}/{score_id(key)} is not known")
    patient = db.get(Patient, score.patient_fk)
    version = db.get(SolutionVersion, score.version_fk)
    assert patient is not None and version is not None
    return score, patient, version


def _audit(db: Session, user: Principal, ref: str, patient: Patient) -> None:
    record(
        db,
        actor=user.username,
        action="fhir.read",
        source=user.source,
        patient_id=patient.patient_id,
        object_ref=ref,
        detail={"via": user.via},
    )


def _patient_info(patient: Patient) -> PatientInfo:
    return PatientInfo(
        patient_id=patient.patient_id,
        issuer=patient.issuer,
        name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
    )


@router.get("/Observation/ews-{key:int}")
def read_score_observation(key: int, db: SessionDep, user: ScoreReader) -> FhirResponse:
    """An early-warning score as an Observation (preliminary, no AI label)."""
    score, patient, version = _load(db, key, "Observation")
    encounter = db.get(Encounter, score.encounter_fk) if score.encounter_fk else None
    resource = score_observation(
        score,
        patient=_patient_info(patient),
        version=version,
        visit=encounter.visit_number if encounter else None,
    )
    _audit(db, user, f"Observation/{score_id(key)}", patient)
    return FhirResponse(resource)


@router.get("/Provenance/ews-{key:int}")
def read_score_provenance(key: int, db: SessionDep, user: ScoreReader) -> FhirResponse:
    """Who computed the score: the solution version (Device) from which readings."""
    score, patient, version = _load(db, key, "Provenance")
    _audit(db, user, f"Provenance/{score_id(key)}", patient)
    return FhirResponse(score_provenance(score, solution=solution_info(version)))
