"""The newest valid reading per patient and parameter (`latest_vitals`), kept in the
reading's own transaction by both ways in: the HL7 batch path and the ORM path (nurses,
FHIR). Newer wins, a late-arriving older reading does not replace it, invalid and
future-dated readings never become the newest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from vitals_support import Ward, admit_patient, make_ward, oru

from lods.runtime import Runtime
from lods.vitals import hl7in, hl7intake
from lods.vitals import service as vitals
from lods.vitals.models import LatestVital, VitalObservation

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def setup(rt: Runtime) -> tuple[Ward, int]:
    with rt.sessions() as db, db.begin():
        ward = make_ward(db)
        encounter = admit_patient(db, ward, "1", "P1", at=NOW - timedelta(days=1))
        return ward, encounter.id


def send(rt: Runtime, *messages: str, received_at: datetime = NOW) -> list[str]:
    with rt.sessions() as db, db.begin():
        answers = hl7intake.intake_hl7(
            db, [hl7intake.Inbound(hl7in.read(m)) for m in messages], now=received_at
        )
        return [a.code for a in answers]


def held(rt: Runtime) -> dict[str, tuple[float | str | None, datetime]]:
    with rt.sessions() as db:
        rows = db.scalars(select(LatestVital))
        return {
            r.parameter: (r.value if r.value is not None else r.value_text, r.observed_at)
            for r in rows
        }


def test_the_newest_reading_wins_within_one_batch_and_across_batches(
    runtime: Runtime,
) -> None:
    ward, _ = setup(runtime)
    early, late = NOW - timedelta(minutes=10), NOW - timedelta(minutes=1)
    assert send(
        runtime,
        oru("M1", "P1", ward.ward_code, "1", {"resp_rate": 18, "spo2": 97}, early),
        oru("M2", "P1", ward.ward_code, "1", {"resp_rate": 22}, late),
    ) == ["AA", "AA"]
    assert held(runtime) == {"resp_rate": (22.0, late), "spo2": (97.0, early)}
    # A set that arrives late, measured before the one held, changes nothing.
    backfill = NOW - timedelta(minutes=5)
    assert send(runtime, oru("M3", "P1", ward.ward_code, "1", {"resp_rate": 30}, backfill)) == [
        "AA"
    ]
    assert held(runtime)["resp_rate"] == (22.0, late)
    with runtime.sessions() as db:
        newest = db.scalar(select(LatestVital).where(LatestVital.parameter == "resp_rate"))
        observation = db.get(VitalObservation, newest.observation_fk) if newest else None
        assert observation is not None and observation.value == 22.0


def test_invalid_and_future_dated_readings_are_never_the_newest(runtime: Runtime) -> None:
    ward, _ = setup(runtime)
    then = NOW - timedelta(minutes=2)
    send(runtime, oru("M1", "P1", ward.ward_code, "1", {"spo2": 96, "resp_rate": 16}, then))
    send(
        runtime,
        oru(
            "M2",
            "P1",
            ward.ward_code,
            "1",
            {"spo2": 88, "resp_rate": 8388607},
            NOW,
            status={"spo2": "X"},
        ),
    )
    # A monitor whose clock runs an hour ahead.
    send(runtime, oru("M3", "P1", ward.ward_code, "1", {"spo2": 91}, NOW + timedelta(hours=1)))
    assert held(runtime) == {"spo2": (96.0, then), "resp_rate": (16.0, then)}


def test_values_a_nurse_charts_are_held_and_replaced_by_newer_ones(runtime: Runtime) -> None:
    _ward, encounter_id = setup(runtime)
    charted_at = NOW - timedelta(minutes=30)
    with runtime.sessions() as db, db.begin():
        vitals.record_manual_vitals(
            db,
            encounter_id=encounter_id,
            values={"consciousness": "A", "oxygen": "air"},
            observed_at=charted_at,
            actor="nina",
            now=charted_at,
            settings=runtime.settings,
        )
    assert held(runtime) == {"consciousness": ("A", charted_at), "oxygen": ("air", charted_at)}
    with runtime.sessions() as db, db.begin():
        vitals.record_manual_vitals(
            db,
            encounter_id=encounter_id,
            values={"consciousness": "C"},
            observed_at=NOW,
            actor="nina",
            now=NOW,
            settings=runtime.settings,
        )
    assert held(runtime)["consciousness"] == ("C", NOW)
