"""Patients, inpatient encounters and bed occupancy (ADT), and vital signs entered by
nurses and FHIR clients.

ADT keeps the occupancy history: every stretch a patient lies in a bed is a `BedStay`
row. Admit opens one, transfer closes the old and opens the new, discharge closes it and
the encounter. One patient per bed: admitting or moving someone into an occupied bed ends
the previous occupant's stay there (their encounter stays active, without a bed) and says
so in `notes`, which the HL7 listener puts in the ACK text. Every ADT change is audited
with the patient id; so are manual and FHIR vital-sign entries. Every intake path scores
the patients it stored readings for (`lods.vitals.scoring.score_after_intake`) in the same
transaction, and publishes live "vitals" / "occupancy" events after commit. HL7 v2
messages come in through `lods.vitals.hl7intake`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lods.alerts.live import publish_after_commit
from lods.audit.service import record
from lods.db import utcnow
from lods.imaging.models import Patient
from lods.sites.models import Bed, Department
from lods.sites.service import BED_KINDS
from lods.vitals import codes
from lods.vitals.models import (
    BedStay,
    Encounter,
    EncounterState,
    VitalObservation,
)


class VitalsError(Exception):
    """An intake or ADT request that cannot be done as asked."""


class NotFoundError(VitalsError):
    """The encounter, patient, ward or bed named does not exist."""


class InvalidVitals(VitalsError, ValueError):
    """Entered values that are not readings (unknown parameter, unit, impossible value)."""


# --- patients and encounters ------------------------------------------------------------------


def patient_for(
    db: Session,
    *,
    patient_id: str,
    issuer: str = "",
    name: str = "",
    birth_date: date | None = None,
    sex: str = "",
) -> Patient:
    """The patient with this id and issuer, created when new; demographics that are given
    (non-empty) replace the stored ones."""
    patient_id, issuer = patient_id.strip(), issuer.strip()
    if not patient_id:
        raise VitalsError("a patient id is required")
    patient = db.scalar(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    )
    if patient is None:
        try:
            with db.begin_nested():
                patient = Patient(
                    patient_id=patient_id[:64],
                    issuer=issuer[:64],
                    name=name[:200],
                    birth_date=birth_date,
                    sex=sex[:16],
                )
                db.add(patient)
                db.flush()
            return patient
        except IntegrityError:  # created meanwhile by another transaction
            patient = db.scalar(
                select(Patient).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
            )
            if patient is None:
                raise
    if name and patient.name != name[:200]:
        patient.name = name[:200]
    if birth_date is not None and patient.birth_date != birth_date:
        patient.birth_date = birth_date
    if sex and patient.sex != sex[:16]:
        patient.sex = sex[:16]
    return patient


def occupant(db: Session, *, bed_id: int) -> Encounter | None:
    """The active encounter lying in this bed, or None."""
    return db.scalar(
        select(Encounter)
        .where(Encounter.bed_fk == bed_id, Encounter.state == EncounterState.ACTIVE.value)
        .order_by(Encounter.id.desc())
        .limit(1)
    )


def active_encounter(db: Session, *, patient_fk: int) -> Encounter | None:
    """The patient's active encounter (the newest, should there be more), or None."""
    return db.scalar(
        select(Encounter)
        .where(Encounter.patient_fk == patient_fk, Encounter.state == EncounterState.ACTIVE.value)
        .order_by(Encounter.id.desc())
        .limit(1)
    )


def get_encounter(db: Session, *, encounter_id: int) -> Encounter:
    encounter = db.get(Encounter, encounter_id)
    if encounter is None:
        raise NotFoundError(f"no encounter {encounter_id}")
    return encounter


def open_stay(db: Session, *, encounter_fk: int) -> BedStay | None:
    """The encounter's bed stay that has not ended, or None."""
    return db.scalar(
        select(BedStay)
        .where(BedStay.encounter_fk == encounter_fk, BedStay.ended_at.is_(None))
        .order_by(BedStay.id.desc())
        .limit(1)
    )


