"""Fractures: the break in a bone capsule, where it is drawn, and realistic draws of them."""

from __future__ import annotations

import numpy as np
import pytest

from lods.synth.anatomy import limb_anatomy, long_bones
from lods.synth.fractures import (
    BUCKLE_AGES,
    FRACTURE_TYPES,
    FractureSpec,
    fractured,
    patient_age,
    patient_sex,
    random_fracture,
)
from lods.synth.projection import Anatomy, Break, Capsule, Placement, attenuation
from lods.synth.xray import BODY_PARTS, render_radiograph

SHAPE = (240, 240)
SPACING = 0.25  # mm: a 60 mm field centred on the origin


def _shaft(fracture: Break | None) -> Anatomy:
    """Return a vertical bone in soft tissue, its first end at the bottom."""
    return Anatomy(
        soft=(Capsule(0.0, -40.0, 0.0, 40.0, 20.0),),
        bones=(Capsule(0.0, 40.0, 0.0, -40.0, 8.0, cortex=0.4, fracture=fracture),),
    )


def _line(fracture: Break | None) -> tuple[np.ndarray, np.ndarray]:
    marks = np.zeros(SHAPE, dtype=bool)
    line = attenuation(
        _shaft(fracture), shape=SHAPE, spacing=SPACING, rng=np.random.default_rng(0), marks=marks
    )
    return line, marks


def _bone_only(line: np.ndarray) -> np.ndarray:
    """Return what the bone adds over the soft tissue it sits in."""
    soft = attenuation(
        Anatomy(soft=_shaft(None).soft, bones=()),
        shape=SHAPE,
        spacing=SPACING,
        rng=np.random.default_rng(0),
    )
    return line - soft


def _row(y_mm: float) -> int:
    return round(y_mm / SPACING + (SHAPE[0] - 1) / 2)


def _col(x_mm: float) -> int:
    return round(x_mm / SPACING + (SHAPE[1] - 1) / 2)


def test_transverse_break_is_a_lucent_line_across_the_bone_only() -> None:
    whole, no_marks = _line(None)
    broken, marks = _line(Break(t=0.5, angle_deg=90.0, gap=0.4, depth=0.8))
    assert not no_marks.any()
    at_line, away = _row(0.0), _row(10.0)
    # Along the line the bone has lost most of its attenuation over the soft tissue ...
    bone_whole, bone_broken = _bone_only(whole), _bone_only(broken)
    assert bone_broken[at_line, _col(0.0)] < 0.5 * bone_whole[at_line, _col(0.0)]
    # ... and nothing changes away from it, nor outside the bone.
    assert np.array_equal(broken[away], whole[away])
    assert np.array_equal(broken[:, _col(12.0) :], whole[:, _col(12.0) :])
    rows, cols = np.flatnonzero(marks.any(axis=1)), np.flatnonzero(marks.any(axis=0))
    assert rows.min() >= _row(-1.8) and rows.max() <= _row(1.8)
    assert cols.min() >= _col(-8.5) and cols.max() <= _col(8.5)


def test_oblique_break_runs_at_its_angle_to_the_shaft() -> None:
    _, marks = _line(Break(t=0.5, angle_deg=45.0, gap=0.3, depth=0.8))
    rows = np.flatnonzero(marks.any(axis=1))
    # A 45° line across a 16 mm bone spans about 16 mm along the shaft too.
    assert (rows.max() - rows.min()) * SPACING == pytest.approx(16.0, abs=3.0)


def test_displaced_break_steps_the_cortex() -> None:
    whole, _ = _line(None)
    broken, marks = _line(Break(t=0.5, gap=0.4, depth=0.9, shift=3.0))
    below, above = _row(8.0), _row(-8.0)  # the first (moving) end is at the bottom
    assert np.array_equal(broken[above], whole[above])
    # The moved fragment's edge is 3 mm to one side of the unbroken bone's.
    edge_whole = np.flatnonzero(np.abs(_bone_only(whole)[below]) > 1e-3)
    edge_broken = np.flatnonzero(np.abs(_bone_only(broken)[below]) > 1e-3)
    assert abs(edge_broken.mean() - edge_whole.mean()) * SPACING == pytest.approx(3.0, abs=0.5)
    assert marks.any()


def test_buckle_bulges_the_cortex_without_a_line() -> None:
    whole, _ = _line(None)
    broken, marks = _line(Break(t=0.5, bulge=0.15, bulge_length=3.0, sclerosis=0.1))
    at = _row(0.0)
    width_whole = np.count_nonzero(np.abs(_bone_only(whole)[at]) > 1e-3)
    width_broken = np.count_nonzero(np.abs(_bone_only(broken)[at]) > 1e-3)
    assert (width_broken - width_whole) * SPACING > 1.5
    assert broken[at, _col(0.0)] >= whole[at, _col(0.0)]  # no lucent line through it
    assert marks[at].any() and not marks[_row(6.0)].any()


