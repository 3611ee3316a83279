"""Taking in room-sensor events (MQTT and the HTTP webhook alike): validate, store once,
find the bed and its patient, and let the site's falls solution decide.

`ingest` is at-least-once safe: `event_id` is unique, a redelivered event returns the
stored row and changes nothing (no second alert). Two deliveries of one event racing in
parallel transactions are settled by the unique constraint: the insert runs in a
savepoint, and the loser returns the winner's row.

The ward comes from the event's `ward` code (narrowed by `site` when given); an unknown
ward refuses the event. An unknown bed on a known ward is stored without a bed: a fall
event still raises the fall alarm for the ward and room (a person on the floor is never
dropped for a configuration slip), bed-exit events are ignored. The bed's patient is the
active encounter lying in it (from ADT). What the falls policy made of the event is kept
on it (`SensorEvent.outcome`, see `lods.falls.service.apply_policy`). Each stored event
is audited and announced to the ward board as `{"type": "sensor", "bed_id", "kind"}`.

Events only: no image or video is ever accepted (`lods.sensors.schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lods.alerts import live
from lods.audit.service import record
from lods.config import Settings
from lods.db import utcnow
from lods.falls.service import apply_policy
from lods.imaging.models import Patient
from lods.sensors.models import SensorEvent
from lods.sensors.schemas import EventRejected, SensorEventIn, parse_event
from lods.sites.models import Bed, Department
from lods.sites.service import find_ward
from lods.vitals.models import Encounter, EncounterState

#: Where an event came from (`SensorEvent.source`).
SOURCES = ("mqtt", "http")


@dataclass(frozen=True)
class IngestResult:
    """The stored event, and whether it had been stored before (a redelivery)."""

    event: SensorEvent
    duplicate: bool


def stored_event(db: Session, *, event_id: str) -> SensorEvent | None:
    return db.scalar(select(SensorEvent).where(SensorEvent.event_id == event_id))


def bed_occupant(db: Session, *, bed_id: int) -> Encounter | None:
    """The active encounter lying in the bed (newest admission if ADT left two)."""
    return db.scalars(
        select(Encounter)
        .where(Encounter.bed_fk == bed_id, Encounter.state == EncounterState.ACTIVE.value)
        .order_by(Encounter.admitted_at.desc(), Encounter.id.desc())
    ).first()


def _locate(db: Session, parsed: SensorEventIn) -> tuple[Department, Bed | None]:
    ward = find_ward(db, ward_code=parsed.ward, site_code=parsed.site)
    if ward is None:
        where = f" at site {parsed.site!r}" if parsed.site else ""
        raise EventRejected(
            [f"unknown ward {parsed.ward!r}{where} (or the code is used at several sites)"],
            event_id=parsed.event_id,
        )
    bed = db.scalar(
        select(Bed).where(Bed.ward_id == ward.id, Bed.code == parsed.bed, Bed.is_active.is_(True))
    )
    return ward, bed


def ingest(
    db: Session,
    *,
    event: dict[str, Any],
    source: str,
    settings: Settings,
    now: datetime | None = None,
) -> IngestResult:
    """Validate and store one event and apply the falls policy, in the caller's
    transaction. Raises `EventRejected` (with every reason) for an event that cannot be
    taken; a redelivery returns the stored row with `duplicate=True`."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    now = now or utcnow()
    parsed = parse_event(event)
    existing = stored_event(db, event_id=parsed.event_id)
    if existing is not None:
        return IngestResult(existing, duplicate=True)
    ward, bed = _locate(db, parsed)
    encounter = bed_occupant(db, bed_id=bed.id) if bed is not None else None
    row = SensorEvent(
        event_id=parsed.event_id,
        kind=parsed.kind,
        ward_fk=ward.id,
        bed_fk=bed.id if bed else None,
        room=parsed.room,
        encounter_fk=encounter.id if encounter else None,
        occurred_at=parsed.occurred_at,
        received_at=now,
        confidence=parsed.confidence,
        source=source,
        device_id=parsed.device_id,
        outcome="",
        payload=parsed.as_payload(),
    )
    try:
        with db.begin_nested():
            db.add(row)
            db.flush()
    except IntegrityError:
        # Another delivery of the same event committed first: return what it stored.
        winner = stored_event(db, event_id=parsed.event_id)
        if winner is None:
            raise
        return IngestResult(winner, duplicate=True)
    outcome = apply_policy(
        db, event=row, ward=ward, bed=bed, encounter=encounter, settings=settings, now=now
    )
    db.flush()
    patient = db.get(Patient, encounter.patient_fk) if encounter else None
    record(
        db,
        actor=f"device:{parsed.device_id}"[:100],
        action="sensor.event",
        object_ref=f"sensor_event:{row.id}",
        patient_id=patient.patient_id if patient else None,
        source=source,
        detail={
            "event_id": parsed.event_id,
            "kind": parsed.kind,
            "ward": ward.code,
            "room": parsed.room,
            "bed": parsed.bed if bed else None,
            "bed_known": bed is not None,
            "outcome": outcome,
            "alert": row.alert_fk,
        },
    )
    live.publish_after_commit(
        db, ward.id, {"type": "sensor", "bed_id": row.bed_fk, "kind": row.kind}
    )
    return IngestResult(row, duplicate=False)


def ingest_event(
    db: Session,
    *,
    event: dict[str, Any],
    source: str,
    now: datetime | None = None,
    settings: Settings,
) -> SensorEvent:
    """`ingest`, returning just the stored (or previously stored) event."""
    return ingest(db, event=event, source=source, settings=settings, now=now).event
