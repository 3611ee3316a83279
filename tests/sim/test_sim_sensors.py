"""The room-sensor simulator: seeded episodes in a sensible order, and events published to
the real Mosquitto on 127.0.0.1:1883 arriving on a paho subscriber (QoS 1), on a topic
prefix of this test's own."""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from lods.auth.models import Role
from lods.auth.service import create_api_token, create_user
from lods.runtime import Runtime
from lods.sensors.models import EVENT_KINDS, SensorEvent
from lods.sensors.schemas import parse_event
from lods.sim.sensors import PlannedEvent, SensorConfig, event_plan, payload, run_sensors, topic
from lods.sites.models import Bed
from lods.sites.service import add_bed, add_department, create_site
from support import PASSWORD, LiveServer, make_settings

BROKER = ("127.0.0.1", 1883)
BEDS = [str(n) for n in range(1, 13)]


def _plan(n: int, **kwargs: Any) -> list[PlannedEvent]:
    return list(islice(event_plan(BEDS, **kwargs), n))


def test_plan_is_seeded_and_time_ordered() -> None:
    first = _plan(500, seed=3)
    assert first == _plan(500, seed=3)
    assert first != _plan(500, seed=4)
    assert [e.offset for e in first] == sorted(e.offset for e in first)
    assert {e.kind for e in first} <= set(EVENT_KINDS)


def test_episodes_follow_each_other_in_a_sensible_order() -> None:
    events = _plan(3000, seed=7, rate=2.0, fall_share=0.1, false_alarm_rate=0.2)
    per_bed: dict[str, list[PlannedEvent]] = defaultdict(list)
    for e in events:
        if e.episode != "false_alarm":
            per_bed[e.bed].append(e)
    episodes = {"exit": 0, "fall": 0}
    for bed_events in per_bed.values():
        kinds = [e.kind for e in bed_events]
        i = 0
        while i < len(kinds):
            episode = bed_events[i].episode
            expected = (
                ["sitting_on_edge", "bed_exit", "fall_detected", "person_on_floor", "back_in_bed"]
                if episode == "fall"
                else ["sitting_on_edge", "bed_exit", "back_in_bed"]
            )
            chunk = kinds[i : i + len(expected)]
            assert chunk == expected[: len(chunk)], (bed_events[i].bed, chunk)
            if len(chunk) == len(expected):
                episodes[episode] += 1
            i += len(expected)
    assert episodes["exit"] > 10 * episodes["fall"] / 2 > 0
    real = [e for e in events if e.episode != "false_alarm"]
    false = [e for e in events if e.episode == "false_alarm"]
    assert false and all(e.kind in ("bed_exit", "fall_detected") for e in false)
    assert max(e.confidence for e in false) < min(e.confidence for e in real)


def test_payload_is_an_event_lods_accepts() -> None:
    event = PlannedEvent(12.5, "7", "fall_detected", 0.93, "fall")
    at = datetime(2025, 3, 1, 9, 0, 0, 250000, tzinfo=UTC)
    body = payload(event, site="north", ward="W7", room="703", at=at)
    assert set(body) == {
        "event_id",
        "kind",
        "time",
        "confidence",
        "device_id",
        "site",
        "ward",
        "room",
        "bed",
    }
    assert uuid.UUID(body["event_id"]).version == 4
    assert body["time"] == "2025-03-01T09:00:00.250+00:00"
    parsed = parse_event(body)
    assert (parsed.kind, parsed.site, parsed.ward, parsed.room, parsed.bed) == (
        "fall_detected",
        "north",
        "W7",
        "703",
        "7",
    )
    assert parsed.occurred_at == at and parsed.confidence == 0.93
    assert (
        payload(event, site="north", ward="W7", room="703", at=at)["event_id"] != (body["event_id"])
    )
    assert topic("lods/sensors/", "north", "W7", "703", "7") == "lods/sensors/north/W7/703/7/event"


