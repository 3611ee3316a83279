"""Simplified limb anatomy in millimetres, as capsules, for `lods.synth.projection`.

Two limbs are modelled, each in a frontal (AP/PA) and a lateral variant, for a right
limb; a left one is the mirror image. The upper limb has the radiocarpal joint at y = 0
with the fingers towards −y and the elbow towards +y; the lower limb has the ankle joint
at y = 0 with the knee towards −y. A body part is a field of view on one of them.
"""

from __future__ import annotations

import math

from lods.synth.projection import Anatomy, Capsule

#: Body part → (y of the field centre, field of view across the shorter side), in mm.
FIELDS: dict[str, tuple[float, float]] = {
    "HAND": (-95.0, 240.0),
    "WRIST": (-10.0, 170.0),
    "FOREARM": (135.0, 380.0),
    "ANKLE": (10.0, 230.0),
    "LEG": (-190.0, 470.0),
}
_UPPER = frozenset({"HAND", "WRIST", "FOREARM"})

# Fingers from index to little: metacarpal base x, ray angle (deg), and bone lengths
# (metacarpal, proximal, middle, distal phalanx) in mm.
_FINGERS = (
    (-11.0, -6.0, (64.0, 40.0, 24.0, 17.0)),
    (-1.0, -1.0, (61.0, 44.0, 27.0, 18.0)),
    (9.0, 4.0, (56.0, 41.0, 25.0, 17.0)),
    (18.0, 9.0, (51.0, 33.0, 19.0, 16.0)),
)
_FINGER_RADII = (4.6, 4.3, 3.7, 3.1)
_FINGER_FLARE = (0.35, 0.3, 0.3, 0.25)
# Carpal bones (x0, y0, x1, y1, radius) of a right wrist seen PA.
_CARPALS = (
    (-20.0, -8.0, -12.0, -16.0, 6.0),  # scaphoid
    (-3.0, -10.0, -2.0, -12.0, 6.5),  # lunate
    (10.0, -12.0, 12.0, -13.0, 5.5),  # triquetrum
    (15.0, -9.0, 15.0, -10.0, 4.0),  # pisiform
    (-24.0, -28.0, -22.0, -30.0, 6.0),  # trapezium
    (-13.0, -29.0, -12.0, -31.0, 5.0),  # trapezoid
    (-2.0, -22.0, -1.0, -33.0, 6.5),  # capitate
    (10.0, -24.0, 12.0, -31.0, 6.0),  # hamate
)


def _short(x0: float, y0: float, x1: float, y1: float, radius: float) -> Capsule:
    """Return a short bone (carpal, tarsal, condyle): thin cortex, cancellous throughout."""
    return Capsule(x0, y0, x1, y1, radius, cortex=0.14, cancellous=True)


def _chain(
    x: float,
    y: float,
    angle_deg: float,
    lengths: tuple[float, ...],
    radii: tuple[float, ...],
    flares: tuple[float, ...],
    *,
    gap: float = 2.0,
) -> list[Capsule]:
    """Return bones laid end to end from (x, y) along `angle_deg` (0 = towards −y)."""
    ux, uy = math.sin(math.radians(angle_deg)), -math.cos(math.radians(angle_deg))
    bones = []
    for length, radius, flare in zip(lengths, radii, flares, strict=True):
        inset = radius * (1.0 + flare) * 0.9  # the rounded joint end lies inside the length
        bones.append(
            Capsule(
                x + ux * inset,
                y + uy * inset,
                x + ux * (length - inset),
                y + uy * (length - inset),
                radius,
                taper=0.85,
                flare=flare,
                cortex=0.42,
            )
        )
        x, y = x + ux * (length + gap), y + uy * (length + gap)
    return bones


def _hand(*, lateral: bool) -> tuple[list[Capsule], list[Capsule]]:
    """Return the (soft tissue, bones) of a right hand and wrist."""
    spread = 0.15 if lateral else 1.0
    soft = [Capsule(0.0, -8.0, 0.0, -70.0, 16.0 if lateral else 40.0)]
    bones = [_short(x0 * spread, y0, x1 * spread, y1, r) for x0, y0, x1, y1, r in _CARPALS]
    for base_x, angle, lengths in _FINGERS:
        x, a = base_x * spread, angle * spread
        rays = _chain(x, -40.0, a, lengths, _FINGER_RADII, _FINGER_FLARE)
        bones += rays
        head, tip = rays[0], rays[-1]
        soft.append(Capsule(head.x1, head.y1, tip.x1, tip.y1, 8.5, taper=0.8))
    thumb_x, thumb_angle = (-6.0, -20.0) if lateral else (-24.0, -40.0)
    thumb = _chain(thumb_x, -34.0, thumb_angle, (44.0, 31.0, 23.0), (4.9, 4.3, 3.6), (0.3,) * 3)
    bones += thumb
    soft.append(Capsule(thumb[0].x0, thumb[0].y0, thumb[-1].x1, thumb[-1].y1, 10.5, taper=0.8))
    return soft, bones


