"""FHIR R4 vital signs in: `POST /fhir/Observation` (one vital-signs Observation) and
`POST /fhir/Bundle` (a transaction of them, all or nothing).

Who: a bearer token (or login session, with the CSRF header) of an integration (a device
gateway or interface engine), a nurse or a physician. Every stored Observation is audited
with the patient (`fhir.create`).

What is accepted (STANDARDS.md §4): category `vital-signs`; a LOINC code Lods scores
(respiratory rate 9279-1, SpO2 59408-5 / 2708-6, heart rate 8867-4, blood pressure
8480-6 / 8462-4 / 8478-0 or the panel 85354-9 with those as components, temperature
8310-5, consciousness 67775-7 as a valueCodeableConcept — ACVPU letter, LOINC answer or
SNOMED finding — and inhaled oxygen 3150-0 as an FiO2 % or air/oxygen); `valueQuantity`
in UCUM (/min, %, mm[Hg], Cel, [degF], kPa); `effectiveDateTime` with a time zone; the
subject as `{"identifier": {"system", "value"}}` (the system as Lods' FHIR output names a
patient's issuer) or `{"reference": "Patient/<patient id>"}`. The patient must be known
(from ADT); the reading is linked to their active stay and bed, and scored like a
monitor's.

Answers: 201 with the stored Observation (id `vs-<row id>`; a blood-pressure panel keeps
one row per component and takes the first row's id) and a Location header; a
transaction-response Bundle for a Bundle. A reading that is not one (unknown code,
impossible value, device sentinel, missing time) is refused with an OperationOutcome
(400 for malformed resources, 422 for values and unknown patients) and nothing is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.csrf import verify_csrf
from lods.auth.deps import Principal, SessionDep, get_settings_dep, role_dependency
from lods.auth.models import Role
from lods.db import utcnow
from lods.fhir import resources as fr
from lods.fhir.api import FhirError, FhirResponse, FhirRoute, base_url
from lods.imaging.models import Patient
from lods.vitals import codes
from lods.vitals import service as vitals
from lods.vitals.models import VitalObservation

#: Who may post vital signs.
VITALS_WRITERS = frozenset({Role.INTEGRATION, Role.NURSE, Role.PHYSICIAN})
VitalsWriter = Annotated[Principal, Depends(role_dependency(*VITALS_WRITERS))]
#: Who may read them back (the integration role posts, it reads nothing).
VITALS_READERS = frozenset({Role.NURSE, Role.PHYSICIAN})
VitalsReader = Annotated[Principal, Depends(role_dependency(*VITALS_READERS))]

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_ENTRIES = 1000
MEDIA_TYPES = (fr.FHIR_JSON, "application/json")
ACCEPTED_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
VITAL_SIGNS = {"system": fr.OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}
VITALS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
#: The components of the blood-pressure panel.
BP_COMPONENTS = frozenset({codes.BP_SYS, codes.BP_DIA, codes.BP_MEAN})

router = APIRouter(
    prefix="/fhir", tags=["FHIR"], route_class=FhirRoute, default_response_class=FhirResponse
)


# --- request plumbing -------------------------------------------------------------------------


async def csrf_checked(request: Request, user: VitalsWriter) -> Principal:
    """The writer, after the CSRF check that a login session needs (bearer tokens are exempt)."""
    try:
        await verify_csrf(request)
    except HTTPException as exc:
        raise FhirError(403, "forbidden", str(exc.detail)) from None
    return user


Writer = Annotated[Principal, Depends(csrf_checked)]


async def fhir_json(request: Request) -> Any:
    """The request body as JSON, when it is FHIR JSON of a sensible size."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise FhirError(415, "not-supported", f"send {fr.FHIR_JSON}, not {media or 'nothing'}")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise FhirError(413, "too-costly", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FhirError(400, "structure", "the body is not JSON") from None


Body = Annotated[Any, Depends(fhir_json)]


# --- reading an Observation -------------------------------------------------------------------


def _bad(diagnostics: str, code: str = "structure") -> FhirError:
    return FhirError(400, code, diagnostics)


def _refused(diagnostics: str, code: str = "processing") -> FhirError:
    return FhirError(422, code, diagnostics)


@dataclass(frozen=True)
class SubjectRef:
    patient_id: str
    #: None: any issuer (a `Patient/<id>` reference).
    issuer: str | None


@dataclass(frozen=True)
class PostedVital:
    """One posted Observation, checked, before its patient is looked up."""

    subject: SubjectRef
    readings: tuple[codes.Reading, ...]
    observed_at: datetime
    status: str
    panel: bool


