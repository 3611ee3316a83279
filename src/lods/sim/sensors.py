"""Simulated room sensors: bed exits, falls and false alarms, over MQTT or the webhook.

The model (pure, seeded): `event_plan` yields, for the simulated beds, a time-ordered,
endless stream of planned events (seconds after the start):

- bed-exit episodes, `rate` per bed per hour on average: `sitting_on_edge`, then
  `bed_exit` 10–60 s later, then `back_in_bed` 2–15 minutes later;
- a share of the episodes (`fall_share`) ends in a fall instead: `fall_detected` 5–60 s
  after the exit, `person_on_floor` 5–20 s after that, and `back_in_bed` 5–15 minutes
  later, once staff have helped;
- false alarms (`false_alarm_rate` per bed per hour): a single `bed_exit` or
  `fall_detected` with a low confidence (0.25–0.55) and nothing after it.

Real events have confidence 0.8–0.99. Each event, as sent, is a JSON object: `event_id`
(a fresh UUID per sending, so another run is not taken for a redelivery), `kind`, `time`
(ISO-8601 UTC, the wall clock when sent), `confidence`, `device_id`, and the location
`site`, `ward`, `room`, `bed` (also in the MQTT topic
`<prefix>/<site>/<ward>/<room>/<bed>/event`).

The sender: `run_sensors(config)` publishes them with paho-mqtt (QoS 1, waiting for each
PUBACK) or POSTs them to Lods' webhook `POST /api/sensors/events` with a bearer token
(retrying a few times on connection errors and 5xx: at-least-once), pacing them by wall
time divided by `speed` (0: no waiting).
"""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt

from lods.sim.monitors import parse_beds, parse_rooms

__all__ = [
    "PlannedEvent",
    "SensorConfig",
    "SensorSummary",
    "event_plan",
    "parse_beds",
    "parse_rooms",
    "payload",
    "run_sensors",
    "topic",
]

WEBHOOK_PATH = "/api/sensors/events"


@dataclass(frozen=True, order=True)
class PlannedEvent:
    """An event the simulated sensor of `bed` reports `offset` seconds after the start."""

    offset: float
    bed: str
    kind: str
    confidence: float
    #: "exit", "fall" or "false_alarm": what the episode was (for tests and the log).
    episode: str


