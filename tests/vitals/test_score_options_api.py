"""Per-patient scoring options over the JSON API (nurses and physicians, with a reason,
audited with the patient) and the encounter's scores; the service rules behind them."""

from __future__ import annotations

from pathlib import Path

import pytest
from ews_support import NORMAL, NOW, Ward, admit, deploy, make_ward, news2_package, store
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from lods.vitals import options
from lods.vitals.options import OptionError, OptionNotFound
from support import auth, csrf, login

SCALE2_REASON = "Hypercapnic respiratory failure; documented target SpO2 88–92 %"


@pytest.fixture
def ward(app_runtime: Runtime, tmp_path: Path) -> Ward:
    made = make_ward(app_runtime)
    deploy(app_runtime, news2_package(tmp_path))
    return made


def url(patient: int) -> str:
    return f"/api/patients/{patient}/score-options"


def test_a_physician_sets_scale_2_and_it_is_scored(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    encounter, patient = admit(app_runtime, ward, "1", patient_id="P1")
    headers = auth(app_runtime, "peter")
    body = {"key": "spo2_scale", "value": 2, "reason": SCALE2_REASON}
    response = client.post(url(patient), json=body, headers=headers)
    assert response.status_code == 201, response.text
    option = response.json()
    assert (option["key"], option["value"], option["set_by"]) == ("spo2_scale", 2, "peter")
    assert option["in_force"] is True
    listed = client.get(url(patient), headers=auth(app_runtime, "nina")).json()
    assert listed["in_force"] == {"spo2_scale": 2}
    [score] = store(app_runtime, encounter, {**NORMAL, "spo2": 90}, at=NOW)
    assert score.parts["spo2"]["variant"] == "scale2" and score.parts["spo2"]["points"] == 0
    scores = client.get(f"/api/encounters/{encounter}/scores", headers=headers).json()
    assert [s["id"] for s in scores] == [score.id]
    assert scores[0]["fhir"] == f"/fhir/Observation/ews-{score.id}"
    assert scores[0]["options"] == {"spo2_scale": 2}


def test_setting_again_replaces_and_revoking_keeps_the_history(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    _, patient = admit(app_runtime, ward, "1", patient_id="P1")
    headers = auth(app_runtime, "nina")
    first = client.post(
        url(patient), json={"key": "pregnant", "value": True, "reason": "20 weeks"}, headers=headers
    ).json()
    second = client.post(
        url(patient),
        json={"key": "pregnant", "value": False, "reason": "not pregnant after all"},
        headers=headers,
    ).json()
    listed = client.get(url(patient), headers=headers).json()
    assert listed["in_force"] == {"pregnant": False}
    assert [(o["id"], o["in_force"]) for o in listed["options"]] == [
        (second["id"], True),
        (first["id"], False),
    ]
    revoked = client.delete(f"{url(patient)}/{second['id']}", headers=headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_by"] == "nina"
    assert client.get(url(patient), headers=headers).json()["in_force"] == {}
    again = client.delete(f"{url(patient)}/{second['id']}", headers=headers)
    assert again.status_code == 409
    elsewhere = client.delete(f"{url(patient + 1)}/{first['id']}", headers=headers)
    assert elsewhere.status_code == 404
    with app_runtime.sessions() as db:
        actions = [
            (e.action, e.patient_id)
            for e in db.scalars(select(AuditEvent).where(AuditEvent.action.like("vitals.option.%")))
        ]
    assert actions == [
        ("vitals.option.set", "P1"),
        ("vitals.option.set", "P1"),
        ("vitals.option.list", "P1"),
        ("vitals.option.revoke", "P1"),
        ("vitals.option.list", "P1"),
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"key": "spo2_scale", "value": 2, "reason": "COPD"}, "a reason is required"),
        ({"key": "spo2_scale", "value": 2, "reason": "COPD patient, retains CO2"}, "88–92"),
        ({"key": "spo2_scale", "value": 3, "reason": SCALE2_REASON}, "1 or 2"),
        ({"key": "pregnant", "value": "yes", "reason": "20 weeks"}, "true or false"),
        ({"key": "colour", "value": "red", "reason": "because I like it"}, "unknown option"),
        (
            {
                "key": "threshold:resp_rate",
                "value": {"bands": [{"points": 0, "ranges": [{"min": 10}]}]},
                "reason": "Athlete with a low resting rate",
            },
            "below 10 score nothing",
        ),
    ],
)
def test_refused_options_say_why(
    client: TestClient, app_runtime: Runtime, ward: Ward, body: dict[str, object], words: str
) -> None:
    _, patient = admit(app_runtime, ward, "1", patient_id="P1")
    response = client.post(url(patient), json=body, headers=auth(app_runtime, "peter"))
    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_an_adjusted_threshold_is_accepted_with_bands(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    _, patient = admit(app_runtime, ward, "1", patient_id="P1")
    bands = [
        {"points": 3, "ranges": [{"max": 35.0}]},
        {"points": 0, "ranges": [{"min": 35.1}]},
    ]
    response = client.post(
        url(patient),
        json={
            "key": "threshold:temperature",
            "value": {"bands": bands},
            "reason": "Hypothermia protocol",
        },
        headers=auth(app_runtime, "peter"),
    )
    assert response.status_code == 201
    with app_runtime.sessions() as db:
        in_force = options.options_in_force(db, patient_fk=patient)
    value = in_force["threshold:temperature"]
    assert value["bands"] == bands and value["set_by"] == "peter"
    assert value["reason"] == "Hypothermia protocol"


def test_only_nurses_and_physicians(client: TestClient, app_runtime: Runtime, ward: Ward) -> None:
    encounter, patient = admit(app_runtime, ward, "1", patient_id="P1")
    body = {"key": "pregnant", "value": True, "reason": "20 weeks"}
    assert client.get(url(patient)).status_code == 401
    for user in ("rita", "otto", "ada", "aud"):
        headers = auth(app_runtime, user)
        assert client.get(url(patient), headers=headers).status_code == 403
        assert client.post(url(patient), json=body, headers=headers).status_code == 403
        scores = client.get(f"/api/encounters/{encounter}/scores", headers=headers)
        assert scores.status_code == 403
    assert client.get(url(999), headers=auth(app_runtime, "nina")).status_code == 404


def test_a_browser_session_needs_the_csrf_token(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    _, patient = admit(app_runtime, ward, "1", patient_id="P1")
    login(client, "nina")
    body = {"key": "pregnant", "value": True, "reason": "20 weeks"}
    assert client.post(url(patient), json=body).status_code == 403
    ok = client.post(url(patient), json=body, headers={"X-CSRF-Token": csrf(client)})
    assert ok.status_code == 201


def test_the_service_refuses_unknown_rows(app_runtime: Runtime, ward: Ward) -> None:
    _, patient = admit(app_runtime, ward, "1", patient_id="P1")
    with app_runtime.sessions() as db, db.begin():
        with pytest.raises(OptionNotFound):
            options.revoke_option(db, option_id=12345, actor="nina")
        with pytest.raises(OptionNotFound):
            options.set_option(
                db, patient_fk=9999, key="pregnant", value=True, reason="20 weeks", actor="nina"
            )
        with pytest.raises(OptionError):
            options.set_option(
                db, patient_fk=patient, key="threshold:", value={}, reason="no name", actor="nina"
            )
        scale1 = options.set_option(
            db,
            patient_fk=patient,
            key="spo2_scale",
            value="1",
            reason="back to scale 1",
            actor="peter",
        )
        assert scale1.value == 1
        assert options.options_in_force(db, patient_fk=patient) == {"spo2_scale": 1}