def _place(
    db: Session, *, bed_id: int | None, ward_id: int | None
) -> tuple[Department, Bed | None]:
    if bed_id is not None:
        bed = db.get(Bed, bed_id)
        if bed is None or not bed.is_active:
            raise NotFoundError(f"no bed {bed_id}")
        if ward_id is not None and ward_id != bed.ward_id:
            raise VitalsError(f"bed {bed_id} is not in ward {ward_id}")
        return bed.ward, bed
    if ward_id is None:
        raise VitalsError("a ward or a bed is required")
    ward = db.get(Department, ward_id)
    if ward is None or ward.kind not in BED_KINDS:
        raise NotFoundError(f"no ward {ward_id}")
    return ward, None


def _where(ward: Department, bed: Bed | None) -> str:
    return f"{ward.code}/{bed.code}" if bed is not None else ward.code


def _patient_id(db: Session, patient_fk: int) -> str:
    return str(db.scalar(select(Patient.patient_id).where(Patient.id == patient_fk)) or "")


def _end_stay(db: Session, encounter: Encounter, at: datetime) -> BedStay | None:
    stay = open_stay(db, encounter_fk=encounter.id)
    if stay is not None:
        stay.ended_at = max(at, stay.started_at)
    return stay


def _vacate(
    db: Session,
    *,
    ward: Department,
    bed: Bed,
    incoming: Encounter | None,
    at: datetime,
    actor: str,
    source: str,
    notes: list[str] | None,
) -> None:
    """One patient per bed: end the stay of whoever else lies in `bed`."""
    previous = occupant(db, bed_id=bed.id)
    if previous is None or (incoming is not None and previous.id == incoming.id):
        return
    _end_stay(db, previous, at)
    previous.bed_fk = None
    previous.updated_at = utcnow()
    patient_id = _patient_id(db, previous.patient_fk)
    record(
        db,
        actor=actor,
        action="encounter.vacate",
        object_ref=f"encounter:{previous.id}",
        patient_id=patient_id,
        source=source,
        detail={"bed": _where(ward, bed), "at": at.isoformat(), "reason": "bed taken"},
    )
    if notes is not None:
        notes.append(
            f"bed {_where(ward, bed)} was occupied by patient {patient_id}: their stay there ended"
        )
    publish_after_commit(db, ward.id, {"type": "occupancy", "bed_id": bed.id})


def _start_stay(
    db: Session, encounter: Encounter, ward: Department, bed: Bed | None, at: datetime
) -> BedStay:
    stay = BedStay(
        encounter_fk=encounter.id,
        ward_fk=ward.id,
        bed_fk=bed.id if bed is not None else None,
        started_at=at,
    )
    db.add(stay)
    encounter.ward_fk = ward.id
    encounter.bed_fk = bed.id if bed is not None else None
    encounter.updated_at = utcnow()
    return stay


def _publish_occupancy(db: Session, ward_id: int | None, bed_id: int | None) -> None:
    if ward_id is not None:
        publish_after_commit(db, ward_id, {"type": "occupancy", "bed_id": bed_id})


