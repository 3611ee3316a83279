"""The whole monitoring path through a real `lods serve`: a python-hl7 MLLP client admits a
patient and sends a deteriorating set, and a Mosquitto-published sensor event reports a
fall; both arrive as alerts on the ward board's live stream and tiles, and a nurse
acknowledges the fall alarm from the board."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import hl7.client
import httpx
import paho.mqtt.client as mqtt
import pytest
from test_board_sse import EventReader

from lods.runtime import Runtime
from support import PASSWORD, LiveServer, add_cast, make_settings
from support_solutions import install_approve_deploy
from vitals.vitals_support import Ward, adt, make_ward, oru

REPO = Path(__file__).resolve().parents[2]
NEWS2 = REPO / "reference_solutions" / "news2" / "package"
FALLS = REPO / "reference_solutions" / "falls" / "package"
BROKER = ("127.0.0.1", 1883)
#: STANDARDS.md NEWS2 vector 5: total 11, band high.
HIGH = {
    "resp_rate": 24,
    "spo2": 93,
    "oxygen": "oxygen",
    "bp_sys": 100,
    "pulse_rate": 110,
    "consciousness": "A",
    "temperature": 39.1,
}


@pytest.fixture
def ward_server(tmp_path: Path) -> Iterator[tuple[LiveServer, Ward, str]]:
    """`lods serve` with NEWS2 and the falls policy live at a ward's site, listening to
    room sensors on the machine's Mosquitto under a topic prefix of its own."""
    prefix = f"lods-test/{uuid.uuid4().hex}"
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    server = LiveServer(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'lods.sqlite3'}",
        extra_env={"LODS_MQTT_HOST": BROKER[0], "LODS_MQTT_TOPIC_PREFIX": prefix},
    )
    rt = Runtime.open(make_settings(data_dir, server.database_url))
    add_cast(rt)
    with rt.sessions() as db, db.begin():
        ward = make_ward(db, beds=("1", "2"))
    for package in (NEWS2, FALLS):
        install_approve_deploy(rt, package, site=ward.site_code)
    rt.close()
    server.start()
    yield server, ward, prefix
    server.stop()


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("not seen in time")


def ack_code(reply: str) -> str:
    return str(hl7.parse(reply).segment("MSA")[1])


def publish(prefix: str, ward: Ward, bed: str, payload: dict[str, Any]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hub-{uuid.uuid4().hex}")
    client.connect(*BROKER)
    client.loop_start()
    try:
        info = client.publish(
            f"{prefix}/{ward.site_code}/{ward.ward_code}/R1/{bed}/event",
            json.dumps(payload),
            qos=1,
        )
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def tile(web: httpx.Client, ward: Ward, bed: str) -> dict[str, Any]:
    board = web.get(f"/api/wards/{ward.ward_id}/board").json()
    return next(t for t in board["beds"] if t["id"] == ward.beds[bed])


def test_monitor_and_sensor_events_reach_the_board_and_a_nurse_acknowledges(
    ward_server: tuple[LiveServer, Ward, str],
) -> None:
    server, ward, prefix = ward_server
    with httpx.Client(base_url=server.base_url) as web:
        web.get("/login")
        form = {"username": "nina", "password": PASSWORD, "next": "/"}
        web.post("/login", data={**form, "csrf_token": web.cookies["lods_csrf"]})
        stream = EventReader(web, f"/wards/{ward.ward_id}/events")
        assert stream.status == 200

        # Bedside monitor, through python-hl7's own MLLP client.
        with hl7.client.MLLPClient("127.0.0.1", server.hl7_port) as monitor:
            admitted = monitor.send_message(adt("A01", "ADT-1", "P-E2E", ward.ward_code, "1"))
            assert ack_code(admitted.decode()) == "AA"
            answer = monitor.send_message(oru("ORU-1", "P-E2E", ward.ward_code, "1", HIGH))
            assert ack_code(answer.decode()) == "AA"
        band = stream.wait_for(lambda e: e.type == "alert" and e.data["kind"] == "ews.band")
        assert band.data["bed_id"] == ward.beds["1"]
        first = tile(web, ward, "1")
        assert (first["score"]["total"], first["score"]["band"]) == (11, "high")
        assert [a["kind"] for a in first["alerts"]] == ["ews.band"]

        # Room sensor, over the broker.
        publish(
            prefix,
            ward,
            "2",
            {
                "event_id": f"hub-{uuid.uuid4().hex}",
                "kind": "fall_detected",
                "time": datetime.now(UTC).isoformat(),
                "confidence": 0.93,
                "device_id": "ceiling-R1",
                "site": ward.site_code,
                "ward": ward.ward_code,
                "room": "R1",
                "bed": "2",
            },
        )
        fall = stream.wait_for(lambda e: e.type == "alert" and e.data["kind"] == "fall.alarm")
        assert fall.data["bed_id"] == ward.beds["2"] and fall.data["severity"] == "urgent"
        alarm = wait_for(lambda: tile(web, ward, "2")["alerts"])[0]
        assert alarm["kind"] == "fall.alarm"

        acknowledged = web.post(
            f"/api/wards/{ward.ward_id}/alerts/{alarm['id']}/acknowledge",
            headers={"X-CSRF-Token": web.cookies["lods_csrf"]},
        )
        assert acknowledged.status_code == 200, acknowledged.text
        step = stream.wait_for(lambda e: e.type == "alert" and e.data["step"] == "acknowledged")
        assert step.data["alert_id"] == alarm["id"]
        assert tile(web, ward, "2")["alerts"][0]["state"] == "acknowledged"
        stream.close()
