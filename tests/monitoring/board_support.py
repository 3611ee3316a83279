"""Helpers for the ward-board tests: a ward with beds, admitted patients, readings,
scores as the scoring engine stores them, and ward alerts through the alerts service.

Rows are written with the real models and services; the score's solution version and
deployment are minimal rows (the board reads scores, it never runs the engine).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import uvicorn
from sqlalchemy import select

from falls.falls_support import Ward
from falls.falls_support import make_ward as falls_make_ward
from lods.alerts.models import Alert
from lods.alerts.service import raise_alert
from lods.falls.models import FallRiskAssessment
from lods.imaging.models import Patient
from lods.runtime import Runtime
from lods.sites.models import Department
from lods.solutions.models import Deployment, SolutionVersion
from lods.vitals.models import BedStay, EarlyWarningScore, Encounter, VitalObservation
from support import free_port

#: A fixed clock for the read-model tests.
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
UNITS = {
    "resp_rate": "/min",
    "spo2": "%",
    "heart_rate": "/min",
    "pulse_rate": "/min",
    "bp_sys": "mm[Hg]",
    "bp_dia": "mm[Hg]",
    "temperature": "Cel",
}
LOINC = {
    "resp_rate": "9279-1",
    "spo2": "59408-5",
    "heart_rate": "8867-4",
    "pulse_rate": "8867-4",
    "bp_sys": "8480-6",
    "bp_dia": "8462-4",
    "temperature": "8310-5",
    "consciousness": "67775-7",
    "oxygen": "3150-0",
}


def make_ward(
    rt: Runtime,
    *,
    site: str = "AUH",
    code: str = "GER1",
    name: str = "Geriatri 1",
    beds: tuple[tuple[str, str], ...] = (("1", "R1"), ("2", "R1"), ("3", "R2")),
) -> Ward:
    """The board tests' ward (`falls_support.make_ward` with their defaults)."""
    return falls_make_ward(rt, site=site, code=code, name=name, beds=beds)


def admit(
    rt: Runtime,
    ward: Ward,
    bed: str,
    *,
    patient_id: str,
    name: str = "Hansen^Karen",
    birth_date: date | None = date(1941, 3, 14),
    sex: str = "F",
    at: datetime = NOW - timedelta(days=2),
) -> tuple[int, int]:
    """Admit a new patient to `bed`; return (encounter id, patient row id)."""
    with rt.sessions() as db, db.begin():
        patient = Patient(
            patient_id=patient_id, issuer="", name=name, birth_date=birth_date, sex=sex
        )
        db.add(patient)
        db.flush()
        enc = Encounter(
            patient_fk=patient.id,
            site_id=ward.site_id,
            visit_number=f"V-{patient_id}",
            ward_fk=ward.id,
            bed_fk=ward.beds[bed],
            admitted_at=at,
            updated_at=at,
        )
        db.add(enc)
        db.flush()
        db.add(BedStay(encounter_fk=enc.id, ward_fk=ward.id, bed_fk=ward.beds[bed], started_at=at))
        return enc.id, patient.id


def add_readings(
    rt: Runtime,
    encounter_id: int,
    values: dict[str, float | str],
    *,
    at: datetime,
    valid: bool = True,
) -> dict[str, int]:
    """Store one set of readings of the encounter's patient; return their ids by parameter."""
    with rt.sessions() as db, db.begin():
        enc = db.get(Encounter, encounter_id)
        assert enc is not None
        ids = {}
        for parameter, value in values.items():
            row = VitalObservation(
                patient_fk=enc.patient_fk,
                encounter_fk=enc.id,
                bed_fk=enc.bed_fk,
                parameter=parameter,
                loinc=LOINC[parameter],
                value=value if isinstance(value, float | int) else None,
                value_text=value if isinstance(value, str) else None,
                unit=UNITS.get(parameter, ""),
                observed_at=at,
                received_at=at,
                valid=valid,
                invalid_reason=None if valid else "OBX-11 X",
                source="hl7",
            )
            db.add(row)
            db.flush()
            ids[parameter] = row.id
        return ids