def _issuer_of_system(system: str) -> str:
    """The issuer that `lods.fhir.resources.patient_identifier_system` names."""
    if system in ("", fr.ID_PATIENT_DEFAULT):
        return ""
    if system.startswith(fr.ID_PATIENT_DEFAULT + ":"):
        return unquote(system[len(fr.ID_PATIENT_DEFAULT) + 1 :])
    if system.startswith("urn:oid:"):
        return system[len("urn:oid:") :]
    return system


def _subject(resource: dict[str, Any]) -> SubjectRef:
    subject = resource.get("subject")
    if not isinstance(subject, dict):
        raise _bad("Observation.subject is required", "required")
    identifier = subject.get("identifier")
    if isinstance(identifier, dict):
        value, system = identifier.get("value"), identifier.get("system", "")
        if not isinstance(value, str) or not value.strip() or not isinstance(system, str):
            raise _bad("subject.identifier needs a value (and a system)", "required")
        return SubjectRef(value.strip(), _issuer_of_system(system.strip()))
    reference = subject.get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/") and len(reference) > 8:
        return SubjectRef(unquote(reference[len("Patient/") :]), None)
    raise _bad("subject must be an identifier or a Patient/<id> reference", "value")


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    found = concept.get("coding")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def _loinc_codes(concept: Any) -> list[str]:
    return [
        str(c.get("code", ""))
        for c in _codings(concept)
        if c.get("system") == fr.LOINC and isinstance(c.get("code"), str)
    ]


def _is_vital_signs(resource: dict[str, Any]) -> bool:
    categories = resource.get("category")
    if not isinstance(categories, list):
        return False
    return any(
        c.get("system") == fr.OBSERVATION_CATEGORY and c.get("code") == "vital-signs"
        for category in categories
        for c in _codings(category)
    )


def _effective(resource: dict[str, Any]) -> datetime:
    raw = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    period = resource.get("effectivePeriod")
    if raw is None and isinstance(period, dict):
        raw = period.get("start")
    if not isinstance(raw, str) or "T" not in raw:
        raise _bad("effectiveDateTime with a time of day is required", "required")
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"effectiveDateTime {raw!r} is not a FHIR dateTime", "value") from None
    if value.tzinfo is None:
        raise _bad("effectiveDateTime needs a time zone", "value")
    return value


def _quantity(parameter: str, holder: dict[str, Any], where: str) -> codes.Reading:
    quantity = holder.get("valueQuantity")
    if not isinstance(quantity, dict):
        raise _bad(f"{where} needs a valueQuantity", "required")
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{where}.valueQuantity.value must be a number", "value")
    unit = quantity.get("code") or quantity.get("unit") or ""
    if not isinstance(unit, str):
        raise _bad(f"{where}.valueQuantity.code must be a UCUM code", "value")
    reading = codes.check_numeric(parameter, float(value), unit)
    if not reading.valid:
        raise _refused(f"{where}: {reading.invalid_reason}", "value")
    return reading


def _coded(parameter: str, resource: dict[str, Any]) -> codes.Reading:
    concept = resource.get("valueCodeableConcept")
    candidates: list[str] = []
    if isinstance(concept, dict):
        candidates = [str(c.get("code", "")) for c in _codings(concept) if c.get("code")]
        if isinstance(concept.get("text"), str):
            candidates.append(concept["text"])
    elif isinstance(resource.get("valueString"), str):
        candidates = [resource["valueString"]]
    if not candidates:
        raise _bad(f"{parameter} needs a valueCodeableConcept", "required")
    last: codes.Reading | None = None
    for candidate in candidates:
        last = codes.check_coded(parameter, candidate)
        if last.valid:
            return last
    assert last is not None
    raise _refused(f"{parameter}: {last.invalid_reason}", "code-invalid")


