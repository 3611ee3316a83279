"""FHIR R4 resources for a study's results, built as plain JSON-ready dicts (pure).

Per study and reporting source there is one DiagnosticReport:

- each AI result (one job of a pilot or live deployment) → `DiagnosticReport/ai-<n>`,
  always `preliminary`, with an `ai-result-<n>` Observation for the study-level answer and
  an `ai-finding-<n>` Observation per finding (score, certainty, body site, image region);
- the clinician's report, once signed → `DiagnosticReport/report-<n>`, `final`, and
  `amended` after an amendment, with a `decision-<n>` Observation per decision (agree,
  disagree, amend an AI finding, or a finding the AI missed).

Everything AI-made or derived from AI output carries the `AIAST` security label
(v3-ObservationValue); purely human content (a finding the clinician added, a report of
a study the AI did not see) does not. Each report has Provenance: for AI output the agent
is the solution as a Device (name, version, manifest hash); for a signed report the
signing Practitioner is author and verifier, and each amendment has its own Provenance.

A signed or amended report without a named signer cannot be built (`ValueError`): no
result becomes final without a human, whatever calls this.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from lods.fhir.values import (
    AiFinding,
    AiResult,
    Box,
    Code,
    DecisionInfo,
    PatientInfo,
    PersonInfo,
    ReportInfo,
    RevisionInfo,
    SolutionInfo,
    StudyInfo,
    StudyResults,
)

Json = dict[str, Any]

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"

# --- code systems and identifier systems -------------------------------------------------

SECURITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
AIAST = {"system": SECURITY_SYSTEM, "code": "AIAST", "display": "Artificial Intelligence asserted"}
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
DEVICE_NAME_TYPE_USER = "user-friendly-name"
DEVICE_NAME_TYPE_MODEL = "model-name"

#: Lods' own code systems (no standard code exists for these concepts).
LODS_OUTCOME = "urn:lods:codesystem:ai-outcome"
LODS_CERTAINTY = "urn:lods:codesystem:ai-certainty"
LODS_DECISION = "urn:lods:codesystem:clinician-decision"
LODS_CONCLUSION = "urn:lods:codesystem:report-conclusion"
LODS_OBSERVATION = "urn:lods:codesystem:observation"

#: Identifier systems. Values that must be unique beyond this installation are qualified
#: by the (globally unique) Study Instance UID.
ID_DICOM_UID = "urn:dicom:uid"
ID_AI_RESULT = "urn:lods:ai-result"
ID_REPORT = "urn:lods:report"
ID_OBSERVATION = "urn:lods:observation"
ID_PROVENANCE = "urn:lods:provenance"
ID_SOLUTION = "urn:lods:solution"
ID_MANIFEST = "urn:lods:solution-manifest-sha256"
ID_USER = "urn:lods:user"
ID_PATIENT_DEFAULT = "urn:lods:patient-id"

#: DICOM coding scheme designators and their FHIR system URIs.
SCHEME_SYSTEMS = {
    "SCT": SNOMED,
    "SRT": SNOMED,
    "DCM": DCM,
    "LN": LOINC,
    "UCUM": UCUM,
    "RADLEX": "http://radlex.org",
    "FMA": "http://purl.org/sig/ont/fma",
}

AI_LABEL = "AI suggestion — preliminary, not verified by a clinician"
DIAGNOSTIC_IMAGING_STUDY = {
    "system": LOINC,
    "code": "18748-4",
    "display": "Diagnostic imaging study",
}
RADIOLOGY = {"system": V2_0074, "code": "RAD", "display": "Radiology"}
IMAGING = {"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}

OUTCOME_DISPLAY = {"positive": "Positive", "uncertain": "Uncertain", "negative": "Negative"}
CERTAINTY_DISPLAY = {"sure": "Sure", "doubtful": "Doubtful", "none": "None"}
DECISION_DISPLAY = {
    "agree": "Clinician agrees with the AI finding",
    "disagree": "Clinician disagrees with the AI finding",
    "amend": "Clinician amended the AI finding",
    "added": "Finding added by the clinician (missed by the AI)",
}
#: Report states and the DiagnosticReport status each becomes.
REPORT_STATUS = {"signed": "final", "amended": "amended"}

# --- logical ids ------------------------------------------------------------------------------


def ai_report_id(result_key: int) -> str:
    return f"ai-{result_key}"


def report_id(report_key: int) -> str:
    return f"report-{report_key}"


def ai_result_observation_id(result_key: int) -> str:
    return f"ai-result-{result_key}"


def ai_finding_observation_id(finding_key: int) -> str:
    return f"ai-finding-{finding_key}"


def decision_observation_id(decision_key: int) -> str:
    return f"decision-{decision_key}"


def device_id(solution_key: int) -> str:
    return f"solution-{solution_key}"


def practitioner_id(person_key: int) -> str:
    return f"user-{person_key}"


def ai_provenance_id(result_key: int) -> str:
    return f"ai-{result_key}"


def report_provenance_id(report_key: int, version: int) -> str:
    return f"report-{report_key}-v{version}"


def parse_id(logical_id: str, prefix: str) -> int | None:
    """The database key in an id such as `ai-finding-12` (prefix `ai-finding-`), or None."""
    if not logical_id.startswith(prefix):
        return None
    rest = logical_id[len(prefix) :]
    if not rest.isdigit() or len(rest) > 18:
        return None
    return int(rest)


def parse_report_provenance_id(logical_id: str) -> tuple[int, int] | None:
    """(report key, version) of `report-<key>-v<version>`, or None."""
    if not logical_id.startswith("report-"):
        return None
    key, sep, version = logical_id[len("report-") :].partition("-v")
    if not sep or not key.isdigit() or not version.isdigit():
        return None
    if len(key) > 18 or len(version) > 9:
        return None
    return int(key), int(version)


# --- small pieces -------------------------------------------------------------------------------


def instant(value: datetime) -> str:
    """A FHIR instant: UTC with seconds (and milliseconds when present)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    spec = "milliseconds" if value.microsecond else "seconds"
    return value.isoformat(timespec=spec).replace("+00:00", "Z")


