"""The MQTT sensor client against the real Mosquitto on 127.0.0.1:1883: an event becomes a
stored event and a fall alarm; redeliveries are harmless; bad payloads are acknowledged
and counted without stopping the client; events published while Lods is down arrive
after it reconnects (persistent session, QoS 1); an event the database could not store
is not acknowledged and arrives again. Each test has its own topic prefix (and so its
own client id) so parallel runs do not meet."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select, text

from falls.falls_support import Ward, alerts_of, deploy_falls, event, make_ward
from lods.runtime import Runtime
from lods.sensors.models import SensorEvent
from lods.sensors.mqtt import MqttSensorClient, default_client_id, event_from_message
from lods.sensors.schemas import EventRejected
from support import make_settings

BROKER = ("127.0.0.1", 1883)


def wait_until(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy (a deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}")


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"lods-test/{uuid.uuid4().hex[:12]}"
    yield prefix
    # Forget the persistent session this test left on the shared broker.
    cleaner = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=default_client_id(prefix),
        clean_session=True,
    )
    cleaner.connect(*BROKER)
    cleaner.loop_start()
    cleaner.disconnect()
    cleaner.loop_stop()


@pytest.fixture
def rt(tmp_path: Path, sqlite_url: str, prefix: str) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path / "data",
        sqlite_url,
        mqtt_host=BROKER[0],
        mqtt_port=BROKER[1],
        mqtt_topic_prefix=prefix,
    )
    runtime = Runtime.open(settings, migrate=False)
    yield runtime
    runtime.close()


@pytest.fixture
def ward(rt: Runtime) -> Ward:
    ward = make_ward(rt)
    deploy_falls(rt, ward)
    return ward


@pytest.fixture
def publisher() -> Iterator[mqtt.Client]:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:12]}",
    )
    client.connect(*BROKER)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish(
    client: mqtt.Client, prefix: str, ward: Ward, data: dict[str, Any] | bytes, bed: str = "B1"
) -> None:
    topic = f"{prefix}/{ward.site_code}/{ward.code}/R1/{bed}/event"
    if isinstance(data, dict):
        body = {k: v for k, v in data.items() if k not in ("site", "ward", "room", "bed")}
        payload = json.dumps(body).encode()
    else:
        payload = data
    client.publish(topic, payload, qos=1).wait_for_publish(10)


def stored(rt: Runtime, event_id: str) -> SensorEvent | None:
    with rt.sessions() as db:
        return db.scalar(select(SensorEvent).where(SensorEvent.event_id == event_id))


def count(rt: Runtime) -> int:
    with rt.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(SensorEvent)) or 0)


def started(rt: Runtime) -> MqttSensorClient:
    client = MqttSensorClient(rt)
    client.start()
    assert client.wait_ready(15), "the client never subscribed"
    return client


def test_a_published_fall_becomes_a_fall_alarm_and_a_redelivery_changes_nothing(
    rt: Runtime, ward: Ward, prefix: str, publisher: mqtt.Client
) -> None:
    client = started(rt)
    try:
        fall = event(ward, "B1", "fall_detected", event_id=f"ev-{uuid.uuid4().hex}")
        publish(publisher, prefix, ward, fall)
        row = wait_until(lambda: stored(rt, fall["event_id"]), what="the stored event")
        assert (row.source, row.kind, row.bed_fk, row.outcome) == (
            "mqtt",
            "fall_detected",
            ward.beds["B1"],
            "alarm",
        )
        publish(publisher, prefix, ward, fall)
        wait_until(lambda: client.counters["duplicate"] == 1, what="the duplicate")
        assert count(rt) == 1
        with rt.sessions() as db:
            (alarm,) = alerts_of(db, "fall.alarm")
            assert alarm.id == row.alert_fk and alarm.occurrences == 1
            assert alarm.state == "notified" and alarm.repeat_seconds == 120
    finally:
        client.stop()


def test_bad_payloads_are_acknowledged_counted_and_never_stop_the_client(
    rt: Runtime, ward: Ward, prefix: str, publisher: mqtt.Client
) -> None:
    client = started(rt)
    try:
        publish(publisher, prefix, ward, b"\xff not json")
        publish(publisher, prefix, ward, {**event(ward), "image": "aGVsbG8="})
        publish(publisher, prefix, ward, {**event(ward), "kind": "dancing"})
        publisher.publish(
            f"{prefix}/{ward.site_code}/NOWARD/R1/B1/event",
            json.dumps({k: v for k, v in event(ward).items() if k != "ward"}),
            qos=1,
        ).wait_for_publish(10)
        good = event(ward, "B1", "back_in_bed")
        publish(publisher, prefix, ward, good)
        wait_until(lambda: stored(rt, good["event_id"]), what="the good event")
        assert client.counters["rejected"] == 4 and client.counters["stored"] == 1
    finally:
        client.stop()
    # They were acknowledged: a new connection on the same session gets none of them again.
    again = started(rt)
    try:
        marker = event(ward, "B1", "back_in_bed")
        publish(publisher, prefix, ward, marker)
        wait_until(lambda: stored(rt, marker["event_id"]), what="the marker")
        assert again.counters["rejected"] == 0 and again.counters["received"] == 1
    finally:
        again.stop()


def test_events_published_while_lods_is_down_arrive_after_it_reconnects(
    rt: Runtime, ward: Ward, prefix: str, publisher: mqtt.Client
) -> None:
    started(rt).stop()  # the broker now keeps a session for Lods
    missed = [event(ward, "B1", "fall_detected"), event(ward, "B2", "person_on_floor")]
    for data, bed in zip(missed, ("B1", "B2"), strict=True):
        publish(publisher, prefix, ward, data, bed=bed)
    assert count(rt) == 0
    client = started(rt)
    try:
        wait_until(lambda: count(rt) == 2, what="the events published while down")
        with rt.sessions() as db:
            assert len(alerts_of(db, "fall.alarm")) == 2
    finally:
        client.stop()


def test_an_event_the_database_could_not_store_is_delivered_again(
    rt: Runtime, ward: Ward, prefix: str, publisher: mqtt.Client
) -> None:
    client = started(rt)
    try:
        with rt.engine.begin() as conn:  # the store breaks
            conn.execute(text("ALTER TABLE sensor_events RENAME TO sensor_events_away"))
        fall = event(ward, "B1", "fall_detected")
        publish(publisher, prefix, ward, fall)
        wait_until(lambda: client.counters["failed"] >= 1, what="the failed store")
        with rt.engine.begin() as conn:  # and is repaired
            conn.execute(text("ALTER TABLE sensor_events_away RENAME TO sensor_events"))
        row = wait_until(lambda: stored(rt, fall["event_id"]), what="the redelivered event")
        assert row.outcome == "alarm"
        assert client.counters["stored"] == 1
    finally:
        client.stop()


def test_without_an_mqtt_host_the_client_does_nothing(sqlite_runtime: Runtime) -> None:
    client = MqttSensorClient(sqlite_runtime)
    assert not client.enabled
    client.start()
    assert not client.wait_ready(0.01)
    client.stop()


def test_topic_and_payload_make_the_event() -> None:
    payload = json.dumps({"event_id": "e1", "kind": "bed_exit", "bed": "B1"}).encode()
    made = event_from_message("lods/sensors", "lods/sensors/NORTH/MED3/R1/B1/event", payload)
    assert made == {
        "event_id": "e1",
        "kind": "bed_exit",
        "site": "NORTH",
        "ward": "MED3",
        "room": "R1",
        "bed": "B1",
    }
    with pytest.raises(EventRejected, match="disagree"):
        event_from_message("lods/sensors", "lods/sensors/NORTH/MED3/R1/B2/event", payload)
    with pytest.raises(EventRejected, match="is not lods/sensors/<site>"):
        event_from_message("lods/sensors", "lods/sensors/NORTH/MED3/B1/event", payload)
    with pytest.raises(EventRejected, match="JSON object"):
        event_from_message("lods/sensors", "lods/sensors/N/M/R/B/event", b"[1]")
    assert len(default_client_id("lods/sensors")) <= 23