def admit(
    db: Session,
    *,
    patient_fk: int,
    bed_id: int | None = None,
    ward_id: int | None = None,
    visit_number: str = "",
    at: datetime | None = None,
    actor: str,
    source: str = "",
    notes: list[str] | None = None,
) -> Encounter:
    """Admit the patient to a bed (or a ward without a bed yet); audited.

    An active encounter with the same visit number (or, with none given, the patient's
    active encounter at that site) is updated instead — moved to the bed if elsewhere; a
    discharged visit with that number is re-opened. A patient with another active visit
    at the site has it discharged first. Whoever lay in the bed loses it (see `notes`).
    """
    at = at or utcnow()
    ward, bed = _place(db, bed_id=bed_id, ward_id=ward_id)
    patient = db.get(Patient, patient_fk)
    if patient is None:
        raise NotFoundError(f"no patient {patient_fk}")
    visit_number = visit_number.strip()[:64]
    encounter: Encounter | None = None
    if visit_number:
        encounter = db.scalar(
            select(Encounter).where(
                Encounter.site_id == ward.site_id, Encounter.visit_number == visit_number
            )
        )
        if encounter is not None and encounter.patient_fk != patient_fk:
            raise VitalsError(f"visit {visit_number} belongs to another patient")
    current = active_encounter(db, patient_fk=patient_fk)
    if (
        current is not None
        and current.site_id == ward.site_id
        and (encounter is None or current.id != encounter.id)
    ):
        if encounter is None and not visit_number:
            encounter = current
        else:
            discharge(db, encounter_id=current.id, at=at, actor=actor, source=source)
            if notes is not None:
                notes.append(f"earlier visit {current.visit_number} discharged")
    if encounter is not None and encounter.state == EncounterState.ACTIVE.value:
        if encounter.bed_fk == (bed.id if bed else None) and encounter.ward_fk == ward.id:
            encounter.updated_at = utcnow()
            if notes is not None:
                notes.append(f"visit {encounter.visit_number} already admitted here: updated")
            record(
                db,
                actor=actor,
                action="encounter.update",
                object_ref=f"encounter:{encounter.id}",
                patient_id=patient.patient_id,
                source=source,
                detail={"visit": encounter.visit_number, "where": _where(ward, bed)},
            )
            return encounter
        return transfer(
            db,
            encounter_id=encounter.id,
            bed_id=bed.id if bed else None,
            ward_id=ward.id,
            at=at,
            actor=actor,
            source=source,
            notes=notes,
        )
    if bed is not None:
        _vacate(
            db, ward=ward, bed=bed, incoming=None, at=at, actor=actor, source=source, notes=notes
        )
    if encounter is None:
        encounter = Encounter(
            patient_fk=patient_fk,
            site_id=ward.site_id,
            visit_number=visit_number or f"auto-{uuid.uuid4().hex[:16]}",
            admitted_at=at,
            state=EncounterState.ACTIVE.value,
        )
        db.add(encounter)
        db.flush()
        if not visit_number:
            encounter.visit_number = f"auto-{encounter.id}"
        action = "encounter.admit"
    else:  # a discharged visit comes back
        encounter.state, encounter.discharged_at = EncounterState.ACTIVE.value, None
        action = "encounter.readmit"
    _start_stay(db, encounter, ward, bed, at)
    db.flush()
    record(
        db,
        actor=actor,
        action=action,
        object_ref=f"encounter:{encounter.id}",
        patient_id=patient.patient_id,
        source=source,
        detail={"visit": encounter.visit_number, "where": _where(ward, bed), "at": at.isoformat()},
    )
    _publish_occupancy(db, ward.id, bed.id if bed else None)
    return encounter


def transfer(
    db: Session,
    *,
    encounter_id: int,
    bed_id: int | None = None,
    ward_id: int | None = None,
    at: datetime | None = None,
    actor: str,
    source: str = "",
    notes: list[str] | None = None,
) -> Encounter:
    """Move an active encounter to another bed (or ward): the old stay ends, a new one
    starts; whoever lay in the new bed loses it. Audited."""
    at = at or utcnow()
    encounter = get_encounter(db, encounter_id=encounter_id)
    if encounter.state != EncounterState.ACTIVE.value:
        raise VitalsError(f"encounter {encounter_id} is not active")
    ward, bed = _place(db, bed_id=bed_id, ward_id=ward_id)
    if ward.site_id != encounter.site_id:
        raise VitalsError("a transfer stays within the hospital (site) of the visit")
    new_bed = bed.id if bed is not None else None
    if encounter.ward_fk == ward.id and encounter.bed_fk == new_bed:
        if notes is not None:
            notes.append("already in that place")
        return encounter
    old_ward, old_bed = encounter.ward_fk, encounter.bed_fk
    if bed is not None:
        _vacate(
            db,
            ward=ward,
            bed=bed,
            incoming=encounter,
            at=at,
            actor=actor,
            source=source,
            notes=notes,
        )
    _end_stay(db, encounter, at)
    _start_stay(db, encounter, ward, bed, at)
    db.flush()
    record(
        db,
        actor=actor,
        action="encounter.transfer",
        object_ref=f"encounter:{encounter.id}",
        patient_id=_patient_id(db, encounter.patient_fk),
        source=source,
        detail={
            "visit": encounter.visit_number,
            "from": {"ward": old_ward, "bed": old_bed},
            "to": _where(ward, bed),
            "at": at.isoformat(),
        },
    )
    _publish_occupancy(db, old_ward, old_bed)
    _publish_occupancy(db, ward.id, new_bed)
    return encounter