def system_for_scheme(scheme: str) -> str:
    known = SCHEME_SYSTEMS.get(scheme.upper())
    if known is not None:
        return known
    return "urn:lods:code-scheme:" + quote(scheme, safe="")


def coding(code: Code) -> Json:
    return {"system": system_for_scheme(code.scheme), "code": code.value, "display": code.meaning}


def concept(code: Code, text: str | None = None) -> Json:
    return {"coding": [coding(code)], "text": text or code.meaning}


def patient_identifier_system(issuer: str) -> str:
    """The identifier system of a patient id: the issuer as a URI when it is one (an OID
    becomes `urn:oid:`), else a Lods URN naming the issuer."""
    issuer = issuer.strip()
    if not issuer:
        return ID_PATIENT_DEFAULT
    if issuer.startswith(("urn:", "http://", "https://")):
        return issuer
    if all(part.isdigit() for part in issuer.split(".")) and "." in issuer:
        return "urn:oid:" + issuer
    return ID_PATIENT_DEFAULT + ":" + quote(issuer, safe="")


def patient_display(patient: PatientInfo) -> str:
    parts = [p.strip() for p in patient.name.split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    name = ", ".join(p for p in (family, given) if p)
    return name or patient.patient_id


def patient_reference(patient: PatientInfo) -> Json:
    """A logical reference: the EHR owns the Patient resource, Lods knows the identifier."""
    return {
        "type": "Patient",
        "identifier": {
            "system": patient_identifier_system(patient.issuer),
            "value": patient.patient_id,
        },
        "display": patient_display(patient),
    }


def imaging_study_reference(study: StudyInfo) -> Json:
    ref: Json = {
        "type": "ImagingStudy",
        "identifier": {"system": ID_DICOM_UID, "value": "urn:oid:" + study.study_uid},
    }
    if study.description:
        ref["display"] = study.description
    return ref


def device_reference(solution: SolutionInfo) -> Json:
    return {
        "reference": f"Device/{device_id(solution.key)}",
        "display": f"{solution.name} {solution.version}",
    }


def practitioner_reference(person: PersonInfo) -> Json:
    return {"reference": f"Practitioner/{practitioner_id(person.key)}", "display": person.display}


def _meta(*, ai: bool, version: int | None = None, last_updated: datetime | None = None) -> Json:
    meta: Json = {}
    if version is not None:
        meta["versionId"] = str(version)
    if last_updated is not None:
        meta["lastUpdated"] = instant(last_updated)
    if ai:
        meta["security"] = [dict(AIAST)]
    return meta


def _effective(study: StudyInfo) -> Json:
    # Study time has no time zone in DICOM; a FHIR dateTime with a time needs one.
    return {"effectiveDateTime": study.study_date.isoformat()} if study.study_date else {}


def _region(box: Box) -> Json:
    frame = f" frame {box.frame}" if box.frame is not None else ""
    corners = ", ".join(f"{v:g}" for v in (box.x0, box.y0, box.x1, box.y1))
    return {
        "code": {
            "coding": [{"system": DCM, "code": "111030", "display": "Image Region"}],
            "text": "Image region (x0, y0, x1, y1 in pixels)",
        },
        "valueString": f"SOP Instance {box.sop_instance_uid}{frame}: [{corners}]",
    }


def _body_site(body_part: str) -> Json:
    # A DICOM Body Part Examined defined term; SNOMED mapping (PS3.16 Annex L) not yet done.
    return {"text": body_part}


def _lods_concept(system: str, code: str, display: str) -> Json:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _identifier(system: str, value: str) -> Json:
    return {"system": system, "value": value}


# --- resources ------------------------------------------------------------------------------


def device(solution: SolutionInfo) -> Json:
    """The AI solution version as a Device: name, version, vendor and manifest hash."""
    identifiers = [_identifier(ID_SOLUTION, f"{solution.solution_id}@{solution.version}")]
    if solution.manifest_sha256:
        identifiers.append(_identifier(ID_MANIFEST, solution.manifest_sha256))
    resource: Json = {
        "resourceType": "Device",
        "id": device_id(solution.key),
        "identifier": identifiers,
        "deviceName": [
            {"name": solution.name, "type": DEVICE_NAME_TYPE_USER},
            {"name": solution.solution_id, "type": DEVICE_NAME_TYPE_MODEL},
        ],
        "type": {"text": "AI software (clinical decision support)"},
        "version": [{"value": solution.version}],
    }
    if solution.vendor:
        resource["manufacturer"] = solution.vendor
    return resource


def practitioner(person: PersonInfo) -> Json:
    resource: Json = {
        "resourceType": "Practitioner",
        "id": practitioner_id(person.key),
        "identifier": [_identifier(ID_USER, person.username)],
        "active": True,
    }
    if person.full_name:
        resource["name"] = [{"text": person.full_name}]
    return resource


def ai_result_observation(study: StudyResults, result: AiResult) -> Json:
    """The AI's study-level answer: outcome, with score and certainty as components."""
    components: list[Json] = [
        {
            "code": _lods_concept(LODS_OBSERVATION, "ai-certainty", "AI certainty"),
            "valueCodeableConcept": _lods_concept(
                LODS_CERTAINTY,
                result.certainty,
                CERTAINTY_DISPLAY.get(result.certainty, result.certainty),
            ),
        }
    ]
    if result.score is not None:
        components.append(
            {
                "code": _lods_concept(LODS_OBSERVATION, "ai-score", "AI score"),
                "valueQuantity": {"value": result.score, "system": UCUM, "code": "1"},
            }
        )
    return {
        "resourceType": "Observation",
        "id": ai_result_observation_id(result.key),
        "meta": _meta(ai=True),
        "identifier": [
            _identifier(ID_OBSERVATION, f"{study.study.study_uid}/ai-result-{result.key}")
        ],
        "status": "preliminary",
        "category": [{"coding": [dict(IMAGING)]}],
        "code": _lods_concept(
            LODS_OBSERVATION, "ai-study-result", f"AI study result: {result.solution.name}"
        ),
        "subject": patient_reference(study.patient),
        **_effective(study.study),
        "issued": instant(result.created_at),
        "valueCodeableConcept": {
            "coding": [
                {
                    "system": LODS_OUTCOME,
                    "code": result.outcome,
                    "display": OUTCOME_DISPLAY.get(result.outcome, result.outcome),
                }
            ],
            "text": result.text or OUTCOME_DISPLAY.get(result.outcome, result.outcome),
        },
        "note": [{"text": AI_LABEL}],
        "method": {"text": f"AI: {result.solution.name} {result.solution.version}"},
        "device": device_reference(result.solution),
        "derivedFrom": [imaging_study_reference(study.study)],
        "component": components,
    }


def ai_finding_observation(study: StudyResults, result: AiResult, finding: AiFinding) -> Json:
    """One AI finding: its code, the score as value, certainty, body site and region."""
    components: list[Json] = [
        {
            "code": _lods_concept(LODS_OBSERVATION, "ai-certainty", "AI certainty"),
            "valueCodeableConcept": _lods_concept(
                LODS_CERTAINTY,
                finding.certainty,
                CERTAINTY_DISPLAY.get(finding.certainty, finding.certainty),
            ),
        }
    ]
    if finding.box is not None:
        components.append(_region(finding.box))
    resource: Json = {
        "resourceType": "Observation",
        "id": ai_finding_observation_id(finding.key),
        "meta": _meta(ai=True),
        "identifier": [
            _identifier(ID_OBSERVATION, f"{study.study.study_uid}/ai-finding-{finding.key}")
        ],
        "status": "preliminary",
        "category": [{"coding": [dict(IMAGING)]}],
        "code": concept(finding.code, finding.label or finding.code.meaning),
        "subject": patient_reference(study.patient),
        **_effective(study.study),
        "issued": instant(result.created_at),
        "valueQuantity": {"value": finding.score, "system": UCUM, "code": "1", "unit": "score"},
        "note": [{"text": AI_LABEL}],
        "method": {"text": f"AI: {result.solution.name} {result.solution.version}"},
        "device": device_reference(result.solution),
        "derivedFrom": [imaging_study_reference(study.study)],
        "component": components,
    }
    if finding.body_part:
        resource["bodySite"] = _body_site(finding.body_part)
    return resource


def ai_diagnostic_report(study: StudyResults, result: AiResult) -> Json:
    """The AI's answer for the study as a preliminary DiagnosticReport, labelled AIAST."""
    text = f"{AI_LABEL}. {result.solution.name} {result.solution.version}: {result.text}"
    return {
        "resourceType": "DiagnosticReport",
        "id": ai_report_id(result.key),
        "meta": _meta(ai=True, last_updated=result.created_at),
        "identifier": [_identifier(ID_AI_RESULT, f"{study.study.study_uid}/ai-{result.key}")],
        # AI output is never final: there is no parameter that could make it so.
        "status": "preliminary",
        "category": [{"coding": [dict(RADIOLOGY)]}],
        "code": {
            "coding": [dict(DIAGNOSTIC_IMAGING_STUDY)],
            "text": f"AI analysis: {result.solution.name}",
        },
        "subject": patient_reference(study.patient),
        **_effective(study.study),
        "issued": instant(result.created_at),
        "imagingStudy": [imaging_study_reference(study.study)],
        "result": [
            {"reference": f"Observation/{ai_result_observation_id(result.key)}"},
            *(
                {"reference": f"Observation/{ai_finding_observation_id(f.key)}"}
                for f in result.findings
            ),
        ],
        "conclusion": text,
        "conclusionCode": [
            {
                "coding": [
                    {
                        "system": LODS_OUTCOME,
                        "code": result.outcome,
                        "display": OUTCOME_DISPLAY.get(result.outcome, result.outcome),
                    }
                ],
                "text": result.text or OUTCOME_DISPLAY.get(result.outcome, result.outcome),
            }
        ],
    }


def _require_signed(report: ReportInfo) -> str:
    """The DiagnosticReport status of a report; refuses one without a named signer."""
    status = REPORT_STATUS.get(report.state)
    if status is None:
        raise ValueError(f"a {report.state!r} report is not a result; only signed ones are")
    if report.signer is None or report.signed_at is None:
        raise ValueError("a signed report needs a named signer and a signing time")
    return status


def decision_observation(study: StudyResults, decision: DecisionInfo) -> Json:
    """A clinician's decision on an AI finding (labelled AIAST: derived from AI output),
    or a finding the clinician added (purely human: no label)."""
    report = study.report
    if report is None:
        raise ValueError("decisions leave Lods only with their signed report")
    status = _require_signed(report)
    code = decision.finding_code
    from_ai = decision.ai_finding is not None
    resource: Json = {
        "resourceType": "Observation",
        "id": decision_observation_id(decision.key),
        "meta": _meta(ai=from_ai),
        "identifier": [
            _identifier(ID_OBSERVATION, f"{study.study.study_uid}/decision-{decision.key}")
        ],
        "status": status,
        "category": [{"coding": [dict(IMAGING)]}],
        "code": concept(code) if code is not None else {"text": "Finding"},
        "subject": patient_reference(study.patient),
        **_effective(study.study),
        "issued": instant(decision.decided_at),
        "performer": [practitioner_reference(decision.by)],
        "valueCodeableConcept": _lods_concept(
            LODS_DECISION,
            decision.decision,
            DECISION_DISPLAY.get(decision.decision, decision.decision),
        ),
        "derivedFrom": [imaging_study_reference(study.study)],
    }
    if decision.ai_finding is not None:
        resource["derivedFrom"].insert(
            0, {"reference": f"Observation/{ai_finding_observation_id(decision.ai_finding.key)}"}
        )
    if decision.comment:
        resource["note"] = [{"text": decision.comment}]
    body_part = decision.body_part or (decision.ai_finding.body_part if decision.ai_finding else "")
    if body_part:
        resource["bodySite"] = _body_site(body_part)
    if decision.box is not None:
        resource["component"] = [_region(decision.box)]
    return resource


def report_is_ai_influenced(study: StudyResults) -> bool:
    """Whether the signed report was made with AI output in view: any clinically visible
    AI result of the study, or a decision on an AI finding."""
    return bool(study.current_ai_results) or any(d.ai_finding is not None for d in study.decisions)


def report_diagnostic_report(study: StudyResults) -> Json:
    """The clinician's signed report: `final`, or `amended` after an amendment."""
    report = study.report
    if report is None:
        raise ValueError("the study has no signed report")
    status = _require_signed(report)
    assert report.signer is not None and report.signed_at is not None
    conclusion = report.conclusion
    resource: Json = {
        "resourceType": "DiagnosticReport",
        "id": report_id(report.key),
        "meta": _meta(
            ai=report_is_ai_influenced(study),
            version=report.version,
            last_updated=report.signed_at,
        ),
        "identifier": [_identifier(ID_REPORT, study.study.study_uid)],
        "status": status,
        "category": [{"coding": [dict(RADIOLOGY)]}],
        "code": {"coding": [dict(DIAGNOSTIC_IMAGING_STUDY)], "text": "Imaging report"},
        "subject": patient_reference(study.patient),
        **_effective(study.study),
        "issued": instant(report.signed_at),
        "performer": [practitioner_reference(report.author or report.signer)],
        "resultsInterpreter": [practitioner_reference(report.signer)],
        "imagingStudy": [imaging_study_reference(study.study)],
    }
    if study.study.accession_number:
        resource["identifier"].append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "ACSN",
                            "display": "Accession ID",
                        }
                    ]
                },
                "value": study.study.accession_number,
            }
        )
    if study.decisions:
        resource["result"] = [
            {"reference": f"Observation/{decision_observation_id(d.key)}"} for d in study.decisions
        ]
    if report.text:
        resource["conclusion"] = report.text
        resource["presentedForm"] = [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(report.text.encode()).decode(),
                "title": "Report text",
            }
        ]
    if conclusion:
        resource["conclusionCode"] = [
            _lods_concept(LODS_CONCLUSION, conclusion, OUTCOME_DISPLAY.get(conclusion, conclusion))
        ]
    return resource


