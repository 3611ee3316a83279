"""The MQTT client `lods serve` runs for the room sensors (when `LODS_MQTT_HOST` is set).

Topic layout
------------
Each sensor (or the sensor hub of a ward) publishes one message per event to

    <prefix>/<site>/<ward>/<room>/<bed>/event

with `<prefix>` = `LODS_MQTT_TOPIC_PREFIX` (default `lods/sensors`), `<site>` the site
code, `<ward>` the ward code, `<room>` the room code and `<bed>` the bed code as set up
in Lods (e.g. `lods/sensors/NORTH/MED3/R12/B2/event`). The payload is a UTF-8 JSON object:

    {"event_id": "hub7-000123",            unique per event; a redelivery repeats it
     "kind": "fall_detected",              bed_exit | sitting_on_edge | fall_detected |
                                           person_on_floor | back_in_bed
     "time": "2026-11-29T10:15:02+01:00",  ISO-8601 with a zone (Z or an offset)
     "confidence": 0.93,                   0..1
     "device_id": "ceiling-R12"}

Publish with QoS 1. Events only: a payload with an image or video field is refused.
Location fields in the payload, if any, must agree with the topic.

Delivery
--------
Lods subscribes to `<prefix>/+/+/+/+/event` with QoS 1 on a persistent session (a fixed
client id and clean_session off), so the broker keeps the events published while Lods
is down and delivers them after it reconnects. Each event is stored in its own
transaction, and only then acknowledged (paho's manual acknowledgement): a crash before
the commit means the broker delivers it again, never that it is lost; the event id
makes the redelivery harmless. If the database cannot store an event, the client
disconnects without acknowledging it and reconnects after a pause, so the broker
delivers it again. A payload that is not a valid event (bad JSON, unknown ward, a
missing field, an image) is logged, counted (`counters["rejected"]`) and acknowledged —
a broken sensor never blocks the others; no rejection record is stored beyond the log.
The client reconnects on its own with back-off (1 s doubling to 30 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lods.runtime import Runtime
from lods.sensors import service
from lods.sensors.schemas import EventRejected

log = logging.getLogger(__name__)

#: Last segment of every event topic.
EVENT_SEGMENT = "event"
_LOCATION = ("site", "ward", "room", "bed")
KEEPALIVE_SECONDS = 30
MIN_BACKOFF_SECONDS = 1
MAX_BACKOFF_SECONDS = 30


def default_client_id(prefix: str) -> str:
    """A fixed client id per installation (its topic prefix): the broker keeps this
    id's session, so events published while Lods is down wait for it. 23 characters at
    most, the limit every MQTT 3.1.1 broker accepts."""
    return "lods-" + hashlib.sha256(prefix.encode()).hexdigest()[:16]


def subscription(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/+/+/+/+/{EVENT_SEGMENT}"


def event_from_message(prefix: str, topic: str, payload: bytes | bytearray) -> dict[str, Any]:
    """The event dict of one message: the JSON payload plus site, ward, room and bed from
    the topic. Raises `EventRejected` for a topic or payload that is not an event."""
    base = prefix.rstrip("/") + "/"
    parts = topic[len(base) :].split("/") if topic.startswith(base) else []
    if len(parts) != 5 or parts[4] != EVENT_SEGMENT or not all(parts[:4]):
        raise EventRejected([f"topic {topic!r} is not {base}<site>/<ward>/<room>/<bed>/event"])
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventRejected([f"the payload is not UTF-8 JSON: {exc}"]) from exc
    if not isinstance(data, dict):
        raise EventRejected(["the payload must be a JSON object"])
    located = dict(zip(_LOCATION, parts[:4], strict=True))
    clashes = [k for k in _LOCATION if data.get(k) is not None and str(data[k]) != located[k]]
    if clashes:
        raise EventRejected(
            [f"payload {', '.join(clashes)} disagree(s) with the topic {topic!r}"],
            event_id=data.get("event_id") if isinstance(data.get("event_id"), str) else None,
        )
    return {**data, **located}


class MqttSensorClient:
    """Subscribes to the sensor topics and stores each event; `start()` / `stop()`.

    Does nothing when `settings.mqtt_host` is unset. `counters` counts messages by what
    became of them: received, stored, duplicate, rejected, failed (not stored: redelivery
    asked for).
    """

    def __init__(self, runtime: Runtime, *, client_id: str | None = None) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.prefix = settings.mqtt_topic_prefix.rstrip("/")
        self.client_id = client_id or default_client_id(self.prefix)
        self.counters: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._backoff = MIN_BACKOFF_SECONDS

    @property
    def enabled(self) -> bool:
        return self.runtime.settings.mqtt_host is not None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in a background thread (no-op without `mqtt_host` or when running)."""
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        client.reconnect_delay_set(MIN_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        self._stopping.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="lods-mqtt-sensors", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and subscribed; False after `timeout` seconds."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect cleanly (the broker keeps the session) and end the thread."""
        self._stopping.set()
        client = self._client
        if client is not None:
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._client = None
        self._ready.clear()

    def _run(self) -> None:
        settings = self.runtime.settings
        assert self._client is not None and settings.mqtt_host is not None
        self._backoff = MIN_BACKOFF_SECONDS
        while not self._stopping.is_set():
            try:
                self._client.connect_async(
                    settings.mqtt_host, settings.mqtt_port, keepalive=KEEPALIVE_SECONDS
                )
                # Returns only on disconnect(): by stop(), or to have an event redelivered.
                self._client.loop_forever(retry_first_connection=True)
            except Exception:
                log.exception("MQTT sensor client: network loop failed")
            if self._stopping.wait(self._backoff):
                break
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    # --- callbacks (paho's network thread) --------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: Any,
        _properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT sensor broker refused the connection: %s", reason_code)
            return
        self._backoff = MIN_BACKOFF_SECONDS
        topic = subscription(self.prefix)
        client.subscribe(topic, qos=1)
        log.info("MQTT sensors: subscribed to %s as %s", topic, self.client_id)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[Any],
        _properties: Any,
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            log.error("MQTT sensor broker refused the subscription: %s", reason_codes)
            return
        self._ready.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: Any,
        _properties: Any,
    ) -> None:
        self._ready.clear()
        if not self._stopping.is_set():
            log.warning("MQTT sensor broker connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.counters["received"] += 1
        try:
            state = self._store(message)
        except Exception:
            # Not stored (database down, a bug): no ack; reconnect to have it redelivered.
            self.counters["failed"] += 1
            log.exception(
                "MQTT sensor event on %s not stored; asking for redelivery", message.topic
            )
            client.disconnect()
            return
        self.counters[state] += 1
        client.ack(message.mid, message.qos)

    def _store(self, message: mqtt.MQTTMessage) -> str:
        """Store the event in its own transaction; 'stored', 'duplicate' or 'rejected'."""
        try:
            event = event_from_message(self.prefix, message.topic, message.payload)
            with self.runtime.sessions() as db, db.begin():
                result = service.ingest(
                    db, event=event, source="mqtt", settings=self.runtime.settings
                )
        except EventRejected as exc:
            log.warning(
                "MQTT sensor event on %s rejected (event_id %s): %s",
                message.topic,
                exc.event_id,
                exc,
            )
            return "rejected"
        return "duplicate" if result.duplicate else "stored"
