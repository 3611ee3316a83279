"""Helpers for the falls, sensor and fall-figure tests: a ward with beds, patients
admitted to beds (encounter + bed stay, as ADT leaves them), the reference falls solution
installed, approved and deployed through the real services, and sensor events.

Imported as `falls.falls_support` from other test folders (the tests folder is on
sys.path; `tests/falls` is a namespace package).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lods.alerts.models import Alert, AlertEvent
from lods.auth.models import Role
from lods.auth.service import create_user, get_user
from lods.exports.models import OutboxItem
from lods.imaging.models import Patient
from lods.runtime import Runtime
from lods.sites.service import add_bed, add_department, create_site, get_site_by_code
from lods.solutions import service as solutions
from lods.solutions.packaging import build_package, read_manifest
from lods.vitals.models import BedStay, Encounter

REPO = Path(__file__).resolve().parents[2]
FALLS_PACKAGE = REPO / "reference_solutions" / "falls" / "package"
#: A fixed clock.
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
#: Morse answers giving 0 (low), 35 (moderate) and 95 (high) points.
MORSE_LOW = {
    "history_of_falling": "no",
    "secondary_diagnosis": "no",
    "ambulatory_aid": "none",
    "iv_therapy": "no",
    "gait": "normal",
    "mental_status": "oriented",
}
MORSE_MODERATE = {**MORSE_LOW, "history_of_falling": "yes", "gait": "weak"}
MORSE_HIGH = {
    "history_of_falling": "yes",
    "secondary_diagnosis": "yes",
    "ambulatory_aid": "walker",
    "iv_therapy": "yes",
    "gait": "weak",
    "mental_status": "oriented",
}


@dataclass
class Ward:
    site_id: int
    site_code: str
    id: int
    code: str
    #: bed code -> bed id
    beds: dict[str, int] = field(default_factory=dict)


def make_ward(
    rt: Runtime,
    *,
    site: str = "NORTH",
    code: str = "MED3",
    name: str | None = None,
    beds: tuple[tuple[str, str], ...] = (("B1", "R1"), ("B2", "R1"), ("B3", "R2")),
) -> Ward:
    """A ward of `site` (named `name`, else its code) with `beds` as (bed code, room); the
    site is made when missing."""
    with rt.sessions() as db, db.begin():
        found = get_site_by_code(db, code=site)
        site_id = found.id if found else create_site(db, code=site, name=site, actor="test").id
        ward = add_department(
            db, site_id=site_id, code=code, name=name or code, kind="ward", actor="test"
        )
        made = Ward(site_id=site_id, site_code=site, id=ward.id, code=code)
        for bed, room in beds:
            made.beds[bed] = add_bed(db, ward_id=ward.id, code=bed, room=room, actor="test").id
    return made


def admit(
    db: Session,
    ward: Ward,
    bed: str,
    *,
    patient_id: str | None = None,
    at: datetime = T0 - timedelta(days=1),
    until: datetime | None = None,
) -> Encounter:
    """A patient lying in `bed` since `at` (active), or from `at` to `until` (discharged)."""
    patient = Patient(patient_id=patient_id or f"P{uuid.uuid4().hex[:8]}", issuer="", name="X^Y")
    db.add(patient)
    db.flush()
    encounter = Encounter(
        patient_fk=patient.id,
        site_id=ward.site_id,
        visit_number=f"V{uuid.uuid4().hex[:10]}",
        ward_fk=ward.id,
        bed_fk=ward.beds[bed] if until is None else None,
        state="active" if until is None else "discharged",
        admitted_at=at,
        discharged_at=until,
        updated_at=at,
    )
    db.add(encounter)
    db.flush()
    db.add(
        BedStay(
            encounter_fk=encounter.id,
            ward_fk=ward.id,
            bed_fk=ward.beds[bed],
            started_at=at,
            ended_at=until,
        )
    )
    db.flush()
    return encounter


def _ai_owner(db: Session) -> Any:
    user = get_user(db, username="falls-owner")
    if user is None:
        user = create_user(
            db,
            username="falls-owner",
            roles=[Role.AI_OWNER],
            password="correct horse battery staple",
            full_name="Falls Owner",
            actor="test",
        )
    return user


def falls_package(
    folder: Path, *, version: str = "1.0.0", options: dict[str, Any] | None = None
) -> Path:
    """A copy of the reference falls package, as another version or with other options."""
    manifest, _text = read_manifest(FALLS_PACKAGE)
    data = manifest.model_dump(mode="json", exclude_none=True)
    data["version"] = version
    if options is not None:
        data["runtime"]["options"] = options
    data.pop("files")
    return build_package(folder, data, {"policy.py": FALLS_PACKAGE / "policy.py"})


def deploy_falls(
    rt: Runtime, ward: Ward, *, mode: str = "live", package: Path = FALLS_PACKAGE
) -> tuple[int, int]:
    """Install, approve and deploy a falls package at the ward's site; (version, deployment)."""
    with rt.sessions() as db, db.begin():
        version = solutions.install(db, settings=rt.settings, path=package, actor="test")
        solutions.approve(
            db,
            settings=rt.settings,
            version_id=version.id,
            approver=_ai_owner(db),
            evidence="reviewed the rule set against the ward's policy",
        )
        deployment = solutions.deploy(
            db, version_id=version.id, site_id=ward.site_id, mode=mode, actor="test"
        )
        return version.id, deployment.id


def installed_policy(rt: Runtime, version_id: int) -> Path:
    """The installed policy.py of a version (read-only on disk)."""
    with rt.sessions() as db:
        version = solutions.get_version(db, version_id=version_id)
        return solutions.package_dir(rt.settings, version) / "policy.py"


def tamper(path: Path) -> None:
    """Change an installed (read-only) file."""
    path.chmod(0o644)
    path.write_text(path.read_text() + "\n# changed\n")


def event(
    ward: Ward,
    bed: str = "B1",
    kind: str = "fall_detected",
    *,
    event_id: str | None = None,
    room: str = "R1",
    confidence: float = 0.9,
    at: datetime = T0,
    **extra: Any,
) -> dict[str, Any]:
    """A sensor event as a hub sends it."""
    return {
        "event_id": event_id or f"ev-{uuid.uuid4().hex}",
        "kind": kind,
        "site": ward.site_code,
        "ward": ward.code,
        "room": room,
        "bed": bed,
        "time": at.isoformat(),
        "confidence": confidence,
        "device_id": f"ceiling-{room}",
        **extra,
    }


def alerts_of(db: Session, kind: str | None = None) -> list[Alert]:
    query = select(Alert).order_by(Alert.id)
    if kind is not None:
        query = query.where(Alert.kind == kind)
    return list(db.scalars(query))


def steps(db: Session, alert_id: int) -> list[str]:
    return list(
        db.scalars(
            select(AlertEvent.step).where(AlertEvent.alert_fk == alert_id).order_by(AlertEvent.id)
        )
    )


def outbox_count(db: Session) -> int:
    return int(db.scalar(select(func.count()).select_from(OutboxItem)) or 0)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
