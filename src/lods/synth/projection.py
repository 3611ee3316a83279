"""A small projection-radiography simulator: anatomy as capsules, photons, noise, collimation.

Every structure is a capsule: a segment in the detector plane with a radius profile (a
cylinder seen from the side, with rounded ends). The X-ray path length through it at a
pixel is its chord, `2·sqrt(R² − d²)`. Soft tissue of overlapping capsules is merged
(the thickest wins, so a palm and a finger do not add up); bones add their cortex and
medullary canal on top, displacing the soft tissue they sit in. The line integral of
attenuation then meets a photon count with Poisson (quantum) noise and is log-transformed,
as a CR or DX reader does, so bone ends up bright and air dark (MONOCHROME2 sense).

Units: millimetres, origin at the image centre, x to the right, y downwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

#: Linear attenuation coefficients per millimetre at a typical extremity beam (~55 kVp).
MU_SOFT = 0.021
MU_CORTEX = 0.115
MU_MARROW = 0.018
MU_CANCELLOUS = 0.040
MU_LEAD_MARKER = 2.0
#: How much attenuation the collimator blades leave through (they are not perfect).
COLLIMATED_ATTENUATION = 4.6
#: Fraction of a bone's length at each end that behaves like an epiphysis.
_END_ZONE = 0.09

# 5×7 bitmaps of the lead side markers technologists tape onto the cassette.
_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


@dataclass(frozen=True)
class Placement:
    """How the patient lies on the detector: mirrored (a left limb), rotated, scaled, shifted."""

    angle_deg: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    mirror: bool = False

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Return where the anatomy point (x, y) lands on the detector, in mm."""
        cos, sin = math.cos(math.radians(self.angle_deg)), math.sin(math.radians(self.angle_deg))
        x = -x if self.mirror else x
        return (
            self.scale * (cos * x - sin * y) + self.dx,
            self.scale * (sin * x + cos * y) + self.dy,
        )


@dataclass(frozen=True)
class Capsule:
    """A structure seen in projection: segment (x0, y0)→(x1, y1) with a radius profile.

    `taper` is the radius at the second end relative to the first, `flare` widens both
    ends (a long bone's joint ends), `cortex` is the cortical shell as a fraction of the
    radius (0 for soft tissue), and `cancellous` fills a short bone (carpal, tarsal) with
    cancellous bone throughout instead of a long bone's fatty shaft.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    radius: float
    taper: float = 1.0
    flare: float = 0.0
    cortex: float = 0.0
    cancellous: bool = False

    def __post_init__(self) -> None:
        if self.radius <= 0 or self.taper <= 0:
            raise ValueError("a capsule needs a positive radius and taper")
        if not 0.0 <= self.cortex < 1.0 or self.flare < 0:
            raise ValueError("cortex is a fraction in [0, 1) and flare is not negative")

    def placed(self, where: Placement) -> Capsule:
        """Return the capsule moved as `where` says."""
        (x0, y0), (x1, y1) = where.point(self.x0, self.y0), where.point(self.x1, self.y1)
        return replace(self, x0=x0, y0=y0, x1=x1, y1=y1, radius=self.radius * where.scale)

    @property
    def reach(self) -> float:
        """Return the largest distance from the axis the capsule can cover."""
        return self.radius * max(1.0, self.taper) * (1.0 + self.flare)


@dataclass(frozen=True)
class Anatomy:
    """What is in the beam: soft-tissue envelopes and bones, all capsules."""

    soft: tuple[Capsule, ...]
    bones: tuple[Capsule, ...]

    def placed(self, where: Placement) -> Anatomy:
        """Return the anatomy with every capsule moved the same way."""
        return Anatomy(
            soft=tuple(c.placed(where) for c in self.soft),
            bones=tuple(c.placed(where) for c in self.bones),
        )


@dataclass(frozen=True)
class _Window:
    """The pixel box a capsule can touch, and its pixel-centre coordinates in mm."""

    rows: slice
    cols: slice
    x: np.ndarray
    y: np.ndarray


def _window(c: Capsule, *, shape: tuple[int, int], spacing: float) -> _Window | None:
    rows, cols = shape
    reach = c.reach + spacing
    lo_x, hi_x = min(c.x0, c.x1) - reach, max(c.x0, c.x1) + reach
    lo_y, hi_y = min(c.y0, c.y1) - reach, max(c.y0, c.y1) + reach
    c0 = max(0, math.floor(lo_x / spacing + (cols - 1) / 2))
    c1 = min(cols, math.ceil(hi_x / spacing + (cols - 1) / 2) + 1)
    r0 = max(0, math.floor(lo_y / spacing + (rows - 1) / 2))
    r1 = min(rows, math.ceil(hi_y / spacing + (rows - 1) / 2) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    x = ((np.arange(c0, c1, dtype=np.float32) - (cols - 1) / 2) * spacing)[None, :]
    y = ((np.arange(r0, r1, dtype=np.float32) - (rows - 1) / 2) * spacing)[:, None]
    return _Window(rows=slice(r0, r1), cols=slice(c0, c1), x=x, y=y)


def _chords(c: Capsule, w: _Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the path length through the capsule, through its inner canal, and end-ness."""
    dx, dy = c.x1 - c.x0, c.y1 - c.y0
    length2 = max(dx * dx + dy * dy, 1e-9)
    t = np.clip(((w.x - c.x0) * dx + (w.y - c.y0) * dy) / length2, 0.0, 1.0)
    dist2 = (w.x - (c.x0 + t * dx)) ** 2 + (w.y - (c.y0 + t * dy)) ** 2
    ends = np.exp(-((t / _END_ZONE) ** 2)) + np.exp(-(((1.0 - t) / _END_ZONE) ** 2))
    radius = c.radius * (1.0 + (c.taper - 1.0) * t) * (1.0 + c.flare * ends)
    outer = 2.0 * np.sqrt(np.maximum(radius**2 - dist2, 0.0))
    # The cortex thins towards the joint ends, where cancellous bone fills the shaft.
    inner_radius = radius * (1.0 - c.cortex * (1.0 - 0.75 * np.minimum(ends, 1.0)))
    inner = 2.0 * np.sqrt(np.maximum(inner_radius**2 - dist2, 0.0)) if c.cortex > 0 else outer
    return outer, inner, np.minimum(ends, 1.0)


