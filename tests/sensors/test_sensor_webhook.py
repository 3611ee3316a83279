"""The sensor webhook `POST /api/sensors/events`: an integration (or admin) token posts one
event or a batch and gets a result per event (stored / duplicate / rejected with
reasons); nobody else may post."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from falls.falls_support import Ward, alerts_of, deploy_falls, event, make_ward
from lods.auth.models import Role
from lods.auth.service import create_user
from lods.runtime import Runtime
from lods.sensors.models import SensorEvent
from support import PASSWORD, auth, csrf, login

URL = "/api/sensors/events"


@pytest.fixture
def ward(app_runtime: Runtime) -> Ward:
    ward = make_ward(app_runtime)
    deploy_falls(app_runtime, ward)
    with app_runtime.sessions() as db, db.begin():
        create_user(db, username="hub", roles=[Role.INTEGRATION], password=PASSWORD, actor="test")
    return ward


def _count(rt: Runtime) -> int:
    with rt.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(SensorEvent)) or 0)


def test_one_event_is_stored_and_raises_the_alarm(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    data = event(ward, "B1", "fall_detected", event_id="hub-1")
    response = client.post(URL, json=data, headers=auth(app_runtime, "hub"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["stored"], body["duplicate"], body["rejected"]) == (1, 0, 0)
    (result,) = body["results"]
    assert result["status"] == "stored" and result["event_id"] == "hub-1"
    assert result["outcome"] == "alarm" and result["alert_id"] is not None
    with app_runtime.sessions() as db:
        row = db.scalars(select(SensorEvent)).one()
        assert row.source == "http" and row.alert_fk == result["alert_id"]


def test_a_batch_gets_a_result_per_event_in_order(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    headers = auth(app_runtime, "hub")
    first = event(ward, "B1", "fall_detected", event_id="hub-a")
    client.post(URL, json=first, headers=headers)
    batch: list[Any] = [
        first,  # a retry of what was already stored
        event(ward, "B2", "bed_exit", event_id="hub-b"),
        {**event(ward, "B1", event_id="hub-c"), "video": "AAAA"},
        {**event(ward, "B1", event_id="hub-d"), "ward": "NOWHERE"},
        "not an event",
        event(ward, "B3", "back_in_bed", event_id="hub-e", room="R2"),
    ]
    response = client.post(URL, json=batch, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["stored"], body["duplicate"], body["rejected"]) == (2, 1, 3)
    results = body["results"]
    assert [r["status"] for r in results] == [
        "duplicate",
        "stored",
        "rejected",
        "rejected",
        "rejected",
        "stored",
    ]
    assert [r["index"] for r in results] == list(range(6))
    assert results[0]["outcome"] == "alarm"
    assert results[1]["outcome"] == "ignored:no patient admitted to the bed"
    assert results[2]["event_id"] == "hub-c"
    assert "no images or video" in results[2]["reasons"][0]
    assert "unknown ward 'NOWHERE'" in results[3]["reasons"][0]
    assert results[4]["reasons"] == ["an event must be a JSON object"]
    assert _count(app_runtime) == 3
    with app_runtime.sessions() as db:
        assert len(alerts_of(db, "fall.alarm")) == 1


def test_a_retried_request_is_harmless(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    headers = auth(app_runtime, "hub")
    batch = [event(ward, "B1", "person_on_floor"), event(ward, "B2", "fall_detected")]
    assert client.post(URL, json=batch, headers=headers).json()["stored"] == 2
    again = client.post(URL, json=batch, headers=headers).json()
    assert (again["stored"], again["duplicate"]) == (0, 2)
    assert _count(app_runtime) == 2


def test_admin_token_may_post_too(client: TestClient, app_runtime: Runtime, ward: Ward) -> None:
    response = client.post(URL, json=event(ward), headers=auth(app_runtime, "ada"))
    assert response.status_code == 200 and response.json()["stored"] == 1


@pytest.mark.parametrize("user", ["nina", "peter", "otto", "aud", "rita"])
def test_other_roles_are_refused(
    client: TestClient, app_runtime: Runtime, ward: Ward, user: str
) -> None:
    response = client.post(URL, json=event(ward), headers=auth(app_runtime, user))
    assert response.status_code == 403
    assert _count(app_runtime) == 0


def test_no_or_a_bad_token_is_refused(client: TestClient, app_runtime: Runtime, ward: Ward) -> None:
    assert client.post(URL, json=event(ward)).status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert client.post(URL, json=event(ward), headers=bad).status_code == 401
    assert _count(app_runtime) == 0


def test_a_browser_session_cannot_post_events(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    login(client, "ada")
    response = client.post(URL, json=event(ward), headers={"X-CSRF-Token": csrf(client)})
    assert response.status_code == 403
    assert "API token" in response.json()["detail"]


def test_empty_oversized_and_non_json_bodies(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    headers = auth(app_runtime, "hub")
    assert client.post(URL, json=[], headers=headers).status_code == 422
    too_many = [event(ward) for _ in range(501)]
    assert client.post(URL, json=too_many, headers=headers).status_code == 422
    garbage = client.post(
        URL, content=b"{nope", headers={**headers, "Content-Type": "application/json"}
    )
    assert garbage.status_code == 422
    assert _count(app_runtime) == 0
