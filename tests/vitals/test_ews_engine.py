"""The table-driven early-warning engine with the shipped NEWS2 table: every worked vector
and every band boundary of STANDARDS.md §1, band precedence, freshness, options, adjusted
thresholds, and the table errors an author is told about."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from ews_support import NEWS2_TABLE, NORMAL

from lods.vitals import ews
from lods.vitals.ews import Reading, TableError, evaluate

TABLE = ews.load_table(NEWS2_TABLE)
RAW: dict[str, Any] = yaml.safe_load(NEWS2_TABLE.read_text(encoding="utf-8"))
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
ORDER = ["resp_rate", "spo2", "oxygen", "bp_sys", "pulse", "consciousness", "temperature"]


def test_news2_table_is_valid_and_totals_0_to_20() -> None:
    assert TABLE.name == "NEWS2"
    assert TABLE.max_total == 20
    assert [p.key for p in TABLE.parameters] == ORDER
    assert TABLE.total_code is not None and TABLE.total_code.value == "1104051000000101"


# --- STANDARDS.md worked vectors 1–8 ----------------------------------------------------

VECTORS = [
    # RR, SpO2, scale, air/O2, SBP, pulse, ACVPU, temp -> sub-scores, total, band
    ((16, 98, 1, "air", 124, 72, "A", 36.8), (0, 0, 0, 0, 0, 0, 0), 0, "low"),
    ((21, 93, 1, "air", 120, 95, "A", 37.5), (2, 2, 0, 0, 1, 0, 0), 5, "medium"),
    ((14, 96, 1, "air", 118, 80, "C", 37.2), (0, 0, 0, 0, 0, 3, 0), 3, "low_medium"),
    ((22, 95, 1, "air", 105, 95, "A", 38.3), (2, 1, 0, 1, 1, 0, 1), 6, "medium"),
    ((24, 93, 1, "oxygen", 100, 110, "A", 39.1), (2, 2, 2, 2, 1, 0, 2), 11, "high"),
    ((26, 90, 1, "oxygen", 88, 135, "U", 34.8), (3, 3, 2, 3, 3, 3, 3), 20, "high"),
    ((20, 95, 2, "oxygen", 140, 88, "A", 36.8), (0, 2, 2, 0, 0, 0, 0), 4, "low"),
    ((18, 97, 2, "oxygen", 130, 70, "A", 37.0), (0, 3, 2, 0, 0, 0, 0), 5, "medium"),
]


@pytest.mark.parametrize(("inputs", "parts", "total", "band"), VECTORS, ids=range(1, 9))
def test_worked_vector(
    inputs: tuple[Any, ...], parts: tuple[int, ...], total: int, band: str
) -> None:
    rr, spo2, scale, o2, sbp, pulse, acvpu, temp = inputs
    readings = {
        "resp_rate": rr,
        "spo2": spo2,
        "oxygen": o2,
        "bp_sys": sbp,
        "heart_rate": pulse,
        "consciousness": acvpu,
        "temperature": temp,
    }
    result = evaluate(TABLE, readings, {"spo2_scale": scale})
    assert tuple(result.parts[k].points for k in ORDER) == parts
    assert result.complete and result.missing == []
    assert (result.total, result.band) == (total, band)
    assert result.parts["spo2"].variant == ("scale2" if scale == 2 else None)
    expected_code = "1104321000000108" if scale == 2 else "1104311000000102"
    assert result.parts["spo2"].code is not None
    assert result.parts["spo2"].code.value == expected_code


# --- every band boundary, both sides -------------------------------------------------------


def points(parameter: str, value: float | str, **options: Any) -> int | None:
    source = "heart_rate" if parameter == "pulse" else parameter
    readings = dict(NORMAL)
    readings[source] = value
    for key in ("oxygen",):
        if key in options:
            readings[key] = options.pop(key)
    result = evaluate(TABLE, readings, options)
    return result.parts[parameter].points


BOUNDARIES = [
    # respiration rate
    ("resp_rate", 8, 3),
    ("resp_rate", 9, 1),
    ("resp_rate", 11, 1),
    ("resp_rate", 12, 0),
    ("resp_rate", 20, 0),
    ("resp_rate", 21, 2),
    ("resp_rate", 24, 2),
    ("resp_rate", 25, 3),
    # SpO2 scale 1
    ("spo2", 91, 3),
    ("spo2", 92, 2),
    ("spo2", 93, 2),
    ("spo2", 94, 1),
    ("spo2", 95, 1),
    ("spo2", 96, 0),
    # systolic blood pressure
    ("bp_sys", 90, 3),
    ("bp_sys", 91, 2),
    ("bp_sys", 100, 2),
    ("bp_sys", 101, 1),
    ("bp_sys", 110, 1),
    ("bp_sys", 111, 0),
    ("bp_sys", 219, 0),
    ("bp_sys", 220, 3),
    # pulse
    ("pulse", 40, 3),
    ("pulse", 41, 1),
    ("pulse", 50, 1),
    ("pulse", 51, 0),
    ("pulse", 90, 0),
    ("pulse", 91, 1),
    ("pulse", 110, 1),
    ("pulse", 111, 2),
    ("pulse", 130, 2),
    ("pulse", 131, 3),
    # temperature, at 0.1 °C
    ("temperature", 35.0, 3),
    ("temperature", 35.1, 1),
    ("temperature", 36.0, 1),
    ("temperature", 36.1, 0),
    ("temperature", 38.0, 0),
    ("temperature", 38.1, 1),
    ("temperature", 39.0, 1),
    ("temperature", 39.1, 2),
    # consciousness: each ACVPU letter
    ("consciousness", "A", 0),
    ("consciousness", "C", 3),
    ("consciousness", "V", 3),
    ("consciousness", "P", 3),
    ("consciousness", "U", 3),
    # air or oxygen
    ("oxygen", "air", 0),
    ("oxygen", "oxygen", 2),
]


@pytest.mark.parametrize(("parameter", "value", "expected"), BOUNDARIES)
def test_boundary(parameter: str, value: float | str, expected: int) -> None:
    assert points(parameter, value) == expected


SCALE2 = [
    # value, air/oxygen, points
    (83, "air", 3),
    (84, "air", 2),
    (85, "air", 2),
    (86, "air", 1),
    (87, "air", 1),
    (88, "air", 0),
    (83, "oxygen", 3),
    (84, "oxygen", 2),
    (85, "oxygen", 2),
    (86, "oxygen", 1),
    (87, "oxygen", 1),
    (88, "oxygen", 0),
    (92, "air", 0),
    (93, "air", 0),
    (97, "air", 0),
    (100, "air", 0),
    (92, "oxygen", 0),
    (93, "oxygen", 1),
    (94, "oxygen", 1),
    (95, "oxygen", 2),
    (96, "oxygen", 2),
    (97, "oxygen", 3),
]


@pytest.mark.parametrize(("value", "o2", "expected"), SCALE2)
def test_spo2_scale2_boundary(value: int, o2: str, expected: int) -> None:
    assert points("spo2", value, spo2_scale=2, oxygen=o2) == expected


def test_scale1_ignores_air_or_oxygen_for_the_spo2_points() -> None:
    assert points("spo2", 97, oxygen="oxygen") == 0
    assert points("spo2", 91, oxygen="air") == 3


def test_readings_are_rounded_to_the_resolution_half_up() -> None:
    assert points("temperature", 38.04) == 0
    assert points("temperature", 38.05) == 1
    assert points("temperature", 35.04) == 3
    assert points("resp_rate", 20.4) == 0
    assert points("resp_rate", 20.5) == 2


def test_acvpu_letters_are_matched_case_insensitively() -> None:
    assert points("consciousness", "c") == 3
    assert points("oxygen", "Oxygen") == 2


# --- band precedence and monitoring ----------------------------------------------------------


def band_of(**changes: float | str) -> ews.Evaluation:
    return evaluate(TABLE, {**NORMAL, **changes})


def test_total_7_is_high_before_anything_else() -> None:
    result = band_of(resp_rate=25, consciousness="U", temperature=38.5)  # 3 + 3 + 1
    assert (result.total, result.band) == (7, "high")
    assert result.next_due_minutes == 30
    assert result.colour == "red"


def test_total_6_is_medium_even_with_a_single_3() -> None:
    result = band_of(resp_rate=25, bp_sys=95, temperature=38.5)  # 3 + 2 + 1
    assert (result.total, result.band) == (6, "medium")
    assert result.next_due_minutes == 60


def test_total_5_is_medium() -> None:
    result = band_of(resp_rate=22, spo2=93, heart_rate=95)  # 2 + 2 + 1
    assert (result.total, result.band) == (5, "medium")


def test_a_single_3_with_total_below_5_is_low_medium() -> None:
    result = band_of(consciousness="V")
    assert (result.total, result.band, result.next_due_minutes) == (3, "low_medium", 60)
    result = band_of(consciousness="V", heart_rate=95)
    assert (result.total, result.band) == (4, "low_medium")


def test_total_4_without_a_3_is_low_and_4_hourly() -> None:
    result = band_of(resp_rate=22, spo2=93)
    assert (result.total, result.band, result.next_due_minutes) == (4, "low", 240)
    assert result.monitoring == "Minimum 4–6-hourly"


def test_total_1_is_low_and_0_is_low_12_hourly() -> None:
    assert (band_of(heart_rate=95).band, band_of(heart_rate=95).next_due_minutes) == ("low", 240)
    zero = band_of()
    assert (zero.total, zero.band, zero.next_due_minutes) == (0, "low", 720)
    assert zero.band_label == "Low" and zero.response


def test_band_rise_triggers_only_into_bands_with_a_trigger() -> None:
    assert ews.band_rise(TABLE, "low", "low") is None
    assert ews.band_rise(TABLE, "high", "medium") is None
    trigger = ews.band_rise(TABLE, "low", "medium")
    assert trigger is not None and trigger.severity == "urgent"
    trigger = ews.band_rise(TABLE, None, "low_medium")
    assert trigger is not None and trigger.severity == "warning"
    high = ews.band_rise(TABLE, "medium", "high")
    assert high is not None and high.audience == ["nurse", "physician"]
    assert ews.band_rise(TABLE, None, "low") is None
    assert ews.band_rise(TABLE, "low", None) is None


# --- completeness, freshness, sources ----------------------------------------------------


def timed(values: dict[str, float | str], at: datetime, **kw: Any) -> list[Reading]:
    out = []
    for key, value in values.items():
        if isinstance(value, str):
            out.append(Reading(parameter=key, text=value, observed_at=at, **kw))
        else:
            out.append(Reading(parameter=key, value=float(value), observed_at=at, **kw))
    return out


def test_a_missing_parameter_means_no_total_and_is_listed() -> None:
    readings = {k: v for k, v in NORMAL.items() if k != "consciousness"}
    result = evaluate(TABLE, readings)
    assert not result.complete
    assert (result.total, result.band, result.next_due_minutes) == (None, None, None)
    assert result.missing == ["consciousness"]
    assert result.parts["resp_rate"].points == 0


def test_a_stale_reading_does_not_count() -> None:
    readings = timed(NORMAL, NOW - timedelta(minutes=10))
    readings.append(Reading("resp_rate", value=30, observed_at=NOW - timedelta(minutes=61)))
    fresh = evaluate(TABLE, readings, now=NOW)
    assert fresh.complete and fresh.parts["resp_rate"].points == 0  # the newer one counts
    old = timed(NORMAL, NOW - timedelta(minutes=61))
    stale = evaluate(TABLE, old, now=NOW)
    assert not stale.complete and set(stale.missing) == set(ORDER)
    assert set(stale.stale) == set(ORDER)
    edge = evaluate(TABLE, timed(NORMAL, NOW - timedelta(minutes=60)), now=NOW)
    assert edge.complete


def test_a_reading_from_the_future_does_not_count() -> None:
    readings = timed(NORMAL, NOW - timedelta(minutes=1))
    readings.append(Reading("resp_rate", value=30, observed_at=NOW + timedelta(hours=1)))
    result = evaluate(TABLE, readings, now=NOW)
    assert result.parts["resp_rate"].value == 16


def test_invalid_readings_are_never_scored() -> None:
    readings = timed(NORMAL, NOW - timedelta(minutes=5))
    readings.append(
        Reading("resp_rate", value=40, observed_at=NOW - timedelta(minutes=1), valid=False)
    )
    result = evaluate(TABLE, readings, now=NOW)
    assert result.parts["resp_rate"].value == 16 and result.total == 0
    only_invalid = [r for r in readings if r.parameter != "resp_rate" or not r.valid]
    assert evaluate(TABLE, only_invalid, now=NOW).missing == ["resp_rate"]


def test_pulse_takes_the_newest_of_heart_rate_and_pulse_rate() -> None:
    readings = timed({k: v for k, v in NORMAL.items() if k != "heart_rate"}, NOW)
    readings.append(Reading("heart_rate", value=72, observed_at=NOW - timedelta(minutes=5), id=1))
    readings.append(Reading("pulse_rate", value=135, observed_at=NOW - timedelta(minutes=2), id=2))
    result = evaluate(TABLE, readings, now=NOW)
    part = result.parts["pulse"]
    assert (part.source, part.points, part.observation_id) == ("pulse_rate", 3, 2)


def test_the_set_time_is_the_newest_reading() -> None:
    readings = timed(NORMAL, NOW - timedelta(minutes=30))
    readings.append(Reading("temperature", value=37.0, observed_at=NOW - timedelta(minutes=3)))
    assert evaluate(TABLE, readings, now=NOW).observed_at == NOW - timedelta(minutes=3)


def test_an_unknown_code_is_a_problem_not_a_zero() -> None:
    result = band_of(consciousness="X")
    part = result.parts["consciousness"]
    assert part.points is None and part.problem and "'X'" in part.problem
    assert not result.complete and result.missing == ["consciousness"]


def test_scale2_at_93_or_more_needs_air_or_oxygen() -> None:
    readings = {k: v for k, v in NORMAL.items() if k != "oxygen"}
    result = evaluate(TABLE, {**readings, "spo2": 95}, {"spo2_scale": 2})
    assert result.parts["spo2"].points is None
    assert "oxygen" in (result.parts["spo2"].problem or "")
    low = evaluate(TABLE, {**readings, "spo2": 90}, {"spo2_scale": 2})
    assert low.parts["spo2"].points == 0  # 88–92 scores 0 on air and oxygen alike


def test_evaluation_as_dict_is_json_ready() -> None:
    data = evaluate(TABLE, timed(NORMAL, NOW), now=NOW).as_dict()
    assert yaml.safe_dump(data)  # plain types only
    assert data["parts"]["pulse"]["points"] == 0 and data["complete"] is True


# --- adjusted thresholds ----------------------------------------------------------------------

ADJUSTED_SPO2 = {
    "bands": [
        {"points": 3, "ranges": [{"max": 85}]},
        {"points": 1, "ranges": [{"min": 86, "max": 87}]},
        {"points": 0, "ranges": [{"min": 88}]},
    ],
    "set_by": "peter",
    "reason": "Chronic hypoxaemia, agreed target ≥ 88 %",
    "option_id": 7,
}


def test_an_adjusted_threshold_replaces_the_bands_and_names_its_author() -> None:
    options = {"threshold:spo2": ADJUSTED_SPO2}
    result = evaluate(TABLE, {**NORMAL, "spo2": 89}, options)
    part = result.parts["spo2"]
    assert part.points == 0
    assert part.adjusted == {
        "set_by": "peter",
        "reason": "Chronic hypoxaemia, agreed target ≥ 88 %",
        "option_id": 7,
    }
    assert evaluate(TABLE, {**NORMAL, "spo2": 89}).parts["spo2"].points == 3


def test_an_adjusted_threshold_with_a_gap_leaves_the_parameter_unscored() -> None:
    broken = copy.deepcopy(ADJUSTED_SPO2)
    broken["bands"][1]["ranges"] = [{"min": 86, "max": 86}]
    result = evaluate(TABLE, {**NORMAL, "spo2": 95}, {"threshold:spo2": broken})
    assert result.parts["spo2"].points is None
    assert "gap" in (result.parts["spo2"].problem or "")
    assert not result.complete and result.total is None


def test_an_adjusted_threshold_of_a_coded_parameter_is_ignored_and_said() -> None:
    options = {"threshold:consciousness": {"bands": [{"points": 0, "values": ["A", "C"]}]}}
    result = evaluate(TABLE, {**NORMAL, "consciousness": "C"}, options)
    assert result.parts["consciousness"].points == 3
    assert any("does not allow adjusted thresholds" in p for p in result.problems)


def test_override_problems_checks_an_option_value_without_a_table() -> None:
    assert ews.override_problems({"bands": ADJUSTED_SPO2["bands"]}) == []
    assert ews.override_problems({"bands": []})
    assert ews.override_problems("scale 2")
    gap = {
        "bands": [
            {"points": 3, "ranges": [{"max": 35.0}]},
            {"points": 0, "ranges": [{"min": 35.2}]},
        ]
    }
    assert any("gap" in p for p in ews.override_problems(gap))


# --- table errors -------------------------------------------------------------------------------


def changed(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(RAW)
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


def problems_of(data: dict[str, Any]) -> str:
    with pytest.raises(TableError) as caught:
        ews.table_from_dict(data)
    return "; ".join(caught.value.problems)


def test_a_gap_between_numeric_bands_is_an_error() -> None:
    # respiration rate 1 point for 9–10 only: 11 scores nothing
    text = problems_of(changed(["parameters", 0, "bands", 2, "ranges"], [{"min": 9, "max": 10}]))
    assert "resp_rate" in text and "between 10 and 12" in text and "gap" in text


def test_an_overlap_between_numeric_bands_is_an_error() -> None:
    text = problems_of(changed(["parameters", 0, "bands", 3, "ranges"], [{"min": 11, "max": 20}]))
    assert "resp_rate" in text and "overlap" in text


def test_an_open_end_left_uncovered_is_a_gap() -> None:
    text = problems_of(changed(["parameters", 3, "bands", 0, "ranges"], [{"max": 90}]))
    assert "bp_sys" in text and "above 219" in text


def test_a_gap_in_one_oxygen_context_is_an_error() -> None:
    data = copy.deepcopy(RAW)
    zero = data["parameters"][1]["alternatives"][0]["bands"][3]
    zero["ranges"] = [{"min": 88, "max": 92}]  # drop "≥93 on air"
    text = problems_of(data)
    assert "spo2.scale2 (oxygen air)" in text and "above 92" in text


def test_a_bound_finer_than_the_resolution_is_an_error() -> None:
    text = problems_of(changed(["parameters", 6, "bands", 0, "ranges"], [{"max": 35.05}]))
    assert "not on the resolution 0.1" in text


def test_a_coded_value_in_two_bands_is_an_error() -> None:
    text = problems_of(changed(["parameters", 5, "bands", 1, "values"], ["A", "C"]))
    assert "'C' scores both 3 and 0" in text


def test_unknown_bands_rules_and_fields_are_named() -> None:
    assert "unknown band 'severe'" in problems_of(changed(["triggers", 0, "to"], "severe"))
    assert "unknown parameter 'gcs'" in problems_of(changed(["required"], ["gcs"]))
    assert "unknown field" in problems_of(changed(["parameters", 0, "colour"], "red"))
    when = changed(
        ["parameters", 1, "alternatives", 0, "bands", 0, "ranges", 1, "when", "parameter"],
        "o2_device",
    )
    assert "'o2_device'" in problems_of(when)


def test_every_total_must_have_a_risk_band() -> None:
    text = problems_of(
        changed(["risk_rules", 4, "when"], {"total_min": 0, "total_max": 0, "any_part_min": 1})
    )
    assert "no risk rule gives a band for totals [0]" in text


def test_a_band_without_ranges_or_values_is_an_error() -> None:
    text = problems_of(changed(["parameters", 0, "bands", 0], {"points": 3}))
    assert "either ranges (numeric) or values (coded)" in text


def test_not_yaml_is_an_error() -> None:
    with pytest.raises(TableError):
        ews.parse_table(b"name: [unclosed")
    with pytest.raises(TableError):
        ews.parse_table(b"- a list")