def smooth_noise(rng: np.random.Generator, *, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Return zero-mean, unit-ish noise varying over about `cell` pixels (bilinear)."""
    rows, cols = shape
    cell = max(cell, 1.0)
    coarse = rng.standard_normal((int(rows / cell) + 2, int(cols / cell) + 2)).astype(np.float32)
    yi, xi = np.arange(rows) / cell, np.arange(cols) / cell
    y0, x0 = yi.astype(np.intp), xi.astype(np.intp)
    fy, fx = (yi - y0).astype(np.float32)[:, None], (xi - x0).astype(np.float32)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy, dtype=np.float32)


def attenuation(
    anatomy: Anatomy, *, shape: tuple[int, int], spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Return the line integral of attenuation (dimensionless) at every pixel."""
    soft = np.zeros(shape, dtype=np.float32)
    for c in anatomy.soft:
        w = _window(c, shape=shape, spacing=spacing)
        if w is not None:
            outer, _, _ = _chords(c, w)
            np.maximum(soft[w.rows, w.cols], outer, out=soft[w.rows, w.cols])
    total = soft * MU_SOFT
    # Trabecular texture: coarse-grained variation of cancellous density, ~1 mm grains.
    texture = 1.0 + 0.35 * smooth_noise(rng, shape=shape, cell=1.0 / spacing)
    for c in anatomy.bones:
        w = _window(c, shape=shape, spacing=spacing)
        if w is None:
            continue
        outer, inner, ends = _chords(c, w)
        if c.cancellous:
            ends = np.ones_like(ends)
        # Fatty marrow in the shaft, cancellous bone towards the ends (and in short bones).
        canal = MU_MARROW + (MU_CANCELLOUS - MU_MARROW) * ends * texture[w.rows, w.cols]
        bone = MU_CORTEX * (outer - inner) + canal * inner - MU_SOFT * outer
        total[w.rows, w.cols] += bone
    return np.maximum(total, 0.0)


def expose(
    line_integral: np.ndarray, *, rng: np.random.Generator, photons: float = 4000.0
) -> np.ndarray:
    """Return the log-transformed detector signal, −ln(N/N₀), with quantum noise on N."""
    expected = photons * np.exp(-line_integral)
    counted = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, np.float32)
    return -np.log(np.maximum(counted, 0.5) / photons)


def collimation_mask(
    *, shape: tuple[int, int], rng: np.random.Generator, margin: tuple[float, float] = (0.02, 0.07)
) -> np.ndarray:
    """Return a boolean mask of the exposed field: a rectangle inside the collimator blades."""
    rows, cols = shape
    top, bottom = (int(rows * rng.uniform(*margin)) for _ in range(2))
    left, right = (int(cols * rng.uniform(*margin)) for _ in range(2))
    mask = np.zeros(shape, dtype=bool)
    mask[top : rows - bottom, left : cols - right] = True
    return mask


def burn_marker(
    line_integral: np.ndarray, *, letter: str, mask: np.ndarray, spacing: float, right_side: bool
) -> None:
    """Add a lead letter marker ("L"/"R") in an upper corner of the exposed field, in place."""
    glyph = _GLYPHS[letter]
    cell = max(1, round(2.2 / spacing))  # 2.2 mm per bitmap cell, as on a real marker
    rows_in = np.flatnonzero(mask.any(axis=1))
    cols_in = np.flatnonzero(mask.any(axis=0))
    pad = 4 * cell
    top = int(rows_in[0]) + pad
    width = len(glyph[0]) * cell
    left = int(cols_in[-1]) - pad - width if right_side else int(cols_in[0]) + pad
    # The marker's plastic block, then the lead letter in it.
    line_integral[top - cell : top + 8 * cell, left - cell : left + width + cell] += 0.08
    for r, bits in enumerate(glyph):
        for k, bit in enumerate(bits):
            if bit == "1":
                r0, c0 = top + r * cell, left + k * cell
                line_integral[r0 : r0 + cell, c0 : c0 + cell] += MU_LEAD_MARKER


def window_for(values: np.ndarray, *, mask: np.ndarray) -> tuple[int, int]:
    """Return a (center, width) VOI window spanning the 1st–99.5th percentile of the field."""
    sample = values[mask][::7]
    low, high = np.percentile(sample, [1.0, 99.5])
    width = max(int(high - low), 64)
    return int((high + low) / 2), width