def _rng(*parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def _bed_events(
    bed: str,
    *,
    seed: int,
    rate: float,
    fall_share: float,
    false_alarm_rate: float,
) -> Iterator[PlannedEvent]:
    """The endless, time-ordered events of one bed."""
    rng = _rng("sensor", seed, bed)
    false_rng = _rng("false-alarm", seed, bed)
    t = rng.expovariate(rate / 3600) if rate > 0 else float("inf")
    next_false = (
        false_rng.expovariate(false_alarm_rate / 3600) if false_alarm_rate > 0 else float("inf")
    )
    pending: list[PlannedEvent] = []

    def sure() -> float:
        """The confidence of a real event."""
        return round(rng.uniform(0.8, 0.99), 2)

    while True:
        if not pending and t < float("inf"):
            edge = t
            exit_ = edge + rng.uniform(10, 60)
            if rng.random() < fall_share:
                fall = exit_ + rng.uniform(5, 60)
                floor = fall + rng.uniform(5, 20)
                back = floor + rng.uniform(300, 900)
                pending = [
                    PlannedEvent(edge, bed, "sitting_on_edge", sure(), "fall"),
                    PlannedEvent(exit_, bed, "bed_exit", sure(), "fall"),
                    PlannedEvent(fall, bed, "fall_detected", sure(), "fall"),
                    PlannedEvent(floor, bed, "person_on_floor", sure(), "fall"),
                    PlannedEvent(back, bed, "back_in_bed", sure(), "fall"),
                ]
            else:
                back = exit_ + rng.uniform(120, 900)
                pending = [
                    PlannedEvent(edge, bed, "sitting_on_edge", sure(), "exit"),
                    PlannedEvent(exit_, bed, "bed_exit", sure(), "exit"),
                    PlannedEvent(back, bed, "back_in_bed", sure(), "exit"),
                ]
            # The next episode starts after this one has ended.
            t = pending[-1].offset + rng.expovariate(rate / 3600)
        if pending and pending[0].offset <= next_false:
            yield pending.pop(0)
        elif next_false < float("inf"):
            kind = false_rng.choice(("bed_exit", "fall_detected"))
            confidence = round(false_rng.uniform(0.25, 0.55), 2)
            yield PlannedEvent(next_false, bed, kind, confidence, "false_alarm")
            next_false += false_rng.expovariate(false_alarm_rate / 3600)
        else:
            return


def event_plan(
    beds: Sequence[str],
    *,
    seed: int = 7,
    rate: float = 1.0,
    fall_share: float = 0.05,
    false_alarm_rate: float = 0.1,
) -> Iterator[PlannedEvent]:
    """The ward's events in time order (endless unless every rate is 0). `rate`: bed-exit
    episodes per bed per hour; `fall_share`: the part of them that ends in a fall;
    `false_alarm_rate`: low-confidence false alarms per bed per hour."""
    if rate < 0 or false_alarm_rate < 0 or not 0 <= fall_share <= 1:
        raise ValueError("rates must not be negative; fall_share is 0..1")
    streams = [
        _bed_events(
            bed, seed=seed, rate=rate, fall_share=fall_share, false_alarm_rate=false_alarm_rate
        )
        for bed in beds
    ]
    return heapq.merge(*streams)


def topic(prefix: str, site: str, ward: str, room: str, bed: str) -> str:
    """The MQTT topic a bed's sensor publishes to."""
    return f"{prefix.rstrip('/')}/{site}/{ward}/{room}/{bed}/event"


def device_id(site: str, ward: str, room: str, bed: str) -> str:
    return f"SIMSENS-{site}-{ward}-{room}-{bed}"


def payload(
    event: PlannedEvent, *, site: str, ward: str, room: str, at: datetime, event_id: str = ""
) -> dict[str, Any]:
    """The JSON object sent for `event` at wall time `at`."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "kind": event.kind,
        "time": at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "confidence": event.confidence,
        "device_id": device_id(site, ward, room, event.bed),
        "site": site,
        "ward": ward,
        "room": room,
        "bed": event.bed,
    }


# --- sending ------------------------------------------------------------------------------------


@dataclass
class SensorConfig:
    """What `run_sensors` simulates and where it sends it."""

    site: str
    ward: str
    beds: list[str]
    #: Room per bed; a bed without one reports its own code as the room.
    rooms: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "lods/sensors"
    #: POST to this base URL's webhook instead of publishing over MQTT.
    webhook: str | None = None
    token: str = ""
    rate: float = 1.0
    fall_share: float = 0.05
    false_alarm_rate: float = 0.1
    seed: int = 7
    #: Wall time runs this many times faster than the plan (0: no waiting).
    speed: float = 1.0
    count: int | None = None
    duration: float | None = None
    timeout: float = 10.0


@dataclass
class SensorSummary:
    """What was sent and how it went."""

    sent: int = 0
    #: Delivered: PUBACK received (MQTT) or 2xx (webhook).
    delivered: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        return (
            f"sent {self.sent} sensor events ({kinds or 'none'}); delivered {self.delivered}; "
            f"failed {self.sent - self.delivered}"
        )


class _MqttSender:
    def __init__(self, config: SensorConfig) -> None:
        self.config = config
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"lods-sim-sensors-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.connect(config.host, config.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(config.timeout):
            self.close()
            raise ConnectionError(f"no CONNACK from {config.host}:{config.port}")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not reason.is_failure:
            self.connected.set()

    def send(self, where: str, body: dict[str, Any]) -> None:
        info = self.client.publish(where, json.dumps(body), qos=1)
        info.wait_for_publish(timeout=self.config.timeout)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK within {self.config.timeout} s (rc {info.rc})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _WebhookSender:
    ATTEMPTS = 3

    def __init__(self, config: SensorConfig) -> None:
        assert config.webhook
        base = config.webhook.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"the webhook must be an http(s) URL, got {config.webhook!r}")
        self.url = base if base.endswith(WEBHOOK_PATH) else base + WEBHOOK_PATH
        self.config = config

    def send(self, where: str, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.config.token}",
        }
        for attempt in range(1, self.ATTEMPTS + 1):
            request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
                self.url, data=data, headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:  # noqa: S310
                    answer = response.read()
                self._check(answer)
                return
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code < 500 or attempt == self.ATTEMPTS:
                    raise RuntimeError(f"HTTP {exc.code}: {detail}") from exc
            except OSError:
                if attempt == self.ATTEMPTS:
                    raise
            time.sleep(0.2 * attempt)

    @staticmethod
    def _check(answer: bytes) -> None:
        """Raise when Lods answered 2xx but rejected the event (it says so per event)."""
        try:
            body = json.loads(answer)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("rejected"):
            reasons = [
                reason
                for result in body.get("results", [])
                if isinstance(result, dict)
                for reason in result.get("reasons", [])
            ]
            raise RuntimeError(f"rejected: {'; '.join(reasons) or body}")

    def close(self) -> None:
        pass


def run_sensors(
    config: SensorConfig,
    *,
    report: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    summary: SensorSummary | None = None,
) -> SensorSummary:
    """Send the planned events until `count` or `duration` is reached (or for ever);
    return the summary (`summary`, filled as it goes, when given). Raises OSError when the
    broker or server cannot be reached."""
    rooms = {bed: config.rooms.get(bed) or bed for bed in config.beds}
    sender: _MqttSender | _WebhookSender = (
        _WebhookSender(config) if config.webhook else _MqttSender(config)
    )
    summary = summary if summary is not None else SensorSummary()
    started = time.monotonic()
    try:
        plan = event_plan(
            config.beds,
            seed=config.seed,
            rate=config.rate,
            fall_share=config.fall_share,
            false_alarm_rate=config.false_alarm_rate,
        )
        for event in plan:
            if config.count is not None and summary.sent >= config.count:
                break
            if config.speed > 0:
                due = event.offset / config.speed
                if config.duration is not None and due >= config.duration:
                    break
                wait = started + due - time.monotonic()
                if wait > 0:
                    sleep(wait)
            elif config.duration is not None and time.monotonic() - started >= config.duration:
                break
            room = rooms[event.bed]
            body = payload(
                event, site=config.site, ward=config.ward, room=room, at=datetime.now(UTC)
            )
            where = topic(config.prefix, config.site, config.ward, room, event.bed)
            summary.sent += 1
            summary.kinds[event.kind] += 1
            try:
                sender.send(where, body)
            except (OSError, RuntimeError, TimeoutError) as exc:
                summary.errors.append(f"{event.kind} bed {event.bed}: {exc}")
                outcome = f"failed: {exc}"
            else:
                summary.delivered += 1
                outcome = "delivered"
            if report:
                report(
                    f"bed {event.bed} room {room}: {event.kind} "
                    f"(confidence {event.confidence:.2f}, {event.episode}) {outcome}"
                )
    finally:
        sender.close()
    return summary
