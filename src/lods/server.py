"""`lods serve`: the HTTP app, the DICOM SCP, the stable-study watcher, the router, the
job worker processes, the outbox sender, the HL7 MLLP listener (vital signs and ADT), the
room-sensor MQTT client and the alert ticker, started and stopped together."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from lods.app import create_app
from lods.config import Settings
from lods.exports.sender import ExportSender
from lods.imaging.scp import DicomServer
from lods.imaging.stable import StableStudyWatcher
from lods.jobs.executor import EmbeddedExecutor
from lods.routing.router import StudyRouter
from lods.runtime import Runtime, settle_garbage_collector

log = logging.getLogger(__name__)


@contextmanager
def background_services(runtime: Runtime) -> Iterator[DicomServer]:
    """Run the DICOM node, the stable-study watcher, the router, the job workers, the
    outbox sender, the HL7 MLLP listener, the sensor MQTT client and the alert ticker for
    the duration of the block (workers: `LODS_WORKERS` processes; 0 runs none; the
    listener runs unless `LODS_HL7_PORT` is 0; the MQTT client when `LODS_MQTT_HOST` is set)."""
    from lods.alerts.ticker import AlertTicker
    from lods.sensors.mqtt import MqttSensorClient
    from lods.solutions.execute import HANDLERS_PATH
    from lods.vitals.mllp import Hl7Listener

    dicom = DicomServer(runtime)
    watcher = StableStudyWatcher(runtime)
    router = StudyRouter(runtime)
    executor = EmbeddedExecutor(runtime.settings, HANDLERS_PATH)
    # Results out: delivers the outbox (SR/SC to PACS, FHIR, HL7) with retries.
    sender = ExportSender(runtime)
    # Vital signs and ADT in: ACKs only what is committed.
    hl7_listener = Hl7Listener(runtime) if runtime.settings.hl7_port != 0 else None
    # Room-sensor events in (does nothing without LODS_MQTT_HOST).
    sensors = MqttSensorClient(runtime)
    # Repeats and escalations of unacknowledged alarms; overdue observation reminders.
    ticker = AlertTicker(runtime)
    dicom.start()
    watcher.start()
    router.start()
    executor.start()
    sender.start()
    if hl7_listener is not None:
        hl7_listener.start()
    sensors.start()
    ticker.start()
    try:
        yield dicom
    finally:
        ticker.stop()
        sensors.stop()
        if hl7_listener is not None:
            hl7_listener.stop()
        sender.stop()
        executor.stop()
        router.stop()
        watcher.stop()
        dicom.stop()


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived: leave the serving block, closing the DICOM node."""


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stopped


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a clean exit of the block.

    uvicorn handles both while it runs, then restores the handlers it found and raises
    the signal again; with the default handlers SIGTERM would end the process before the
    DICOM node finishes its associations and the database is closed.
    """
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _stop) for sig in wanted}
    try:
        yield
    except _Stopped:
        log.info("stopped by signal")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def make_http_server(runtime: Runtime, *, log_level: str = "info") -> uvicorn.Server:
    """Return a uvicorn server for the app of `runtime`, bound as the settings say."""
    settings = runtime.settings
    config = uvicorn.Config(
        create_app(runtime),
        host=settings.host,
        port=settings.http_port,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


def serve(runtime: Runtime, server: uvicorn.Server) -> None:
    """Serve HTTP, DICOM and the watcher until SIGINT/SIGTERM, then stop them in order."""
    with stopped_by_signals(), background_services(runtime):
        settle_garbage_collector()
        server.run()


def run_server(settings: Settings) -> None:
    """Run `lods serve`: migrate, then serve until stopped."""
    runtime = Runtime.open(settings)
    try:
        log.info(
            "Lods is serving http://%s:%d/ and DICOM %s@%s:%d",
            settings.host,
            settings.http_port,
            settings.dicom_ae_title,
            settings.host,
            settings.dicom_port,
        )
        serve(runtime, make_http_server(runtime))
    finally:
        runtime.close()