def ai_provenance(study: StudyResults, result: AiResult) -> Json:
    """Who made the AI report: the solution version as a Device (the author)."""
    targets = [
        {"reference": f"DiagnosticReport/{ai_report_id(result.key)}"},
        {"reference": f"Observation/{ai_result_observation_id(result.key)}"},
        *(
            {"reference": f"Observation/{ai_finding_observation_id(f.key)}"}
            for f in result.findings
        ),
    ]
    return {
        "resourceType": "Provenance",
        "id": ai_provenance_id(result.key),
        "meta": _meta(ai=True),
        "target": targets,
        "recorded": instant(result.created_at),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                "who": device_reference(result.solution),
            }
        ],
        "entity": [{"role": "source", "what": imaging_study_reference(study.study)}],
    }


def _revisions(report: ReportInfo) -> tuple[RevisionInfo, ...]:
    if report.revisions:
        return report.revisions
    assert report.signer is not None and report.signed_at is not None
    return (
        RevisionInfo(
            version=report.version or 1,
            state=report.state,
            signer=report.signer,
            signed_at=report.signed_at,
            reason=report.amendment_reason,
        ),
    )


def report_provenances(study: StudyResults) -> list[Json]:
    """One Provenance per signed version of the report: the signer as author and
    verifier, the AI solutions whose output was in view as informants, and the AI
    reports the decisions came from as derivation sources."""
    report = study.report
    if report is None:
        raise ValueError("the study has no signed report")
    _require_signed(report)
    solutions = study.solutions()
    provenances: list[Json] = []
    for revision in _revisions(report):
        target: Json = {
            "reference": f"DiagnosticReport/{report_id(report.key)}/_history/{revision.version}"
        }
        targets = [target]
        if revision.version == report.version:
            targets += [
                {"reference": f"Observation/{decision_observation_id(d.key)}"}
                for d in study.decisions
            ]
        agents: list[Json] = []
        if revision.version == 1 and report.author is not None:
            agents.append(
                {
                    "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                    "who": practitioner_reference(report.author),
                }
            )
        elif revision.version > 1:
            agents.append(
                {
                    "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                    "who": practitioner_reference(revision.signer),
                }
            )
        agents.append(
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "verifier"}]},
                "who": practitioner_reference(revision.signer),
            }
        )
        agents += [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "informant"}]},
                "who": device_reference(solution),
            }
            for solution in solutions
        ]
        entities: list[Json] = [{"role": "source", "what": imaging_study_reference(study.study)}]
        entities += [
            {
                "role": "derivation",
                "what": {"reference": f"DiagnosticReport/{ai_report_id(r.key)}"},
            }
            for r in study.current_ai_results
        ]
        provenance: Json = {
            "resourceType": "Provenance",
            "id": report_provenance_id(report.key, revision.version),
            "target": targets,
            "recorded": instant(revision.signed_at),
            "activity": {
                "coding": [
                    {
                        "system": DATA_OPERATION,
                        "code": "CREATE" if revision.version == 1 else "UPDATE",
                        "display": "create" if revision.version == 1 else "revise",
                    }
                ]
            },
            "agent": agents,
            "entity": entities,
        }
        if report_is_ai_influenced(study):
            provenance["meta"] = _meta(ai=True)
        if revision.reason:
            provenance["reason"] = [{"text": revision.reason}]
        provenances.append(provenance)
    return provenances


