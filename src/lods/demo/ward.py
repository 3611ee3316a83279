"""The demo's monitored ward: simulated bedside monitors over HL7 MLLP and room sensors
over MQTT (or, without a broker, the sensor webhook), on the first hospital's geriatric
ward, in time compressed so that deteriorating patients climb the NEWS2 bands within
minutes and a fall alarm shows up now and then.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass

from lods.auth.models import Role
from lods.auth.service import create_api_token, create_user, generate_password, get_user
from lods.config import Settings
from lods.demo.region import ACTOR, HOSPITALS, WARD, WARD_BEDS
from lods.demo.sender import wait_for_port
from lods.runtime import Runtime
from lods.sim.monitors import MonitorConfig, run_monitors
from lods.sim.sensors import SensorConfig, run_sensors

log = logging.getLogger(__name__)

#: The hospital whose ward the simulators feed.
SITE = HOSPITALS[0].code
#: Simulated minutes per wall minute: a 15-minute observation round every 6 s.
SPEED = 150.0
INTERVAL_MINUTES = 15.0
#: The sensor hub's account for the webhook when there is no MQTT broker.
HUB_USER = "sensor-hub"


@dataclass(frozen=True)
class SensorRoute:
    """How the demo's sensor simulator reaches Lods: MQTT, or the webhook with a token."""

    mqtt: bool
    token: str = ""

    def describe(self, settings: Settings) -> str:
        if self.mqtt:
            return (
                f"MQTT broker {settings.mqtt_host}:{settings.mqtt_port}, topics "
                f"{settings.mqtt_topic_prefix}/{SITE}/{WARD}/<room>/<bed>/event"
            )
        return "the sensor webhook POST /api/sensors/events (no MQTT broker on this machine)"


def broker_reachable(host: str, port: int) -> bool:
    """Whether an MQTT broker answers at host:port (Mosquitto on 127.0.0.1:1883 here)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def with_broker(settings: Settings) -> Settings:
    """The demo's settings with room sensors over MQTT when a broker is reachable."""
    host = settings.mqtt_host or "127.0.0.1"
    if broker_reachable(host, settings.mqtt_port):
        return settings.model_copy(update={"mqtt_host": host})
    return settings.model_copy(update={"mqtt_host": None})


def sensor_route(runtime: Runtime) -> SensorRoute:
    """MQTT when the settings name a broker; else a token of the demo's sensor-hub account
    (role integration) for the webhook."""
    if runtime.settings.mqtt_host:
        return SensorRoute(mqtt=True)
    with runtime.sessions() as db, db.begin():
        if get_user(db, username=HUB_USER) is None:
            create_user(
                db,
                username=HUB_USER,
                roles=[Role.INTEGRATION],
                password=generate_password(),
                full_name="Demo sensor hub",
                actor=ACTOR,
            )
        token = create_api_token(db, username=HUB_USER, label="demo sensors", actor=ACTOR)
    return SensorRoute(mqtt=False, token=token)


def _beds() -> tuple[list[str], dict[str, str]]:
    return [bed for bed, _ in WARD_BEDS], dict(WARD_BEDS)


def _monitors(settings: Settings, *, seed: int) -> None:
    beds, rooms = _beds()
    config = MonitorConfig(
        host=settings.host,
        port=settings.hl7_port,
        site=SITE,
        ward=WARD,
        beds=beds,
        rooms=rooms,
        interval_minutes=INTERVAL_MINUTES,
        speed=SPEED,
        deteriorating=3,
        seed=seed,
        admit=True,
    )
    try:
        wait_for_port(settings.host, settings.hl7_port, timeout=60)
        summary = run_monitors(config)
        log.info("demo monitors stopped: %s", summary.line())
    except OSError as exc:
        log.error("the demo monitors stopped (%s); the server keeps running", exc)


def _sensors(settings: Settings, route: SensorRoute, *, seed: int) -> None:
    beds, rooms = _beds()
    config = SensorConfig(
        site=SITE,
        ward=WARD,
        beds=beds,
        rooms=rooms,
        host=settings.mqtt_host or "127.0.0.1",
        port=settings.mqtt_port,
        prefix=settings.mqtt_topic_prefix,
        webhook=None if route.mqtt else f"http://{settings.host}:{settings.http_port}",
        token=route.token,
        seed=seed,
        rate=0.5,
        fall_share=0.15,
        speed=10.0,
    )
    try:
        summary = run_sensors(config)
        log.info("demo sensors stopped: %s", summary.line())
    except OSError as exc:
        log.error("the demo sensors stopped (%s); the server keeps running", exc)


def start_ward_feed(settings: Settings, route: SensorRoute, *, seed: int) -> None:
    """Start the monitor and sensor simulators in daemon threads (they end with the demo)."""
    for target, args in ((_monitors, (settings,)), (_sensors, (settings, route))):
        threading.Thread(
            target=target, args=args, kwargs={"seed": seed}, name=target.__name__, daemon=True
        ).start()
