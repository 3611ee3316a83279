"""The FHIR builders: every resource parses as FHIR (fhir.resources, R4B models — the
pydantic-2 line of fhir.resources ships R4B, not 4.0.1; these resources are the same in
both), statuses follow sign-off, and AI content — only AI content — carries AIAST."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_samples import SIGNED, SOLUTION, STUDY, ai_only, human_only, signed
from lods.fhir import bundles as fb
from lods.fhir import resources as fr


def parse(resource: dict[str, Any]) -> Any:
    """Validate with the fhir.resources model of the resource type; return the model."""
    model = get_fhir_model_class(resource["resourceType"])
    return model.model_validate(resource)


#: R4 required bindings that fhir.resources does not check (it validates structure and
#: data types, not value sets or reference targets).
DR_STATUS = {
    "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
    "cancelled", "entered-in-error", "unknown",
}  # fmt: skip
OBS_STATUS = {
    "registered", "preliminary", "final", "amended", "corrected", "cancelled",
    "entered-in-error", "unknown",
}  # fmt: skip
DEVICE_NAME_TYPES = {
    "udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name",
    "model-name", "other",
}  # fmt: skip
PARTICIPANT_TYPES = {
    "enterer", "performer", "author", "verifier", "legal", "attester", "informant",
    "custodian", "assembler", "composer",
}  # fmt: skip
#: Element → resource types its references may point at (R4).
REFERENCE_TARGETS = {
    ("DiagnosticReport", "performer"): {"Practitioner"},
    ("DiagnosticReport", "resultsInterpreter"): {"Practitioner"},
    ("DiagnosticReport", "result"): {"Observation"},
    ("DiagnosticReport", "imagingStudy"): {"ImagingStudy"},
    ("DiagnosticReport", "subject"): {"Patient"},
    ("Observation", "subject"): {"Patient"},
    ("Observation", "performer"): {"Practitioner"},
    ("Observation", "device"): {"Device"},
    ("Observation", "derivedFrom"): {"Observation", "ImagingStudy"},
}


def _ref_type(ref: dict[str, Any]) -> str:
    return str(ref.get("type") or ref["reference"].split("/")[0])


def check_r4_rules(resource: dict[str, Any]) -> None:
    kind = resource["resourceType"]
    if kind == "DiagnosticReport":
        assert resource["status"] in DR_STATUS
    if kind == "Observation":
        assert resource["status"] in OBS_STATUS
    if kind == "Device":
        assert {n["type"] for n in resource["deviceName"]} <= DEVICE_NAME_TYPES
    if kind == "Provenance":
        for agent in resource["agent"]:
            assert agent["type"]["coding"][0]["code"] in PARTICIPANT_TYPES
            assert _ref_type(agent["who"]) in {"Practitioner", "Device"}
        assert {e["role"] for e in resource.get("entity", [])} <= {
            "derivation", "revision", "quotation", "source", "removal",
        }  # fmt: skip
    for (owner, element), allowed in REFERENCE_TARGETS.items():
        if kind != owner or element not in resource:
            continue
        value = resource[element]
        for ref in value if isinstance(value, list) else [value]:
            assert _ref_type(ref) in allowed, (kind, element, ref)
    for label in resource.get("meta", {}).get("security", []):
        assert label == {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "AIAST",
            "display": "Artificial Intelligence asserted",
        }


def security_codes(resource: dict[str, Any]) -> set[str]:
    return {s["code"] for s in resource.get("meta", {}).get("security", [])}


def by_id(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{r['resourceType']}/{r['id']}": r for r in resources}


@pytest.mark.parametrize("make", [ai_only, signed, human_only, lambda: signed(state="amended")])
def test_every_resource_parses_as_fhir(make: Any) -> None:
    resources = fr.study_resources(make())
    assert resources
    for resource in resources:
        parse(resource)
        check_r4_rules(resource)
    ids = [(r["resourceType"], r["id"]) for r in resources]
    assert len(ids) == len(set(ids))


def test_bundles_outcome_and_capability_statement_parse() -> None:
    resources = fr.study_resources(signed())
    parse(
        fb.searchset(
            resources[:2],
            base_url="https://lods.example.org/fhir",
            total=2,
            self_url="https://lods.example.org/fhir/DiagnosticReport?patient=1",
        )
    )
    parse(fb.transaction(resources))
    parse(fb.operation_outcome("not-found", "no such report"))
    statement = fb.capability_statement(
        software_version="0.1.0", base_url="https://lods.example.org/fhir", now=SIGNED
    )
    parse(statement)
    assert statement["fhirVersion"] == "4.0.1"


def test_ai_only_report_is_preliminary_and_labelled() -> None:
    resources = by_id(fr.study_resources(ai_only()))
    report = resources["DiagnosticReport/ai-5"]
    assert report["status"] == "preliminary"
    assert "AIAST" in security_codes(report)
    assert report["meta"]["security"][0]["system"] == (
        "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
    )
    assert "not verified by a clinician" in report["conclusion"]
    assert report["result"] == [
        {"reference": "Observation/ai-result-5"},
        {"reference": "Observation/ai-finding-11"},
        {"reference": "Observation/ai-finding-12"},
    ]
    assert report["subject"]["identifier"] == {
        "system": "urn:oid:1.2.208.176.1.2",
        "value": "0101501234",
    }
    assert report["imagingStudy"][0]["identifier"]["value"] == "urn:oid:" + STUDY.study_uid
    for key in ("Observation/ai-result-5", "Observation/ai-finding-11", "Provenance/ai-5"):
        assert "AIAST" in security_codes(resources[key]), key
    assert not any(r["resourceType"] == "Practitioner" for r in resources.values())


def test_ai_finding_observation_has_score_certainty_body_site_and_region() -> None:
    obs = by_id(fr.study_resources(ai_only()))["Observation/ai-finding-11"]
    assert obs["status"] == "preliminary"
    assert obs["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "125605004",
        "display": "Fracture of bone",
    }
    assert obs["valueQuantity"]["value"] == 0.91
    components = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
    assert components["ai-certainty"]["valueCodeableConcept"]["coding"][0]["code"] == "sure"
    assert components["111030"]["valueString"] == "SOP Instance 1.2.3.4.5: [10, 20, 110.5, 220]"
    assert obs["bodySite"] == {"text": "WRIST"}
    assert obs["device"]["reference"] == "Device/solution-7"
    doubtful = by_id(fr.study_resources(ai_only()))["Observation/ai-finding-12"]
    assert "bodySite" not in doubtful
    assert [c["code"]["coding"][0]["code"] for c in doubtful["component"]] == ["ai-certainty"]


def test_device_names_the_solution_and_version() -> None:
    device = parse(fr.device(SOLUTION))
    assert device.version[0].value == "2.1.0"
    assert {n.name for n in device.deviceName} == {"Fracture AI", "org.example.fracture"}
    assert device.manufacturer == "Example Medical"


def test_ai_provenance_names_the_solution_device_and_version() -> None:
    prov = by_id(fr.study_resources(ai_only()))["Provenance/ai-5"]
    [agent] = prov["agent"]
    assert agent["who"] == {"reference": "Device/solution-7", "display": "Fracture AI 2.1.0"}
    assert agent["type"]["coding"][0]["code"] == "author"
    assert {"reference": "DiagnosticReport/ai-5"} in prov["target"]


def test_signed_report_is_final_with_signer_decisions_and_provenance() -> None:
    resources = by_id(fr.study_resources(signed()))
    report = resources["DiagnosticReport/report-9"]
    assert report["status"] == "final"
    assert report["meta"]["versionId"] == "1"
    assert report["resultsInterpreter"] == [
        {"reference": "Practitioner/user-3", "display": "Rita Radiolog"}
    ]
    # AI output was in view: the report is AI-influenced and says so.
    assert "AIAST" in security_codes(report)
    assert base64.b64decode(report["presentedForm"][0]["data"]).decode().startswith("Distal")
    assert report["conclusionCode"][0]["coding"][0]["code"] == "positive"
    assert {"value": "ACC42"}.items() <= report["identifier"][1].items()
    # The AI report stays preliminary beside it.
    assert resources["DiagnosticReport/ai-5"]["status"] == "preliminary"

    agree = resources["Observation/decision-21"]
    assert agree["status"] == "final"
    assert agree["valueCodeableConcept"]["coding"][0]["code"] == "agree"
    assert agree["derivedFrom"][0] == {"reference": "Observation/ai-finding-11"}
    assert agree["performer"][0]["reference"] == "Practitioner/user-3"
    assert "AIAST" in security_codes(agree)
    disagree = resources["Observation/decision-22"]
    assert disagree["note"] == [{"text": "Nutrient canal"}]
    added = resources["Observation/decision-23"]
    assert added["code"]["coding"][0]["code"] == "263204007"
    assert "AIAST" not in security_codes(added)
    assert "frame 1" in added["component"][0]["valueString"]

    prov = resources["Provenance/report-9-v1"]
    agents = {(a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in prov["agent"]}
    assert ("author", "Practitioner/user-3") in agents
    assert ("verifier", "Practitioner/user-3") in agents
    assert ("informant", "Device/solution-7") in agents
    assert prov["target"][0] == {"reference": "DiagnosticReport/report-9/_history/1"}
    assert {"role": "derivation", "what": {"reference": "DiagnosticReport/ai-5"}} in prov["entity"]
    practitioner = parse(resources["Practitioner/user-3"])
    assert practitioner.name[0].text == "Rita Radiolog"


def test_amended_report_is_amended_with_a_provenance_per_signed_version() -> None:
    resources = by_id(fr.study_resources(signed(state="amended")))
    report = resources["DiagnosticReport/report-9"]
    assert report["status"] == "amended"
    assert report["meta"]["versionId"] == "2"
    assert report["resultsInterpreter"][0]["reference"] == "Practitioner/user-4"
    assert resources["Observation/decision-21"]["status"] == "amended"
    first, second = resources["Provenance/report-9-v1"], resources["Provenance/report-9-v2"]
    assert first["activity"]["coding"][0]["code"] == "CREATE"
    assert second["activity"]["coding"][0]["code"] == "UPDATE"
    assert second["reason"] == [{"text": "Wrong side"}]
    assert ("verifier", "Practitioner/user-4") in {
        (a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in second["agent"]
    }
    assert {"Practitioner/user-3", "Practitioner/user-4"} <= set(resources)


def test_purely_human_report_carries_no_ai_label() -> None:
    resources = fr.study_resources(human_only())
    assert resources
    for resource in resources:
        assert "AIAST" not in security_codes(resource), resource["id"]
    report = by_id(resources)["DiagnosticReport/report-9"]
    assert report["status"] == "final"
    assert not any(r["resourceType"] == "Device" for r in resources)


def test_no_final_report_without_a_named_signer() -> None:
    full = signed()
    assert full.report is not None
    unsigned = dataclasses.replace(full.report, signer=None)
    with pytest.raises(ValueError, match="signer"):
        fr.report_diagnostic_report(dataclasses.replace(full, report=unsigned))
    draft = dataclasses.replace(full.report, state="draft")
    with pytest.raises(ValueError, match="draft"):
        fr.study_resources(dataclasses.replace(full, report=draft))


def test_transaction_updates_by_identifier_and_links_entries_by_uuid() -> None:
    resources = fr.study_resources(signed())
    bundle = fb.transaction(resources)
    entries = bundle["entry"]
    assert len(entries) == len(resources)
    urls = {e["fullUrl"] for e in entries}
    assert all(u.startswith("urn:uuid:") for u in urls) and len(urls) == len(entries)
    report = next(
        e
        for e in entries
        if e["resource"]["resourceType"] == "DiagnosticReport"
        and e["resource"]["status"] == "final"
    )
    assert report["request"]["method"] == "PUT"
    assert report["request"]["url"].startswith("DiagnosticReport?identifier=urn%3Alods%3Areport")
    assert "id" not in report["resource"]
    # Internal references point at the entries; the patient stays a logical reference.
    assert all(r["reference"] in urls for r in report["resource"]["result"])
    assert report["resource"]["resultsInterpreter"][0]["reference"] in urls
    assert "reference" not in report["resource"]["subject"]
    provenance = next(e for e in entries if e["resource"]["resourceType"] == "Provenance")
    assert provenance["request"]["method"] == "POST"
    assert provenance["request"]["ifNoneExist"].startswith("_tag=")
    # The same input gives the same bundle: a resend updates rather than duplicates.
    assert fb.transaction(fr.study_resources(signed())) == bundle


def test_ids_parse_back() -> None:
    assert fr.parse_id("ai-finding-12", "ai-finding-") == 12
    assert fr.parse_id("ai-12", "ai-finding-") is None
    assert fr.parse_id("ai-x", "ai-") is None
    assert fr.parse_report_provenance_id("report-9-v2") == (9, 2)
    assert fr.parse_report_provenance_id("report-9") is None


def test_patient_identifier_systems() -> None:
    assert fr.patient_identifier_system("") == "urn:lods:patient-id"
    assert fr.patient_identifier_system("1.2.208.176.1.2") == "urn:oid:1.2.208.176.1.2"
    assert fr.patient_identifier_system("urn:oid:1.2.3") == "urn:oid:1.2.3"
    assert fr.patient_identifier_system("AUH RIS") == "urn:lods:patient-id:AUH%20RIS"
