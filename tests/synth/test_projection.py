"""The projection simulator: chords, bone over soft tissue, noise, markers, collimation."""

from __future__ import annotations

import numpy as np
import pytest

from lods.synth.projection import (
    Anatomy,
    Capsule,
    Placement,
    attenuation,
    burn_marker,
    collimation_mask,
    expose,
)

SHAPE = (200, 200)
SPACING = 0.5  # mm: the field is 100 mm wide, centred on the origin


def _forearm_like() -> Anatomy:
    return Anatomy(
        soft=(Capsule(0.0, -60.0, 0.0, 60.0, 30.0),),
        bones=(Capsule(0.0, -60.0, 0.0, 60.0, 10.0, cortex=0.4),),
    )


def test_attenuation_orders_air_soft_tissue_and_cortex() -> None:
    line = attenuation(_forearm_like(), shape=SHAPE, spacing=SPACING, rng=np.random.default_rng(0))
    row = line[100]
    air, soft, canal = row[5], row[100 + 30], row[100]
    cortex_edge = row[100 + 17]  # 8.5 mm off-axis: the beam runs along the cortical shell
    assert air == 0.0
    assert 0.0 < soft < canal < cortex_edge


def test_attenuation_merges_overlapping_soft_tissue_instead_of_adding() -> None:
    one = Anatomy(soft=(Capsule(0.0, -40.0, 0.0, 40.0, 20.0),), bones=())
    twice = Anatomy(soft=one.soft * 2, bones=())
    rng = np.random.default_rng(0)
    a = attenuation(one, shape=SHAPE, spacing=SPACING, rng=rng)
    b = attenuation(twice, shape=SHAPE, spacing=SPACING, rng=rng)
    assert np.allclose(a, b)


def test_placement_mirrors_a_right_limb_into_a_left_one() -> None:
    bone = Capsule(-20.0, 0.0, -20.0, 30.0, 5.0)
    left = bone.placed(Placement(mirror=True))
    assert (left.x0, left.x1) == (20.0, 20.0)
    turned = bone.placed(Placement(angle_deg=90.0, scale=2.0))
    assert turned.radius == 10.0
    assert turned.y0 == pytest.approx(-40.0)


def test_expose_adds_noise_that_grows_behind_dense_material() -> None:
    rng = np.random.default_rng(3)
    thin = expose(np.full((100, 100), 0.1, np.float32), rng=rng, photons=4000.0)
    thick = expose(np.full((100, 100), 3.0, np.float32), rng=rng, photons=4000.0)
    assert thin.mean() == pytest.approx(0.1, abs=0.01)
    assert thick.mean() == pytest.approx(3.0, abs=0.05)
    assert thick.std() > 3 * thin.std() > 0


def test_burn_marker_draws_the_letter_inside_the_field() -> None:
    rng = np.random.default_rng(4)
    mask = collimation_mask(shape=SHAPE, rng=rng)
    line = np.zeros(SHAPE, np.float32)
    burn_marker(line, letter="R", mask=mask, spacing=SPACING, right_side=True)
    lead = line > 1.0
    assert lead.any()
    assert mask[lead].all()
    assert np.flatnonzero(lead.any(axis=0)).min() > SHAPE[1] // 2


def test_capsule_rejects_a_cortex_that_is_the_whole_bone() -> None:
    with pytest.raises(ValueError, match="cortex"):
        Capsule(0.0, 0.0, 1.0, 1.0, 5.0, cortex=1.0)
