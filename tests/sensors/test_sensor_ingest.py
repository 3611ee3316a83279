"""Taking in a room-sensor event: validation with clear reasons (no images, ever),
idempotency by event id (also when two deliveries race), ward/bed/patient lookup, the
unknown bed, the board announcement and the audit trail."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from falls.falls_support import (
    MORSE_HIGH,
    T0,
    Ward,
    admit,
    alerts_of,
    deploy_falls,
    event,
    make_ward,
)
from lods.audit.models import AuditEvent
from lods.falls import service as falls
from lods.runtime import Runtime
from lods.sensors.models import SensorEvent
from lods.sensors.schemas import EventRejected, parse_event
from lods.sensors.service import IngestResult, ingest, ingest_event

VALID: dict[str, Any] = {
    "event_id": "hub7-000123",
    "kind": "bed_exit",
    "site": "NORTH",
    "ward": "MED3",
    "room": "R1",
    "bed": "B1",
    "time": "2026-11-29T11:15:02+01:00",
    "confidence": 0.91,
    "device_id": "ceiling-R1",
}


def _reasons(data: Any) -> str:
    with pytest.raises(EventRejected) as caught:
        parse_event(data)
    return "; ".join(caught.value.reasons)


# --- validation --------------------------------------------------------------------------------


def test_a_valid_event_is_parsed_with_its_time_in_utc() -> None:
    parsed = parse_event({**VALID, "bed": 12, "firmware": "2.1"})
    assert parsed.occurred_at == datetime(2026, 11, 29, 10, 15, 2, tzinfo=UTC)
    assert (parsed.site, parsed.ward, parsed.room, parsed.bed) == ("NORTH", "MED3", "R1", "12")
    assert parsed.extra == {"firmware": "2.1"}
    assert parse_event({**VALID, "time": "2026-11-29T10:15:02Z"}).occurred_at == (
        parsed.occurred_at
    )
    assert parse_event({k: v for k, v in VALID.items() if k != "site"}).site is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event_id": None}, "event_id is required"),
        ({"event_id": "has space"}, "event_id must be 1 to 100 printable characters"),
        ({"event_id": 7}, "event_id must be a string"),
        ({"kind": "dancing"}, "kind 'dancing' is not one of bed_exit"),
        ({"ward": None}, "ward is required"),
        ({"room": None}, "room is required"),
        ({"bed": "B 1"}, "bed must be a code"),
        ({"time": "2026-11-29T10:15:02"}, "has no zone"),
        ({"time": "yesterday"}, "is not an ISO-8601 timestamp"),
        ({"confidence": 1.5}, "confidence must be a number from 0 to 1"),
        ({"confidence": "high"}, "confidence must be a number from 0 to 1"),
        ({"confidence": None}, "confidence is required"),
        ({"device_id": ""}, "device_id must be a string of 1 to 100 characters"),
        ({"image": "aGVsbG8="}, "carry no images or video: field(s) image refused"),
        ({"snapshot_url": "http://x/1.jpg"}, "field(s) snapshot_url refused"),
        ({"video": None}, "field(s) video refused"),
        ({"blob": "x" * 300}, "field 'blob' is not part of a sensor event"),
        ({"nested": {"a": 1}}, "field 'nested' is not part of a sensor event"),
    ],
)
def test_bad_events_are_rejected_with_a_clear_reason(change: dict[str, Any], reason: str) -> None:
    assert reason in _reasons({**VALID, **change})


def test_every_problem_is_listed_at_once() -> None:
    rejected = _reasons({"kind": "x", "time": "now"})
    for part in ("event_id is required", "kind 'x'", "ward is required", "not an ISO-8601"):
        assert part in rejected
    assert _reasons(["not", "an", "object"]) == "an event must be a JSON object"


# --- ingest ---------------------------------------------------------------------------------


@pytest.fixture
def ward(runtime: Runtime) -> Ward:
    ward = make_ward(runtime)
    deploy_falls(runtime, ward)
    return ward


def _ingest(rt: Runtime, data: dict[str, Any], now: datetime = T0) -> IngestResult:
    with rt.sessions() as db, db.begin():
        return ingest(db, event=data, source="mqtt", settings=rt.settings, now=now)


def test_an_event_is_stored_with_its_bed_patient_and_outcome(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit(db, ward, "B1", patient_id="MRN-7")
        falls.assess_morse(db, encounter_id=encounter.id, items=MORSE_HIGH, actor="nina")
    data = event(ward, "B1", "bed_exit", event_id="hub-1", confidence=0.8, firmware="2.1")
    with runtime.sessions() as db, db.begin():
        row = ingest_event(db, event=data, source="mqtt", settings=runtime.settings, now=T0)
        pending = db.info["lods.live.pending"]
        assert (ward.id, {"type": "sensor", "bed_id": ward.beds["B1"], "kind": "bed_exit"}) in (
            pending
        )
    with runtime.sessions() as db:
        row = db.scalars(select(SensorEvent)).one()
        assert (row.event_id, row.kind, row.source) == ("hub-1", "bed_exit", "mqtt")
        assert (row.ward_fk, row.bed_fk, row.room) == (ward.id, ward.beds["B1"], "R1")
        assert row.encounter_fk == encounter.id
        assert (row.occurred_at, row.received_at) == (T0, T0)
        assert (row.confidence, row.device_id) == (0.8, "ceiling-R1")
        assert row.outcome == "bed_exit_alert" and row.alert_fk is not None
        assert row.payload["extra"] == {"firmware": "2.1"}
        audit = db.scalars(select(AuditEvent).where(AuditEvent.action == "sensor.event")).one()
        assert (audit.actor, audit.patient_id, audit.source) == (
            "device:ceiling-R1",
            "MRN-7",
            "mqtt",
        )
        assert json.loads(audit.detail)["outcome"] == "bed_exit_alert"


def test_a_redelivered_event_changes_nothing(runtime: Runtime, ward: Ward) -> None:
    data = event(ward, "B1", "fall_detected", event_id="hub-2")
    first = _ingest(runtime, data)
    assert not first.duplicate and first.event.outcome == "alarm"
    # The nurse acknowledges; the broker then delivers the same event again.
    with runtime.sessions() as db, db.begin():
        from lods.alerts.service import acknowledge

        assert first.event.alert_fk is not None
        acknowledge(db, alert_id=first.event.alert_fk, actor="nina", now=T0)
    again = _ingest(runtime, {**data, "confidence": 0.1}, now=T0 + timedelta(minutes=5))
    assert again.duplicate and again.event.id == first.event.id
    assert again.event.outcome == "alarm" and again.event.confidence == 0.9
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(SensorEvent)) == 1
        alarms = alerts_of(db, "fall.alarm")
        assert len(alarms) == 1 and alarms[0].occurrences == 1
        assert alarms[0].state == "acknowledged"
        count = select(func.count()).select_from(AuditEvent)
        assert db.scalar(count.where(AuditEvent.action == "sensor.event")) == 1


def _wait_for_lock_waiter(rt: Runtime, deadline: float) -> None:
    """On PostgreSQL, until another backend waits for a lock (the racing insert)."""
    if rt.engine.dialect.name != "postgresql":
        return
    while time.monotonic() < deadline:
        with rt.engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the second delivery never waited for the first")


def test_two_deliveries_racing_store_one_event_and_one_alarm(runtime: Runtime, ward: Ward) -> None:
    data = event(ward, "B1", "fall_detected", event_id="hub-race")
    results: list[IngestResult] = []
    errors: list[BaseException] = []

    def second_delivery() -> None:
        try:
            results.append(_ingest(runtime, data))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with runtime.sessions() as db, db.begin():
        first = ingest(db, event=data, source="mqtt", settings=runtime.settings, now=T0)
        racer = threading.Thread(target=second_delivery)
        racer.start()
        # PostgreSQL: the racer has read nothing and now waits on the unique index.
        _wait_for_lock_waiter(runtime, time.monotonic() + 10)
    racer.join(30)
    assert not errors, errors
    assert not first.duplicate
    assert [r.duplicate for r in results] == [True]
    assert results[0].event.id == first.event.id
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(SensorEvent)) == 1
        assert len(alerts_of(db, "fall.alarm")) == 1


def test_an_unknown_ward_or_site_is_refused(runtime: Runtime, ward: Ward) -> None:
    with pytest.raises(EventRejected, match="unknown ward 'ICU9'"):
        _ingest(runtime, {**event(ward), "ward": "ICU9"})
    with pytest.raises(EventRejected, match="at site 'SOUTH'"):
        _ingest(runtime, {**event(ward), "site": "SOUTH"})
    # Without a site the ward code alone finds it (it is unique).
    data = {k: v for k, v in event(ward, "B1", "back_in_bed").items() if k != "site"}
    assert _ingest(runtime, data).event.ward_fk == ward.id
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(SensorEvent)) == 1


def test_an_unknown_bed_still_raises_a_fall_alarm_for_the_room(
    runtime: Runtime, ward: Ward
) -> None:
    fall = _ingest(runtime, event(ward, "B9", "person_on_floor", room="R7")).event
    assert fall.bed_fk is None and fall.encounter_fk is None
    assert fall.outcome == "alarm"
    exit_ = _ingest(runtime, event(ward, "B9", "bed_exit", room="R7")).event
    assert exit_.outcome == "ignored:unknown bed" and exit_.alert_fk is None
    with runtime.sessions() as db:
        (alarm,) = alerts_of(db, "fall.alarm")
        assert alarm.subject == f"fall:ward:{ward.id}:room:R7"
        assert alarm.bed_fk is None and alarm.ward_fk == ward.id
        assert "room R7, bed unknown" in alarm.title


def test_the_occupant_is_the_active_encounter_in_the_bed(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        admit(db, ward, "B1", at=T0 - timedelta(days=9), until=T0 - timedelta(days=2))
        current = admit(db, ward, "B1", at=T0 - timedelta(days=1))
    row = _ingest(runtime, event(ward, "B1", "fall_detected")).event
    assert row.encounter_fk == current.id
    with runtime.sessions() as db:
        (alarm,) = alerts_of(db, "fall.alarm")
        assert alarm.patient_fk == current.patient_fk


def test_an_unknown_source_is_a_programming_error(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin(), pytest.raises(ValueError):
        ingest(db, event=event(ward), source="carrier-pigeon", settings=runtime.settings)
