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
class Break:
    """A fracture of a bone capsule, described in the capsule's own frame.

    The frame: `u` runs along the axis from the first end (t = 0) to the second, `v` is `u`
    turned a quarter clockwise on screen (y runs down) times `side`, so that mirroring
    the capsule flips `side` and the fracture stays the same one, mirrored.

    The fracture line crosses the axis at fraction `t`, at `angle_deg` to it (90 is
    transverse), measured from `u` towards `v`. Along it the bone is replaced by soft
    tissue (haematoma) over a Gaussian of 1σ `gap` mm, `depth` deep at its centre, with
    the fragment edges `sclerosis` denser and the line `roughness` mm jagged. The
    fragment of end `moving_end` may be angulated about the fracture point, slid `shift`
    mm along the line (sideways for a transverse one; an oblique one also shortens or
    lengthens the bone), and driven `impaction` mm into the other (denser overlap). A
    buckle (torus) fracture has no gap but a `bulge` of the radius, a kink of half-length
    `bulge_length` mm, `bulge_balance` as strong on the −v side, with the compressed
    trabeculae `sclerosis` denser.
    """

    t: float
    angle_deg: float = 90.0
    gap: float = 0.0
    depth: float = 0.0
    sclerosis: float = 0.0
    roughness: float = 0.0
    phase: float = 0.0
    moving_end: int = 0
    shift: float = 0.0
    angulation_deg: float = 0.0
    impaction: float = 0.0
    bulge: float = 0.0
    bulge_length: float = 0.0
    bulge_balance: float = 1.0
    side: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.t <= 1.0:
            raise ValueError("a fracture lies at a fraction t in [0, 1] of the bone")
        if not 0.0 < self.angle_deg < 180.0:
            raise ValueError("a fracture line meets the shaft at 0° to 180°, exclusive")
        if not 0.0 <= self.depth <= 1.0 or self.gap < 0.0 or self.roughness < 0.0:
            raise ValueError("depth is a fraction in [0, 1]; gap and roughness are not negative")
        if self.moving_end not in (0, 1) or self.side not in (-1.0, 1.0):
            raise ValueError("moving_end is 0 or 1 and side is ±1")
        if self.bulge < 0.0 or (self.bulge > 0.0 and self.bulge_length <= 0.0):
            raise ValueError("a bulge is not negative and needs a positive length")

    @property
    def displaced(self) -> bool:
        """Return whether a fragment is moved (and the bone must be drawn in two parts)."""
        return self.shift != 0.0 or self.angulation_deg != 0.0 or self.impaction != 0.0

    def placed(self, where: Placement) -> Break:
        """Return the fracture as seen on the capsule moved by `where` (mm scale, mirror)."""
        k = where.scale
        return replace(
            self,
            gap=self.gap * k,
            roughness=self.roughness * k,
            shift=self.shift * k,
            impaction=self.impaction * k,
            bulge_length=self.bulge_length * k,
            side=-self.side if where.mirror else self.side,
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
    fracture: Break | None = None

    def __post_init__(self) -> None:
        if self.radius <= 0 or self.taper <= 0:
            raise ValueError("a capsule needs a positive radius and taper")
        if not 0.0 <= self.cortex < 1.0 or self.flare < 0:
            raise ValueError("cortex is a fraction in [0, 1) and flare is not negative")
        if self.fracture is not None and self.cortex == 0.0:
            raise ValueError("only a bone (a capsule with a cortex) can be fractured")

    def placed(self, where: Placement) -> Capsule:
        """Return the capsule moved as `where` says."""
        (x0, y0), (x1, y1) = where.point(self.x0, self.y0), where.point(self.x1, self.y1)
        fracture = None if self.fracture is None else self.fracture.placed(where)
        return replace(
            self, x0=x0, y0=y0, x1=x1, y1=y1, radius=self.radius * where.scale, fracture=fracture
        )

    @property
    def reach(self) -> float:
        """Return the largest distance from the axis the capsule can cover."""
        bulge = 0.0 if self.fracture is None else self.fracture.bulge
        return self.radius * max(1.0, self.taper) * (1.0 + self.flare) * (1.0 + bulge)


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


def _chords(
    c: Capsule, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Return the path length through the capsule, through its inner canal, end-ness, bulge.

    The last is where a buckle fracture kinks the cortex outwards (0 to 1), or None.
    """
    dx, dy = c.x1 - c.x0, c.y1 - c.y0
    length2 = max(dx * dx + dy * dy, 1e-9)
    t = np.clip(((x - c.x0) * dx + (y - c.y0) * dy) / length2, 0.0, 1.0)
    dist2 = (x - (c.x0 + t * dx)) ** 2 + (y - (c.y0 + t * dy)) ** 2
    ends = np.exp(-((t / _END_ZONE) ** 2)) + np.exp(-(((1.0 - t) / _END_ZONE) ** 2))
    radius = c.radius * (1.0 + (c.taper - 1.0) * t) * (1.0 + c.flare * ends)
    # The cortex thins towards the joint ends, where cancellous bone fills the shaft.
    inner_radius = radius * (1.0 - c.cortex * (1.0 - 0.75 * np.minimum(ends, 1.0)))
    bump = None
    b = c.fracture
    if b is not None and b.bulge > 0.0:
        # A buckle: the cortex folds outwards over a short stretch (a kink, sharpest at its
        # middle), more on one side; the folded wall is a little thicker than it was.
        bump = np.clip(1.0 - np.abs(t - b.t) * math.sqrt(length2) / b.bulge_length, 0.0, 1.0)
        bump = bump * bump
        across = ((y - c.y0) * dx - (x - c.x0) * dy) * b.side
        sided = np.where(across >= 0.0, np.float32(1.0), np.float32(b.bulge_balance))
        outwards = radius * b.bulge * bump * sided
        radius = radius + outwards
        inner_radius = inner_radius + 0.7 * outwards
    outer = 2.0 * np.sqrt(np.maximum(radius**2 - dist2, 0.0))
    inner = 2.0 * np.sqrt(np.maximum(inner_radius**2 - dist2, 0.0)) if c.cortex > 0 else outer
    return outer, inner, np.minimum(ends, 1.0), bump


def _bone(
    c: Capsule, x: np.ndarray, y: np.ndarray, texture: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return a bone's attenuation over the soft tissue it displaces, its chord, its bulge."""
    outer, inner, ends, bump = _chords(c, x, y)
    if c.cancellous:
        ends = np.ones_like(ends)
    # Fatty marrow in the shaft, cancellous bone towards the ends (and in short bones).
    canal = MU_MARROW + (MU_CANCELLOUS - MU_MARROW) * ends * texture
    if bump is not None and c.fracture is not None:
        canal = canal + MU_CANCELLOUS * c.fracture.sclerosis * bump  # compressed trabeculae
    value = MU_CORTEX * (outer - inner) + canal * inner - MU_SOFT * outer
    return value, outer, bump


@dataclass(frozen=True)
class _Frame:
    """A fracture's point on the axis, the line's normal (towards the moving end), its
    direction, and the axis direction towards the fragment that stays (mm, detector)."""

    fx: float
    fy: float
    nx: float
    ny: float
    ex: float
    ey: float
    sx: float
    sy: float


def _frame(c: Capsule, b: Break) -> _Frame:
    dx, dy = c.x1 - c.x0, c.y1 - c.y0
    length = max(math.hypot(dx, dy), 1e-9)
    ux, uy = dx / length, dy / length
    vx, vy = -uy * b.side, ux * b.side
    cos, sin = math.cos(math.radians(b.angle_deg)), math.sin(math.radians(b.angle_deg))
    towards = 1.0 if b.moving_end == 0 else -1.0  # the normal −sin·u + cos·v points to t = 0
    return _Frame(
        fx=c.x0 + b.t * dx,
        fy=c.y0 + b.t * dy,
        nx=towards * (cos * vx - sin * ux),
        ny=towards * (cos * vy - sin * uy),
        ex=cos * ux + sin * vx,
        ey=cos * uy + sin * vy,
        sx=towards * ux,
        sy=towards * uy,
    )


def _line_distance(f: _Frame, b: Break, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the signed distance (mm) to the jagged fracture line, positive towards the
    moving end."""
    px, py = x - f.fx, y - f.fy
    d = px * f.nx + py * f.ny
    if b.roughness > 0.0:
        along = px * f.ex + py * f.ey
        d = d + b.roughness * (
            0.65 * np.sin(along * (2.0 * math.pi / 4.5) + b.phase)
            + 0.35 * np.sin(along * (2.0 * math.pi / 1.6) + 2.3 * b.phase + 1.0)
        )
    return np.asarray(d)


def _gap(b: Break, d: np.ndarray, *, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the factor a fracture line leaves of the bone, and where it acts.

    A pixel averages the line over its width, so a line thinner than a pixel is drawn
    wider and shallower with the same missing bone: a hairline fades at coarse spacing.
    """
    if b.gap <= 0.0 or b.depth <= 0.0:
        return np.ones_like(d), np.zeros(d.shape, dtype=bool)
    sigma = math.hypot(b.gap, 0.3 * spacing)
    depth = b.depth * b.gap / sigma
    gauss = np.exp(-0.5 * (d / sigma) ** 2)
    rim = np.exp(-0.5 * ((np.abs(d) - 2.5 * sigma) / (0.7 * sigma)) ** 2)
    return 1.0 - depth * gauss + b.sclerosis * rim, np.abs(d) < 4.0 * sigma


def _add_bone(
    total: np.ndarray,
    c: Capsule,
    texture: np.ndarray,
    *,
    spacing: float,
    marks: np.ndarray | None,
) -> None:
    """Add one bone's attenuation to `total`, broken as its `fracture` says; mark the break."""
    shape = (total.shape[0], total.shape[1])
    w = _window(c, shape=shape, spacing=spacing)
    b = c.fracture
    if b is None:
        if w is not None:
            total[w.rows, w.cols] += _bone(c, w.x, w.y, texture[w.rows, w.cols])[0]
        return
    f = _frame(c, b)
    if w is not None:
        value, outer, bump = _bone(c, w.x, w.y, texture[w.rows, w.cols])
        d = _line_distance(f, b, w.x, w.y)
        factor, mark = _gap(b, d, spacing=spacing)
        if b.displaced:  # this is the fragment that stays, up to the line
            factor = factor * np.clip(0.5 - d / spacing, 0.0, 1.0)
        total[w.rows, w.cols] += value * factor
        if marks is not None:
            if bump is not None:
                mark = mark | (bump > 0.02)
            marks[w.rows, w.cols] |= mark & (outer > 0.0)
    if not b.displaced:
        return
    # The other fragment, angulated about the fracture point, slid along the fracture
    # plane and driven in: render the unmoved bone at the pixels' positions mapped back,
    # beyond the line.
    theta = math.radians(b.angulation_deg) * b.side
    cos, sin = math.cos(theta), math.sin(theta)
    tx, ty = b.shift * f.ex + b.impaction * f.sx, b.shift * f.ey + b.impaction * f.sy

    def forward(px: float, py: float) -> tuple[float, float]:
        qx, qy = px - f.fx, py - f.fy
        return f.fx + cos * qx - sin * qy + tx, f.fy + sin * qx + cos * qy + ty

    (x0, y0), (x1, y1) = forward(c.x0, c.y0), forward(c.x1, c.y1)
    wm = _window(replace(c, x0=x0, y0=y0, x1=x1, y1=y1), shape=shape, spacing=spacing)
    if wm is None:
        return
    qx, qy = wm.x - f.fx - tx, wm.y - f.fy - ty
    xb, yb = f.fx + cos * qx + sin * qy, f.fy - sin * qx + cos * qy
    value, outer, _ = _bone(c, xb, yb, texture[wm.rows, wm.cols])
    d = _line_distance(f, b, xb, yb)
    factor, mark = _gap(b, d, spacing=spacing)
    total[wm.rows, wm.cols] += value * factor * np.clip(0.5 + d / spacing, 0.0, 1.0)
    if marks is not None:
        marks[wm.rows, wm.cols] |= mark & (outer > 0.0)


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
    anatomy: Anatomy,
    *,
    shape: tuple[int, int],
    spacing: float,
    rng: np.random.Generator,
    marks: np.ndarray | None = None,
) -> np.ndarray:
    """Return the line integral of attenuation (dimensionless) at every pixel.

    `marks`, a boolean array of `shape` if given, is set where a fracture changes a bone.
    A fracture draws nothing from `rng`, so the same draws give the same image but for it.
    """
    soft = np.zeros(shape, dtype=np.float32)
    for c in anatomy.soft:
        w = _window(c, shape=shape, spacing=spacing)
        if w is not None:
            outer = _chords(c, w.x, w.y)[0]
            np.maximum(soft[w.rows, w.cols], outer, out=soft[w.rows, w.cols])
    total = soft * MU_SOFT
    # Trabecular texture: coarse-grained variation of cancellous density, ~1 mm grains.
    texture = 1.0 + 0.35 * smooth_noise(rng, shape=shape, cell=1.0 / spacing)
    for c in anatomy.bones:
        _add_bone(total, c, texture, spacing=spacing, marks=marks)
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
