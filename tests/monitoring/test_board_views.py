"""The ward board's pages and JSON API: who may open them, what they show, that each view
is audited once, and the alarm, risk, option, charting and incident actions with CSRF."""

from __future__ import annotations

import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from board_support import (
    Ward,
    add_readings,
    add_score,
    admit,
    alert_row,
    fall_alarm,
    make_ward,
)
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from lods.alerts.service import raise_alert
from lods.audit.models import AuditEvent
from lods.db import utcnow
from lods.falls.models import FallIncident, FallRiskAssessment
from lods.runtime import Runtime
from lods.vitals import scoring
from lods.vitals.models import Encounter, PatientOption, VitalObservation
from support import auth, csrf, login
from support_solutions import install_approve_deploy

NEWS2_PACKAGE = Path(__file__).resolve().parents[2] / "reference_solutions" / "news2" / "package"

HTML = {"Accept": "text/html"}


@pytest.fixture
def ward(app_runtime: Runtime) -> Ward:
    return make_ward(app_runtime)


def audits(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(
            db.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def embedded_board(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="ward-state">(.*?)</script>', page, re.S)
    assert found, "the page carries the board"
    return json.loads(found.group(1))


def test_the_board_is_for_nurses_and_physicians(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    path = f"/wards/{ward.id}"
    anonymous = client.get(path, headers=HTML, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    for user, code in [("rita", 403), ("aud", 403), ("otto", 403), ("ada", 403)]:
        assert client.get(path, headers=auth(app_runtime, user)).status_code == code, user
        assert (
            client.get(f"/api/wards/{ward.id}/board", headers=auth(app_runtime, user)).status_code
            == code
        )
    for user in ("nina", "peter"):
        assert client.get(path, headers=auth(app_runtime, user)).status_code == 200, user
    assert (
        client.get(f"/wards/{ward.id + 99}", headers=auth(app_runtime, "nina")).status_code == 404
    )


def test_the_list_of_wards_shows_counts_to_admins_too(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    admit(app_runtime, ward, "1", patient_id="P-1")
    fall_alarm(app_runtime, ward, "1")
    listed = client.get("/api/wards", headers=auth(app_runtime, "ada")).json()
    assert [(w["code"], w["beds"], w["occupied"], w["alerts"], w["urgent"]) for w in listed] == [
        ("GER1", 3, 1, 1, 1)
    ]
    assert client.get("/wards", headers=auth(app_runtime, "rita")).status_code == 403
    login(client, "ada")
    page = client.get("/wards")
    assert page.status_code == 200 and "Geriatri 1" in page.text
    assert f'href="/wards/{ward.id}"' not in page.text  # admins see counts, not boards
    assert "nav.wards" not in page.text and 'href="/wards" aria-current' not in page.text


def test_a_nurse_sees_the_board_with_its_tiles_and_the_view_is_audited(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    enc, _ = admit(app_runtime, ward, "2", patient_id="P-42", name="Hansen^Karen")
    now = utcnow()
    add_readings(app_runtime, enc, {"spo2": 93.0, "resp_rate": 22.0}, at=now)
    add_score(app_runtime, ward, enc, at=now, total=6, band="medium")
    login(client, "nina")
    page = client.get(f"/wards/{ward.id}?layout=station")
    assert page.status_code == 200
    assert 'class="ward layout-station"' in page.text and "/static/ward.js" in page.text
    assert 'href="/wards" aria-current="page"' in page.text  # the menu's ward link
    board = embedded_board(page.text)
    tile = next(t for t in board["beds"] if t["code"] == "2")
    assert tile["occupant"]["patient_id"] == "P-42"
    assert (tile["score"]["total"], tile["score"]["band"]) == (6, "medium")
    (event,) = audits(app_runtime, "ward.board.view")
    assert event.actor == "nina" and event.object_ref == f"ward:{ward.id}"
    assert json.loads(event.detail) == {
        "ward": "GER1",
        "site": "AUH",
        "via": "station",
        "patients": ["P-42"],
    }
    assert client.get("/static/ward.js").status_code == 200
    assert client.get("/static/ward.css").status_code == 200


def test_the_json_board_and_its_audit_once_per_window(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    admit(app_runtime, ward, "1", patient_id="P-1")
    alarm = fall_alarm(app_runtime, ward, "1")
    headers = auth(app_runtime, "peter")
    board = client.get(f"/api/wards/{ward.id}/board", headers=headers).json()
    assert set(board) == {"ward", "now", "beds", "ward_alerts", "counts"}
    assert set(board["beds"][0]) == {
        "id", "code", "room", "occupant", "score", "trend", "vitals", "alerts", "risk",
        "bed_exit", "options", "attention",
    }  # fmt: skip
    assert board["beds"][0]["alerts"][0]["id"] == alarm
    client.get(f"/api/wards/{ward.id}/board", headers=headers)
    reads = audits(app_runtime, "ward.board.read")
    assert len(reads) == 1 and reads[0].actor == "peter"
    assert json.loads(reads[0].detail)["patients"] == ["P-1"]


def test_acknowledge_and_resolve_a_fall_alarm_from_the_board(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    _, patient = admit(app_runtime, ward, "1", patient_id="P-1")
    alarm = fall_alarm(app_runtime, ward, "1", patient_fk=patient)
    login(client, "nina")
    client.get(f"/wards/{ward.id}")
    path = f"/wards/{ward.id}/alerts/{alarm}/acknowledge"
    assert client.post(path, data={"back": "station"}).status_code == 403  # no CSRF token
    done = client.post(
        path, data={"back": "station", "csrf_token": csrf(client)}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/wards/{ward.id}?layout=station&done=acknowledged"
    row = alert_row(app_runtime, alarm)
    assert (row.state, row.acknowledged_by) == ("acknowledged", "nina")
    again = client.post(path, data={"csrf_token": csrf(client)}, follow_redirects=False)
    assert "error=conflict" in again.headers["location"]
    resolve = f"/wards/{ward.id}/alerts/{alarm}/resolve"
    refused = client.post(
        resolve, data={"csrf_token": csrf(client), "outcome": "fall"}, follow_redirects=False
    )  # a confirmed fall needs its injury grade
    assert "error=invalid" in refused.headers["location"]
    assert alert_row(app_runtime, alarm).state == "acknowledged"
    client.post(
        resolve,
        data={
            "csrf_token": csrf(client),
            "outcome": "fall",
            "injury_grade": "minor",
            "resolution": "bruised hip",
            "back": "phone",
        },
        follow_redirects=False,
    )
    row = alert_row(app_runtime, alarm)
    assert (row.state, row.outcome, row.resolved_by) == ("resolved", "fall", "nina")
    with app_runtime.sessions() as db:
        incident = db.scalars(select(FallIncident)).one()
        assert (incident.outcome, incident.injury_grade, incident.alert_fk) == (
            "fall",
            "minor",
            alarm,
        )


def test_api_actions_check_the_ward_and_answer_the_new_state(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    other = make_ward(app_runtime, code="MED2", name="Medicin 2", beds=(("1", "A"),))
    admit(app_runtime, ward, "1", patient_id="P-1")
    alarm = fall_alarm(app_runtime, ward, "1")
    with app_runtime.sessions() as db, db.begin():
        band = raise_alert(
            db,
            kind="ews.band",
            subject="ews:1",
            title="NEWS2 up to 7 (high)",
            severity="urgent",
            audience=("nurse", "physician"),
            ward_id=ward.id,
            bed_id=ward.beds["1"],
            notify=True,
        ).id
    headers = auth(app_runtime, "nina")
    wrong = client.post(f"/api/wards/{other.id}/alerts/{alarm}/acknowledge", headers=headers)
    assert wrong.status_code == 404
    ack = client.post(f"/api/wards/{ward.id}/alerts/{alarm}/acknowledge", headers=headers)
    assert ack.status_code == 200 and ack.json()["state"] == "acknowledged"
    assert (
        client.post(f"/api/wards/{ward.id}/alerts/{alarm}/acknowledge", headers=headers).status_code
        == 409
    )
    no_outcome = client.post(
        f"/api/wards/{ward.id}/alerts/{alarm}/resolve", headers=headers, json={}
    )
    assert no_outcome.status_code == 422
    false_alarm = client.post(
        f"/api/wards/{ward.id}/alerts/{alarm}/resolve",
        headers=headers,
        json={"outcome": "false_alarm"},
    )
    assert false_alarm.json()["outcome"] == "false_alarm"
    bare = client.post(f"/api/wards/{ward.id}/alerts/{band}/resolve", headers=headers, json={})
    assert bare.status_code == 422  # other alerts need what was done
    done = client.post(
        f"/api/wards/{ward.id}/alerts/{band}/resolve",
        headers=headers,
        json={"resolution": "Physician reviewed, fluids started"},
    )
    assert done.json()["state"] == "resolved" and done.json()["resolved_by"] == "nina"
    assert (
        client.post(
            f"/api/wards/{ward.id}/alerts/{band}/resolve",
            headers=auth(app_runtime, "rita"),
            json={"resolution": "x"},
        ).status_code
        == 403
    )


def test_the_phone_page_puts_the_alarm_and_its_button_first(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    admit(app_runtime, ward, "3", patient_id="P-3", name="Berg^Ole")
    alarm = fall_alarm(app_runtime, ward, "3")
    login(client, "peter")
    page = client.get(f"/wards/{ward.id}/phone")
    assert page.status_code == 200
    assert 'data-layout="phone"' in page.text and 'id="ph-alarms"' in page.text
    assert embedded_board(page.text)["counts"]["unacknowledged"] == 1
    # Without the script the alarm is still there, with its acknowledge form.
    assert f'action="/wards/{ward.id}/alerts/{alarm}/acknowledge"' in page.text
    assert '<input type="hidden" name="back" value="phone">' in page.text
    (event,) = audits(app_runtime, "ward.phone.view")
    assert event.actor == "peter"


def test_the_bed_page_charts_observations_and_sets_fall_risk_and_options(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    enc, patient = admit(app_runtime, ward, "1", patient_id="P-9")
    bed = ward.beds["1"]
    login(client, "nina")
    page = client.get(f"/wards/{ward.id}/beds/{bed}")
    assert page.status_code == 200 and "P-9" in page.text
    (view,) = audits(app_runtime, "ward.bed.view")
    assert view.patient_id == "P-9"
    token = csrf(client)
    base = f"/wards/{ward.id}/beds/{bed}"

    charted = client.post(
        f"{base}/vitals",
        data={"csrf_token": token, "consciousness": "C", "oxygen": "air", "temperature": "37,9"},
        follow_redirects=False,
    )
    assert charted.headers["location"] == f"{base}?done=vitals"
    with app_runtime.sessions() as db:
        rows = db.scalars(select(VitalObservation).where(VitalObservation.encounter_fk == enc))
        assert sorted((r.parameter, r.value_text or r.value, r.source) for r in rows) == [
            ("consciousness", "C", "manual"),
            ("oxygen", "air", "manual"),
            ("temperature", 37.9, "manual"),
        ]
    bad = client.post(
        f"{base}/vitals", data={"csrf_token": token, "consciousness": "X"}, follow_redirects=False
    )
    assert "error=invalid" in bad.headers["location"]

    answers = {
        "history_of_falling": "yes",
        "secondary_diagnosis": "yes",
        "ambulatory_aid": "walker",
        "iv_therapy": "no",
        "gait": "weak",
        "mental_status": "oriented",
    }
    client.post(f"{base}/morse", data={"csrf_token": token, **answers})
    client.post(f"{base}/bed-exit", data={"csrf_token": token, "setting": "on"})
    with app_runtime.sessions() as db:
        risk = db.scalars(select(FallRiskAssessment)).one()
        assert (risk.total, risk.level, risk.assessed_by) == (65, "high", "nina")
        encounter = db.get(Encounter, enc)
        assert encounter is not None and encounter.bed_exit_alerts is True

    refused = client.post(
        f"{base}/options",
        data={"csrf_token": token, "key": "spo2_scale", "value": "2", "reason": "COPD patient"},
        follow_redirects=False,
    )  # scale 2 needs the documented 88–92 % target in the reason
    assert "error=invalid" in refused.headers["location"]
    client.post(
        f"{base}/options",
        data={
            "csrf_token": token,
            "key": "spo2_scale",
            "value": "2",
            "reason": "COPD, target SpO2 88-92 % per physician",
        },
    )
    with app_runtime.sessions() as db:
        option = db.scalars(select(PatientOption)).one()
        assert (option.patient_fk, option.key, option.value) == (patient, "spo2_scale", 2)
    client.post(f"{base}/options/{option.id}/revoke", data={"csrf_token": token})
    with app_runtime.sessions() as db:
        assert db.get(PatientOption, option.id).revoked_by == "nina"  # type: ignore[union-attr]
    tile = client.get(f"/api/wards/{ward.id}/board").json()["beds"][0]
    assert tile["risk"]["level"] == "high" and tile["bed_exit"] == "on" and tile["options"] == []


def test_an_empty_bed_refuses_patient_actions(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    login(client, "nina")
    page = client.get(f"/wards/{ward.id}/beds/{ward.beds['2']}")
    assert page.status_code == 200
    moved = client.post(
        f"/wards/{ward.id}/beds/{ward.beds['2']}/bed-exit",
        data={"csrf_token": csrf(client), "setting": "off"},
        follow_redirects=False,
    )
    assert "error=not_found" in moved.headers["location"]
    other = make_ward(app_runtime, code="MED2", beds=(("1", "A"),))
    assert client.get(f"/wards/{ward.id}/beds/{other.beds['1']}").status_code == 404


def test_a_nurse_reports_a_fall_no_alarm_announced(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    admit(app_runtime, ward, "1", patient_id="P-1", at=utcnow() - timedelta(days=1))
    login(client, "nina")
    client.get(f"/wards/{ward.id}")
    when = (utcnow() - timedelta(hours=2)).replace(tzinfo=None)
    done = client.post(
        f"/wards/{ward.id}/incidents",
        data={
            "csrf_token": csrf(client),
            "bed_id": str(ward.beds["1"]),
            "occurred_at": when.strftime("%Y-%m-%dT%H:%M"),
            "tz_offset": "-60",  # the browser is at UTC+1
            "outcome": "fall",
            "injury_grade": "none",
            "note": "found on the floor at the night round",
        },
        follow_redirects=False,
    )
    assert done.headers["location"] == f"/wards/{ward.id}?done=incident"
    with app_runtime.sessions() as db:
        incident = db.scalars(select(FallIncident)).one()
        assert incident.source == "manual" and incident.outcome == "fall"
        assert incident.occurred_at.strftime("%H:%M") == (when - timedelta(hours=1)).strftime(
            "%H:%M"
        )
        assert incident.patient_fk is not None
        assert db.scalar(select(func.count()).select_from(FallIncident)) == 1


def test_charted_observations_are_scored_by_news2_and_shown_on_the_tile(
    client: TestClient, app_runtime: Runtime, ward: Ward, tmp_path: Path
) -> None:
    package = tmp_path / "news2"
    shutil.copytree(NEWS2_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    scoring.forget_packages()
    install_approve_deploy(app_runtime, package, site="AUH", mode="live")
    admit(app_runtime, ward, "1", patient_id="P-1")
    login(client, "nina")
    client.get(f"/wards/{ward.id}")
    # STANDARDS.md vector 2: 21, 93 (scale 1), air, 120, 95, A, 37.5 → 5, medium.
    entered = {
        "resp_rate": "21", "spo2": "93", "oxygen": "air", "bp_sys": "120", "pulse_rate": "95",
        "consciousness": "A", "temperature": "37.5",
    }  # fmt: skip
    done = client.post(
        f"/wards/{ward.id}/beds/{ward.beds['1']}/vitals",
        data={"csrf_token": csrf(client), **entered},
        follow_redirects=False,
    )
    assert done.headers["location"].endswith("done=vitals"), done.headers["location"]
    tile = client.get(f"/api/wards/{ward.id}/board").json()["beds"][0]
    score = tile["score"]
    assert (score["name"], score["total"], score["band"], score["colour"]) == (
        "NEWS2",
        5,
        "medium",
        "orange",
    )
    assert score["complete"] and score["missing"] == [] and score["overdue"] is False
    assert score["next_due_minutes"] == 60  # medium: at least hourly
    assert tile["trend"][-1]["total"] == 5
    assert tile["vitals"]["consciousness"]["text"] == "A"
    assert tile["vitals"]["temperature"]["value"] == 37.5


def test_boards_read_again_come_from_the_cache_until_something_changes(
    client: TestClient, app_runtime: Runtime, ward: Ward
) -> None:
    admit(app_runtime, ward, "1", patient_id="P-1")
    headers = auth(app_runtime, "nina")
    path = f"/api/wards/{ward.id}/board"
    statements: list[str] = []

    def count(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        statements.append(sql)

    event.listen(app_runtime.engine, "before_cursor_execute", count)
    try:
        first = client.get(path, headers=headers).json()
        fresh = len(statements)
        statements.clear()
        assert client.get(path, headers=headers).json() == first
        assert len(statements) < fresh - 5  # the fingerprint, not the whole board
    finally:
        event.remove(app_runtime.engine, "before_cursor_execute", count)
    alarm = fall_alarm(app_runtime, ward, "1")  # changes the fingerprint: read afresh
    assert client.get(path, headers=headers).json()["beds"][0]["alerts"][0]["id"] == alarm
