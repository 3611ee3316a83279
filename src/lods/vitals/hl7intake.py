"""HL7 v2 intake: a batch of messages read by the MLLP listener, handled in the caller's
one transaction (`intake_hl7`).

A repeated (sender, MSH-10) — stored earlier or earlier in the same batch — is answered
with the stored ACK code and changes nothing; rejected messages (AR) and ORU for an
unknown location or a patient who does not lie in that bed (AE) are kept in
`hl7_messages` with their answer, without observations. ORU runs are stored with Core
bulk inserts and batch look-ups (beds, occupants, duplicates) so the listener can take
thousands of messages a second; individual monitor readings are not audited (the
`hl7_messages` rows are their trail). ADT^A01/A02/A03/A08 go through the ADT functions of
`lods.vitals.service`. Scores are computed for every patient with new readings
(`lods.vitals.scoring.score_after_intake`) before the transaction commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from lods.alerts.live import publish_after_commit
from lods.db import bulk_insert, utcnow
from lods.imaging.models import Patient
from lods.sites.models import Bed, Department, Site
from lods.sites.service import BED_KINDS
from lods.vitals import hl7in, latest
from lods.vitals.models import (
    Encounter,
    EncounterState,
    Hl7Message,
    VitalObservation,
)
from lods.vitals.service import (
    VitalsError,
    active_encounter,
    admit,
    discharge,
    patient_for,
    score_patients,
    settings_or_default,
    transfer,
    update_patient,
)

HL7_MESSAGES: Table = Hl7Message.__table__  # type: ignore[assignment]
VITAL_OBSERVATIONS: Table = VitalObservation.__table__  # type: ignore[assignment]
#: Rows per IN (...) look-up (SQLite's default limit on bound parameters is 32766).
LOOKUP_CHUNK = 500


@dataclass(frozen=True)
class Inbound:
    """One message as the listener read it, and the peer it came from; for an ORU the
    listener may have read its vital signs already (`hl7in.vital_readings`, with the
    `received_at` it passes to `intake_hl7`)."""

    message: hl7in.ParsedMessage | hl7in.Rejected
    source: str = ""
    readings: list[hl7in.VitalReading] | None = None


@dataclass(frozen=True)
class Answer:
    """What a message is answered: MSA-1, MSA-3 text, ERR-3 code for AE/AR."""

    code: str
    text: str = ""
    error_code: str | None = None
    duplicate: bool = False


def _key(header: hl7in.Header) -> tuple[str, str] | None:
    return (header.sender, header.control_id) if header.control_id else None


def _chunks(items: Sequence[Any], size: int = LOOKUP_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stored_answers(
    db: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str]]:
    """{(sender, control id): (ack code, ack text)} of the messages already stored."""
    wanted = set(keys)
    found: dict[tuple[str, str], tuple[str, str]] = {}
    if not wanted:
        return found
    senders = sorted({s for s, _ in wanted})
    control_ids = sorted({c for _, c in wanted})
    for chunk in _chunks(control_ids):
        rows = db.execute(
            select(
                Hl7Message.sender, Hl7Message.control_id, Hl7Message.ack_code, Hl7Message.ack_text
            ).where(Hl7Message.sender.in_(senders), Hl7Message.control_id.in_(list(chunk)))
        )
        for sender, control_id, code, text in rows:
            if (sender, control_id) in wanted:
                found[(sender, control_id)] = (code, text)
    return found


def _message_row(
    header: hl7in.Header, raw: str, answer: Answer, received_at: datetime
) -> dict[str, Any]:
    # A message without a readable MSH-10 is still kept; it gets a control id of its own
    # ("!" marks one Lods made up) so the (sender, control id) key stays unique.
    control_id = header.control_id or f"!{uuid.uuid4().hex}"
    return {
        "sender": header.sender,
        "control_id": control_id[:64],
        "message_type": (header.message_type or "?")[:20],
        "received_at": received_at,
        "ack_code": answer.code,
        "ack_text": answer.text,
        "raw": raw,
    }


def _duplicate(code: str, text: str) -> Answer:
    return Answer(
        code, f"duplicate: already received ({text})" if text else "duplicate", None, True
    )


@dataclass
class _Occupant:
    encounter_id: int
    patient_fk: int
    patient_id: str
    issuer: str


@dataclass
class _Place:
    bed_id: int
    ward_id: int
    site_id: int
    site_code: str
    occupant: _Occupant | None = None


@dataclass
class _OruPlan:
    index: int
    message: hl7in.ParsedMessage
    answer: Answer
    place: _Place | None = None
    patient: _Occupant | None = None
    readings: list[hl7in.VitalReading] = field(default_factory=list)
    read_before: list[hl7in.VitalReading] | None = None


def _site_codes(db: Session) -> frozenset[str]:
    return frozenset(db.scalars(select(Site.code)))


def _site_hint(header: hl7in.Header, site_codes: frozenset[str]) -> str | None:
    """The site a message is for: MSH-6 (receiving facility) when it is a site code, else
    MSH-4 (sending facility) when it is one, else None (the ward code must be unique)."""
    for facility in (header.receiving_facility, header.sending_facility):
        if facility in site_codes:
            return facility
    return None


def _beds_by_location(
    db: Session, locations: Sequence[hl7in.Location]
) -> dict[tuple[str, str], list[_Place]]:
    """The active beds at these (ward code, bed code) locations (any site), with who lies
    in each: one query for a whole batch of monitor messages."""
    places: dict[tuple[str, str], list[_Place]] = {}
    bed_codes = sorted({loc.bed for loc in locations})
    for chunk in _chunks(sorted({loc.ward for loc in locations})):
        rows = db.execute(
            select(
                Bed.id,
                Bed.code,
                Department.id,
                Department.code,
                Site.id,
                Site.code,
                Encounter.id,
                Patient.id,
                Patient.patient_id,
                Patient.issuer,
            )
            .join(Department, Department.id == Bed.ward_id)
            .join(Site, Site.id == Department.site_id)
            .outerjoin(
                Encounter,
                (Encounter.bed_fk == Bed.id) & (Encounter.state == EncounterState.ACTIVE.value),
            )
            .outerjoin(Patient, Patient.id == Encounter.patient_fk)
            .where(
                Department.code.in_(list(chunk)),
                Department.kind.in_(sorted(BED_KINDS)),
                Bed.code.in_(bed_codes),
                Bed.is_active.is_(True),
            )
        )
        # Sorted here, not by SQL: with ORDER BY bed, encounter SQLite's planner joins the
        # encounters through their state index, visiting every active encounter per bed.
        # Every bed of the wards: a ward has tens of beds, and one statement (no list of bed
        # codes) is compiled once.
        ordered = sorted(
            (r for r in rows if r[1] in bed_codes),
            key=lambda r: (r[0], r[6] is not None, r[6] or 0),
        )
        by_bed: dict[int, _Place] = {}
        for bed_id, bed_code, ward_id, ward_code, site_id, site_code, *who in ordered:
            place = by_bed.get(bed_id)
            if place is None:
                place = by_bed[bed_id] = _Place(bed_id, ward_id, site_id, site_code)
                places.setdefault((ward_code, bed_code), []).append(place)
            encounter_id, patient_fk, patient_id, issuer = who
            if encounter_id is not None:  # the newest active encounter wins
                place.occupant = _Occupant(encounter_id, patient_fk, patient_id, issuer)
    return places


def _known_sites(
    db: Session, plans: Sequence[_OruPlan], places: dict[tuple[str, str], list[_Place]]
) -> frozenset[str]:
    """The site codes among the messages' facilities (MSH-4, MSH-6): those of the beds
    found are known already; only other facility names are looked up."""
    known = {p.site_code for found in places.values() for p in found}
    facilities = {
        f
        for plan in plans
        for f in (plan.message.header.receiving_facility, plan.message.header.sending_facility)
        if f and f not in known
    }
    if facilities:
        known |= set(db.scalars(select(Site.code).where(Site.code.in_(sorted(facilities)))))
    return frozenset(known)


def _pick_place(
    candidates: list[_Place], header: hl7in.Header, site_codes: frozenset[str]
) -> _Place | None:
    hint = _site_hint(header, site_codes)
    if hint is not None:
        candidates = [p for p in candidates if p.site_code == hint]
    return candidates[0] if len(candidates) == 1 else None


def _same_patient(ident: hl7in.PatientIdent, occupant_: _Occupant) -> bool:
    if ident.patient_id != occupant_.patient_id:
        return False
    return not ident.issuer or ident.issuer == occupant_.issuer


def _oru_summary(readings: Sequence[hl7in.VitalReading]) -> str:
    if not readings:
        return "accepted: no vital signs in the message"
    invalid = sum(1 for r in readings if not r.valid)
    text = f"accepted: {len(readings)} vital signs"
    return text + (f" ({invalid} invalid)" if invalid else "")


def _store_oru_run(
    db: Session,
    plans: list[_OruPlan],
    *,
    received_at: datetime,
    settings: Any,
    score_later: list[int] | None,
) -> None:
    """Check and store a run of ORU messages with bulk inserts; sets each plan's answer.
    The patients with new readings are scored here, or added to `score_later`."""
    locations = [
        p.message.visit.location for p in plans if p.message.visit and p.message.visit.location
    ]
    places = _beds_by_location(db, locations)
    site_codes = _known_sites(db, plans, places)
    for plan in plans:
        visit = plan.message.visit
        if visit is None or not visit.location.ward or not visit.location.bed:
            plan.answer = Answer(
                "AE", "PV1-3 location (ward^room^bed) is missing", hl7in.ERR_REQUIRED_FIELD
            )
            continue
        loc = visit.location
        place = _pick_place(places.get((loc.ward, loc.bed), []), plan.message.header, site_codes)
        if place is None:
            plan.answer = Answer(
                "AE", f"unknown location {loc.ward}^{loc.room}^{loc.bed}", hl7in.ERR_UNKNOWN_KEY
            )
            continue
        here = place.occupant
        ident = plan.message.patient
        if here is None:
            who = f"patient {ident.patient_id}" if ident and ident.patient_id else "no patient"
            plan.answer = Answer(
                "AE", f"{who} is not admitted to bed {loc.ward}^{loc.bed}", hl7in.ERR_UNKNOWN_KEY
            )
            continue
        if ident is not None and ident.patient_id and not _same_patient(ident, here):
            plan.answer = Answer(
                "AE",
                f"patient {ident.patient_id} is not admitted to bed {loc.ward}^{loc.bed}",
                hl7in.ERR_UNKNOWN_KEY,
            )
            continue
        plan.place, plan.patient = place, here
        plan.readings = (
            plan.read_before
            if plan.read_before is not None
            else hl7in.vital_readings(plan.message, received_at=received_at)
        )
        plan.answer = Answer("AA", _oru_summary(plan.readings))
    message_rows = [
        _message_row(p.message.header, p.message.raw, p.answer, received_at) for p in plans
    ]
    # Core statements on the session's connection: the ORM's bulk path costs several times
    # more per row, and a monitor message brings eight or more rows.
    conn = db.connection()
    ids = list(
        conn.execute(
            insert(HL7_MESSAGES).returning(HL7_MESSAGES.c.id, sort_by_parameter_order=True),
            message_rows,
        ).scalars()
    )
    observation_rows: list[dict[str, Any]] = []
    for plan, message_id in zip(plans, ids, strict=True):
        if plan.patient is None or plan.place is None:
            continue
        sender = plan.message.header.sender[:100]
        for r in plan.readings:
            observation_rows.append(
                {
                    "patient_fk": plan.patient.patient_fk,
                    "encounter_fk": plan.patient.encounter_id,
                    "bed_fk": plan.place.bed_id,
                    "parameter": r.parameter,
                    "loinc": r.loinc,
                    "mdc_code": r.mdc_code,
                    "value": r.value,
                    "value_text": r.value_text,
                    "unit": r.unit,
                    "observed_at": r.observed_at,
                    "received_at": received_at,
                    "valid": r.valid,
                    "invalid_reason": r.invalid_reason[:200] if r.invalid_reason else None,
                    "source": "hl7",
                    "message_fk": message_id,
                    "entered_by": r.equipment or sender,
                }
            )
    if observation_rows:
        bulk_insert(conn, VITAL_OBSERVATIONS, observation_rows)
        latest.note_messages(
            conn, sorted({row["message_fk"] for row in observation_rows}), received_at=received_at
        )
    stored = [p for p in plans if p.patient is not None and p.place is not None and p.readings]
    patient_fks = [p.patient.patient_fk for p in stored if p.patient is not None]
    if score_later is not None:
        score_later.extend(patient_fks)
    else:
        score_patients(db, patient_fks=patient_fks, now=received_at, settings=settings)
    for ward_id, bed_id in sorted({(p.place.ward_id, p.place.bed_id) for p in stored if p.place}):
        publish_after_commit(db, ward_id, {"type": "vitals", "bed_id": bed_id})


class _AdtRefused(Exception):
    def __init__(self, text: str, error_code: str) -> None:
        super().__init__(text)
        self.text, self.error_code = text, error_code


def _adt_place(
    db: Session, location: hl7in.Location, header: hl7in.Header
) -> tuple[Department, Bed | None]:
    site_codes = _site_codes(db)
    hint = _site_hint(header, site_codes)
    query = select(Department).where(
        Department.code == location.ward, Department.kind.in_(sorted(BED_KINDS))
    )
    if hint is not None:
        query = query.join(Site, Site.id == Department.site_id).where(Site.code == hint)
    wards = list(db.scalars(query.limit(2)))
    if len(wards) != 1:
        raise _AdtRefused(f"unknown location {location}", hl7in.ERR_UNKNOWN_KEY)
    ward = wards[0]
    if not location.bed:
        return ward, None
    bed = db.scalar(
        select(Bed).where(Bed.ward_id == ward.id, Bed.code == location.bed, Bed.is_active.is_(True))
    )
    if bed is None:
        raise _AdtRefused(f"unknown location {location}", hl7in.ERR_UNKNOWN_KEY)
    return ward, bed


def _adt_encounter(
    db: Session, patient: Patient, visit: hl7in.Visit | None, site_id: int | None
) -> Encounter | None:
    if visit is not None and visit.visit_number:
        query = select(Encounter).where(
            Encounter.visit_number == visit.visit_number, Encounter.patient_fk == patient.id
        )
        if site_id is not None:
            query = query.where(Encounter.site_id == site_id)
        found = db.scalar(query.order_by(Encounter.id.desc()).limit(1))
        if found is not None:
            return found
    return active_encounter(db, patient_fk=patient.id)


def handle_adt(
    db: Session, message: hl7in.ParsedMessage, *, received_at: datetime, source: str
) -> Answer:
    """Apply one ADT message (A01 admit, A02 transfer, A03 discharge, A08 update) and say
    what the sender is told. Refusals (AE) change nothing."""
    header = message.header
    ident = message.patient
    if ident is None or not ident.patient_id:
        return Answer("AE", "PID-3 patient id is missing", hl7in.ERR_REQUIRED_FIELD)
    visit = message.visit
    event = header.trigger
    at = (
        (visit.discharged_at if visit and event == "A03" else None)
        or (visit.admitted_at if visit and event == "A01" else None)
        or message.event_at
        or header.sent_at
        or received_at
    )
    actor = f"hl7:{header.sender}"
    notes: list[str] = []
    try:
        with db.begin_nested():
            place: tuple[Department, Bed | None] | None = None
            if visit is not None and visit.location.ward:
                place = _adt_place(db, visit.location, header)
            elif event in ("A01", "A02"):
                raise _AdtRefused("PV1-3 location is missing", hl7in.ERR_REQUIRED_FIELD)
            patient = patient_for(
                db,
                patient_id=ident.patient_id,
                issuer=ident.issuer,
                name=ident.name,
                birth_date=ident.birth_date,
                sex=ident.sex,
            )
            site_id = place[0].site_id if place else None
            encounter = _adt_encounter(db, patient, visit, site_id)
            if event == "A01" or (event == "A02" and encounter is None):
                if event == "A02":
                    notes.append("no active visit: admitted")
                assert place is not None
                try:
                    encounter = admit(
                        db,
                        patient_fk=patient.id,
                        bed_id=place[1].id if place[1] else None,
                        ward_id=place[0].id,
                        visit_number=visit.visit_number if visit else "",
                        at=at,
                        actor=actor,
                        source=source,
                        notes=notes,
                    )
                except VitalsError as exc:
                    raise _AdtRefused(str(exc), hl7in.ERR_UNKNOWN_KEY) from None
                text = f"admitted to {place[0].code}/{place[1].code if place[1] else '-'}"
            elif event == "A02":
                assert place is not None and encounter is not None
                if encounter.state != EncounterState.ACTIVE.value:
                    raise _AdtRefused(
                        f"visit {encounter.visit_number} is discharged", hl7in.ERR_UNKNOWN_KEY
                    )
                try:
                    transfer(
                        db,
                        encounter_id=encounter.id,
                        bed_id=place[1].id if place[1] else None,
                        ward_id=place[0].id,
                        at=at,
                        actor=actor,
                        source=source,
                        notes=notes,
                    )
                except VitalsError as exc:
                    raise _AdtRefused(str(exc), hl7in.ERR_UNKNOWN_KEY) from None
                text = f"transferred to {place[0].code}/{place[1].code if place[1] else '-'}"
            elif event == "A03":
                if encounter is None or encounter.state != EncounterState.ACTIVE.value:
                    text = "no active visit to discharge"
                else:
                    discharge(db, encounter_id=encounter.id, at=at, actor=actor, source=source)
                    text = f"visit {encounter.visit_number} discharged"
            else:  # A08
                update_patient(
                    db,
                    patient_fk=patient.id,
                    name=ident.name or None,
                    birth_date=ident.birth_date,
                    sex=ident.sex or None,
                    actor=actor,
                    source=source,
                )
                text = "patient updated"
                if (
                    place is not None
                    and encounter is not None
                    and encounter.state == EncounterState.ACTIVE.value
                    and (encounter.ward_fk, encounter.bed_fk)
                    != (place[0].id, place[1].id if place[1] else None)
                ):
                    transfer(
                        db,
                        encounter_id=encounter.id,
                        bed_id=place[1].id if place[1] else None,
                        ward_id=place[0].id,
                        at=at,
                        actor=actor,
                        source=source,
                        notes=notes,
                    )
                    text += f"; moved to {place[0].code}/{place[1].code if place[1] else '-'}"
    except _AdtRefused as exc:
        return Answer("AE", exc.text, exc.error_code)
    except VitalsError as exc:  # e.g. a transfer to another hospital's ward
        return Answer("AE", str(exc), hl7in.ERR_UNKNOWN_KEY)
    return Answer("AA", "; ".join([text, *notes]))


def intake_hl7(
    db: Session,
    inbound: Sequence[Inbound],
    *,
    now: datetime | None = None,
    settings: Any = None,
    score_later: list[int] | None = None,
) -> list[Answer]:
    """Handle a batch of HL7 messages in the caller's transaction and return each one's
    answer, in order. Everything is kept in `hl7_messages` with its answer (duplicates are
    not stored again). ORU runs are stored in bulk; ADT messages between them are applied
    in order, so an ORU after an admit in the same batch finds the patient in the bed.

    Patients with new readings are scored in the transaction, or — given `score_later` —
    appended to it for the caller to have scored (the listener's scorer process)."""
    received_at = now or utcnow()
    settings = settings_or_default(settings)
    answers: list[Answer | None] = [None] * len(inbound)
    keys = [_key(item.message.header) for item in inbound]
    earlier = stored_answers(db, [k for k in keys if k is not None])
    first_of: dict[tuple[str, str], int] = {}
    copies: list[tuple[int, int]] = []
    other_rows: list[dict[str, Any]] = []
    run: list[_OruPlan] = []

    def flush_run() -> None:
        if run:
            _store_oru_run(
                db, run, received_at=received_at, settings=settings, score_later=score_later
            )
            for plan in run:
                answers[plan.index] = plan.answer
            run.clear()

    for index, item in enumerate(inbound):
        key = keys[index]
        if key is not None:
            if key in earlier:
                answers[index] = _duplicate(*earlier[key])
                continue
            if key in first_of:
                copies.append((index, first_of[key]))
                continue
            first_of[key] = index
        message = item.message
        if isinstance(message, hl7in.Rejected):
            answer = Answer("AR", message.reason, message.error_code)
            answers[index] = answer
            other_rows.append(_message_row(message.header, message.raw, answer, received_at))
        elif message.is_oru:
            run.append(_OruPlan(index, message, Answer("AE"), read_before=item.readings))
        else:
            flush_run()
            answer = handle_adt(db, message, received_at=received_at, source=item.source)
            answers[index] = answer
            other_rows.append(_message_row(message.header, message.raw, answer, received_at))
    flush_run()
    if other_rows:
        db.connection().execute(insert(HL7_MESSAGES), other_rows)
    for index, first in copies:
        original = answers[first]
        assert original is not None
        answers[index] = _duplicate(original.code, original.text)
    return [
        a if a is not None else Answer("AE", "not handled", hl7in.ERR_INTERNAL) for a in answers
    ]
