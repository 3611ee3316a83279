"""ADT: admit, transfer, discharge and update keep encounters and bed stays (bed-days come
from them), one patient per bed, every change audited — through the service and through
HL7 ADT messages; and a nurse's manual vital signs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from vitals_support import Ward, admit_patient, adt, make_ward

from lods.audit.models import AuditEvent
from lods.imaging.models import Patient
from lods.runtime import Runtime
from lods.vitals import hl7in, hl7intake
from lods.vitals import service as vitals
from lods.vitals.models import BedStay, Encounter, Hl7Message, VitalObservation

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def stays(db: Session, encounter_id: int) -> list[tuple[int | None, datetime, datetime | None]]:
    rows = db.scalars(
        select(BedStay).where(BedStay.encounter_fk == encounter_id).order_by(BedStay.id)
    )
    return [(s.bed_fk, s.started_at, s.ended_at) for s in rows]


def actions(db: Session, patient_id: str) -> list[str]:
    return list(
        db.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.patient_id == patient_id)
            .order_by(AuditEvent.seq)
        )
    )


@pytest.fixture
def ward(runtime: Runtime) -> Ward:
    with runtime.sessions() as db, db.begin():
        return make_ward(db, beds=("1", "2", "3"))


def test_admit_opens_an_encounter_and_a_bed_stay(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit_patient(db, ward, "1", "P1", visit_number="V1", at=T0)
        assert encounter.state == "active" and encounter.bed_fk == ward.beds["1"]
        assert vitals.occupant(db, bed_id=ward.beds["1"]) is encounter
        assert vitals.active_encounter(db, patient_fk=encounter.patient_fk) is encounter
        assert stays(db, encounter.id) == [(ward.beds["1"], T0, None)]
        assert actions(db, "P1") == ["encounter.admit"]


def test_admitting_without_a_visit_number_generates_one(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit_patient(db, ward, "2", "P2", at=T0)
        assert encounter.visit_number == f"auto-{encounter.id}"


def test_a_second_admit_of_the_same_visit_updates_it(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        first = admit_patient(db, ward, "1", "P1", visit_number="V1", at=T0)
        again = admit_patient(db, ward, "1", "P1", visit_number="V1", at=T0 + timedelta(hours=1))
        assert again.id == first.id
        assert len(stays(db, first.id)) == 1
        moved = admit_patient(db, ward, "2", "P1", visit_number="V1", at=T0 + timedelta(hours=2))
        assert moved.id == first.id and moved.bed_fk == ward.beds["2"]
        assert [s[0] for s in stays(db, first.id)] == [ward.beds["1"], ward.beds["2"]]


def test_transfer_closes_the_old_stay_and_opens_a_new_one(runtime: Runtime, ward: Ward) -> None:
    t1 = T0 + timedelta(hours=5)
    with runtime.sessions() as db, db.begin():
        encounter = admit_patient(db, ward, "1", "P1", at=T0)
        vitals.transfer(db, encounter_id=encounter.id, bed_id=ward.beds["3"], at=t1, actor="t")
        assert stays(db, encounter.id) == [(ward.beds["1"], T0, t1), (ward.beds["3"], t1, None)]
        assert vitals.occupant(db, bed_id=ward.beds["1"]) is None
        assert vitals.occupant(db, bed_id=ward.beds["3"]) is encounter
        assert actions(db, "P1") == ["encounter.admit", "encounter.transfer"]


def test_discharge_closes_the_stay_and_the_encounter(runtime: Runtime, ward: Ward) -> None:
    t1 = T0 + timedelta(days=2)
    with runtime.sessions() as db, db.begin():
        encounter = admit_patient(db, ward, "1", "P1", at=T0)
        vitals.discharge(db, encounter_id=encounter.id, at=t1, actor="t")
        vitals.discharge(db, encounter_id=encounter.id, at=t1 + timedelta(hours=1), actor="t")
        assert (encounter.state, encounter.discharged_at) == ("discharged", t1)
        assert stays(db, encounter.id) == [(ward.beds["1"], T0, t1)]
        assert vitals.occupant(db, bed_id=ward.beds["1"]) is None
        assert vitals.active_encounter(db, patient_fk=encounter.patient_fk) is None
        assert actions(db, "P1") == ["encounter.admit", "encounter.discharge"]


def test_one_patient_per_bed(runtime: Runtime, ward: Ward) -> None:
    t1 = T0 + timedelta(hours=1)
    with runtime.sessions() as db, db.begin():
        first = admit_patient(db, ward, "1", "P1", at=T0)
        notes: list[str] = []
        newcomer = vitals.patient_for(db, patient_id="P2", issuer="HOSP")
        second = vitals.admit(
            db, patient_fk=newcomer.id, bed_id=ward.beds["1"], at=t1, actor="t", notes=notes
        )
        assert vitals.occupant(db, bed_id=ward.beds["1"]) is second
        assert first.state == "active" and first.bed_fk is None
        assert stays(db, first.id) == [(ward.beds["1"], T0, t1)]
        assert notes and "P1" in notes[0]
        assert "encounter.vacate" in actions(db, "P1")


def test_update_patient_changes_demographics_and_is_audited(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        patient = vitals.patient_for(db, patient_id="P5", issuer="HOSP", name="Old^Name")
        vitals.update_patient(db, patient_fk=patient.id, name="New^Name", sex="M", actor="t")
        assert (patient.name, patient.sex) == ("New^Name", "M")
        assert actions(db, "P5") == ["patient.update"]
        # patient_for updates what it is given and keeps the rest.
        same = vitals.patient_for(db, patient_id="P5", issuer="HOSP")
        assert same.id == patient.id and same.name == "New^Name"


# --- through HL7 ADT ------------------------------------------------------------------------


def handle(rt: Runtime, raw: str) -> hl7intake.Answer:
    with rt.sessions() as db, db.begin():
        return hl7intake.intake_hl7(db, [hl7intake.Inbound(hl7in.read(raw))], settings=rt.settings)[
            0
        ]


def test_adt_messages_admit_transfer_update_and_discharge(runtime: Runtime, ward: Ward) -> None:
    t1, t2 = T0 + timedelta(hours=3), T0 + timedelta(days=1)
    assert handle(runtime, adt("A01", "M1", "P7", "W7", "1", visit_number="V7", at=T0)).code == "AA"
    answer = handle(runtime, adt("A02", "M2", "P7", "W7", "2", visit_number="V7", at=t1))
    assert answer.code == "AA" and "W7/2" in answer.text
    answer = handle(runtime, adt("A08", "M3", "P7", name="Jensen^Karen"))
    assert answer.code == "AA"
    discharge = adt("A03", "M4", "P7", "W7", "2", visit_number="V7", at=t2, name="Jensen^Karen")
    assert handle(runtime, discharge).code == "AA"
    with runtime.sessions() as db, db.begin():
        patient = db.scalar(select(Patient).where(Patient.patient_id == "P7"))
        assert patient is not None and patient.name == "Jensen^Karen"
        encounter = db.scalar(select(Encounter).where(Encounter.patient_fk == patient.id))
        assert encounter is not None and encounter.visit_number == "V7"
        assert encounter.state == "discharged" and encounter.discharged_at == t2
        assert stays(db, encounter.id) == [(ward.beds["1"], T0, t1), (ward.beds["2"], t1, t2)]
        assert actions(db, "P7") == [
            "encounter.admit",
            "encounter.transfer",
            "patient.update",
            "encounter.discharge",
        ]
        kept = db.scalars(select(Hl7Message.ack_code).order_by(Hl7Message.id))
        assert list(kept) == ["AA"] * 4


def test_adt_into_an_occupied_bed_says_so_in_the_ack(runtime: Runtime, ward: Ward) -> None:
    handle(runtime, adt("A01", "M1", "P1", "W7", "3", at=T0))
    answer = handle(runtime, adt("A01", "M2", "P2", "W7", "3", at=T0 + timedelta(hours=1)))
    assert answer.code == "AA" and "occupied by patient P1" in answer.text


def test_adt_for_an_unknown_location_is_refused_and_changes_nothing(
    runtime: Runtime, ward: Ward
) -> None:
    answer = handle(runtime, adt("A01", "M1", "P1", "W9", "1", at=T0))
    assert (answer.code, answer.error_code) == ("AE", hl7in.ERR_UNKNOWN_KEY)
    assert "unknown location" in answer.text
    assert handle(runtime, adt("A01", "M2", "", "W7", "1", at=T0)).code == "AE"
    with runtime.sessions() as db, db.begin():
        assert db.scalars(select(Encounter)).first() is None
        assert db.scalars(select(Patient)).first() is None
        codes = list(db.scalars(select(Hl7Message.ack_code)))
        assert codes == ["AE", "AE"]


def test_a_transfer_without_an_active_visit_admits(runtime: Runtime, ward: Ward) -> None:
    answer = handle(runtime, adt("A02", "M1", "P3", "W7", "2", at=T0))
    assert answer.code == "AA" and "admitted" in answer.text
    answer = handle(runtime, adt("A03", "M2", "P9", at=T0))
    assert answer.code == "AA" and "no active visit" in answer.text


# --- manual vital signs -----------------------------------------------------------------------


def test_manual_vitals_are_stored_scored_and_audited(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit_patient(db, ward, "1", "P1", at=T0)
        rows = vitals.record_manual_vitals(
            db,
            encounter_id=encounter.id,
            values={"consciousness": "A", "oxygen": "air", "resp_rate": 18},
            observed_at=T0 + timedelta(minutes=5),
            actor="nina",
            now=T0 + timedelta(minutes=6),
            settings=runtime.settings,
        )
        got = {r.parameter: (r.value, r.value_text, r.source, r.entered_by) for r in rows}
        assert got == {
            "consciousness": (None, "A", "manual", "nina"),
            "oxygen": (None, "air", "manual", "nina"),
            "resp_rate": (18.0, None, "manual", "nina"),
        }
        assert all(r.bed_fk == ward.beds["1"] and r.valid for r in rows)
        assert actions(db, "P1")[-1] == "vitals.record"


def test_impossible_manual_values_are_refused(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        encounter = admit_patient(db, ward, "1", "P1", at=T0)
        with pytest.raises(vitals.InvalidVitals, match="spo2"):
            vitals.record_manual_vitals(
                db,
                encounter_id=encounter.id,
                values={"spo2": 140, "resp_rate": 18},
                observed_at=T0,
                actor="nina",
                settings=runtime.settings,
            )
        with pytest.raises(vitals.InvalidVitals, match="unknown parameter"):
            vitals.record_manual_vitals(
                db,
                encounter_id=encounter.id,
                values={"mood": "good"},
                observed_at=T0,
                actor="nina",
                settings=runtime.settings,
            )
        assert db.scalars(select(VitalObservation)).first() is None


def test_a_transfer_to_another_hospital_is_refused(runtime: Runtime, ward: Ward) -> None:
    with runtime.sessions() as db, db.begin():
        make_ward(db, site_code="south", ward_code="W8", beds=("1",))
    assert handle(runtime, adt("A01", "M1", "P1", "W7", "1", at=T0)).code == "AA"
    answer = handle(runtime, adt("A02", "M2", "P1", "W8", "1", at=T0, site="south"))
    assert answer.code == "AE" and "within the hospital" in answer.text
    with runtime.sessions() as db, db.begin():
        assert vitals.occupant(db, bed_id=ward.beds["1"]) is not None
