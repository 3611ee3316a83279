"""The falls policy on sensor events, through the real reference solution package:
bed-exit alerts only for patients at risk or set by a nurse; fall alarms that repeat
every 2 minutes and escalate to the whole ward until acknowledged (driven by a controlled
clock, no sleeping); back in bed clears a bed-exit alert; shadow mode, no deployment,
and a broken or tampered solution (a fall still alarms: fail-safe)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from falls.falls_support import (
    MORSE_HIGH,
    MORSE_LOW,
    MORSE_MODERATE,
    T0,
    Ward,
    admit,
    alerts_of,
    deploy_falls,
    event,
    falls_package,
    installed_policy,
    make_ward,
    outbox_count,
    steps,
    tamper,
)
from lods.alerts import service as alerts
from lods.alerts.models import Alert
from lods.config import Settings
from lods.exports.models import OutboxItem
from lods.falls import service as falls
from lods.runtime import Runtime
from lods.sensors.models import SensorEvent
from lods.sensors.service import ingest
from lods.solutions.models import Deployment
from lods.solutions.packaging import build_package, read_manifest

WEBHOOK = "http://127.0.0.1:9/nurse-call"


def _settings(rt: Runtime) -> Settings:
    return rt.settings.model_copy(update={"notify_webhook_url": WEBHOOK})


def _ingest(rt: Runtime, data: dict[str, Any], *, now: Any = T0) -> tuple[str, int | None]:
    with rt.sessions() as db, db.begin():
        row = ingest(db, event=data, source="http", settings=_settings(rt), now=now).event
        return row.outcome, row.alert_fk


@pytest.fixture
def ward(runtime: Runtime) -> Ward:
    ward = make_ward(runtime)
    deploy_falls(runtime, ward)
    return ward


def _admit(rt: Runtime, ward: Ward, bed: str, *, morse: dict[str, str] | None = None) -> int:
    with rt.sessions() as db, db.begin():
        encounter = admit(db, ward, bed)
        if morse is not None:
            falls.assess_morse(db, encounter_id=encounter.id, items=morse, actor="nina")
        return encounter.id


# --- fall alarms ------------------------------------------------------------------------------


def test_fall_alarm_repeats_every_two_minutes_and_escalates_until_acknowledged(
    runtime: Runtime, ward: Ward
) -> None:
    encounter_id = _admit(runtime, ward, "B1")
    outcome, alert_id = _ingest(runtime, event(ward, "B1", "fall_detected", confidence=0.93))
    assert outcome == "alarm" and alert_id is not None
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None
        assert (alert.kind, alert.severity, alert.state) == ("fall.alarm", "urgent", "notified")
        assert alert.subject == f"fall:{ward.beds['B1']}"
        assert (alert.ward_fk, alert.bed_fk) == (ward.id, ward.beds["B1"])
        assert alert.patient_fk is not None and alert.audience == "nurse,physician"
        assert (alert.repeat_seconds, alert.escalate_after) == (120, 1)
        assert alert.notifications == 1 and alert.escalation_level == 0
        assert alert.next_notify_at == T0 + timedelta(seconds=120)
        assert alert.facts is not None
        assert alert.facts["event_kind"] == "fall_detected"
        assert alert.facts["confidence"] == 0.93
        assert (alert.facts["room"], alert.facts["bed"]) == ("R1", "B1")
        assert "room R1, bed B1" in alert.title
        assert outbox_count(db) == 1
        stored = db.scalars(select(SensorEvent)).one()
        assert stored.encounter_fk == encounter_id
    # A controlled clock: nothing is due a second early.
    with runtime.sessions() as db, db.begin():
        assert alerts.tick(db, now=T0 + timedelta(seconds=119), webhook=WEBHOOK) == []
    # The first repeat escalates to all staff on the ward (escalate_after = 1).
    with runtime.sessions() as db, db.begin():
        due = alerts.tick(db, now=T0 + timedelta(seconds=120), webhook=WEBHOOK)
        assert [a.id for a in due] == [alert_id]
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None
        assert alert.notifications == 2 and alert.escalation_level == 1
        assert alert.escalated_at == T0 + timedelta(seconds=120)
        assert alert.next_notify_at == T0 + timedelta(seconds=240)
        assert outbox_count(db) == 2
        last = db.scalars(select(OutboxItem).order_by(OutboxItem.id.desc())).first()
        assert last is not None and last.destination == WEBHOOK
        payload = json.loads(last.payload)
        assert payload["recipients"] == "ward-all" and payload["step"] == "escalated"
        assert (payload["room"], payload["bed"], payload["ward"]) == ("R1", "B1", ward.code)
    with runtime.sessions() as db, db.begin():
        assert len(alerts.tick(db, now=T0 + timedelta(seconds=240), webhook=WEBHOOK)) == 1
    with runtime.sessions() as db, db.begin():
        alerts.acknowledge(db, alert_id=alert_id, actor="nina", now=T0 + timedelta(seconds=250))
    # Acknowledged: the repeats stop.
    with runtime.sessions() as db, db.begin():
        assert alerts.tick(db, now=T0 + timedelta(seconds=600), webhook=WEBHOOK) == []
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None and alert.notifications == 3
        assert steps(db, alert_id) == [
            "raised",
            "notified",
            "escalated",
            "repeated",
            "acknowledged",
        ]
        assert outbox_count(db) == 3


def test_a_fall_in_an_empty_bed_alarms_too(runtime: Runtime, ward: Ward) -> None:
    outcome, alert_id = _ingest(runtime, event(ward, "B2", "person_on_floor"))
    assert outcome == "alarm"
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None and alert.patient_fk is None
        assert alert.title.startswith("Person on the floor")


def test_a_second_fall_event_counts_on_the_open_alarm(runtime: Runtime, ward: Ward) -> None:
    _outcome, first = _ingest(runtime, event(ward, "B1"))
    _outcome, second = _ingest(runtime, event(ward, "B1", "person_on_floor"))
    assert first == second
    with runtime.sessions() as db:
        alert = db.get(Alert, first)
        assert alert is not None and alert.occurrences == 2
        assert len(alerts_of(db, "fall.alarm")) == 1


def test_a_fall_below_the_minimum_confidence_is_ignored(runtime: Runtime, ward: Ward) -> None:
    outcome, alert_id = _ingest(runtime, event(ward, "B1", confidence=0.2))
    assert (outcome, alert_id) == ("ignored:confidence 0.2 below 0.3", None)
    with runtime.sessions() as db:
        assert alerts_of(db) == []


# --- bed exits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("morse", "nurse", "expected"),
    [
        (None, None, "ignored:no fall-risk assessment"),
        (MORSE_LOW, None, "ignored:fall risk low (Morse 0)"),
        (MORSE_MODERATE, None, "bed_exit_alert"),
        (MORSE_HIGH, None, "bed_exit_alert"),
        (MORSE_LOW, True, "bed_exit_alert"),
        (None, True, "bed_exit_alert"),
        (MORSE_HIGH, False, "ignored:bed-exit alerts turned off by a nurse"),
    ],
)
def test_bed_exit_alerts_only_for_patients_at_risk_or_set_by_a_nurse(
    sqlite_runtime: Runtime, morse: dict[str, str] | None, nurse: bool | None, expected: str
) -> None:
    ward = make_ward(sqlite_runtime)
    deploy_falls(sqlite_runtime, ward)
    encounter_id = _admit(sqlite_runtime, ward, "B1", morse=morse)
    if nurse is not None:
        with sqlite_runtime.sessions() as db, db.begin():
            falls.set_bed_exit_alerts(db, encounter_id=encounter_id, on=nurse, actor="nina")
    for kind in ("bed_exit", "sitting_on_edge"):
        outcome, alert_id = _ingest(sqlite_runtime, event(ward, "B1", kind))
        assert outcome == expected
        assert (alert_id is not None) == (expected == "bed_exit_alert")
    with sqlite_runtime.sessions() as db:
        raised = alerts_of(db)
        if expected == "bed_exit_alert":
            assert [(a.kind, a.severity, a.state) for a in raised] == [
                ("fall.bed_exit", "warning", "notified")
            ]
            assert raised[0].repeat_seconds is None and raised[0].occurrences == 2
        else:
            assert raised == []


def test_no_bed_exit_alert_for_an_empty_bed(runtime: Runtime, ward: Ward) -> None:
    outcome, _ = _ingest(runtime, event(ward, "B3", "bed_exit", room="R2"))
    assert outcome == "ignored:no patient admitted to the bed"


def test_a_nurse_setting_is_kept_with_who_and_when(runtime: Runtime, ward: Ward) -> None:
    encounter_id = _admit(runtime, ward, "B1", morse=MORSE_HIGH)
    with runtime.sessions() as db, db.begin():
        encounter = falls.set_bed_exit_alerts(
            db, encounter_id=encounter_id, on=False, actor="nina", now=T0
        )
        assert (encounter.bed_exit_alerts, encounter.bed_exit_set_by) == (False, "nina")
        assert encounter.bed_exit_set_at == T0
    assert _ingest(runtime, event(ward, "B1", "bed_exit"))[0].startswith("ignored:")
    with runtime.sessions() as db, db.begin():
        falls.set_bed_exit_alerts(db, encounter_id=encounter_id, on=None, actor="peter")
    assert _ingest(runtime, event(ward, "B1", "bed_exit"))[0] == "bed_exit_alert"


def test_back_in_bed_clears_an_unacknowledged_bed_exit_alert(runtime: Runtime, ward: Ward) -> None:
    _admit(runtime, ward, "B1", morse=MORSE_HIGH)
    _outcome, exit_alert = _ingest(runtime, event(ward, "B1", "bed_exit"))
    _outcome, fall_alarm = _ingest(runtime, event(ward, "B1", "fall_detected"))
    later = T0 + timedelta(seconds=30)
    outcome, cleared = _ingest(runtime, event(ward, "B1", "back_in_bed", at=later), now=later)
    assert (outcome, cleared) == ("cleared", exit_alert)
    with runtime.sessions() as db:
        alert = db.get(Alert, exit_alert)
        assert alert is not None and alert.state == "resolved"
        assert (alert.resolved_by, alert.resolution) == ("system", "back in bed")
        assert alert.resolved_at == later
        # Never a fall alarm.
        alarm = db.get(Alert, fall_alarm)
        assert alarm is not None and alarm.state == "notified"
    # Nothing open any more: another back_in_bed changes nothing.
    outcome, _ = _ingest(runtime, event(ward, "B1", "back_in_bed", at=later), now=later)
    assert outcome == "ignored:no open bed-exit alert"


def test_back_in_bed_leaves_an_acknowledged_bed_exit_alert_to_the_nurse(
    runtime: Runtime, ward: Ward
) -> None:
    _admit(runtime, ward, "B1", morse=MORSE_HIGH)
    _outcome, exit_alert = _ingest(runtime, event(ward, "B1", "bed_exit"))
    assert exit_alert is not None
    with runtime.sessions() as db, db.begin():
        alerts.acknowledge(db, alert_id=exit_alert, actor="nina", now=T0)
    outcome, _ = _ingest(runtime, event(ward, "B1", "back_in_bed"))
    assert outcome == "ignored:no open bed-exit alert"
    with runtime.sessions() as db:
        alert = db.get(Alert, exit_alert)
        assert alert is not None and alert.state == "acknowledged"


# --- deployment modes and failures --------------------------------------------------------------


def test_without_a_falls_solution_events_are_stored_and_ignored(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    outcome, alert_id = _ingest(runtime, event(ward, "B1", "fall_detected"))
    assert (outcome, alert_id) == ("ignored:no falls solution deployed", None)
    with runtime.sessions() as db:
        assert db.scalars(select(SensorEvent)).one().outcome == outcome
        assert alerts_of(db) == []


def test_shadow_mode_records_the_decision_and_raises_nothing(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    deploy_falls(runtime, ward, mode="shadow")
    _admit(runtime, ward, "B1", morse=MORSE_HIGH)
    assert _ingest(runtime, event(ward, "B1", "fall_detected")) == ("shadow:alarm", None)
    assert _ingest(runtime, event(ward, "B1", "bed_exit")) == ("shadow:bed_exit_alert", None)
    with runtime.sessions() as db:
        assert alerts_of(db) == []


def test_a_tampered_solution_is_suspended_and_a_fall_still_alarms(
    sqlite_runtime: Runtime,
) -> None:
    ward = make_ward(sqlite_runtime)
    version_id, deployment_id = deploy_falls(sqlite_runtime, ward)
    _admit(sqlite_runtime, ward, "B1", morse=MORSE_HIGH)
    tamper(installed_policy(sqlite_runtime, version_id))
    outcome, alert_id = _ingest(sqlite_runtime, event(ward, "B1", "fall_detected"))
    assert outcome == "alarm:fail-safe" and alert_id is not None
    with sqlite_runtime.sessions() as db:
        alarm = db.get(Alert, alert_id)
        assert alarm is not None and alarm.kind == "fall.alarm" and alarm.repeat_seconds == 120
        assert alarm.facts is not None and alarm.facts["fail_safe"] is True
        deployment = db.get(Deployment, deployment_id)
        assert deployment is not None and deployment.state == "suspended"
        assert [a.kind for a in alerts_of(db, "solution.integrity")] == ["solution.integrity"]
        assert alerts_of(db, "falls.solution_error") == []
    # Suspended: the site has no falls solution in force any more.
    outcome, _ = _ingest(sqlite_runtime, event(ward, "B1", "bed_exit"))
    assert outcome == "ignored:no falls solution deployed"


BROKEN = """
def run(ctx):
    raise RuntimeError("rule table missing")