class Subscriber:
    """A paho client subscribed (QoS 1) to everything under `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any], int]] = queue.Queue()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{prefix[-12:]}")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda c, u, m, r, p: self.ready.set()
        self.client.on_message = lambda c, u, msg: self.messages.put(
            (msg.topic, json.loads(msg.payload), msg.qos)
        )
        self.client.connect(*BROKER)
        self.client.loop_start()
        assert self.ready.wait(10), "no SUBACK from Mosquitto"

    def take(self, n: int) -> list[tuple[str, dict[str, Any], int]]:
        return [self.messages.get(timeout=10) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    return f"lods-test/{uuid.uuid4().hex}"


def test_events_arrive_at_a_subscriber_over_mosquitto(prefix: str) -> None:
    subscriber = Subscriber(prefix)
    try:
        config = SensorConfig(
            site="north",
            ward="W7",
            beds=["1", "2", "3", "4"],
            rooms={"1": "701", "2": "701", "3": "702"},
            prefix=prefix,
            rate=6.0,
            fall_share=0.3,
            false_alarm_rate=1.0,
            speed=0,
            count=25,
            seed=11,
        )
        before = datetime.now(UTC)
        lines: list[str] = []
        summary = run_sensors(config, report=lines.append)
        assert summary.sent == summary.delivered == 25 and not summary.errors
        assert sum(summary.kinds.values()) == 25 and len(lines) == 25
        received = subscriber.take(25)
    finally:
        subscriber.close()
    assert subscriber.messages.empty()
    plan = event_plan(config.beds, seed=11, rate=6.0, fall_share=0.3, false_alarm_rate=1.0)
    planned = list(islice(plan, 25))
    assert sorted((e.bed, e.kind) for e in planned) == sorted(
        (body["bed"], body["kind"]) for _, body, _ in received
    )
    rooms = {"1": "701", "2": "701", "3": "702", "4": "4"}
    for where, body, qos in received:
        assert qos == 1
        assert where == f"{prefix}/north/W7/{rooms[body['bed']]}/{body['bed']}/event"
        event = parse_event(body)
        assert event.room == rooms[event.bed] and event.ward == "W7" and event.site == "north"
        assert before - timedelta(seconds=1) <= event.occurred_at <= datetime.now(UTC)
        assert event.device_id == f"SIMSENS-north-W7-{event.room}-{event.bed}"
    assert len({body["event_id"] for _, body, _ in received}) == 25


def test_an_unreachable_broker_is_an_error() -> None:
    with pytest.raises(OSError):
        run_sensors(SensorConfig(site="n", ward="W", beds=["1"], port=1, speed=0, count=1))


def test_webhook_events_are_stored_by_a_real_server(tmp_path: Path) -> None:
    """`--webhook`: the same events POSTed to a real `lods serve` with an integration
    user's API token are stored, once each, for the right beds."""
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    server = LiveServer(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'lods.sqlite3'}")
    rt = Runtime.open(make_settings(data_dir, server.database_url))
    try:
        with rt.sessions() as db, db.begin():
            site = create_site(db, code="north", name="North Hospital", actor="test")
            ward = add_department(
                db, site_id=site.id, code="W7", name="Ward 7", kind="ward", actor="test"
            )
            for code in ("1", "2"):
                add_bed(db, ward_id=ward.id, code=code, room="701", actor="test")
            create_user(
                db, username="hub", roles=[Role.INTEGRATION], password=PASSWORD, actor="test"
            )
            token = create_api_token(db, username="hub", label="sensor hub", actor="test")
    finally:
        rt.close()
    server.start()
    try:
        config = SensorConfig(
            site="north",
            ward="W7",
            beds=["1", "2"],
            rooms={"1": "701", "2": "701"},
            webhook=server.base_url,
            token=token,
            rate=6.0,
            fall_share=0.0,
            false_alarm_rate=0.0,
            speed=0,
            count=6,
            seed=5,
        )
        summary = run_sensors(config)
        assert summary.errors == [] and summary.sent == summary.delivered == 6
        wrong = run_sensors(dataclasses.replace(config, token="lods_not-a-token", count=1))
        assert wrong.delivered == 0 and "HTTP 401" in wrong.errors[0]
    finally:
        server.stop()
    plan = event_plan(["1", "2"], seed=5, rate=6.0, fall_share=0.0, false_alarm_rate=0.0)
    planned = list(islice(plan, 6))
    rt = Runtime.open(make_settings(data_dir, server.database_url), migrate=False)
    try:
        with rt.sessions() as db:
            query = select(SensorEvent.kind, Bed.code, SensorEvent.source).join(
                Bed, Bed.id == SensorEvent.bed_fk
            )
            stored = db.execute(query).all()
    finally:
        rt.close()
    assert sorted((kind, bed) for kind, bed, _ in stored) == sorted(
        (e.kind, e.bed) for e in planned
    )
    assert {source for _, _, source in stored} == {"http"}