def scoring_deployment(rt: Runtime, site_id: int) -> tuple[int, int]:
    """A (version, deployment) pair the test scores name as their provenance."""
    with rt.sessions() as db, db.begin():
        version = db.scalar(select(SolutionVersion).where(SolutionVersion.solution_id == "t.ews"))
        if version is None:
            version = SolutionVersion(
                solution_id="t.ews",
                version="1.0",
                name="Test EWS",
                vendor="test",
                runtime_kind="python",
                input_kind="vitals",
                manifest_text="",
                manifest_sha256="0" * 64,
                files={},
                package_path="none",
                installed_by="test",
            )
            db.add(version)
            db.flush()
        deployment = db.scalar(
            select(Deployment).where(
                Deployment.version_fk == version.id, Deployment.site_fk == site_id
            )
        )
        if deployment is None:
            deployment = Deployment(
                version_fk=version.id,
                site_fk=site_id,
                mode="live",
                created_by="test",
                changed_by="test",
            )
            db.add(deployment)
            db.flush()
        return version.id, deployment.id


def add_score(
    rt: Runtime,
    ward: Ward,
    encounter_id: int,
    *,
    at: datetime,
    total: int | None,
    band: str | None,
    missing: tuple[str, ...] = (),
    next_due_minutes: int | None = 60,
    parts: dict[str, Any] | None = None,
) -> int:
    """Store a score row as the engine does (complete when `missing` is empty)."""
    version, deployment = scoring_deployment(rt, ward.site_id)
    with rt.sessions() as db, db.begin():
        enc = db.get(Encounter, encounter_id)
        assert enc is not None
        row = EarlyWarningScore(
            patient_fk=enc.patient_fk,
            encounter_fk=enc.id,
            bed_fk=enc.bed_fk,
            version_fk=version,
            deployment_fk=deployment,
            score_name="NEWS2",
            computed_at=at,
            observed_at=at,
            complete=not missing,
            total=None if missing else total,
            band=None if missing else band,
            missing=list(missing),
            parts=parts or {},
            options={},
            next_due_minutes=next_due_minutes,
        )
        db.add(row)
        db.flush()
        return row.id


def add_morse(rt: Runtime, encounter_id: int, *, total: int, level: str, at: datetime) -> None:
    with rt.sessions() as db, db.begin():
        enc = db.get(Encounter, encounter_id)
        assert enc is not None
        db.add(
            FallRiskAssessment(
                patient_fk=enc.patient_fk,
                encounter_fk=enc.id,
                items={},
                total=total,
                level=level,
                cutoffs={"moderate": 25, "high": 45},
                assessed_by="nina",
                assessed_at=at,
            )
        )


def fall_alarm(
    rt: Runtime, ward: Ward, bed: str, *, now: datetime | None = None, patient_fk: int | None = None
) -> int:
    """Raise an urgent fall alarm for `bed` through the alerts service (as the falls policy
    does); return its id."""
    bed_id = ward.beds[bed]
    with rt.sessions() as db, db.begin():
        dept = db.get(Department, ward.id)
        assert dept is not None
        alert = raise_alert(
            db,
            kind="fall.alarm",
            subject=f"fall:{bed_id}",
            title=f"Fall detected, bed {bed}",
            severity="urgent",
            audience=("nurse", "physician"),
            site_id=ward.site_id,
            ward_id=ward.id,
            bed_id=bed_id,
            patient_id=patient_fk,
            facts={"event": "fall_detected", "confidence": 0.93},
            notify=True,
            repeat_seconds=120,
            escalate_after=1,
            now=now,
        )
        return alert.id


def alert_row(rt: Runtime, alert_id: int) -> Alert:
    with rt.sessions() as db:
        row = db.get(Alert, alert_id)
        assert row is not None
        db.expunge(row)
        return row


class ThreadServer:
    """The app under uvicorn in a thread of this process: what the test raises through
    the services reaches the same live hub the server streams from."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def thread_server(app: Any) -> Iterator[ThreadServer]:
    server = ThreadServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
