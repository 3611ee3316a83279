"""An early-warning score as FHIR R4: Observation/ews-<id> (preliminary, SNOMED CT codes,
sub-score components, band interpretation, derived from the vital signs, no AI label)
and Provenance/ews-<id> naming the solution version as a Device. Parsed with the R4B
models of fhir.resources; read through the app with the readers' roles, audited."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from ews_support import NORMAL, NOW, Ward, admit, deploy, make_ward, news2_package, store
from fastapi.testclient import TestClient
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.fhir.values import PatientInfo
from lods.runtime import Runtime
from lods.solutions.models import SolutionVersion
from lods.vitals import fhir_scores
from lods.vitals.models import EarlyWarningScore
from lods.vitals.options import set_option
from support import auth, login

SNOMED = "http://snomed.info/sct"
MEDIUM = {**NORMAL, "resp_rate": 22, "spo2": 93, "heart_rate": 95}  # 2 + 2 + 1 = 5


@pytest.fixture
def ward(app_runtime: Runtime, tmp_path: Path) -> Ward:
    made = make_ward(app_runtime)
    deploy(app_runtime, news2_package(tmp_path))
    return made


def read(client: TestClient, rt: Runtime, path: str, user: str = "nina") -> dict[str, Any]:
    response = client.get(path, headers=auth(rt, user))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    data: dict[str, Any] = response.json()
    return data


def test_a_complete_score_as_an_observation(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    [score] = store(app_runtime, encounter, MEDIUM, at=NOW)
    data = read(client, app_runtime, f"/fhir/Observation/ews-{score.id}")
    Observation.model_validate(data)
    assert data["id"] == f"ews-{score.id}"
    assert data["status"] == "preliminary"
    assert "meta" not in data or "security" not in data["meta"]  # a rule engine, not AI
    assert data["code"]["coding"][0] == {
        "system": SNOMED,
        "code": "1104051000000101",
        "display": "Royal College of Physicians National Early Warning Score 2 (NEWS2) total score",
    }
    assert data["valueInteger"] == 5
    assert data["interpretation"][0]["coding"][0]["code"] == "medium"
    assert data["subject"]["identifier"]["value"] == "P1"
    assert data["effectiveDateTime"] == "2026-11-29T10:00:00Z"
    components = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in data["component"]}
    assert components == {
        "1104301000000104": 2,  # respiration rate
        "1104311000000102": 2,  # SpO2 scale 1
        "1104331000000105": 0,  # air or oxygen
        "1104341000000101": 0,  # systolic blood pressure
        "1104351000000103": 1,  # pulse
        "1104361000000100": 0,  # consciousness
        "1104371000000107": 0,  # temperature
    }
    assert all(c["code"]["coding"][0]["system"] == SNOMED for c in data["component"])
    observations = sorted(p["observation"] for p in score.parts.values())
    derived = [d["reference"].removeprefix("Observation/vs-") for d in data["derivedFrom"]]
    assert sorted(int(d) for d in derived) == observations


def test_scale_2_has_its_own_code(client: TestClient, app_runtime: Runtime, ward: Ward) -> None:
    encounter, patient = admit(app_runtime, ward, "1", patient_id="P1")
    with app_runtime.sessions() as db, db.begin():
        set_option(
            db,
            patient_fk=patient,
            key="spo2_scale",
            value=2,
            reason="Documented target SpO2 88-92 % (COPD)",
            actor="peter",
        )
    [score] = store(app_runtime, encounter, {**NORMAL, "spo2": 97, "oxygen": "oxygen"}, at=NOW)
    data = read(client, app_runtime, f"/fhir/Observation/ews-{score.id}", user="peter")
    codes = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in data["component"]}
    assert codes["1104321000000108"] == 3 and "1104311000000102" not in codes
    assert any("SpO2 scale 2" in n["text"] for n in data["note"])


def test_an_incomplete_score_claims_no_value(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    [score] = store(app_runtime, encounter, {"resp_rate": 18, "temperature": 37.0}, at=NOW)
    data = read(client, app_runtime, f"/fhir/Observation/ews-{score.id}")
    Observation.model_validate(data)
    assert "valueInteger" not in data and "interpretation" not in data
    assert data["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert "consciousness" in data["note"][0]["text"]


def test_provenance_names_the_solution_version(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    [score] = store(app_runtime, encounter, NORMAL, at=NOW + timedelta(minutes=1))
    data = read(client, app_runtime, f"/fhir/Provenance/ews-{score.id}", user="ada")
    Provenance.model_validate(data)
    assert data["target"] == [{"reference": f"Observation/ews-{score.id}"}]
    assert "meta" not in data
    [agent] = data["agent"]
    assert agent["type"]["coding"][0]["code"] == "author"
    assert agent["who"] == {
        "reference": f"Device/solution-{score.version_fk}",
        "display": "Lods NEWS2 (demonstration) 1.0.0",
    }
    assert len(data["entity"]) == 7 and data["entity"][0]["what"]["reference"].startswith(
        "Observation/vs-"
    )
    assert data["recorded"] == "2026-11-29T10:01:00Z"


def test_reads_are_audited_and_need_a_clinical_role(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    [score] = store(app_runtime, encounter, NORMAL, at=NOW)
    path = f"/fhir/Observation/ews-{score.id}"
    assert client.get(path).status_code == 401
    for user in ("rita", "otto", "aud"):
        denied = client.get(path, headers=auth(app_runtime, user))
        assert denied.status_code == 403
        assert denied.json()["resourceType"] == "OperationOutcome"
    login(client, "nina")
    assert client.get(path).status_code == 200
    with app_runtime.sessions() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "fhir.read")).all()
    assert [(e.actor, e.patient_id, e.object_ref) for e in events] == [
        ("nina", "P1", f"Observation/ews-{score.id}")
    ]


def test_unknown_and_shadow_scores_are_not_found(
    client: TestClient, app_runtime: Runtime, tmp_path: Path
) -> None:
    ward = make_ward(app_runtime)
    deploy(app_runtime, news2_package(tmp_path), mode="shadow")
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    [score] = store(app_runtime, encounter, NORMAL, at=NOW)
    headers = auth(app_runtime, "peter")
    for path in (
        f"/fhir/Observation/ews-{score.id}",
        f"/fhir/Provenance/ews-{score.id}",
        "/fhir/Observation/ews-999999",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 404
        assert response.json()["resourceType"] == "OperationOutcome"


def test_a_not_scored_patient_says_why(app_runtime: Runtime, ward: Ward) -> None:
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1", birth_date=date(2016, 1, 1))
    [score] = store(app_runtime, encounter, NORMAL, at=NOW)
    with app_runtime.sessions() as db:
        row = db.get(EarlyWarningScore, score.id)
        assert row is not None
        version = db.get(SolutionVersion, row.version_fk)
        assert version is not None
        data = fhir_scores.score_observation(
            row, patient=PatientInfo(patient_id="P1"), version=version
        )
    Observation.model_validate(data)
    assert data["dataAbsentReason"]["coding"][0]["code"] == "not-applicable"
    assert data["dataAbsentReason"]["text"] == "not scored: under 16"
