"""A region's own score table (TOKS-like: GCS instead of ACVPU, no oxygen item, total
0–21, a total of 3 or more calls a physician) installed as a new solution version — the
NEWS2 package's code with another table and manifest — and scoring beside NEWS2."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ews_support import (
    NEWS2_PACKAGE,
    NORMAL,
    NOW,
    admit,
    deploy,
    make_ward,
    news2_package,
    store,
    variant_package,
)
from sqlalchemy import select

from lods.alerts.models import Alert
from lods.runtime import Runtime
from lods.vitals import ews


def r(lo: float | None = None, hi: float | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    if lo is not None:
        out["min"] = lo
    if hi is not None:
        out["max"] = hi
    return out


def numeric(
    key: str, label: str, unit: str, bands: list[tuple[int, list[dict[str, float]]]], **kw: Any
) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "unit": unit,
        "freshness_minutes": 60,
        "bands": [{"points": p, "ranges": ranges} for p, ranges in bands],
        **kw,
    }


TOKS: dict[str, Any] = {
    "name": "TOKS",
    "version": "2024-region",
    "title": "Tidlig Opsporing af Kritisk Sygdom (region table, demonstration)",
    "parameters": [
        numeric(
            "resp_rate",
            "Respirationsfrekvens",
            "/min",
            [
                (3, [r(hi=7), r(lo=31)]),
                (2, [r(8, 8), r(25, 30)]),
                (1, [r(21, 24)]),
                (0, [r(9, 20)]),
            ],
        ),
        numeric(
            "spo2",
            "Iltmætning",
            "%",
            [
                (3, [r(hi=84)]),
                (2, [r(85, 89)]),
                (1, [r(90, 91)]),
                (0, [r(lo=92)]),
            ],
        ),
        numeric(
            "pulse",
            "Puls",
            "/min",
            [
                (3, [r(hi=39), r(lo=141)]),
                (2, [r(121, 140)]),
                (1, [r(40, 49), r(101, 120)]),
                (0, [r(50, 100)]),
            ],
            sources=["heart_rate", "pulse_rate"],
        ),
        numeric(
            "bp_sys",
            "Systolisk blodtryk",
            "mm[Hg]",
            [
                (3, [r(hi=84)]),
                (2, [r(85, 94), r(lo=220)]),
                (1, [r(95, 104)]),
                (0, [r(105, 219)]),
            ],
        ),
        numeric(
            "temperature",
            "Temperatur",
            "Cel",
            [
                (3, [r(hi=34.9), r(lo=40.1)]),
                (2, [r(39.1, 40.0)]),
                (1, [r(35.0, 35.9), r(38.1, 39.0)]),
                (0, [r(36.0, 38.0)]),
            ],
            resolution=0.1,
        ),
        numeric(
            "gcs",
            "Bevidsthed (GCS)",
            "{score}",
            [
                (6, [r(3, 8)]),
                (4, [r(9, 12)]),
                (2, [r(13, 14)]),
                (0, [r(15, 15)]),
            ],
            domain={"min": 3, "max": 15},
        ),
    ],
    "risk_bands": [
        {"key": "normal", "label": "Normal", "colour": "green"},
        {"key": "observe", "label": "Øget observation", "colour": "yellow"},
        {"key": "physician", "label": "Tilkald læge", "colour": "amber"},
        {"key": "critical", "label": "Kritisk", "colour": "red"},
    ],
    "risk_rules": [
        {
            "band": "critical",
            "when": {"total_min": 6},
            "monitoring_minutes": 30,
            "monitoring": "Mindst hver halve time",
            "response": "Tilkald akutteam.",
        },
        {
            "band": "physician",
            "when": {"total_min": 3, "total_max": 5},
            "monitoring_minutes": 60,
            "monitoring": "Mindst hver time",
            "response": "Tilkald læge inden for 30 minutter.",
        },
        {
            "band": "observe",
            "when": {"total_min": 1, "total_max": 2},
            "monitoring_minutes": 240,
            "monitoring": "Mindst hver 4. time",
            "response": "Øget observation.",
        },
        {
            "band": "normal",
            "when": {"total_max": 0},
            "monitoring_minutes": 480,
            "monitoring": "Mindst hver 8. time",
            "response": "Rutinemåling.",
        },
    ],
    "triggers": [
        {
            "to": "physician",
            "severity": "urgent",
            "audience": ["physician", "nurse"],
            "title": "TOKS 3 eller derover: tilkald læge",
        },
        {
            "to": "critical",
            "severity": "urgent",
            "audience": ["physician", "nurse"],
            "title": "TOKS kritisk: tilkald akutteam",
        },
    ],
}
OUTPUTS = {
    "findings": [
        {
            "key": "total",
            "code": {"scheme": "99DKREG", "value": "TOKS", "meaning": "TOKS total"},
            "label": "TOKS total",
        },
    ],
    "score_range": [0, 21],
    "operating_points": {"sure": 6, "doubtful": 3},
}
#: TOKS reads GCS where NEWS2 reads ACVPU; no air/oxygen item.
READINGS = {k: v for k, v in NORMAL.items() if k not in ("consciousness", "oxygen")} | {"gcs": 15}


def toks_package(tmp_path: Path) -> Path:
    return variant_package(
        tmp_path,
        solution_id="dk.region.toks",
        version="1.0.0",
        name="Region TOKS",
        table=TOKS,
        table_file="toks.yaml",
        outputs=OUTPUTS,
    )


def test_the_region_table_is_valid_and_totals_0_to_21() -> None:
    table = ews.table_from_dict(TOKS)
    assert table.max_total == 21
    assert "oxygen" not in {p.key for p in table.parameters}
    assert ews.evaluate(table, {**READINGS, "gcs": 7}).band == "critical"
    three = ews.evaluate(table, {**READINGS, "resp_rate": 22, "spo2": 90, "heart_rate": 105})
    assert (three.total, three.band) == (3, "physician")


def test_the_package_code_is_unchanged(tmp_path: Path) -> None:
    folder = toks_package(tmp_path)
    assert (folder / "score.py").read_bytes() == (NEWS2_PACKAGE / "score.py").read_bytes()
    assert not (folder / "news2.yaml").exists()


def test_a_region_table_scores_as_its_own_solution_version(
    app_runtime: Runtime, tmp_path: Path
) -> None:
    ward = make_ward(app_runtime)
    toks_version, _ = deploy(app_runtime, toks_package(tmp_path))
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    [normal] = store(app_runtime, encounter, READINGS, at=NOW)
    assert (normal.score_name, normal.total, normal.band) == ("TOKS", 0, "normal")
    assert normal.version_fk == toks_version and normal.next_due_minutes == 480
    assert set(normal.parts) == {"resp_rate", "spo2", "pulse", "bp_sys", "temperature", "gcs"}
    three = {**READINGS, "resp_rate": 22, "spo2": 90, "heart_rate": 105}
    [raised] = store(app_runtime, encounter, three, at=NOW + timedelta(minutes=5))
    assert (raised.total, raised.band) == (3, "physician")
    with app_runtime.sessions() as db:
        [alert] = db.scalars(select(Alert).where(Alert.kind == "ews.band")).all()
    assert alert.title == "TOKS 3 eller derover: tilkald læge" and alert.severity == "urgent"
    assert "physician" in alert.audience.split(",")
    assert alert.detail.startswith("Mindst hver time")


def test_region_table_and_news2_score_side_by_side(app_runtime: Runtime, tmp_path: Path) -> None:
    ward = make_ward(app_runtime)
    news2_version, _ = deploy(app_runtime, news2_package(tmp_path))
    toks_version, _ = deploy(app_runtime, toks_package(tmp_path))
    encounter, _ = admit(app_runtime, ward, "1", patient_id="P1")
    scores = store(app_runtime, encounter, {**NORMAL, "gcs": 14}, at=NOW)
    by_version = {s.version_fk: s for s in scores}
    assert by_version[news2_version].score_name == "NEWS2"
    assert by_version[news2_version].total == 0
    assert (by_version[toks_version].score_name, by_version[toks_version].total) == ("TOKS", 2)
    assert by_version[toks_version].band == "observe"


def test_a_bounded_scale_refuses_readings_outside_it_and_must_be_covered() -> None:
    table = ews.table_from_dict(TOKS)
    outside = ews.evaluate(table, {**READINGS, "gcs": 16})
    assert outside.parts["gcs"].points is None and not outside.complete
    assert "outside the scale 3–15" in (outside.parts["gcs"].problem or "")
    short = copy.deepcopy(TOKS)
    short["parameters"][5]["bands"][0]["ranges"] = [{"min": 4, "max": 8}]
    with pytest.raises(ews.TableError, match="gcs: values below 4 score nothing"):
        ews.table_from_dict(short)