"""


def _broken_package(folder: Path) -> Path:
    manifest, _text = read_manifest(
        Path(__file__).resolve().parents[2] / "reference_solutions" / "falls" / "package"
    )
    data = manifest.model_dump(mode="json", exclude_none=True)
    data["version"] = "9.0.0"
    data.pop("files")
    return build_package(folder, data, {"policy.py": BROKEN.encode()})


def test_a_failing_solution_alarms_falls_and_tells_its_owners(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    ward = make_ward(sqlite_runtime)
    deploy_falls(sqlite_runtime, ward, package=_broken_package(tmp_path / "broken"))
    _admit(sqlite_runtime, ward, "B1", morse=MORSE_HIGH)
    assert _ingest(sqlite_runtime, event(ward, "B1", "fall_detected"))[0] == "alarm:fail-safe"
    assert _ingest(sqlite_runtime, event(ward, "B1", "bed_exit")) == (
        "error:falls solution failed",
        None,
    )
    with sqlite_runtime.sessions() as db:
        problem = alerts_of(db, "falls.solution_error")
        assert len(problem) == 1 and problem[0].occurrences == 2
        assert "rule table missing" in problem[0].detail
        assert problem[0].audience == "admin,ai_owner"


def test_the_solutions_options_set_the_policy(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    ward = make_ward(sqlite_runtime)
    options = {
        "morse_cutoffs": {"moderate": 25, "high": 45},
        "at_risk_levels": ["high"],
        "repeat_seconds": 60,
        "escalate_after": 2,
        "min_confidence": {},
    }
    deploy_falls(sqlite_runtime, ward, package=falls_package(tmp_path / "p", options=options))
    _admit(sqlite_runtime, ward, "B1", morse=MORSE_MODERATE)
    assert _ingest(sqlite_runtime, event(ward, "B1", "bed_exit"))[0] == (
        "ignored:fall risk moderate (Morse 35)"
    )
    _outcome, alert_id = _ingest(sqlite_runtime, event(ward, "B1", confidence=0.05))
    with sqlite_runtime.sessions() as db:
        alarm = db.get(Alert, alert_id)
        assert alarm is not None and (alarm.repeat_seconds, alarm.escalate_after) == (60, 2)


def test_loading_the_policy_writes_no_bytecode_into_the_installed_package(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `lods serve` runs when PYTHONDONTWRITEBYTECODE is unset (as root it can write
    # into the read-only folder): a __pycache__ there would fail the next integrity check.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    ward = make_ward(sqlite_runtime)
    version_id, _deployment = deploy_falls(sqlite_runtime, ward)
    for _ in range(2):
        assert _ingest(sqlite_runtime, event(ward, "B1"))[0] == "alarm"
    folder = installed_policy(sqlite_runtime, version_id).parent
    assert sorted(p.name for p in folder.rglob("*")) == ["manifest.yaml", "policy.py"]
