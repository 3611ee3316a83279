"""The ward board's read model: a tile per bed with its patient, latest score and band,
missing and overdue observations, trend, readings, alarms and fall-risk settings — read
in a bounded number of statements whatever the number of beds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from board_support import (
    NOW,
    add_morse,
    add_readings,
    add_score,
    admit,
    fall_alarm,
    make_ward,
)
from sqlalchemy import Engine, event

from lods.alerts.service import acknowledge, raise_alert
from lods.monitoring.board import (
    WardNotFound,
    age_on,
    band_colour,
    board_fingerprint,
    ward_board,
)
from lods.runtime import Runtime
from lods.sites.service import add_bed, add_department
from lods.vitals.models import Encounter, PatientOption

SET = {
    "resp_rate": 21.0,
    "spo2": 93.0,
    "bp_sys": 120.0,
    "bp_dia": 70.0,
    "pulse_rate": 95.0,
    "temperature": 37.5,
}


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    """Collect every statement the engine runs inside the block."""
    statements: list[str] = []

    def before(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        statements.append(sql)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_tiles_follow_rooms_and_beds_and_show_the_occupant(runtime: Runtime) -> None:
    ward = make_ward(runtime, beds=(("12", "R1"), ("3", "R2"), ("11", "R1")))
    enc, _ = admit(runtime, ward, "12", patient_id="P-1", name="Hansen^Karen")
    with runtime.sessions() as db:
        board = ward_board(db, ward_id=ward.id, now=NOW)
    assert board["ward"]["code"] == "GER1" and board["ward"]["site"]["code"] == "AUH"
    assert [(t["room"], t["code"]) for t in board["beds"]] == [
        ("R1", "11"),
        ("R1", "12"),
        ("R2", "3"),
    ]
    empty, taken, _ = board["beds"]
    assert empty["occupant"] is None and empty["score"] is None and empty["bed_exit"] is None
    occupant = taken["occupant"]
    assert occupant["encounter_id"] == enc and occupant["patient_id"] == "P-1"
    assert occupant["name"] == "Hansen^Karen" and occupant["sex"] == "F"
    assert occupant["age"] == 85  # born 1941-03-14, seen 2026-11-29
    assert occupant["admitted_at"] == (NOW - timedelta(days=2)).isoformat()
    assert taken["bed_exit"] == "auto"
    assert board["counts"] == {
        "beds": 3,
        "occupied": 1,
        "alerts": 0,
        "urgent": 0,
        "unacknowledged": 0,
    }


def test_a_discharged_patient_leaves_the_bed_empty(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    enc, _ = admit(runtime, ward, "1", patient_id="P-1")
    with runtime.sessions() as db, db.begin():
        row = db.get(Encounter, enc)
        assert row is not None
        row.state, row.discharged_at = "discharged", NOW
    with runtime.sessions() as db:
        assert ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]["occupant"] is None


def test_the_latest_score_gives_band_colour_and_due_time(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    enc, _ = admit(runtime, ward, "1", patient_id="P-1")
    add_score(runtime, ward, enc, at=NOW - timedelta(hours=3), total=2, band="low")
    add_score(
        runtime, ward, enc, at=NOW - timedelta(minutes=20), total=6, band="medium",
        next_due_minutes=60,
    )  # fmt: skip
    with runtime.sessions() as db:
        score = ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]["score"]
    assert (score["total"], score["band"], score["colour"]) == (6, "medium", "orange")
    assert score["complete"] and score["missing"] == [] and score["name"] == "NEWS2"
    assert score["due_at"] == (NOW + timedelta(minutes=40)).isoformat()
    assert score["overdue"] is False and score["overdue_minutes"] == 0


def test_an_incomplete_score_shows_what_is_missing_and_claims_no_total(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    enc, _ = admit(runtime, ward, "1", patient_id="P-1")
    add_score(
        runtime, ward, enc, at=NOW - timedelta(minutes=5), total=None, band=None,
        missing=("resp_rate", "temperature"), next_due_minutes=None,
    )  # fmt: skip
    with runtime.sessions() as db:
        score = ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]["score"]
    assert score["complete"] is False and score["total"] is None and score["band"] is None
    assert score["colour"] == "none" and score["scored_at"] is None
    assert score["missing"] == ["resp_rate", "temperature"]
    assert score["due_at"] is None and score["overdue"] is False


def test_after_an_incomplete_set_the_last_complete_one_keeps_band_and_due_time(
    runtime: Runtime,
) -> None:
    ward = make_ward(runtime)
    enc, _ = admit(runtime, ward, "1", patient_id="P-1")
    scored = NOW - timedelta(minutes=95)
    add_score(runtime, ward, enc, at=scored, total=5, band="medium", next_due_minutes=60)
    add_score(
        runtime, ward, enc, at=NOW - timedelta(minutes=5), total=None, band=None,
        missing=("resp_rate",), next_due_minutes=None,
    )  # fmt: skip
    with runtime.sessions() as db:
        score = ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]["score"]
    assert score["complete"] is False and score["missing"] == ["resp_rate"]
    assert (score["total"], score["band"], score["colour"]) == (5, "medium", "orange")
    assert score["scored_at"] == scored.isoformat()
    assert score["overdue"] is True and score["overdue_minutes"] == 35


@pytest.mark.parametrize(
    ("band", "total", "colour"),
    [
        ("low", 0, "none"),
        ("low", 3, "green"),
        ("low_medium", 3, "amber"),
        ("medium", 5, "orange"),
        ("high", 9, "red"),
        ("toks_call", 4, "neutral"),
        (None, None, "none"),
    ],
)
def test_band_colours(band: str | None, total: int | None, colour: str) -> None:
    assert band_colour(band, total) == colour


def test_age_counts_whole_years() -> None:
    assert age_on(NOW.date().replace(year=1940), NOW.date()) == 86
    assert age_on(NOW.date().replace(year=1940, month=12), NOW.date()) == 85
    assert age_on(None, NOW.date()) is None


def test_trend_keeps_the_worst_total_per_half_hour_and_ends_on_the_latest(
    runtime: Runtime,
) -> None:
    ward = make_ward(runtime)
    enc, _ = admit(runtime, ward, "1", patient_id="P-1")
    base = NOW - timedelta(hours=2)
    for minutes, total in [(-60 * 25, 9), (1, 1), (5, 4), (12, 2), (41, 3), (70, 5), (118, 4)]:
        band = "medium" if total >= 5 else "low"
        add_score(runtime, ward, enc, at=base + timedelta(minutes=minutes), total=total, band=band)
    add_score(
        runtime, ward, enc, at=NOW - timedelta(minutes=1), total=None, band=None,
        missing=("resp_rate",),
    )  # fmt: skip
    with runtime.sessions() as db:
        tile = ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]
    totals = [p["total"] for p in tile["trend"]]
    # 08:00-08:30 → worst 4; 08:30-09:00 → 3; 09:00-09:30 → 5; 09:30-10:00 → 4 (the latest
    # complete score); the 25 h old 9 and the incomplete score are left out.
    assert totals == [4, 3, 5, 4]
    assert tile["trend"][-1]["at"] == (base + timedelta(minutes=118)).isoformat()
    assert tile["score"]["complete"] is False  # the tile shows the newest score itself


def test_latest_readings_per_parameter_with_validity(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    enc, _ = admit(runtime, ward, "1", patient_id="P-1")
    add_readings(runtime, enc, SET, at=NOW - timedelta(minutes=10))
    add_readings(runtime, enc, {"spo2": 91.0, "pulse_rate": 99.0}, at=NOW - timedelta(minutes=2))
    add_readings(runtime, enc, {"resp_rate": 8388607.0}, at=NOW - timedelta(minutes=1), valid=False)
    # A 5 h old consciousness check counts because the latest score used it.
    old = add_readings(runtime, enc, {"consciousness": "A"}, at=NOW - timedelta(hours=5))
    stale = add_readings(runtime, enc, {"oxygen": "air"}, at=NOW - timedelta(hours=5))
    add_score(
        runtime, ward, enc, at=NOW - timedelta(minutes=2), total=5, band="medium",
        parts={"consciousness": {"value": "A", "points": 0, "observation": old["consciousness"]}},
    )  # fmt: skip
    with runtime.sessions() as db:
        vitals = ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]["vitals"]
    assert vitals["spo2"]["value"] == 91.0 and vitals["spo2"]["unit"] == "%"
    assert vitals["pulse_rate"]["at"] == (NOW - timedelta(minutes=2)).isoformat()
    assert vitals["temperature"]["value"] == 37.5
    assert vitals["resp_rate"]["valid"] is False
    assert vitals["consciousness"]["text"] == "A"
    assert "oxygen" not in vitals and stale  # older than the window and not scored


def test_alerts_go_to_their_bed_and_ward_alerts_stand_apart(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    enc, patient = admit(runtime, ward, "2", patient_id="P-1")
    alarm = fall_alarm(runtime, ward, "2", now=NOW, patient_fk=patient)
    with runtime.sessions() as db, db.begin():
        overdue = raise_alert(
            db,
            kind="ews.overdue",
            subject=f"ews-overdue:{enc}",
            title="Observations overdue",
            severity="warning",
            audience=("nurse", "physician"),
            ward_id=ward.id,
            bed_id=ward.beds["2"],
            notify=True,
            now=NOW - timedelta(minutes=5),
        ).id
        ward_wide = raise_alert(
            db,
            kind="sensors.offline",
            subject=f"sensors:{ward.id}",
            title="Room sensors silent",
            severity="info",
            audience=("nurse",),
            ward_id=ward.id,
            now=NOW,
        ).id
        acknowledge(db, alert_id=overdue, actor="nina", now=NOW)
    with runtime.sessions() as db:
        board = ward_board(db, ward_id=ward.id, now=NOW)
    first, second, third = board["beds"]
    assert first["alerts"] == [] and third["alerts"] == []
    assert [a["id"] for a in second["alerts"]] == [alarm, overdue]  # urgent first
    urgent = second["alerts"][0]
    assert urgent["kind"] == "fall.alarm" and urgent["state"] == "notified"
    assert urgent["notifications"] == 1 and urgent["escalation_level"] == 0
    assert urgent["facts"] == {"event": "fall_detected", "confidence": 0.93}
    assert second["alerts"][1]["acknowledged_by"] == "nina"
    assert second["attention"] == 5 and first["attention"] == 0
    assert [a["id"] for a in board["ward_alerts"]] == [ward_wide]
    assert board["counts"]["alerts"] == 3 and board["counts"]["urgent"] == 1
    assert board["counts"]["unacknowledged"] == 2


def test_fall_risk_bed_exit_and_options(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    enc, patient = admit(runtime, ward, "1", patient_id="P-1")
    add_morse(runtime, enc, total=30, level="moderate", at=NOW - timedelta(days=1))
    add_morse(runtime, enc, total=55, level="high", at=NOW - timedelta(hours=1))
    with runtime.sessions() as db, db.begin():
        row = db.get(Encounter, enc)
        assert row is not None
        row.bed_exit_alerts = False
        db.add(
            PatientOption(
                patient_fk=patient, key="spo2_scale", value=2, reason="COPD", set_by="peter",
                set_at=NOW - timedelta(hours=2),
            )
        )  # fmt: skip
        db.add(
            PatientOption(
                patient_fk=patient, key="pregnant", value=True, reason="x", set_by="peter",
                set_at=NOW - timedelta(hours=2), revoked_at=NOW, revoked_by="peter",
            )
        )  # fmt: skip
    with runtime.sessions() as db:
        tile = ward_board(db, ward_id=ward.id, now=NOW)["beds"][0]
    assert tile["risk"]["total"] == 55 and tile["risk"]["level"] == "high"
    assert tile["bed_exit"] == "off"
    assert [(o["key"], o["value"], o["set_by"]) for o in tile["options"]] == [
        ("spo2_scale", 2, "peter")
    ]


def test_an_unknown_ward_or_a_department_without_beds_is_not_found(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    with runtime.sessions() as db, db.begin():
        radiology = add_department(
            db, site_id=ward.site_id, code="RAD", name="Radiologi", kind="radiology", actor="t"
        ).id
    with runtime.sessions() as db:
        for ward_id in (ward.id + 1000, radiology):
            with pytest.raises(WardNotFound):
                ward_board(db, ward_id=ward_id, now=NOW)


def test_the_board_costs_a_bounded_number_of_statements(runtime: Runtime) -> None:
    beds = tuple((str(n), f"R{n // 2}") for n in range(1, 33))
    ward = make_ward(runtime, beds=beds)
    for n in range(1, 31):
        enc, patient = admit(runtime, ward, str(n), patient_id=f"P-{n}")
        add_readings(runtime, enc, SET, at=NOW - timedelta(minutes=5))
        add_score(runtime, ward, enc, at=NOW - timedelta(minutes=5), total=n % 8, band="low")
        add_morse(runtime, enc, total=30, level="moderate", at=NOW - timedelta(hours=3))
        if n % 5 == 0:
            fall_alarm(runtime, ward, str(n), now=NOW, patient_fk=patient)
    with runtime.sessions() as db, counted(runtime.engine) as statements:
        board = ward_board(db, ward_id=ward.id, now=NOW)
        board_fingerprint(db, ward_id=ward.id)
    assert len(board["beds"]) == 32 and board["counts"]["occupied"] == 30
    assert sum(len(t["alerts"]) for t in board["beds"]) == 6
    taken = [t for t in board["beds"] if t["occupant"]]
    assert all(t["vitals"] and t["score"] and t["risk"] for t in taken)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) <= 11, reads


def test_the_fingerprint_changes_with_the_board_and_holds_no_patient_data(
    runtime: Runtime,
) -> None:
    ward = make_ward(runtime)

    def fingerprint() -> str:
        with runtime.sessions() as db:
            return board_fingerprint(db, ward_id=ward.id)

    seen = [fingerprint()]
    assert fingerprint() == seen[0]  # stable while nothing changes
    enc, patient = admit(runtime, ward, "1", patient_id="P-7", name="Secret^Sara")
    seen.append(fingerprint())
    add_readings(runtime, enc, {"spo2": 95.0}, at=NOW)
    seen.append(fingerprint())
    add_score(runtime, ward, enc, at=NOW, total=3, band="low")
    seen.append(fingerprint())
    alarm = fall_alarm(runtime, ward, "1", now=NOW, patient_fk=patient)
    seen.append(fingerprint())
    with runtime.sessions() as db, db.begin():
        acknowledge(db, alert_id=alarm, actor="nina", now=NOW)
    seen.append(fingerprint())
    add_morse(runtime, enc, total=50, level="high", at=NOW)
    seen.append(fingerprint())
    with runtime.sessions() as db, db.begin():
        add_bed(db, ward_id=ward.id, code="9", room="R9", actor="test")
    seen.append(fingerprint())
    assert len(set(seen)) == len(seen)
    assert all("Secret" not in f and "P-7" not in f for f in seen)