def _upper_limb(*, lateral: bool) -> Anatomy:
    """Return a right hand, forearm and elbow; lateral stacks the rays and the two bones."""
    soft, bones = _hand(lateral=lateral)
    radius_x, ulna_x = (-3.0, 4.0) if lateral else (-14.0, 14.0)
    bones += [
        Capsule(radius_x, 12.0, radius_x - 1.0, 250.0, 10.5, taper=0.7, flare=0.55, cortex=0.35),
        Capsule(ulna_x, 18.0, ulna_x + 2.0, 268.0, 5.5, taper=1.6, flare=0.45, cortex=0.4),
        Capsule(0.0, 300.0, 0.0, 480.0, 11.0, flare=0.3, cortex=0.4),  # humerus shaft
    ]
    if lateral:
        bones.append(_short(0.0, 290.0, 2.0, 292.0, 17.0))  # condyles end-on
    else:
        bones.append(_short(-26.0, 290.0, 26.0, 290.0, 13.0))
    soft += [
        Capsule(0.0, -5.0, 0.0, 280.0, 24.0 if lateral else 27.0, taper=1.55),
        Capsule(0.0, 280.0, 0.0, 500.0, 44.0),
    ]
    return Anatomy(soft=tuple(soft), bones=tuple(bones))


def _lower_limb(*, lateral: bool) -> Anatomy:
    """Return a right lower leg, ankle and hindfoot; lateral adds the foot in profile."""
    fibula_x = 9.0 if lateral else 30.0
    bones = [
        Capsule(-2.0, -22.0, -4.0, -370.0, 12.0, taper=1.1, flare=0.55, cortex=0.38),  # tibia
        Capsule(fibula_x, 22.0, fibula_x + 7.0, -355.0, 5.5, flare=0.5, cortex=0.4),
    ]
    soft = [Capsule(0.0, -420.0, 0.0, 10.0, 55.0 if lateral else 54.0, taper=0.68)]
    if lateral:
        bones += [
            _short(-8.0, 24.0, 20.0, 20.0, 16.0),  # talus
            _short(-38.0, 55.0, 4.0, 58.0, 19.0),  # calcaneus
            _short(30.0, 32.0, 31.0, 33.0, 9.0),  # navicular
            _short(22.0, 58.0, 30.0, 58.0, 10.0),  # cuboid
            _short(44.0, 36.0, 45.0, 37.0, 8.0),  # cuneiforms
            Capsule(52.0, 45.0, 120.0, 66.0, 5.5, flare=0.35, cortex=0.4),  # metatarsals
            Capsule(52.0, 52.0, 118.0, 72.0, 5.0, flare=0.35, cortex=0.4),
            _short(0.0, -400.0, -4.0, -402.0, 28.0),  # femoral condyles
        ]
        soft.append(Capsule(-40.0, 58.0, 125.0, 72.0, 32.0, taper=0.7))
    else:
        bones += [
            Capsule(-19.0, -8.0, -19.0, 14.0, 6.0, cortex=0.25),  # medial malleolus
            _short(-12.0, 22.0, 14.0, 22.0, 15.0),  # talus
            _short(-30.0, -400.0, 30.0, -400.0, 24.0),  # femoral condyles
        ]
        soft.append(Capsule(0.0, 10.0, 4.0, 62.0, 38.0))
    return Anatomy(soft=tuple(soft), bones=tuple(bones))


def long_bones(body_part: str) -> dict[str, int]:
    """Return the long bones a fracture may break, by name, as indices into `bones`.

    The indices are the same in every view of the limb `body_part` is a field of:
    metacarpals `MC1` (thumb) to `MC5`, `radius` and `ulna` of the upper limb; `tibia`
    and `fibula` of the lower. Each bone's first end (t = 0) is its distal one, but for
    the metacarpals, which run from their base (proximal) to their head.
    """
    if body_part not in FIELDS:
        raise ValueError(f"unknown body part {body_part!r}")
    if body_part not in _UPPER:
        return {"tibia": 0, "fibula": 1}
    rays = len(_CARPALS)
    named = {f"MC{k + 2}": rays + 4 * k for k in range(len(_FINGERS))}
    named["MC1"] = rays + 4 * len(_FINGERS)
    forearm = named["MC1"] + 3  # after the thumb's three bones
    return named | {"radius": forearm, "ulna": forearm + 1}


def limb_anatomy(*, body_part: str, view: str) -> Anatomy:
    """Return the right-sided limb that `body_part` is a field of, in the given view."""
    if view not in ("AP", "PA", "LAT"):
        raise ValueError(f"unknown view {view!r}; expected AP, PA or LAT")
    if body_part not in FIELDS:
        raise ValueError(f"unknown body part {body_part!r}")
    lateral = view == "LAT"
    return _upper_limb(lateral=lateral) if body_part in _UPPER else _lower_limb(lateral=lateral)
