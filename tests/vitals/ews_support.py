"""Helpers for the early-warning score tests: the NEWS2 reference package installed,
approved and deployed through the real services, a ward with admitted patients, and
readings stored and scored in one transaction as the intake paths do."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from lods.runtime import Runtime
from lods.sites.service import add_bed, add_department, create_site, get_site_by_code
from lods.solutions.manifest import MANIFEST_NAME
from lods.solutions.packaging import write_hashes
from lods.vitals import scoring
from lods.vitals import service as vitals
from lods.vitals.models import EarlyWarningScore, VitalObservation
from support_solutions import install_approve_deploy

REPO = Path(__file__).resolve().parents[2]
NEWS2_PACKAGE = REPO / "reference_solutions" / "news2" / "package"
NEWS2_TABLE = NEWS2_PACKAGE / "news2.yaml"
#: A fixed clock: every test passes `now` explicitly.
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
ADULT = date(1950, 6, 1)
#: Vector 1 of STANDARDS.md: every sub-score 0.
NORMAL: dict[str, float | str] = {
    "resp_rate": 16,
    "spo2": 98,
    "oxygen": "air",
    "bp_sys": 124,
    "heart_rate": 72,
    "consciousness": "A",
    "temperature": 36.8,
}
UNITS = {
    "resp_rate": "/min",
    "spo2": "%",
    "heart_rate": "/min",
    "pulse_rate": "/min",
    "bp_sys": "mm[Hg]",
    "temperature": "Cel",
}
LOINC = {
    "resp_rate": "9279-1",
    "spo2": "59408-5",
    "heart_rate": "8867-4",
    "pulse_rate": "8867-4",
    "bp_sys": "8480-6",
    "temperature": "8310-5",
    "consciousness": "67775-7",
    "oxygen": "3150-0",
    "gcs": "9269-2",
}


def copy_package(target: Path, source: Path = NEWS2_PACKAGE) -> Path:
    """A copy of a package folder (without caches a checkout may hold)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def news2_package(tmp_path: Path) -> Path:
    return copy_package(tmp_path / "news2-package")


def variant_package(
    tmp_path: Path,
    *,
    solution_id: str,
    version: str,
    name: str,
    table: dict[str, Any],
    table_file: str = "region.yaml",
    age_min: float | None = 16,
    outputs: dict[str, Any] | None = None,
) -> Path:
    """The NEWS2 package with another table and manifest identity (and the outputs the
    region declares) — the same score.py, no code change."""
    folder = copy_package(tmp_path / f"{solution_id}-{version}")
    (folder / "news2.yaml").unlink()
    (folder / table_file).write_text(yaml.safe_dump(table, sort_keys=False), encoding="utf-8")
    manifest_path = folder / MANIFEST_NAME
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    manifest.update(id=solution_id, version=version, name=name)
    manifest["runtime"]["options"] = {"table": table_file}
    if outputs is not None:
        manifest["outputs"] = outputs
    if age_min is None:
        manifest["intended_use"].pop("age", None)
    else:
        manifest["intended_use"]["age"] = {"min_years": age_min}
    manifest["files"] = {}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    write_hashes(folder)
    return folder


def deploy(rt: Runtime, package: Path, *, site: str = "AUH", mode: str = "live") -> tuple[int, int]:
    """Install, approve (otto, an ai_owner) and deploy; (version id, deployment id)."""
    scoring.forget_packages()
    return install_approve_deploy(rt, package, site=site, mode=mode)


@dataclass
class Ward:
    site_id: int
    id: int
    beds: dict[str, int] = field(default_factory=dict)


def make_ward(
    rt: Runtime, *, site: str = "AUH", code: str = "MED1", beds: tuple[str, ...] = ("1", "2", "3")
) -> Ward:
    with rt.sessions() as db, db.begin():
        found = get_site_by_code(db, code=site)
        site_id = found.id if found else create_site(db, code=site, name=site, actor="test").id
        ward = add_department(
            db, site_id=site_id, code=code, name=f"Ward {code}", kind="ward", actor="test"
        )
        made = Ward(site_id=site_id, id=ward.id)
        for bed in beds:
            made.beds[bed] = add_bed(db, ward_id=ward.id, code=bed, room="R1", actor="test").id
        return made


def admit(
    rt: Runtime,
    ward: Ward,
    bed: str,
    *,
    patient_id: str,
    birth_date: date | None = ADULT,
    at: datetime = NOW - timedelta(days=1),
) -> tuple[int, int]:
    """Admit a new patient to `bed` through the vitals service: (encounter id, patient fk)."""
    with rt.sessions() as db, db.begin():
        patient = vitals.patient_for(
            db, patient_id=patient_id, name="Test^Patient", birth_date=birth_date, sex="F"
        )
        encounter = vitals.admit(
            db, patient_fk=patient.id, bed_id=ward.beds[bed], at=at, actor="test"
        )
        return encounter.id, patient.id


def store(
    rt: Runtime,
    encounter_id: int,
    values: dict[str, float | str],
    *,
    at: datetime,
    now: datetime | None = None,
    valid: bool = True,
) -> list[EarlyWarningScore]:
    """Store one set of readings and score the patient in the same transaction."""
    with rt.sessions() as db, db.begin():
        encounter = vitals.get_encounter(db, encounter_id=encounter_id)
        for parameter, value in values.items():
            db.add(
                VitalObservation(
                    patient_fk=encounter.patient_fk,
                    encounter_fk=encounter.id,
                    bed_fk=encounter.bed_fk,
                    parameter=parameter,
                    loinc=LOINC.get(parameter, "0-0"),
                    value=None if isinstance(value, str) else float(value),
                    value_text=value if isinstance(value, str) else None,
                    unit=UNITS.get(parameter, ""),
                    observed_at=at,
                    received_at=at,
                    valid=valid,
                    invalid_reason=None if valid else "OBX-11 X",
                    source="hl7",
                )
            )
        db.flush()
        return scoring.score_after_intake(
            db, patient_fks=[encounter.patient_fk], now=now or at, settings=rt.settings
        )
