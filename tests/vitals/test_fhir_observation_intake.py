"""FHIR R4 vital signs in: POST /fhir/Observation (single values, the blood-pressure panel,
coded consciousness) and POST /fhir/Bundle (a transaction: all or nothing); who may post;
OperationOutcomes for what is not a reading. Answers parse as FHIR (fhir.resources R4B)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from sqlalchemy import func, select
from vitals_support import Ward, admit_patient, make_ward

from lods.audit.models import AuditEvent
from lods.auth.models import Role
from lods.runtime import Runtime
from lods.vitals.models import VitalObservation
from support import PASSWORD, auth, csrf, login

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
WHEN = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
SUBJECT = {"identifier": {"system": "urn:lods:patient-id:HOSP", "value": "P1"}}


def observation(code: str, value: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": SUBJECT,
        "effectiveDateTime": WHEN.isoformat(),
    }
    if value is not None:
        resource.update(value)
    resource.update(extra)
    return resource


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def bp_panel(sys: float, dia: float) -> dict[str, Any]:
    return observation(
        "85354-9",
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, **quantity(sys, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, **quantity(dia, "mm[Hg]")},
        ],
    )


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": "Observation"}} for r in resources
        ],
    }


@pytest.fixture
def ward(app_runtime: Runtime) -> Ward:
    from lods.auth.service import create_user

    with app_runtime.sessions() as db, db.begin():
        create_user(
            db, username="gateway", roles=[Role.INTEGRATION], password=PASSWORD, actor="test"
        )
        ward = make_ward(db)
        admit_patient(db, ward, "1", "P1", at=WHEN - timedelta(days=1))
        return ward


def post(client: TestClient, rt: Runtime, path: str, body: Any, user: str = "gateway") -> Any:
    return client.post(path, json=body, headers={**auth(rt, user), "Content-Type": FHIR_JSON})


def stored(rt: Runtime) -> list[VitalObservation]:
    with rt.sessions() as db, db.begin():
        return list(db.scalars(select(VitalObservation).order_by(VitalObservation.id)))


def test_one_observation_is_stored_and_answered_201(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    response = post(
        client, app_runtime, "/fhir/Observation", observation("9279-1", quantity(18, "/min"))
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    Observation.model_validate(body)
    rows = stored(app_runtime)
    assert [(r.parameter, r.value, r.unit, r.source, r.entered_by) for r in rows] == [
        ("resp_rate", 18.0, "/min", "fhir", "gateway")
    ]
    assert rows[0].bed_fk == ward.beds["1"] and rows[0].observed_at == WHEN
    assert body["id"] == f"vs-{rows[0].id}"
    assert response.headers["location"].endswith(f"/fhir/Observation/vs-{rows[0].id}")
    assert body["valueQuantity"]["code"] == "/min"
    with app_runtime.sessions() as db, db.begin():
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "fhir.create"))
        assert event is not None and event.patient_id == "P1" and event.actor == "gateway"


def test_units_convert_and_spo2_carries_both_loinc_codes(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    temp = post(
        client, app_runtime, "/fhir/Observation", observation("8310-5", quantity(98.6, "[degF]"))
    )
    assert temp.status_code == 201 and temp.json()["valueQuantity"]["code"] == "Cel"
    assert temp.json()["valueQuantity"]["value"] == pytest.approx(37.0)
    spo2 = post(client, app_runtime, "/fhir/Observation", observation("2708-6", quantity(95, "%")))
    assert spo2.status_code == 201
    assert {c["code"] for c in spo2.json()["code"]["coding"]} == {"59408-5", "2708-6"}


def test_the_blood_pressure_panel_keeps_a_row_per_component(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    response = post(client, app_runtime, "/fhir/Observation", bp_panel(128, 76), user="nina")
    assert response.status_code == 201, response.text
    body = response.json()
    Observation.model_validate(body)
    assert body["code"]["coding"][0]["code"] == "85354-9"
    assert [c["valueQuantity"]["value"] for c in body["component"]] == [128, 76]
    assert [(r.parameter, r.value, r.entered_by) for r in stored(app_runtime)] == [
        ("bp_sys", 128.0, "nina"),
        ("bp_dia", 76.0, "nina"),
    ]


def test_consciousness_is_a_coded_value(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    value = {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA17108-4"}]}}
    response = post(client, app_runtime, "/fhir/Observation", observation("67775-7", value))
    assert response.status_code == 201, response.text
    assert response.json()["valueCodeableConcept"]["text"] == "V"
    assert [(r.parameter, r.value_text) for r in stored(app_runtime)] == [("consciousness", "V")]


def test_a_patient_reference_works_too(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    resource = observation("8867-4", quantity(72, "/min"), subject={"reference": "Patient/P1"})
    assert post(client, app_runtime, "/fhir/Observation", resource).status_code == 201


def test_a_transaction_bundle_is_all_or_nothing(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    good = [observation("9279-1", quantity(18, "/min")), bp_panel(120, 80)]
    bad = observation("59408-5", quantity(140, "%"))
    refused = post(client, app_runtime, "/fhir/Bundle", bundle(*good, bad))
    assert refused.status_code == 422
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"].startswith("entry[2]:")
    assert stored(app_runtime) == []
    response = post(client, app_runtime, "/fhir/Bundle", bundle(*good))
    assert response.status_code == 200, response.text
    answer = response.json()
    Bundle.model_validate(answer)
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 2
    assert [r.parameter for r in stored(app_runtime)] == ["resp_rate", "bp_sys", "bp_dia"]


def test_posting_needs_a_token_and_the_right_role(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    resource = observation("9279-1", quantity(18, "/min"))
    anonymous = client.post("/fhir/Observation", json=resource, headers={"Content-Type": FHIR_JSON})
    assert anonymous.status_code == 401
    assert anonymous.json()["resourceType"] == "OperationOutcome"
    for user in ("aud", "rita", "otto"):
        forbidden = post(client, app_runtime, "/fhir/Observation", resource, user=user)
        assert forbidden.status_code == 403, user
        assert forbidden.json()["resourceType"] == "OperationOutcome"
    assert (
        post(client, app_runtime, "/fhir/Bundle", bundle(resource), user="aud").status_code == 403
    )
    assert stored(app_runtime) == []


def test_a_login_session_needs_the_csrf_header(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    login(client, "peter")
    resource = observation("9279-1", quantity(18, "/min"))
    headers = {"Content-Type": FHIR_JSON}
    assert client.post("/fhir/Observation", json=resource, headers=headers).status_code == 403
    headers["X-CSRF-Token"] = csrf(client)
    assert client.post("/fhir/Observation", json=resource, headers=headers).status_code == 201


@pytest.mark.parametrize(
    ("resource", "status", "issue"),
    [
        ({"resourceType": "Patient"}, 400, "structure"),
        (observation("9279-1", quantity(18, "/min"), effectiveDateTime=None), 400, "required"),
        (
            observation("9279-1", quantity(18, "/min"), effectiveDateTime="2026-11-29"),
            400,
            "required",
        ),
        (observation("9279-1", quantity(18, "/min"), status="entered-in-error"), 422, "value"),
        (observation("9279-1", quantity(18, "/min"), category=[]), 422, "value"),
        (observation("2339-0", quantity(5.5, "mmol/L")), 422, "code-invalid"),
        (observation("9279-1", quantity(500, "/min")), 422, "value"),
        (observation("9279-1", quantity(8388607, "/min")), 422, "value"),
        (observation("59408-5", quantity(97, "mm[Hg]")), 422, "value"),
        (observation("9279-1"), 400, "required"),
        (
            observation(
                "9279-1",
                quantity(18, "/min"),
                subject={"identifier": {"system": "urn:lods:patient-id:HOSP", "value": "P404"}},
            ),
            422,
            "not-found",
        ),
    ],
)
def test_what_is_not_a_reading_gets_an_operation_outcome(
    client: TestClient,
    app_runtime: Runtime,
    ward: Ward,
    resource: dict[str, Any],
    status: int,
    issue: str,
) -> None:
    response = post(client, app_runtime, "/fhir/Observation", resource)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == issue
    assert stored(app_runtime) == []


def test_the_body_must_be_fhir_json(client: TestClient, app_runtime: Runtime, ward: Ward) -> None:
    headers = auth(app_runtime, "gateway")
    not_json = client.post(
        "/fhir/Observation", content=b"{nope", headers={**headers, "Content-Type": FHIR_JSON}
    )
    assert not_json.status_code == 400
    form = client.post("/fhir/Observation", data={"a": "b"}, headers=headers)
    assert form.status_code == 415
    batch = post(client, app_runtime, "/fhir/Bundle", {**bundle(), "type": "batch"})
    assert batch.status_code == 400
    with app_runtime.sessions() as db, db.begin():
        assert db.scalar(select(func.count()).select_from(VitalObservation)) == 0


def test_what_a_post_created_can_be_read_back_at_its_location(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    created = post(client, app_runtime, "/fhir/Observation", bp_panel(131, 79))
    assert created.status_code == 201, created.text
    path = created.headers["location"].removeprefix("http://testserver")
    assert client.get(path, headers=auth(app_runtime, "gateway")).status_code == 403
    read = client.get(path, headers={**auth(app_runtime, "nina"), "Accept": FHIR_JSON})
    assert read.status_code == 200, read.text
    Observation.model_validate(read.json())
    assert read.json() == created.json()
    second_component = stored(app_runtime)[1].id
    panel = client.get(
        f"/fhir/Observation/vs-{second_component}", headers=auth(app_runtime, "nina")
    )
    assert [c["valueQuantity"]["value"] for c in panel.json()["component"]] == [131, 79]
    unknown = client.get("/fhir/Observation/vs-999999", headers=auth(app_runtime, "nina"))
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    with app_runtime.sessions() as db, db.begin():
        reads = list(db.scalars(select(AuditEvent).where(AuditEvent.action == "fhir.read")))
        assert {(e.actor, e.patient_id) for e in reads} == {("nina", "P1")}