def read_observation(resource: Any) -> PostedVital:
    """Check one posted Observation; raises FhirError (400/422) when it is not a vital sign
    Lods can store."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        raise _bad("expected an Observation resource", "structure")
    status = resource.get("status")
    if status not in ACCEPTED_STATUSES:
        raise _refused(f"Observation.status {status!r} is not one of a reading", "value")
    if not _is_vital_signs(resource):
        raise _refused("Observation.category must include vital-signs", "value")
    subject = _subject(resource)
    observed_at = _effective(resource)
    loincs = _loinc_codes(resource.get("code"))
    if codes.BP_PANEL_LOINC in loincs:
        components = resource.get("component")
        if not isinstance(components, list) or not components:
            raise _bad("the blood-pressure panel needs its components", "required")
        readings: list[codes.Reading] = []
        for n, component in enumerate(components):
            where = f"component[{n}]"
            if not isinstance(component, dict):
                raise _bad(f"{where} must be an object")
            found = [codes.LOINC.get(c) for c in _loinc_codes(component.get("code"))]
            parameters = [p for p in found if p in BP_COMPONENTS]
            if not parameters:
                raise _refused(f"{where}: not a blood-pressure component", "code-invalid")
            readings.append(_quantity(parameters[0], component, where))
        if {r.parameter for r in readings} < {codes.BP_SYS, codes.BP_DIA}:
            raise _refused("the panel needs systolic (8480-6) and diastolic (8462-4)", "required")
        if len({r.parameter for r in readings}) != len(readings):
            raise _refused("a component appears twice", "value")
        return PostedVital(subject, tuple(readings), observed_at, str(status), True)
    parameters = [codes.LOINC[c] for c in loincs if c in codes.LOINC]
    if not parameters:
        shown = ", ".join(loincs) or "none"
        raise _refused(
            f"Observation.code: no vital-sign LOINC code Lods takes ({shown})", "code-invalid"
        )
    parameter = parameters[0]
    if parameter == codes.CONSCIOUSNESS:
        reading = _coded(parameter, resource)
    elif parameter == codes.OXYGEN:
        if "valueQuantity" in resource:
            fio2 = _quantity(parameter, resource, "Observation")
            reading = codes.check_coded(parameter, f"{fio2.value:g}")
        else:
            reading = _coded(parameter, resource)
    else:
        reading = _quantity(parameter, resource, "Observation")
    return PostedVital(subject, (reading,), observed_at, str(status), False)


def _find_patient(db: Session, subject: SubjectRef) -> Patient:
    query = select(Patient).where(Patient.patient_id == subject.patient_id)
    if subject.issuer is not None:
        query = query.where(Patient.issuer == subject.issuer)
    found = list(db.scalars(query.limit(2)))
    if not found:
        raise _refused(f"patient {subject.patient_id} is not known", "not-found")
    if len(found) > 1:
        raise _refused(
            f"patient id {subject.patient_id} is ambiguous: name the issuer", "multiple-matches"
        )
    return found[0]


# --- writing the answer -----------------------------------------------------------------------


def _code_concept(parameter: str) -> dict[str, Any]:
    coding = [
        {"system": fr.LOINC, "code": codes.LOINC_OF[parameter], "display": codes.DISPLAY[parameter]}
    ]
    if parameter == codes.SPO2:
        coding.append(
            {"system": fr.LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"}
        )
    return {"coding": coding, "text": codes.DISPLAY[parameter]}


def _value(row: VitalObservation) -> dict[str, Any]:
    if not row.valid:  # a device's "no reading": kept for the record, never a value
        return {
            "dataAbsentReason": {
                "coding": [{"system": DATA_ABSENT_REASON, "code": "error", "display": "Error"}],
                "text": row.invalid_reason or "no valid reading",
            }
        }
    if row.parameter == codes.CONSCIOUSNESS and row.value_text:
        letter = row.value_text
        return {
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": fr.LOINC,
                        "code": codes.ACVPU_LOINC[letter],
                        "display": codes.ACVPU_DISPLAY[letter],
                    }
                ],
                "text": letter,
            }
        }
    if row.value is None:
        return {"valueCodeableConcept": {"text": row.value_text or ""}}
    return {
        "valueQuantity": {
            "value": row.value,
            "unit": row.unit,
            "system": fr.UCUM,
            "code": row.unit,
        }
    }


def observation_resource(
    rows: list[VitalObservation], patient: Patient, *, status: str = "final", panel: bool = False
) -> dict[str, Any]:
    """The FHIR Observation for stored vital-sign rows (a panel: one row per component)."""
    first = rows[0]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"vs-{first.id}",
        "meta": {"lastUpdated": fr.instant(first.received_at), "profile": [VITALS_PROFILE]},
        "status": status,
        "category": [{"coding": [VITAL_SIGNS], "text": "Vital Signs"}],
        "subject": {
            "identifier": {
                "system": fr.patient_identifier_system(patient.issuer),
                "value": patient.patient_id,
            }
        },
        "effectiveDateTime": fr.instant(first.observed_at),
    }
    if panel:
        resource["code"] = {
            "coding": [
                {
                    "system": fr.LOINC,
                    "code": codes.BP_PANEL_LOINC,
                    "display": "Blood pressure panel with all children optional",
                }
            ],
            "text": "Blood pressure",
        }
        resource["component"] = [{"code": _code_concept(r.parameter), **_value(r)} for r in rows]
    else:
        resource["code"] = _code_concept(first.parameter)
        resource.update(_value(first))
    return resource


@dataclass
class _Stored:
    resource: dict[str, Any]
    rows: list[VitalObservation]
    patient: Patient


def _store(
    db: Session, posted: list[tuple[PostedVital, Patient]], user: Principal, settings: Any
) -> list[_Stored]:
    now = utcnow()
    out: list[_Stored] = []
    for vital, patient in posted:
        encounter = vitals.active_encounter(db, patient_fk=patient.id)
        rows = vitals.store_readings(
            db,
            patient_fk=patient.id,
            encounter=encounter,
            readings=[vitals.NewReading(r, vital.observed_at) for r in vital.readings],
            source="fhir",
            entered_by=user.username,
            now=now,
            settings=settings,
            score=False,
        )
        resource = observation_resource(rows, patient, status=vital.status, panel=vital.panel)
        record(
            db,
            actor=user.username,
            action="fhir.create",
            object_ref=f"Observation/{resource['id']}",
            patient_id=patient.patient_id,
            source=user.source,
            detail={"via": user.via, "parameters": [r.parameter for r in rows]},
        )
        out.append(_Stored(resource, rows, patient))
    vitals.score_patients(db, patient_fks=[p.id for _, p in posted], now=now, settings=settings)
    return out


# --- routes -----------------------------------------------------------------------------------


@router.post("/Observation", status_code=201)
def create_observation(request: Request, db: SessionDep, user: Writer, body: Body) -> FhirResponse:
    """Store one vital-signs Observation; 201 with it and its Location."""
    vital = read_observation(body)
    patient = _find_patient(db, vital.subject)
    stored = _store(db, [(vital, patient)], user, get_settings_dep(request))[0]
    location = f"{base_url(request)}/Observation/{stored.resource['id']}"
    return FhirResponse(stored.resource, status_code=201, headers={"Location": location})


@router.post("/Bundle")
def post_bundle(request: Request, db: SessionDep, user: Writer, body: Body) -> FhirResponse:
    """A transaction Bundle of vital-signs Observations: all stored, or none."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise _bad("expected a Bundle")
    if body.get("type") != "transaction":
        raise FhirError(400, "not-supported", "only transaction Bundles are accepted")
    entries = body.get("entry")
    if not isinstance(entries, list) or not entries:
        raise _bad("the Bundle has no entries", "required")
    if len(entries) > MAX_ENTRIES:
        raise FhirError(413, "too-costly", f"at most {MAX_ENTRIES} entries per Bundle")
    posted: list[tuple[PostedVital, Patient]] = []
    for n, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise _bad("an entry must be an object")
            req = entry.get("request")
            if not isinstance(req, dict) or req.get("method") != "POST":
                raise FhirError(400, "not-supported", "only POST entries are accepted")
            url = str(req.get("url", "")).split("?")[0].rstrip("/")
            if url.rsplit("/", 1)[-1] != "Observation":
                raise FhirError(400, "not-supported", "only POST Observation entries are accepted")
            vital = read_observation(entry.get("resource"))
            posted.append((vital, _find_patient(db, vital.subject)))
        except FhirError as exc:
            raise FhirError(exc.status, exc.code, f"entry[{n}]: {exc.diagnostics}") from None
    stored = _store(db, posted, user, get_settings_dep(request))
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {
                    "resource": s.resource,
                    "response": {
                        "status": "201 Created",
                        "location": f"Observation/{s.resource['id']}",
                        "lastModified": s.resource["meta"]["lastUpdated"],
                    },
                }
                for s in stored
            ],
        }
    )


@router.get("/Observation/vs-{key:int}")
def read_vital_observation(key: int, db: SessionDep, user: VitalsReader) -> FhirResponse:
    """A stored vital sign as an Observation (the target of the Location a POST answers);
    a blood-pressure reading comes back as the panel it was stored with."""
    row = db.get(VitalObservation, key)
    patient = db.get(Patient, row.patient_fk) if row is not None else None
    if row is None or patient is None:
        raise FhirError(404, "not-found", f"Observation/vs-{key} is not known")
    rows = [row]
    if row.parameter in BP_COMPONENTS:
        rows = list(
            db.scalars(
                select(VitalObservation)
                .where(
                    VitalObservation.patient_fk == row.patient_fk,
                    VitalObservation.observed_at == row.observed_at,
                    VitalObservation.source == row.source,
                    VitalObservation.parameter.in_(sorted(BP_COMPONENTS)),
                )
                .order_by(VitalObservation.id)
            )
        )
    record(
        db,
        actor=user.username,
        action="fhir.read",
        object_ref=f"Observation/vs-{key}",
        patient_id=patient.patient_id,
        source=user.source,
        detail={"via": user.via},
    )
    return FhirResponse(observation_resource(rows, patient, panel=len(rows) > 1))
