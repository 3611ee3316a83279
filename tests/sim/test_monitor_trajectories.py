"""The monitor simulator's model: seeded and pure, plausible adult values at the resolution
monitors send, and deteriorating patients whose NEWS2 band climbs low → medium → high
(scored with the shipped NEWS2 table by the real early-warning engine)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lods.sim.monitors import (
    SENTINEL,
    BedModel,
    VitalSet,
    charted,
    parse_beds,
    parse_rooms,
    severity,
    vital_set,
    ward_models,
)
from lods.vitals import ews

START = datetime(2025, 3, 1, 7, 0, tzinfo=UTC)
BEDS = [str(n) for n in range(1, 13)]
NEWS2_TABLE = (
    Path(__file__).resolve().parents[2] / "reference_solutions" / "news2" / "package" / "news2.yaml"
)


def _ward(seed: int = 7, deteriorating: int = 2) -> list[BedModel]:
    return ward_models(
        site="north", ward="W7", beds=BEDS, start=START, deteriorating=deteriorating, seed=seed
    )


def _values(vitals: VitalSet) -> dict[str, float | str | None]:
    return {r.parameter: r.value for r in vitals.readings}


def _hours(n: int, step_minutes: int = 60) -> list[datetime]:
    return [START + timedelta(minutes=step_minutes * k) for k in range(n)]


def test_same_seed_same_ward_and_readings() -> None:
    first, again = _ward(seed=7), _ward(seed=7)
    assert first == again
    for a, b in zip(first, again, strict=True):
        for at in _hours(12):
            assert vital_set(a, at) == vital_set(b, at)
    other = _ward(seed=8)
    assert [m.patient for m in other] != [m.patient for m in first]
    assert [vital_set(m, START) for m in other] != [vital_set(m, START) for m in first]


def test_patients_are_adults_with_unique_ids_and_some_elderly() -> None:
    models = ward_models(
        site="north", ward="W7", beds=[str(n) for n in range(1, 61)], start=START, seed=3
    )
    ids = [m.patient.patient_id for m in models]
    assert len(set(ids)) == len(ids)
    ages = [(START.date() - m.patient.birth_date).days / 365.25 for m in models]
    assert min(ages) >= 18 and max(ages) < 100
    assert sum(age >= 75 for age in ages) >= 10
    assert {m.patient.sex for m in models} == {"F", "M"}
    assert all(m.patient.family and m.patient.given for m in models)


def test_which_and_how_many_deteriorate() -> None:
    for n in (0, 1, 2, 5):
        models = _ward(deteriorating=n)
        assert sum(m.deteriorating for m in models) == n
    stable = [m for m in _ward() if not m.deteriorating]
    assert all(severity(m, at) == 0.0 for m in stable for at in _hours(24))


def test_stable_patients_stay_in_plausible_adult_ranges_at_monitor_resolution() -> None:
    stable = [m for m in _ward() if not m.deteriorating]
    ranges = {
        "resp_rate": (8, 25),
        "spo2": (90, 100),
        "pulse_rate": (40, 120),
        "heart_rate": (40, 120),
        "bp_sys": (90, 190),
        "bp_dia": (40, 120),
        "bp_mean": (55, 140),
        "temperature": (35.5, 38.3),
    }
    seen: set[str] = set()
    for model in stable:
        for at in _hours(48, step_minutes=30):
            values = _values(vital_set(model, at, faults=False))
            for parameter, (low, high) in ranges.items():
                if parameter not in values:
                    continue
                seen.add(parameter)
                value = values[parameter]
                assert isinstance(value, int | float)
                assert low <= value <= high, (model.bed, at, parameter, value)
                if parameter == "temperature":
                    assert isinstance(value, float) and round(value, 1) == value
                else:
                    assert isinstance(value, int), (parameter, value)
            assert values["bp_dia"] < values["bp_sys"]  # type: ignore[operator]
            assert values.get("consciousness") in (None, "A")
            assert values.get("oxygen") in (None, "air")
    assert seen == set(ranges)  # some beds are on ECG too


def test_values_drift_and_vary_with_the_time_of_day() -> None:
    model = next(m for m in _ward() if not m.deteriorating)
    temps = [vital_set(model, at, faults=False).value("temperature") for at in _hours(48)]
    assert len(set(temps)) > 5
    assert max(temps) - min(temps) >= 0.3  # type: ignore[type-var, operator]


def test_faults_are_rare_and_marked() -> None:
    models = _ward()
    readings = [
        r for m in models for at in _hours(100, step_minutes=15) for r in vital_set(m, at).readings
    ]
    measured = [r for r in readings if r.parameter not in ("consciousness", "oxygen")]
    invalid = [r for r in measured if r.quality == "invalid"]
    sentinel = [r for r in measured if r.quality == "sentinel"]
    artefacts = [r for r in measured if r.quality == "artefact"]
    assert invalid and sentinel and artefacts
    assert len(invalid) + len(sentinel) + len(artefacts) < 0.03 * len(measured)
    assert all(r.status == "X" and r.value is None and not r.valid for r in invalid)
    assert all(r.status == "R" and r.value == SENTINEL and not r.valid for r in sentinel)
    assert all(r.status == "R" and r.valid for r in artefacts)
    assert all(r.status == "R" and r.quality == "ok" for r in measured if r.quality == "ok")
    model = models[0]
    clean = [vital_set(model, at, faults=False) for at in _hours(100, step_minutes=15)]
    assert all(r.quality == "ok" for v in clean for r in v.readings)


def test_charted_items_come_first_then_now_and_then_and_when_they_change() -> None:
    model = next(m for m in _ward() if m.deteriorating)
    first = _values(vital_set(model, START, faults=False))
    assert "consciousness" in first and "oxygen" in first
    times = _hours(24)
    sets = [vital_set(model, at, faults=False) for at in times]
    with_chart = [v for v in sets if v.value("consciousness") is not None]
    assert 0 < len(with_chart) < len(sets)
    for at, vitals in zip(times[1:], sets[1:], strict=True):
        now, before = charted(model, at), charted(model, at - timedelta(hours=1))
        for parameter in ("consciousness", "oxygen"):
            if now[parameter] != before[parameter]:
                assert vitals.value(parameter) == now[parameter]


def test_deteriorating_parameters_move_the_right_way() -> None:
    model = next(m for m in _ward() if m.deteriorating)
    before = model.start + timedelta(hours=model.onset_hours) - timedelta(hours=1)
    after = model.start + timedelta(hours=model.onset_hours + model.course_hours)

    def mean(at: datetime, parameter: str) -> float:
        window = [at + timedelta(minutes=10 * k) for k in range(-3, 4)]
        values = [vital_set(model, t, faults=False).value(parameter) for t in window]
        return sum(float(v) for v in values) / len(values)  # type: ignore[arg-type]

    assert mean(after, "resp_rate") > mean(before, "resp_rate") + 8
    assert mean(after, "pulse_rate") > mean(before, "pulse_rate") + 25
    assert mean(after, "bp_sys") < mean(before, "bp_sys") - 20
    assert mean(after, "spo2") < mean(before, "spo2") - 3
    assert mean(after, "temperature") > mean(before, "temperature") + 1.2
    assert charted(model, before) == {"consciousness": "A", "oxygen": "air"}
    assert charted(model, after) == {"consciousness": "C", "oxygen": "oxygen"}


@pytest.fixture(scope="module")
def news2() -> ews.ScoreTable:
    return ews.load_table(NEWS2_TABLE)


def _band(table: ews.ScoreTable, model: BedModel, at: datetime) -> str:
    values = {
        k: v
        for k, v in _values(vital_set(model, at, faults=False, chart_rate=1.0)).items()
        if v is not None
    }
    result = ews.evaluate(table, values)
    assert result.complete, result.missing
    assert result.band is not None
    return result.band


@pytest.mark.parametrize("seed", [7, 11, 2025])
def test_deteriorating_patients_climb_low_medium_high(news2: ews.ScoreTable, seed: int) -> None:
    models = _ward(seed=seed)
    times = _hours(20 * 4, step_minutes=15)
    for model in models:
        bands = [_band(news2, model, at) for at in times]
        if not model.deteriorating:
            assert bands.count("high") == 0, (model.bed, bands)
            assert bands.count("low") >= 0.9 * len(bands), (model.bed, bands)
            continue
        first_medium, first_high = bands.index("medium"), bands.index("high")
        assert bands[0] == "low", bands
        assert first_medium < first_high, bands
        assert all(b == "high" for b in bands[-8:]), bands  # the last two hours


def test_bed_and_room_specs() -> None:
    assert parse_beds("1-3") == ["1", "2", "3"]
    assert parse_beds("01-03,7") == ["01", "02", "03", "7"]
    assert parse_beds("A1-A3, B2") == ["A1", "A2", "A3", "B2"]
    assert parse_beds("A8-10") == ["A8", "A9", "A10"]
    for bad in ("", "3-1", "1,1", "a b"):
        with pytest.raises(ValueError):
            parse_beds(bad)
    assert parse_rooms(["701=1-2", "702=3"], ["1", "2", "3", "4"]) == {
        "1": "701",
        "2": "701",
        "3": "702",
        "4": "",
    }
    with pytest.raises(ValueError):
        parse_rooms(["701=9"], ["1"])
    with pytest.raises(ValueError):
        parse_rooms(["701"], ["1"])
