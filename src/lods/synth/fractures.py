"""Fractures for the synthetic limb radiographs: what breaks, where, how, and in whom.

A `FractureSpec` names one long bone of the limb (a metacarpal, the radius or ulna, the
tibia or fibula) and a place along it, so every view of a study shows the same break at
the same level; the line's angle to the shaft and a displaced fragment's shift may
differ between the frontal and the lateral view, as the projection of one fracture plane
does. `lods.synth.projection.Break` draws it.

Five kinds, as a reporting radiologist would name them:

- transverse: a line about square to the shaft (80–100°) through cortex and medulla;
- oblique: a line at 30–60° to the shaft;
- hairline: an undisplaced, thin and faint line: visible at full resolution, but hard;
- displaced: the distal fragment shifted by a few millimetres along the fracture plane,
  angulated and perhaps impacted, so the cortex steps and the fragments overlap;
- buckle (torus): no line, the cortex of the metaphysis kinks outwards; children only.

`random_fracture`, `patient_age` and `patient_sex` draw realistic cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from lods.synth.anatomy import FIELDS, long_bones
from lods.synth.projection import Anatomy, Break

FRACTURE_TYPES = ("transverse", "oblique", "hairline", "displaced", "buckle")
#: The youngest and oldest patient with a buckle fracture (the periosteum of a child).
BUCKLE_AGES = (2, 14)

# Body part → (bone, weight, shaft range of t, metaphysis range of t): where in the field
# of view a bone breaks. t runs from the distal end, but for the metacarpals (from the
# base); the ranges keep the whole fracture inside the collimated field. A buckle folds
# the metaphysis next to the physis: distal but for the thumb's metacarpal (its base).
_SITES: dict[str, tuple[tuple[str, float, tuple[float, float], tuple[float, float]], ...]] = {
    "HAND": (
        ("MC5", 0.35, (0.3, 0.72), (0.78, 0.86)),  # the boxer's fracture
        ("MC4", 0.2, (0.3, 0.72), (0.78, 0.86)),
        ("MC3", 0.15, (0.3, 0.72), (0.78, 0.86)),
        ("MC2", 0.15, (0.3, 0.72), (0.78, 0.86)),
        ("MC1", 0.15, (0.3, 0.7), (0.12, 0.2)),  # the thumb's physis is at its base
    ),
    "WRIST": (
        ("radius", 0.75, (0.05, 0.15), (0.06, 0.12)),  # the distal radius fracture
        ("ulna", 0.25, (0.05, 0.13), (0.05, 0.11)),
    ),
    "FOREARM": (
        ("radius", 0.55, (0.2, 0.75), (0.06, 0.12)),
        ("ulna", 0.45, (0.2, 0.75), (0.05, 0.11)),
    ),
    "ANKLE": (
        ("fibula", 0.6, (0.06, 0.16), (0.05, 0.11)),  # the lateral malleolus
        ("tibia", 0.4, (0.04, 0.09), (0.05, 0.09)),
    ),
    "LEG": (
        ("tibia", 0.6, (0.2, 0.75), (0.05, 0.1)),
        ("fibula", 0.4, (0.2, 0.75), (0.05, 0.1)),
    ),
}


@dataclass(frozen=True)
class FractureSpec:
    """One fracture of one bone, the same in every view of a study.

    `position` is the fraction along the bone's axis (see `anatomy.long_bones` for which
    end is 0). Angles are of the fracture line to the shaft (90 = transverse) in the
    frontal (AP/PA) and the lateral view; `gap_mm` (1σ) and `depth` (share of the bone
    replaced at the line's centre) say how lucent the line is, `sclerosis` how dense its
    edges, `roughness_mm` how jagged. A displaced fracture slides the distal fragment
    `shift_mm` along the fracture line (sideways, and shorter for an oblique one),
    angulates it and drives it `impaction_mm` into the other fragment; a buckle bulges
    the cortex by `bulge` (share of the radius) over `bulge_length_mm`, `bulge_balance`
    as much on the other side.
    """

    kind: str
    bone: str
    position: float
    angle_deg: float = 90.0
    lateral_angle_deg: float = 90.0
    gap_mm: float = 0.0
    depth: float = 0.0
    sclerosis: float = 0.0
    roughness_mm: float = 0.0
    phase: float = 0.0
    shift_mm: float = 0.0
    lateral_shift_mm: float = 0.0
    angulation_deg: float = 0.0
    lateral_angulation_deg: float = 0.0
    impaction_mm: float = 0.0
    bulge: float = 0.0
    bulge_length_mm: float = 0.0
    bulge_balance: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FRACTURE_TYPES:
            raise ValueError(f"unknown fracture kind {self.kind!r}; expected {FRACTURE_TYPES}")

    def break_for(self, *, view: str) -> Break:
        """Return the fracture as the `projection` draws it on its bone, in `view`."""
        lateral = view == "LAT"
        return Break(
            t=self.position,
            angle_deg=self.lateral_angle_deg if lateral else self.angle_deg,
            gap=self.gap_mm,
            depth=self.depth,
            sclerosis=self.sclerosis,
            roughness=self.roughness_mm,
            phase=self.phase,
            moving_end=1 if self.bone.startswith("MC") else 0,
            shift=self.lateral_shift_mm if lateral else self.shift_mm,
            angulation_deg=self.lateral_angulation_deg if lateral else self.angulation_deg,
            impaction=self.impaction_mm,
            bulge=self.bulge,
            bulge_length=self.bulge_length_mm,
            bulge_balance=self.bulge_balance,
        )


def fractured(anatomy: Anatomy, spec: FractureSpec, *, body_part: str, view: str) -> Anatomy:
    """Return `anatomy` (a right limb, unplaced) with the bone `spec` names broken."""
    bones = long_bones(body_part)
    if spec.bone not in bones:
        raise ValueError(f"{body_part} shows no {spec.bone!r}; expected one of {sorted(bones)}")
    index = bones[spec.bone]
    broken = list(anatomy.bones)
    broken[index] = replace(broken[index], fracture=spec.break_for(view=view))
    return Anatomy(soft=anatomy.soft, bones=tuple(broken))


def _signed(rng: np.random.Generator, low: float, high: float) -> float:
    """Return a magnitude in [low, high) with a random sign."""
    value = float(rng.uniform(low, high))
    return value if rng.random() < 0.5 else -value


def _oblique(rng: np.random.Generator, low: float, high: float) -> float:
    """Return a line angle `low`–`high`° to the shaft, leaning either way."""
    return 90.0 + _signed(rng, 90.0 - high, 90.0 - low)


def random_fracture(rng: np.random.Generator, *, kind: str, body_part: str) -> FractureSpec:
    """Return a realistic fracture of `kind` in the field of view of `body_part`."""
    if kind not in FRACTURE_TYPES:
        raise ValueError(f"unknown fracture kind {kind!r}; expected {FRACTURE_TYPES}")
    if body_part not in FIELDS:
        raise ValueError(f"unknown body part {body_part!r}")
    sites = _SITES[body_part]
    weights = np.array([site[1] for site in sites])
    bone, _, shaft, metaphysis = sites[int(rng.choice(len(sites), p=weights / weights.sum()))]
    low, high = metaphysis if kind == "buckle" else shaft
    spec = FractureSpec(
        kind=kind,
        bone=bone,
        position=float(rng.uniform(low, high)),
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
    )
    if kind == "buckle":
        return replace(
            spec,
            bulge=float(rng.uniform(0.07, 0.14)),
            bulge_length_mm=float(rng.uniform(2.5, 4.5)),
            bulge_balance=float(rng.uniform(0.2, 1.0)),
            sclerosis=float(rng.uniform(0.08, 0.2)),
        )
    if kind == "hairline":
        return replace(
            spec,
            angle_deg=_oblique(rng, 60.0, 90.0),
            lateral_angle_deg=_oblique(rng, 60.0, 90.0),
            gap_mm=float(rng.uniform(0.08, 0.14)),
            depth=float(rng.uniform(0.4, 0.6)),
            sclerosis=float(rng.uniform(0.02, 0.06)),
            roughness_mm=float(rng.uniform(0.08, 0.2)),
        )
    if kind == "oblique":
        angles = (_oblique(rng, 30.0, 60.0), _oblique(rng, 35.0, 70.0))
    elif kind == "displaced" and rng.random() < 0.5:
        angles = (_oblique(rng, 35.0, 65.0), _oblique(rng, 40.0, 75.0))
    else:
        angles = (_oblique(rng, 80.0, 90.0), _oblique(rng, 78.0, 90.0))
    spec = replace(
        spec,
        angle_deg=angles[0],
        lateral_angle_deg=angles[1],
        gap_mm=float(rng.uniform(0.3, 0.6)),
        depth=float(rng.uniform(0.55, 0.85)),
        sclerosis=float(rng.uniform(0.06, 0.15)),
        roughness_mm=float(rng.uniform(0.15, 0.4)),
    )
    if kind != "displaced":
        return spec
    # A short end fragment (a distal radius, a malleolus, a metacarpal head) tilts; a long
    # shaft fragment, splinted by its intact partner bone, mostly shifts.
    short = spec.position < 0.2 or bone.startswith("MC")
    tilt = (12.0, 4.0, 20.0) if short else (3.0, 0.0, 4.0)
    return replace(
        spec,
        gap_mm=float(rng.uniform(0.3, 0.7)),
        depth=float(rng.uniform(0.75, 0.95)),
        shift_mm=_signed(rng, 1.5, 5.0),
        lateral_shift_mm=_signed(rng, 1.0, 4.0),
        angulation_deg=_signed(rng, 0.0, tilt[0]),
        lateral_angulation_deg=_signed(rng, tilt[1], tilt[2]),
        impaction_mm=float(rng.uniform(0.0, 2.5)),
    )


def patient_age(rng: np.random.Generator, kind: str | None) -> int:
    """Return the age in years (2–95) of a patient with a fracture of `kind` (None: none).

    Buckle fractures are children's (mostly 5–12); other fractures and normal studies
    come from children and adults alike, a third of them children.
    """
    if kind == "buckle":
        low, high = BUCKLE_AGES
        return int(np.clip(np.rint(rng.normal(8.5, 3.0)), low, high))
    if rng.random() < 0.33:
        return int(rng.integers(2, 18))
    return int(rng.integers(18, 96))


def patient_sex(rng: np.random.Generator, age: int) -> str:
    """Return "F" or "M": boys and young men break more bones, older women more."""
    female = 0.42 if age < 50 else 0.65
    return "F" if rng.random() < female else "M"