# --- a study's resources --------------------------------------------------------------------


def ai_resources(study: StudyResults, result: AiResult) -> list[Json]:
    """The AI report, its Observations, its Provenance and the solution's Device."""
    return [
        ai_diagnostic_report(study, result),
        ai_result_observation(study, result),
        *(ai_finding_observation(study, result, f) for f in result.findings),
        ai_provenance(study, result),
        device(result.solution),
    ]


def report_resources(study: StudyResults) -> list[Json]:
    """The signed report, its decision Observations, Provenance and Practitioners."""
    return [
        report_diagnostic_report(study),
        *(decision_observation(study, d) for d in study.decisions),
        *report_provenances(study),
        *(practitioner(p) for p in study.people()),
    ]


def study_resources(study: StudyResults) -> list[Json]:
    """Every resource of the study that may leave Lods: current AI reports (with the
    devices) and the signed report (with its practitioners), each resource once."""
    resources: list[Json] = []
    for result in study.current_ai_results:
        resources += ai_resources(study, result)
    if study.report is not None:
        resources += report_resources(study)
    return _unique(resources)


def _unique(resources: Iterable[Json]) -> list[Json]:
    seen: set[tuple[str, str]] = set()
    out: list[Json] = []
    for resource in resources:
        key = (resource["resourceType"], resource["id"])
        if key not in seen:
            seen.add(key)
            out.append(resource)
    return out
