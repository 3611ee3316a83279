"""What happened after a fall alarm — fall (with injury grade), near fall, false alarm —
kept as one incident per alarm; falls entered by hand; and the falls JSON API with its
roles (nurses and physicians enter; figures also for AI owners and admins)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from falls.falls_support import (
    MORSE_HIGH,
    T0,
    Ward,
    admit,
    deploy_falls,
    event,
    make_ward,
    steps,
)
from lods.alerts import service as alerts
from lods.alerts.models import Alert
from lods.audit.models import AuditEvent
from lods.falls import service as falls
from lods.falls.models import FallIncident
from lods.runtime import Runtime
from lods.sensors.service import ingest
from support import auth, csrf, login


@pytest.fixture
def ward(runtime: Runtime) -> Ward:
    ward = make_ward(runtime)
    deploy_falls(runtime, ward)
    return ward


def _alarm(rt: Runtime, ward: Ward, bed: str = "B1", kind: str = "fall_detected") -> int:
    with rt.sessions() as db, db.begin():
        row = ingest(db, event=event(ward, bed, kind), source="http", settings=rt.settings, now=T0)
        assert row.event.alert_fk is not None, row.event.outcome
        return row.event.alert_fk


def test_a_confirmed_fall_is_kept_with_its_injury_grade(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit(db, ward, "B1", patient_id="MRN-9")
    alert_id = _alarm(runtime, ward)
    later = T0 + timedelta(seconds=95)
    with runtime.sessions() as db, db.begin():
        incident = falls.resolve_fall_alarm(
            db,
            alert_id=alert_id,
            actor="nina",
            outcome="fall",
            injury_grade="minor",
            note="found beside the bed, bruised hip",
            source="10.1.1.1",
            now=later,
        )
        assert incident is not None
    with runtime.sessions() as db:
        row = db.scalars(select(FallIncident)).one()
        assert (row.source, row.outcome, row.injury_grade) == ("alarm", "fall", "minor")
        assert (row.ward_fk, row.bed_fk, row.alert_fk) == (ward.id, ward.beds["B1"], alert_id)
        assert (row.patient_fk, row.encounter_fk) == (encounter.patient_fk, encounter.id)
        assert row.occurred_at == T0 and row.recorded_by == "nina"
        alert = db.get(Alert, alert_id)
        assert alert is not None
        assert (alert.state, alert.outcome, alert.acknowledged_by) == ("resolved", "fall", "nina")
        assert alert.acknowledged_at == later == alert.resolved_at
        assert (
            alert.resolution == "Fall confirmed (injury: minor): found beside the bed, bruised hip"
        )
        assert steps(db, alert_id)[-2:] == ["acknowledged", "resolved"]
        audit = db.scalars(select(AuditEvent).where(AuditEvent.action == "falls.incident")).one()
        assert (audit.actor, audit.patient_id) == ("nina", "MRN-9")


@pytest.mark.parametrize("outcome", ["near_fall", "false_alarm"])
def test_near_falls_and_false_alarms_are_kept_too(
    runtime: Runtime, ward: Ward, outcome: str
) -> None:
    alert_id = _alarm(runtime, ward)
    with runtime.sessions() as db, db.begin():
        alerts.acknowledge(db, alert_id=alert_id, actor="peter", now=T0 + timedelta(seconds=30))
        incident = falls.resolve_fall_alarm(db, alert_id=alert_id, actor="nina", outcome=outcome)
        assert incident is not None and incident.outcome == outcome
        assert incident.injury_grade is None
        alert = db.get(Alert, alert_id)
        assert alert is not None and alert.acknowledged_by == "peter"


@pytest.mark.parametrize(
    ("outcome", "grade", "message"),
    [
        ("fall", None, "needs an injury grade"),
        ("fall", "catastrophic", "needs an injury grade"),
        ("near_fall", "minor", "only for a confirmed fall"),
        ("false_alarm", "none", "only for a confirmed fall"),
        ("tripped", None, "outcome must be one of"),
        ("attended", None, "outcome must be one of"),
    ],
)
def test_impossible_outcomes_are_refused(
    runtime: Runtime, ward: Ward, outcome: str, grade: str | None, message: str
) -> None:
    alert_id = _alarm(runtime, ward)
    with runtime.sessions() as db, db.begin():
        with pytest.raises(falls.FallsError, match=message):
            falls.resolve_fall_alarm(
                db, alert_id=alert_id, actor="nina", outcome=outcome, injury_grade=grade
            )
        alert = db.get(Alert, alert_id)
        assert alert is not None and alert.state == "notified"


def test_an_alarm_is_resolved_once(runtime: Runtime, ward: Ward) -> None:
    alert_id = _alarm(runtime, ward)
    with runtime.sessions() as db, db.begin():
        falls.resolve_fall_alarm(db, alert_id=alert_id, actor="nina", outcome="false_alarm")
    with runtime.sessions() as db, db.begin():
        with pytest.raises(alerts.IllegalAlertTransition):
            falls.resolve_fall_alarm(
                db, alert_id=alert_id, actor="peter", outcome="fall", injury_grade="none"
            )
        with pytest.raises(falls.FallsNotFound):
            falls.resolve_fall_alarm(db, alert_id=9999, actor="nina", outcome="false_alarm")
    with runtime.sessions() as db:
        assert len(db.scalars(select(FallIncident)).all()) == 1


def test_a_bed_exit_alert_may_be_attended_without_an_incident(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit(db, ward, "B1")
        falls.assess_morse(db, encounter_id=encounter.id, items=MORSE_HIGH, actor="nina")
    alert_id = _alarm(runtime, ward, kind="bed_exit")
    with runtime.sessions() as db, db.begin():
        assert (
            falls.resolve_fall_alarm(db, alert_id=alert_id, actor="nina", outcome="attended")
            is None
        )
        alert = db.get(Alert, alert_id)
        assert alert is not None and (alert.state, alert.outcome) == ("resolved", "attended")
        assert db.scalars(select(FallIncident)).all() == []


def test_a_fall_no_alarm_announced_is_entered_by_hand(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        earlier = admit(db, ward, "B2", at=T0 - timedelta(days=10), until=T0 - timedelta(days=3))
        admit(db, ward, "B2", at=T0 - timedelta(days=2))
    when = T0 - timedelta(days=5)
    with runtime.sessions() as db, db.begin():
        incident = falls.record_incident(
            db,
            ward_id=ward.id,
            bed_id=ward.beds["B2"],
            occurred_at=when,
            outcome="fall",
            injury_grade="moderate",
            note="fell in the bathroom at night",
            actor="peter",
            now=T0,
        )
        # Whoever lay in the bed then (ADT), not who lies there now.
        assert (incident.encounter_fk, incident.patient_fk) == (earlier.id, earlier.patient_fk)
        assert (incident.source, incident.alert_fk, incident.occurred_at) == ("manual", None, when)
        no_bed = falls.record_incident(
            db,
            ward_id=ward.id,
            bed_id=None,
            occurred_at=when,
            outcome="near_fall",
            injury_grade=None,
            note="",
            actor="nina",
            now=T0,
        )
        assert no_bed.patient_fk is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"outcome": "false_alarm", "injury_grade": None}, falls.FallsError),
        ({"injury_grade": None}, falls.FallsError),
        ({"occurred_at": T0 + timedelta(hours=1)}, falls.FallsError),
        ({"ward_id": 999}, falls.FallsNotFound),
        ({"bed_id": 999}, falls.FallsNotFound),
        ({"note": "x" * 4001}, falls.FallsError),
    ],
)
def test_bad_incident_reports_are_refused(
    runtime: Runtime, ward: Ward, change: dict[str, Any], error: type[Exception]
) -> None:
    values: dict[str, Any] = {
        "ward_id": ward.id,
        "bed_id": ward.beds["B1"],
        "occurred_at": T0 - timedelta(hours=1),
        "outcome": "fall",
        "injury_grade": "none",
        "note": "",
    }
    values.update(change)
    with runtime.sessions() as db, db.begin(), pytest.raises(error):
        falls.record_incident(db, actor="nina", now=T0, **values)


# --- the JSON API ------------------------------------------------------------------------------


@pytest.fixture
def api_ward(app_runtime: Runtime) -> Ward:
    ward = make_ward(app_runtime)
    deploy_falls(app_runtime, ward)
    return ward


def test_the_falls_api_for_nurses(client: TestClient, app_runtime: Runtime, api_ward: Ward) -> None:
    with app_runtime.sessions() as db, db.begin():
        encounter_id = admit(db, api_ward, "B1").id
    nina = auth(app_runtime, "nina")
    morse = client.post(
        f"/api/encounters/{encounter_id}/morse", json={"items": MORSE_HIGH}, headers=nina
    )
    assert morse.status_code == 201, morse.text
    assert (morse.json()["total"], morse.json()["level"]) == (85, "high")
    bad = client.post(
        f"/api/encounters/{encounter_id}/morse", json={"items": {"gait": "x"}}, headers=nina
    )
    assert bad.status_code == 422 and "history_of_falling is required" in bad.json()["detail"]
    assert (
        client.post(
            "/api/encounters/999/morse", json={"items": MORSE_HIGH}, headers=nina
        ).status_code
        == 404
    )
    setting = client.post(
        f"/api/encounters/{encounter_id}/bed-exit-alerts", json={"on": False}, headers=nina
    )
    assert setting.status_code == 200
    assert (setting.json()["bed_exit_alerts"], setting.json()["bed_exit_set_by"]) == (
        False,
        "nina",
    )
    risk = client.get(f"/api/encounters/{encounter_id}/fall-risk", headers=nina).json()
    assert risk["latest"]["total"] == 85 and risk["bed_exit_alerts"] is False

    with app_runtime.sessions() as db, db.begin():
        alert_id = ingest(
            db, event=event(api_ward, "B1"), source="http", settings=app_runtime.settings
        ).event.alert_fk
    missing_grade = client.post(
        f"/api/alerts/{alert_id}/fall-outcome", json={"outcome": "fall"}, headers=nina
    )
    assert missing_grade.status_code == 422
    done = client.post(
        f"/api/alerts/{alert_id}/fall-outcome",
        json={"outcome": "fall", "injury_grade": "none", "note": "sat on the floor"},
        headers=nina,
    )
    assert done.status_code == 200, done.text
    assert (done.json()["state"], done.json()["outcome"]) == ("resolved", "fall")
    assert done.json()["incident"]["source"] == "alarm"
    twice = client.post(
        f"/api/alerts/{alert_id}/fall-outcome", json={"outcome": "false_alarm"}, headers=nina
    )
    assert twice.status_code == 409

    incident = client.post(
        f"/api/wards/{api_ward.id}/incidents",
        json={
            "bed_id": api_ward.beds["B1"],
            "occurred_at": "2026-11-28T03:40:00+01:00",
            "outcome": "near_fall",
            "note": "caught by a nurse",
        },
        headers=auth(app_runtime, "peter"),
    )
    assert incident.status_code == 201, incident.text
    assert incident.json()["source"] == "manual"
    naive = client.post(
        f"/api/wards/{api_ward.id}/incidents",
        json={"occurred_at": "2026-11-28T03:40:00", "outcome": "near_fall"},
        headers=nina,
    )
    assert naive.status_code == 422 and "zone" in naive.json()["detail"]


def test_falls_entries_are_for_nurses_and_physicians_only(
    client: TestClient, app_runtime: Runtime, api_ward: Ward
) -> None:
    with app_runtime.sessions() as db, db.begin():
        encounter_id = admit(db, api_ward, "B1").id
    for user in ("otto", "ada", "rita", "aud"):
        headers = auth(app_runtime, user)
        assert (
            client.post(
                f"/api/encounters/{encounter_id}/morse",
                json={"items": MORSE_HIGH},
                headers=headers,
            ).status_code
            == 403
        )
        assert (
            client.get(f"/api/encounters/{encounter_id}/fall-risk", headers=headers).status_code
            == 403
        )
    assert (
        client.post(f"/api/encounters/{encounter_id}/morse", json={"items": MORSE_HIGH}).status_code
        == 401
    )


def test_a_browser_post_needs_the_csrf_token(
    client: TestClient, app_runtime: Runtime, api_ward: Ward
) -> None:
    with app_runtime.sessions() as db, db.begin():
        encounter_id = admit(db, api_ward, "B1").id
    login(client, "nina")
    url = f"/api/encounters/{encounter_id}/bed-exit-alerts"
    assert client.post(url, json={"on": True}).status_code == 403
    ok = client.post(url, json={"on": True}, headers={"X-CSRF-Token": csrf(client)})
    assert ok.status_code == 200 and ok.json()["bed_exit_alerts"] is True
