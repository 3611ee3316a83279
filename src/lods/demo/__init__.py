"""`lods demo`: a whole region on one machine, with studies arriving over real DICOM.

Runs on the embedded default (SQLite and blobs in the data dir, in-process workers):
starts from a clean data dir unless asked to keep it, sets up three fictional hospitals
and one user per role, installs the reference AI solutions (approved by the demo AI
owner, live at the hospitals) and starts a simulated vendor AI appliance, starts the
server in this process, sends synthetic CR/DX studies (some with fractures) and
screening mammograms through the DICOM port from each hospital's modality AE titles,
feeds the first hospital's geriatric ward with simulated bedside monitors (HL7 over
MLLP) and room sensors (MQTT, or the webhook without a broker), prints where to look,
and serves until Ctrl-C. This module is the demo's user
interface, so it talks with `typer.echo`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import typer
import uvicorn

from lods.config import Settings
from lods.demo.ai import install_demo_ai, vendor_appliance
from lods.demo.region import HOSPITALS, Account, create_accounts, create_hospitals
from lods.demo.sender import (
    PlannedStudy,
    SendError,
    SendResult,
    plan_screening,
    plan_studies,
    send_planned,
    wait_for_port,
)
from lods.demo.ward import SITE as WARD_SITE
from lods.demo.ward import SensorRoute, sensor_route, start_ward_feed, with_broker
from lods.runtime import Runtime
from lods.server import make_http_server, serve

__all__ = ["MARKER", "DemoError", "demo_settings", "reset_data_dir", "run_demo"]

log = logging.getLogger(__name__)

DEMO_SEED = 2025
DEMO_STUDIES = 8
#: Side of the demo's radiographs: the size the reference fracture AI was trained and
#: validated on (see its model card), so the demo shows what it measured.
DEMO_XRAY_SIZE = 768
DEMO_SCREENING_EXAMS = 4
DEMO_STABLE_SECONDS = 5.0
#: Written into a data dir the demo created; only such a dir is ever deleted by the demo.
MARKER = ".lods-demo"
#: What a Lods data dir holds; a dir with anything else in it is not deleted.
_DATA_DIR_ENTRIES = frozenset(
    {MARKER, "lods.sqlite3", "lods.sqlite3-wal", "lods.sqlite3-shm", "lods.sqlite3-journal"}
    | {"blobs", "quarantine", "tmp", "secret.key", "solutions", "validation"}
    | {"demo-appliance", "vendor-appliance.log"}
)


class DemoError(Exception):
    """The demo cannot start as asked; the message says what to do instead."""


def demo_settings(settings: Settings) -> Settings:
    """Return the settings the demo runs on: embedded SQLite, and a 5 s quiet period unless
    LODS_STABLE_SECONDS says otherwise."""
    update: dict[str, object] = {"database_url": None}
    if "LODS_STABLE_SECONDS" not in os.environ:
        update["stable_seconds"] = DEMO_STABLE_SECONDS
    return settings.model_copy(update=update)


def reset_data_dir(data_dir: Path) -> None:
    """Delete the data dir of an earlier demo; refuse anything that may be other data."""
    if not data_dir.exists() and not data_dir.is_symlink():
        return
    if data_dir.is_symlink() or not data_dir.is_dir():
        raise DemoError(f"{data_dir} is not a plain directory; not touching it")
    entries = {p.name for p in data_dir.iterdir()}
    if not entries:
        return
    if MARKER not in entries:
        raise DemoError(
            f"{data_dir} holds data that the demo did not create; not deleting it. "
            "Set LODS_DATA_DIR to another folder, or run `lods demo --keep-data` to add "
            "the demo to it."
        )
    unknown = entries - _DATA_DIR_ENTRIES
    if unknown:
        raise DemoError(
            f"{data_dir} does not look like a Lods data dir (it has {', '.join(sorted(unknown))}); "
            "not deleting it"
        )
    shutil.rmtree(data_dir)


def _check_ports_free(settings: Settings) -> None:
    ports = (("HTTP", settings.http_port), ("DICOM", settings.dicom_port))
    for what, port in (*ports, ("HL7", settings.hl7_port)):
        with socket.socket() as s:
            try:
                s.bind((settings.host, port))
            except OSError as exc:
                raise DemoError(
                    f"the {what} port {settings.host}:{port} is in use; is another Lods running? "
                    f"Stop it, or choose another port with LODS_{what}_PORT."
                ) from exc


def _prepare(settings: Settings, *, keep_data: bool) -> list[Account]:
    """Return the demo accounts after making the data dir, database and region ready."""
    _check_ports_free(settings)
    if not keep_data:
        reset_data_dir(settings.data_dir)
    fresh = not settings.data_dir.exists() or not any(settings.data_dir.iterdir())
    settings.ensure_dirs()
    if fresh:  # only a dir the demo made may be deleted by a later demo
        (settings.data_dir / MARKER).write_text("created by `lods demo`; the next one deletes it\n")
    runtime = Runtime.open(settings)
    try:
        with runtime.sessions() as db, db.begin():
            added = create_hospitals(db)
            accounts = create_accounts(db)
    finally:
        runtime.close()
    typer.echo(f"Region: {len(HOSPITALS)} hospitals ({len(added)} new)")
    for h in HOSPITALS:
        typer.echo(
            f"  {h.code:<9} {h.name:<24} modality {h.modality_ae} ({h.modality}), PACS {h.pacs_ae}"
        )
    return accounts


def print_accounts(accounts: list[Account]) -> None:
    """Show the demo users and their passwords (shown only now; a rerun makes new ones)."""
    typer.echo("\nDemo users (random passwords, shown only now):")
    typer.echo(f"  {'role':<12} {'user':<12} password")
    for a in accounts:
        typer.echo(f"  {a.role.value:<12} {a.username:<12} {a.password}")


def print_results(
    planned: list[PlannedStudy], results: list[SendResult], *, what: str = "studies"
) -> None:
    """Show what the DICOM node stored, study by study, and anything it refused."""
    stored = sum(len(r.stored) for r in results)
    typer.echo(f"\nSent {len(results)} {what} over DICOM: {stored} images stored.")
    for study, result in zip(planned, results, strict=True):
        first = study.datasets[0]
        description = str(first.get("StudyDescription", ""))
        typer.echo(
            f"  {result.calling_ae:<13} -> {first.PatientID} {description:<18} "
            f"{first.Modality}  {len(result.stored)}/{len(study.datasets)} images stored"
        )
    for failure in (f for r in results for f in r.failed):
        typer.echo(f"  refused: {failure}", err=True)


def print_where(settings: Settings, route: SensorRoute | None = None) -> None:
    """Show the URL to open, the DICOM node's address and the monitored ward's feeds."""
    base = f"http://{settings.host}:{settings.http_port}"
    typer.echo(f"\nOpen {base}/ and log in as a user above.")
    if route is not None:
        typer.echo(
            f"Ward board ({WARD_SITE} geriatric ward, nurse or physician): {base}/wards "
            f"(large screen: add ?layout=station; phone: /wards/<id>/phone)"
        )
        typer.echo(
            f"Bedside monitors: HL7 v2 over MLLP to {settings.host}:{settings.hl7_port}; "
            f"room sensors: {route.describe(settings)}"
        )
    typer.echo(
        f"DICOM node: AE title {settings.dicom_ae_title} at {settings.host}:{settings.dicom_port} "
        "(calling AE titles: "
        + ", ".join(f"{h.modality_ae}, {h.mammo_ae}" for h in HOSPITALS)
        + ")"
    )
    typer.echo(f"Studies become stable after {settings.stable_seconds:g} s without new images.")
    typer.echo("Press Ctrl-C to stop.")


def _send_studies(settings: Settings, *, seed: int) -> None:
    """Send the demo studies once the DICOM port answers, and show what was stored."""
    try:
        wait_for_port(settings.host, settings.dicom_port, timeout=60)
        planned = plan_studies(
            HOSPITALS,
            count=DEMO_STUDIES,
            seed=seed,
            now=datetime.now(),
            patient_seed=DEMO_SEED,
            size=DEMO_XRAY_SIZE,
        )
        results = send_planned(
            planned, host=settings.host, port=settings.dicom_port, called_ae=settings.dicom_ae_title
        )
        print_results(planned, results)
        exams = plan_screening(HOSPITALS, count=DEMO_SCREENING_EXAMS, seed=seed)
        screened = send_planned(
            exams, host=settings.host, port=settings.dicom_port, called_ae=settings.dicom_ae_title
        )
        print_results(exams, screened, what="screening exams")
    except (OSError, SendError) as exc:
        log.error("the demo could not send its studies (%s); the server keeps running", exc)


def _feed(settings: Settings, server: uvicorn.Server, route: SensorRoute, *, seed: int) -> None:
    """Send the studies, start the ward's monitors and sensors, then say where to look
    once the web server is up."""
    _send_studies(settings, seed=seed)
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline and not server.should_exit:
        time.sleep(0.1)
    if server.started:
        start_ward_feed(settings, route, seed=seed)
        print_where(settings, route)


def _appliance_port(settings: Settings) -> int:
    """The DICOM port of the demo's AI appliance: next to ours if free, else any free one."""
    for port in (settings.dicom_port + 1, 0):
        with socket.socket() as s:
            try:
                s.bind((settings.host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port for the demo's AI appliance")


def run_demo(settings: Settings, *, keep_data: bool) -> None:
    """Set up the demo region, serve it, send synthetic studies in over DICOM; until Ctrl-C."""
    settings = with_broker(demo_settings(settings))
    try:
        accounts = _prepare(settings, keep_data=keep_data)
    except DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    print_accounts(accounts)
    runtime = Runtime.open(settings, migrate=False)
    appliance_port = _appliance_port(settings)
    server = make_http_server(runtime, log_level="warning")
    # A fresh demo always shows the same studies; a kept one gets new ones on each run.
    seed = DEMO_SEED if not keep_data else DEMO_SEED + int(time.time())
    try:
        with vendor_appliance(settings, port=appliance_port) as appliance:
            lines = install_demo_ai(runtime, appliance_port=appliance_port if appliance else None)
            typer.echo("\nAI solutions (demonstration, not medical devices):")
            for line in lines:
                typer.echo(f"  {line}")
            feeder = threading.Thread(
                target=_feed,
                args=(settings, server, sensor_route(runtime)),
                kwargs={"seed": seed},
                daemon=True,
            )
            feeder.start()
            serve(runtime, server)  # until Ctrl-C or SIGTERM
        typer.echo("\nStopped.")
    finally:
        runtime.close()