def test_break_follows_the_capsule_when_mirrored_and_scaled() -> None:
    bone = Capsule(0.0, 0.0, 0.0, 30.0, 5.0, cortex=0.4, fracture=Break(t=0.3, gap=0.2, shift=2.0))
    placed = bone.placed(Placement(scale=2.0, mirror=True))
    assert placed.fracture is not None
    assert placed.fracture.side == -1.0
    assert (placed.fracture.gap, placed.fracture.shift) == (0.4, 4.0)
    assert placed.fracture.t == 0.3


def test_break_rejects_impossible_geometry() -> None:
    with pytest.raises(ValueError, match="shaft"):
        Break(t=0.5, angle_deg=0.0)
    with pytest.raises(ValueError, match="fraction"):
        Break(t=1.5)
    with pytest.raises(ValueError, match="bone"):
        Capsule(0.0, 0.0, 0.0, 1.0, 5.0, fracture=Break(t=0.5))


@pytest.mark.parametrize("body_part", BODY_PARTS)
@pytest.mark.parametrize("kind", FRACTURE_TYPES)
def test_random_fracture_breaks_a_bone_of_the_field(kind: str, body_part: str) -> None:
    rng = np.random.default_rng([1, FRACTURE_TYPES.index(kind)])
    for _ in range(20):
        spec = random_fracture(rng, kind=kind, body_part=body_part)
        assert spec.kind == kind
        assert spec.bone in long_bones(body_part)
        assert 0.0 < spec.position < 1.0
        lean = abs(spec.angle_deg - 90.0)
        if kind == "transverse":
            assert lean <= 10.0
        if kind == "oblique":
            assert 30.0 <= lean <= 60.0
        if kind == "hairline":
            assert spec.gap_mm < 0.15 and spec.shift_mm == 0.0
        if kind == "displaced":
            assert abs(spec.shift_mm) >= 1.5
        if kind == "buckle":
            assert spec.bulge > 0.0 and spec.depth == 0.0


def test_fractured_breaks_the_named_bone_in_every_view() -> None:
    spec = FractureSpec(kind="transverse", bone="radius", position=0.1, gap_mm=0.4, depth=0.7)
    for view in ("PA", "LAT"):
        anatomy = fractured(
            limb_anatomy(body_part="WRIST", view=view), spec, body_part="WRIST", view=view
        )
        broken = [i for i, bone in enumerate(anatomy.bones) if bone.fracture is not None]
        assert broken == [long_bones("WRIST")["radius"]]
    with pytest.raises(ValueError, match="tibia"):
        fractured(
            limb_anatomy(body_part="WRIST", view="PA"),
            FractureSpec(kind="transverse", bone="tibia", position=0.1),
            body_part="WRIST",
            view="PA",
        )


def test_buckle_patients_are_children_and_others_span_all_ages() -> None:
    rng = np.random.default_rng(5)
    buckle = [patient_age(rng, "buckle") for _ in range(500)]
    assert min(buckle) >= BUCKLE_AGES[0] and max(buckle) <= BUCKLE_AGES[1]
    others = [patient_age(rng, kind) for kind in ("oblique", None) for _ in range(500)]
    assert min(others) == 2 and max(others) >= 90
    assert 0.2 < np.mean(np.array(others) < 18) < 0.45
    assert {patient_sex(rng, age) for age in (8, 80) for _ in range(20)} == {"F", "M"}


def test_render_radiograph_changes_only_the_fracture_box() -> None:
    spec = FractureSpec(
        kind="oblique", bone="tibia", position=0.5, angle_deg=50.0, gap_mm=0.4, depth=0.8
    )
    images = [
        render_radiograph(
            np.random.default_rng(2),
            body_part="LEG",
            view="AP",
            laterality="L",
            size=384,
            fracture=fracture,
        )
        for fracture in (None, spec)
    ]
    clean, broken = images
    assert clean.fracture_box is None and broken.fracture_box is not None
    x0, y0, x1, y1 = broken.fracture_box
    assert 0 <= x0 < x1 <= 384 and 0 <= y0 < y1 <= 384
    diff = np.abs(broken.pixels.astype(int) - clean.pixels.astype(int))
    assert diff.sum() > 0
    assert diff[y0:y1, x0:x1].sum() > 0.95 * diff.sum()
    assert broken.fracture_visible == 1.0