def discharge(
    db: Session, *, encounter_id: int, at: datetime | None = None, actor: str, source: str = ""
) -> Encounter:
    """End the encounter and its bed stay; audited. Discharging twice changes nothing."""
    at = at or utcnow()
    encounter = get_encounter(db, encounter_id=encounter_id)
    if encounter.state != EncounterState.ACTIVE.value:
        return encounter
    _end_stay(db, encounter, at)
    encounter.state = EncounterState.DISCHARGED.value
    encounter.discharged_at = max(at, encounter.admitted_at)
    encounter.updated_at = utcnow()
    db.flush()
    record(
        db,
        actor=actor,
        action="encounter.discharge",
        object_ref=f"encounter:{encounter.id}",
        patient_id=_patient_id(db, encounter.patient_fk),
        source=source,
        detail={"visit": encounter.visit_number, "at": at.isoformat()},
    )
    _publish_occupancy(db, encounter.ward_fk, encounter.bed_fk)
    return encounter


def update_patient(
    db: Session,
    *,
    patient_fk: int,
    name: str | None = None,
    birth_date: date | None = None,
    sex: str | None = None,
    actor: str,
    source: str = "",
) -> Patient:
    """Change a patient's demographics (ADT A08); audited with what changed."""
    patient = db.get(Patient, patient_fk)
    if patient is None:
        raise NotFoundError(f"no patient {patient_fk}")
    changed: dict[str, Any] = {}
    if name is not None and name[:200] != patient.name:
        changed["name"] = True
        patient.name = name[:200]
    if birth_date is not None and birth_date != patient.birth_date:
        changed["birth_date"] = True
        patient.birth_date = birth_date
    if sex is not None and sex[:16] != patient.sex:
        changed["sex"] = True
        patient.sex = sex[:16]
    db.flush()
    record(
        db,
        actor=actor,
        action="patient.update",
        object_ref=f"patient:{patient.id}",
        patient_id=patient.patient_id,
        source=source,
        detail={"changed": sorted(changed)},
    )
    encounter = active_encounter(db, patient_fk=patient.id)
    if encounter is not None:
        _publish_occupancy(db, encounter.ward_fk, encounter.bed_fk)
    return patient


# --- storing readings (manual and FHIR) -------------------------------------------------------


@dataclass(frozen=True)
class NewReading:
    """A checked reading to store, with its time (see `codes.check_value`)."""

    reading: codes.Reading
    observed_at: datetime
    mdc_code: str | None = None


def score_patients(
    db: Session, *, patient_fks: Iterable[int], now: datetime, settings: Any
) -> None:
    """Score these patients after intake (`lods.vitals.scoring.score_after_intake`), in the
    caller's transaction."""
    from lods.vitals.scoring import score_after_intake

    fks = sorted(set(patient_fks))
    if fks:
        score_after_intake(db, patient_fks=fks, now=now, settings=settings, returning=False)


