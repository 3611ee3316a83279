"""Morse Fall Scale (STANDARDS.md §2): item points, totals 0–125, configurable cut-offs,
the entry stored with the cut-offs used, audited and announced to the board."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from falls.falls_support import (
    MORSE_HIGH,
    MORSE_LOW,
    MORSE_MODERATE,
    admit,
    deploy_falls,
    falls_package,
    make_ward,
)
from lods.audit.models import AuditEvent
from lods.falls import service
from lods.runtime import Runtime

#: Every answer of every item with its points, as STANDARDS.md §2 gives them.
ITEM_POINTS = [
    ("history_of_falling", "no", 0),
    ("history_of_falling", "yes", 25),
    ("secondary_diagnosis", "no", 0),
    ("secondary_diagnosis", "yes", 15),
    ("ambulatory_aid", "none", 0),
    ("ambulatory_aid", "bed_rest", 0),
    ("ambulatory_aid", "nurse_assist", 0),
    ("ambulatory_aid", "crutches", 15),
    ("ambulatory_aid", "cane", 15),
    ("ambulatory_aid", "walker", 15),
    ("ambulatory_aid", "furniture", 30),
    ("iv_therapy", "no", 0),
    ("iv_therapy", "yes", 20),
    ("gait", "normal", 0),
    ("gait", "bed_rest", 0),
    ("gait", "wheelchair", 0),
    ("gait", "weak", 10),
    ("gait", "impaired", 20),
    ("mental_status", "oriented", 0),
    ("mental_status", "forgets_limitations", 15),
    ("mental_status", "overestimates", 15),
]


@pytest.mark.parametrize(("item", "answer", "points"), ITEM_POINTS)
def test_each_answer_scores_its_points(item: str, answer: str, points: int) -> None:
    assert service.morse_total({**MORSE_LOW, item: answer}) == points


def test_totals_range_from_0_to_125() -> None:
    worst = {
        "history_of_falling": "yes",
        "secondary_diagnosis": "yes",
        "ambulatory_aid": "furniture",
        "iv_therapy": "yes",
        "gait": "impaired",
        "mental_status": "forgets_limitations",
    }
    assert service.morse_total(MORSE_LOW) == 0
    assert service.morse_total(worst) == 125 == service.MORSE_MAX
    assert service.morse_total(MORSE_MODERATE) == 35
    assert service.morse_total(MORSE_HIGH) == 25 + 15 + 15 + 20 + 10


def test_missing_unknown_and_wrong_answers_are_named() -> None:
    items = {k: v for k, v in MORSE_LOW.items() if k != "gait"}
    items["mental_status"] = "confused"
    items["mood"] = "fine"
    with pytest.raises(service.FallsError) as caught:
        service.morse_total(items)
    message = str(caught.value)
    assert "gait is required" in message
    assert "'confused' is not one of" in message
    assert "unknown item(s) mood" in message


@pytest.mark.parametrize(
    ("total", "level"),
    [(0, "low"), (24, "low"), (25, "moderate"), (44, "moderate"), (45, "high"), (125, "high")],
)
def test_default_cutoffs(total: int, level: str) -> None:
    assert service.risk_level(total, service.DEFAULT_CUTOFFS) == level


def test_cutoffs_must_be_ordered_within_the_range() -> None:
    assert service.check_cutoffs({"moderate": "30", "high": 50}) == {"moderate": 30, "high": 50}
    for bad in ({"moderate": 45, "high": 45}, {"moderate": 0, "high": 10}, {"high": 130}):
        with pytest.raises(service.FallsError):
            service.check_cutoffs(bad)


def test_assessment_uses_default_cutoffs_without_a_falls_solution(
    sqlite_runtime: Runtime,
) -> None:
    ward = make_ward(sqlite_runtime)
    with sqlite_runtime.sessions() as db, db.begin():
        encounter = admit(db, ward, "B1", patient_id="MRN-1")
        row = service.assess_morse(
            db, encounter_id=encounter.id, items=MORSE_MODERATE, actor="nina", source="10.0.0.1"
        )
        assert (row.total, row.level, row.cutoffs) == (35, "moderate", {"moderate": 25, "high": 45})
        assert row.patient_fk == encounter.patient_fk and row.assessed_by == "nina"
        audit = db.scalars(select(AuditEvent).where(AuditEvent.action == "falls.morse")).one()
        assert audit.patient_id == "MRN-1" and audit.actor == "nina"
        assert json.loads(audit.detail)["total"] == 35
        pending = db.info["lods.live.pending"]
        assert (ward.id, {"type": "risk", "bed_id": ward.beds["B1"]}) in pending


def test_assessment_uses_the_deployed_solutions_cutoffs(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    ward = make_ward(sqlite_runtime)
    options = {"morse_cutoffs": {"moderate": 40, "high": 60}, "at_risk_levels": ["high"]}
    package = falls_package(tmp_path / "pkg", version="1.1.0", options=options)
    deploy_falls(sqlite_runtime, ward, package=package)
    with sqlite_runtime.sessions() as db, db.begin():
        encounter = admit(db, ward, "B1")
        moderate = service.assess_morse(
            db, encounter_id=encounter.id, items=MORSE_MODERATE, actor="nina"
        )
        high = service.assess_morse(db, encounter_id=encounter.id, items=MORSE_HIGH, actor="nina")
        assert (moderate.total, moderate.level) == (35, "low")
        assert (high.total, high.level) == (85, "high")
        assert high.cutoffs == {"moderate": 40, "high": 60}
        latest = service.current_risk(db, encounter_fks=[encounter.id])
        assert latest[encounter.id].id == high.id


def test_current_risk_is_the_latest_per_encounter(sqlite_runtime: Runtime) -> None:
    ward = make_ward(sqlite_runtime)
    with sqlite_runtime.sessions() as db, db.begin():
        first = admit(db, ward, "B1")
        second = admit(db, ward, "B2")
        service.assess_morse(db, encounter_id=first.id, items=MORSE_HIGH, actor="nina")
        newer = service.assess_morse(db, encounter_id=first.id, items=MORSE_LOW, actor="peter")
        risk = service.current_risk(db, encounter_fks=[first.id, second.id])
        assert set(risk) == {first.id} and risk[first.id].id == newer.id
        assert risk[first.id].level == "low"
        assert service.current_risk(db, encounter_fks=[]) == {}


def test_a_discharged_stay_is_not_assessed(sqlite_runtime: Runtime) -> None:
    ward = make_ward(sqlite_runtime)
    with sqlite_runtime.sessions() as db, db.begin():
        gone = admit(
            db,
            ward,
            "B1",
            at=datetime(2026, 1, 1, tzinfo=UTC),
            until=datetime(2026, 1, 5, tzinfo=UTC),
        )
        with pytest.raises(service.FallsError, match="discharged"):
            service.assess_morse(db, encounter_id=gone.id, items=MORSE_LOW, actor="nina")
        with pytest.raises(service.FallsNotFound):
            service.assess_morse(db, encounter_id=999, items=MORSE_LOW, actor="nina")