def settings_or_default(settings: Any) -> Any:
    """`settings`, or the process's settings when a caller has none at hand."""
    if settings is not None:
        return settings
    from lods.config import get_settings

    return get_settings()


def store_readings(
    db: Session,
    *,
    patient_fk: int,
    encounter: Encounter | None,
    readings: Sequence[NewReading],
    source: str,
    entered_by: str,
    now: datetime,
    settings: Any,
    score: bool = True,
) -> list[VitalObservation]:
    """Store readings of one patient (FHIR and manual entries), score the patient (unless
    the caller scores a whole batch itself, `score=False`), and publish a "vitals" event
    for the bed after commit. Not audited here: callers audit."""
    rows = [
        VitalObservation(
            patient_fk=patient_fk,
            encounter_fk=encounter.id if encounter else None,
            bed_fk=encounter.bed_fk if encounter else None,
            parameter=r.reading.parameter,
            loinc=r.reading.loinc,
            mdc_code=r.mdc_code,
            value=r.reading.value,
            value_text=r.reading.value_text,
            unit=r.reading.unit,
            observed_at=r.observed_at,
            received_at=now,
            valid=r.reading.valid,
            invalid_reason=r.reading.invalid_reason,
            source=source,
            entered_by=entered_by[:100],
        )
        for r in readings
    ]
    db.add_all(rows)
    db.flush()
    if score:
        score_patients(
            db, patient_fks=[patient_fk], now=now, settings=settings_or_default(settings)
        )
    if encounter is not None and encounter.ward_fk is not None:
        publish_after_commit(db, encounter.ward_fk, {"type": "vitals", "bed_id": encounter.bed_fk})
    return rows


def check_values(values: dict[str, float | str], *, observed_at: datetime) -> list[NewReading]:
    """Entered values as readings; raises InvalidVitals naming every value that is not a
    reading (a nurse or client corrects it rather than storing an impossible value)."""
    if not values:
        raise InvalidVitals("no values")
    if observed_at.tzinfo is None:
        raise InvalidVitals("the observation time needs a time zone")
    out: list[NewReading] = []
    problems: list[str] = []
    for parameter, raw in values.items():
        if parameter not in codes.PARAMETERS:
            problems.append(f"unknown parameter {parameter!r}")
            continue
        try:
            reading = codes.check_value(parameter, raw)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not reading.valid:
            problems.append(f"{parameter}: {reading.invalid_reason}")
            continue
        out.append(NewReading(reading, observed_at))
    if problems:
        raise InvalidVitals("; ".join(problems))
    return out


def record_manual_vitals(
    db: Session,
    *,
    encounter_id: int,
    values: dict[str, float | str],
    observed_at: datetime,
    actor: str,
    source: str = "",
    now: datetime | None = None,
    settings: Any = None,
) -> list[VitalObservation]:
    """A nurse's charted values for an active encounter (e.g. {"consciousness": "A",
    "oxygen": "air", "resp_rate": 18}); stored with source "manual", scored like monitor
    readings, audited. Raises InvalidVitals (nothing stored) when a value is not a reading.
    `settings` defaults to the process settings; `now` (the scoring time) to the clock."""
    encounter = get_encounter(db, encounter_id=encounter_id)
    if encounter.state != EncounterState.ACTIVE.value:
        raise VitalsError(f"encounter {encounter_id} is not active")
    readings = check_values(values, observed_at=observed_at)
    rows = store_readings(
        db,
        patient_fk=encounter.patient_fk,
        encounter=encounter,
        readings=readings,
        source="manual",
        entered_by=actor,
        now=now or utcnow(),
        settings=settings,
    )
    record(
        db,
        actor=actor,
        action="vitals.record",
        object_ref=f"encounter:{encounter.id}",
        patient_id=_patient_id(db, encounter.patient_fk),
        source=source,
        detail={
            "observations": [row.id for row in rows],
            "parameters": sorted(values),
            "observed_at": observed_at.isoformat(),
        },
    )
    return rows
