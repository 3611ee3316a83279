"""Synthetic screening mammograms (MG, for presentation) with ground truth, deterministic by seed.

One exam is the four standard views of one clearly fake woman: R CC, L CC, R MLO, L MLO.
Each view is rendered from a small physical model of a compressed breast:

* the outline is a half-ellipse against the chest wall (a nipple in profile at its apex),
  the compressed edge is rounded, so the X-ray path shortens towards the skin line, and
  the skin is a shell of 1–2 mm whose tangential path shows as a bright line;
* the breast is a mixture of fat and fibroglandular tissue; the glandular fraction is a
  power-law texture, amplitude spectrum ∝ f^(−β/2) so the power spectrum falls as 1/f^β
  with β ≈ 3 (Burgess et al. 2001, Heine & Velthuizen 2002), inside an envelope that keeps
  subcutaneous and retroglandular fat free of it; the BI-RADS density category (a–d) sets
  how much dense tissue there is and how strongly it varies;
* the pectoral muscle is a triangle from the upper chest-wall corner in the MLO views;
* lesions displace the tissue they sit in (a mass has about the attenuation of glandular
  tissue, so it stands out against fat and hides in dense tissue), calcifications are
  tiny hydroxyapatite specks, far more attenuating than anything else;
* photons carry Poisson (quantum) noise and a slight heel effect, and the log signal goes
  through the thickness equalisation and grey-scale mapping of a "for presentation" image.

A lesion has one position in the breast (depth from the nipple, lateral and superior
offset); each view projects it, so it shows in both views of its breast at the same depth
from the nipple with the same size, and never in the other breast. The ground-truth box of
each affected image is in pixel coordinates of the stored image (x = column, y = row).

Geometry conventions: views are stored as they are hung, lateral (CC) or superolateral
(MLO) side up, the chest wall at the right edge for a right breast and at the left edge
for a left one, so Patient Orientation is R CC `P\\L`, L CC `A\\R`, R MLO `P\\FL`, L MLO
`A\\FR`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy import fft

BITS_STORED = 12
MAX_VALUE = (1 << BITS_STORED) - 1
DENSITIES = ("a", "b", "c", "d")
FINDINGS = ("round_mass", "spiculated_mass", "calcifications")
RANDOM: Literal["random"] = "random"
#: The four screening views in the order they are stored (instance numbers 1–4).
VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
#: Screening density mix (BI-RADS 5th edition, about what screening populations show).
DENSITY_MIX = (0.1, 0.4, 0.4, 0.1)
#: Power-law exponent of the parenchymal texture's power spectrum.
BETA = 3.0
#: SNOMED CT codes: DICOM CID 4014 (view for mammography) and CID 4031 (breast).
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
BREAST_CODE = ("76752008", "Breast")
#: Patient Orientation (row direction, column direction) per laterality and view.
ORIENTATIONS = {
    ("R", "CC"): ("P", "L"),
    ("L", "CC"): ("A", "R"),
    ("R", "MLO"): ("P", "FL"),
    ("L", "MLO"): ("A", "FR"),
}
UID_NAMESPACE = "lods.synth.mammo"
MANUFACTURER = "Lods Synthetic"
#: Detector field (rows × columns) in mm and the full-size detector pixel pitches.
FIELD_MM = (240.0, 180.0)
_FULL_SIZE_PITCHES = (0.085, 0.094, 0.1)
_GIVEN_NAMES = ("Astrid", "Freja", "Ida", "Karen", "Maja", "Sofie", "Inge", "Lene", "Birte")

# Linear attenuation coefficients (1/mm) at an effective energy of about 20 keV.
_MU_FAT = 0.046
_MU_GLAND = 0.080
_MU_SKIN = 0.080
_MU_MUSCLE = 0.078
#: Invasive carcinoma is only a little more attenuating than glandular tissue (0.084/mm);
#: the phantom's masses are denser (desmoplastic tissue, and a task that a small
#: demonstration model can learn), so that they show in fatty and scattered breasts and
#: still hide more in dense ones.
_MU_MASS = 0.105
_MU_CALC = 1.2
#: How much deeper along the beam a spicule's sheet of fibrous tissue is than it is wide.
_SPICULE_DEPTH = 3.0
# Presentation mapping: stored value of fat at full thickness, gain per log unit (at 50 mm),
# how much of the thickness fall-off at the edge is equalised, the background value.
_VALUE_FAT = 900.0
_GAIN = 1500.0
_EQUALISATION = 0.85
_BACKGROUND = 40.0
#: Unattenuated photons per mm² at the detector (sets the quantum noise).
_PHOTONS_PER_MM2 = 3.0e6
#: Glandular fraction: (mean, texture amplitude) per BI-RADS density category.
_DENSITY_MODEL = {"a": (0.05, 0.06), "b": (0.22, 0.14), "c": (0.45, 0.2), "d": (0.72, 0.16)}
_BOX_MARGIN_MM = 2.0
_SOURCE_TO_DETECTOR = 660.0
_SOURCE_TO_SUPPORT = 640.0


@dataclass
class MammoCase:
    """One synthetic screening exam: four images and what is (or is not) in them."""

    case_id: str
    study_uid: str
    patient_id: str
    age: int
    density: str
    label: int
    finding: str | None
    laterality: str | None
    datasets: list[Dataset] = field(default_factory=list)
    #: SOP Instance UID → (x0, y0, x1, y1) in pixels; only the images of the affected breast.
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _View:
    """Where one compressed breast lies on the detector. Lengths in mm.

    `u` runs from the chest wall (image edge) towards the nipple, `y` down the image from
    the nipple's row. The outline is at u = depth·sqrt(1 − (y/b)²)·wobble + nipple bump,
    with b = `above` for y < 0 and `below` for y > 0.
    """

    laterality: str
    view: str
    rows: int
    cols: int
    spacing: float
    depth: float
    nipple_row: float
    above: float
    below: float
    wobble: tuple[tuple[float, float, float], ...]
    nipple: float
    thickness: float
    skin: float
    pectoral: tuple[float, float] | None
    angle: float

    def outline(self, y: np.ndarray) -> np.ndarray:
        """Return the skin line's distance from the chest wall at heights `y` (mm)."""
        b = np.where(y < 0, self.above, self.below)
        p = np.clip(y / b, -1.0, 1.0)
        wobble = np.ones_like(p)
        for k, amplitude, phase in self.wobble:
            wobble += amplitude * np.sin(k * math.pi * p + phase)
        base = self.depth * np.sqrt(np.clip(1.0 - p * p, 0.0, None)) * wobble
        return base + self.nipple * np.exp(-((y / 4.5) ** 2))

    def inside_depth(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the distance (mm) from the skin line inwards; negative outside."""
        fine = np.linspace(-300.0, 300.0, 2401)
        edge = self.outline(fine)
        norm = np.sqrt(1.0 + np.gradient(edge, fine) ** 2)
        return (np.interp(y, fine, edge) - u) / np.interp(y, fine, norm)

    def in_pectoral(self, u: np.ndarray, top: np.ndarray) -> np.ndarray:
        """Return the signed distance (mm) into the pectoral muscle at (u, mm from top)."""
        if self.pectoral is None:
            return np.full(np.broadcast(u, top).shape, -1e3, dtype=np.float32)
        width, height = self.pectoral
        line = 1.0 - u / width - top / height
        bulge = 3.0 * np.sin(math.pi * np.clip(top / height, 0.0, 1.0))
        return line / math.hypot(1.0 / width, 1.0 / height) + bulge


@dataclass(frozen=True)
class _Lesion:
    """A lesion in the breast: depth from the nipple, lateral and superior offsets (mm)."""

    kind: str
    laterality: str
    depth: float
    lateral: float
    superior: float
    radius: float
    #: spicules: unit 3-D directions (x towards nipple, lateral, superior), length, width.
    spicules: tuple[tuple[float, float, float, float, float], ...] = ()
    #: calcifications: 3-D offsets from the centre (mm) and diameter.
    specks: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True)
class _Projected:
    """A lesion as one view sees it: centre (u, y from top) and in-plane offsets (mm)."""

    u: float
    top: float
    #: spicules: start and end offsets (u, top) from the centre, and base width.
    spicules: tuple[tuple[float, float, float, float, float], ...]
    specks: tuple[tuple[float, float, float], ...]


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _edge_thickness(e: np.ndarray, thickness: float) -> np.ndarray:
    """Return the path length through a compressed breast at depth `e` inside its edge."""
    w = thickness / 2.0
    inner = np.clip(e, 0.0, w)
    return 2.0 * np.sqrt(np.maximum(w * w - (w - inner) ** 2, 0.0))


def power_law_texture(
    rng: np.random.Generator, *, shape: tuple[int, int], spacing: float, beta: float = BETA
) -> np.ndarray:
    """Return zero-mean, unit-variance noise whose power spectrum falls as 1/f^beta.

    Below 1/60 cycles per mm the spectrum is flat, so the field has no structure much
    larger than a breast.
    """
    rows, cols = shape
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = fft.rfft2(white, workers=-1)
    fy = fft.fftfreq(rows, d=spacing).astype(np.float32)[:, None]
    fx = fft.rfftfreq(cols, d=spacing).astype(np.float32)[None, :]
    f2 = fy * fy + fx * fx + np.float32((1.0 / 60.0) ** 2)
    spectrum *= f2 ** np.float32(-beta / 4.0)
    texture = fft.irfft2(spectrum, s=shape, workers=-1).astype(np.float32)
    texture -= texture.mean()
    texture /= max(float(texture.std()), 1e-12)
    return texture


def _chord(d2: np.ndarray, radius: float) -> np.ndarray:
    return 2.0 * np.sqrt(np.maximum(radius * radius - d2, 0.0))


def _window(
    view: _View, u: float, top: float, reach: float
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Return the canonical-image window around (u, top) and its pixel coordinates in mm."""
    s = view.spacing
    col = view.cols - 1 - u / s
    row = top / s
    c0, c1 = max(0, math.floor(col - reach / s)), min(view.cols, math.ceil(col + reach / s) + 1)
    r0, r1 = max(0, math.floor(row - reach / s)), min(view.rows, math.ceil(row + reach / s) + 1)
    cols = np.arange(c0, max(c0, c1), dtype=np.float32)
    uu = ((view.cols - 1 - cols) * s)[None, :]
    tt = (np.arange(r0, max(r0, r1), dtype=np.float32) * s)[:, None]
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1)), uu, tt


def _project(lesion: _Lesion, view: _View) -> _Projected:
    """Return where `view` sees the lesion: CC looks from above, MLO along the oblique."""
    angle = math.radians(view.angle)

    def up(lateral: float, superior: float) -> float:
        if view.view == "CC":
            return lateral
        return superior * math.cos(angle) + lateral * math.sin(angle)

    nipple_u = float(view.outline(np.zeros(1))[0])
    # Spicules leave the core's margin and radiate `length` mm beyond it.
    r = lesion.radius
    spicules = tuple(
        (0.7 * r * dx, -0.7 * r * up(dl, ds), (r + n) * dx, -(r + n) * up(dl, ds), width)
        for dx, dl, ds, n, width in lesion.spicules
    )
    specks = tuple((dx, -up(dl, ds), size) for dx, dl, ds, size in lesion.specks)
    return _Projected(
        u=nipple_u - lesion.depth,
        top=view.nipple_row - up(lesion.lateral, lesion.superior),
        spicules=spicules,
        specks=specks,
    )


def _lesion_extent(lesion: _Lesion, where: _Projected) -> tuple[float, float, float, float]:
    """Return the lesion's extent (u0, top0, u1, top1) in mm in the view."""
    points = [(where.u, where.top, lesion.radius)]
    points += [(where.u + du, where.top + dt, w) for _, _, du, dt, w in where.spicules]
    points += [(where.u + du, where.top + dt, size / 2.0) for du, dt, size in where.specks]
    u0 = min(p[0] - p[2] for p in points)
    u1 = max(p[0] + p[2] for p in points)
    t0 = min(p[1] - p[2] for p in points)
    t1 = max(p[1] + p[2] for p in points)
    return u0, t0, u1, t1


def _add_lesion(
    line: np.ndarray,
    mu_tissue: np.ndarray,
    path: np.ndarray,
    *,
    view: _View,
    lesion: _Lesion,
    where: _Projected,
) -> None:
    """Add the lesion's extra attenuation to `line` (canonical orientation), in place."""
    s = view.spacing
    if lesion.kind in ("round_mass", "spiculated_mass"):
        # The mass displaces the tissue it sits in; its margin is sharp when round and
        # ill-defined (blurred over ~15 % of the radius) when spiculated.
        r = lesion.radius
        rows, cols, uu, tt = _window(view, where.u, where.top, r * 1.3 + s)
        d2 = (uu - where.u) ** 2 + (tt - where.top) ** 2
        if lesion.kind == "round_mass":
            chord = _chord(d2, r)
        else:
            soft = 1.0 - _smoothstep(np.sqrt(d2), 0.85 * r, 1.15 * r)
            chord = 2.0 * r * np.sqrt(np.maximum(1.0 - d2 / (1.3 * r) ** 2, 0.0)) * soft
        chord = np.minimum(chord, path[rows, cols])
        line[rows, cols] += chord * (_MU_MASS - mu_tissue[rows, cols])
    for su, st, eu, et, width in where.spicules:
        # A strand of fibrous tissue (a thin sheet, deeper along the beam than it is wide)
        # tapering outwards; thinner than a pixel, it keeps its integral attenuation.
        u0, t0 = where.u + su, where.top + st
        du, dt = eu - su, et - st
        reach = math.hypot(du, dt) / 2.0 + width + s
        rows, cols, uu, tt = _window(view, u0 + du / 2.0, t0 + dt / 2.0, reach)
        seg2 = max(du * du + dt * dt, 1e-6)
        t = np.clip(((uu - u0) * du + (tt - t0) * dt) / seg2, 0.0, 1.0)
        d2 = (uu - u0 - t * du) ** 2 + (tt - t0 - t * dt) ** 2
        radius = width / 2.0 * (1.0 - 0.85 * t)
        spread = np.maximum(radius, 0.5 * s)
        chord = 2.0 * np.sqrt(np.maximum(spread * spread - d2, 0.0)) * (radius / spread) ** 2
        # The core already displaces the tissue within its margin.
        core2 = (uu - where.u) ** 2 + (tt - where.top) ** 2
        chord *= _smoothstep(np.sqrt(core2), 0.85 * lesion.radius, 1.1 * lesion.radius)
        chord = np.minimum(_SPICULE_DEPTH * chord, path[rows, cols])
        line[rows, cols] += chord * (_MU_MASS - mu_tissue[rows, cols])
    for du, dt, size in where.specks:
        # A sphere of `size` mm: its integral attenuation spread over a Gaussian spot no
        # smaller than a pixel, so it is a speck at any image size.
        sigma = math.sqrt((size / 4.0) ** 2 + (0.4 * s) ** 2)
        volume = math.pi * size**3 / 6.0
        amplitude = _MU_CALC * volume / (2.0 * math.pi * sigma * sigma)
        u, top = where.u + du, where.top + dt
        rows, cols, uu, tt = _window(view, u, top, 3.5 * sigma + s)
        d2 = (uu - u) ** 2 + (tt - top) ** 2
        line[rows, cols] += amplitude * np.exp(-d2 / (2.0 * sigma * sigma))


@dataclass(frozen=True)
class _Rendered:
    pixels: np.ndarray
    box: tuple[float, float, float, float] | None
    window_center: int
    window_width: int


def _render(
    view: _View, *, seed: int, index: int, density: str, lesion: _Lesion | None
) -> _Rendered:
    """Render one view (12-bit, MONOCHROME2 sense) and its lesion box, if it shows one."""
    s, rows, cols = view.spacing, view.rows, view.cols
    u = ((cols - 1 - np.arange(cols, dtype=np.float32)) * s)[None, :]
    top = (np.arange(rows, dtype=np.float32) * s)[:, None]
    fine_y = top[:, 0] - view.nipple_row
    edge = view.outline(fine_y)
    norm = np.sqrt(1.0 + np.gradient(edge, s) ** 2)
    e = ((edge[:, None] - u) / norm[:, None]).astype(np.float32)
    path = _edge_thickness(e, view.thickness)
    inner = _edge_thickness(e - view.skin, view.thickness - 2.0 * view.skin)
    # Parenchyma: glandular fraction from a power-law texture inside the glandular envelope.
    texture_rng = np.random.default_rng([seed, index, 0x7E])
    texture = power_law_texture(texture_rng, shape=(rows, cols), spacing=s)
    level, amplitude = _DENSITY_MODEL[density]
    envelope = _smoothstep(e, 4.0, 22.0) * (0.4 + 0.6 * _smoothstep(u, 0.0, 25.0))
    gland = np.clip(envelope * (level + amplitude * texture), 0.0, 1.0)
    mu_tissue = _MU_FAT + (_MU_GLAND - _MU_FAT) * gland
    line = inner * mu_tissue + (path - inner) * _MU_SKIN
    muscle = view.in_pectoral(u, top)
    if view.pectoral is not None:
        # Muscle replaces the breast tissue; its fibres vary its density a little.
        share = np.clip(muscle / 1.5 + 0.5, 0.0, 1.0) * (e > 0)
        mu_muscle = _MU_MUSCLE + 0.0015 * texture
        line = (1.0 - share) * line + share * path * mu_muscle
        mu_tissue = (1.0 - share) * mu_tissue + share * mu_muscle
    line = line.astype(np.float32)
    box = None
    if lesion is not None and lesion.laterality == view.laterality:
        where = _project(lesion, view)
        _add_lesion(line, mu_tissue, path, view=view, lesion=lesion, where=where)
        u0, t0, u1, t1 = _lesion_extent(lesion, where)
        m = _BOX_MARGIN_MM
        x0 = max(0.0, cols - 1 - (u1 + m) / s)
        x1 = min(cols - 1.0, cols - 1 - (u0 - m) / s)
        y0, y1 = max(0.0, (t0 - m) / s), min(rows - 1.0, (t1 + m) / s)
        box = (x0, y0, x1, y1)
    # Photons: a slight heel effect (fewer towards the nipple side), Poisson noise, log.
    noise_rng = np.random.default_rng([seed, index, 0x9A])
    flat = _PHOTONS_PER_MM2 * s * s
    heel = 1.0 - 0.08 * np.clip(u / FIELD_MM[1], 0.0, 1.0)
    expected = flat * heel * np.exp(-line)
    counted = expected + np.sqrt(expected) * noise_rng.standard_normal((rows, cols), np.float32)
    signal = -np.log(np.maximum(counted, 0.5) / flat)
    # Processing for presentation: thickness equalisation towards the edge, linear gain.
    equalised = view.thickness - _EQUALISATION * (view.thickness - path)
    gain = _GAIN * 50.0 / view.thickness
    tissue = _VALUE_FAT + gain * (signal - _MU_FAT * equalised)
    covered = np.clip(e / s + 0.5, 0.0, 1.0)
    values = covered * tissue + (1.0 - covered) * _BACKGROUND
    pixels = np.rint(np.clip(values, 0, MAX_VALUE)).astype(np.uint16)
    sample = pixels[e > 8.0]
    low, high = np.percentile(sample if sample.size else pixels, [0.5, 99.8])
    center, width = int((low + high) / 2), max(int(high - low), 64)
    if view.laterality == "L":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        if box is not None:
            box = (cols - 1 - box[2], box[1], cols - 1 - box[0], box[3])
    if box is not None:
        box = (round(box[0], 1), round(box[1], 1), round(box[2], 1), round(box[3], 1))
    return _Rendered(pixels=pixels, box=box, window_center=center, window_width=width)


@dataclass(frozen=True)
class _Woman:
    """Everything about one exam that does not depend on the pixels."""

    seed: int
    number: int
    age: int
    density: str
    finding: str | None
    laterality: str | None
    when: datetime
    birth_date: date
    name: str
    accession: str


def _breast_views(seed: int, size: int | None) -> list[_View]:
    """Return the four views' geometry (same woman, both breasts nearly alike)."""
    rng = np.random.default_rng([seed, 0xB5])
    if size is None:
        detector = np.random.default_rng([seed, 0xDE])
        pitch = float(_FULL_SIZE_PITCHES[int(detector.integers(len(_FULL_SIZE_PITCHES)))])
        rows = round(FIELD_MM[0] / pitch)
    else:
        if not 128 <= size <= 8192:
            raise ValueError("image size (long side) must be 128 to 8192 pixels")
        rows = size
        pitch = FIELD_MM[0] / rows
    cols = round(rows * FIELD_MM[1] / FIELD_MM[0])
    height = rows * pitch
    depth = float(rng.uniform(55.0, 115.0))
    half = float(rng.uniform(60.0, 92.0))
    thickness = float(np.clip(22.0 + 0.35 * depth + rng.normal(0.0, 5.0), 30.0, 75.0))
    skin = float(rng.uniform(1.2, 2.2))
    angle = float(rng.uniform(40.0, 55.0))
    views: list[_View] = []
    sides = {side: float(rng.uniform(0.96, 1.04)) for side in ("R", "L")}
    for laterality, name in VIEWS:
        scale = sides[laterality]
        wobble = tuple(
            (float(k), float(rng.uniform(-0.035, 0.035)), float(rng.uniform(0, 2 * math.pi)))
            for k in (1, 2, 3)
        )
        if name == "CC":
            nipple_row = height / 2 + float(rng.uniform(-12.0, 12.0))
            limit = min(nipple_row, height - nipple_row) - 6.0
            above = min(half * scale * float(rng.uniform(0.92, 1.08)), limit)
            below = min(half * scale * float(rng.uniform(0.92, 1.08)), limit)
            view = _View(
                laterality=laterality,
                view=name,
                rows=rows,
                cols=cols,
                spacing=pitch,
                depth=depth * scale,
                nipple_row=nipple_row,
                above=above,
                below=below,
                wobble=wobble,
                nipple=float(rng.uniform(3.0, 6.0)),
                thickness=thickness,
                skin=skin,
                pectoral=None,
                angle=0.0,
            )
        else:
            mlo_depth = depth * scale * float(rng.uniform(1.03, 1.12))
            nipple_row = height * float(rng.uniform(0.5, 0.6))
            fold = height * float(rng.uniform(0.84, 0.93))
            above = nipple_row * float(rng.uniform(1.3, 1.55))
            # The skin line meets the top edge; the muscle must stay inside it there.
            at_top = mlo_depth * math.sqrt(1.0 - (nipple_row / above) ** 2)
            pectoral = (
                min(mlo_depth * float(rng.uniform(0.3, 0.5)), 0.85 * at_top),
                height * float(rng.uniform(0.4, 0.62)),
            )
            view = _View(
                laterality=laterality,
                view=name,
                rows=rows,
                cols=cols,
                spacing=pitch,
                depth=mlo_depth,
                nipple_row=nipple_row,
                above=above,
                below=fold - nipple_row,
                wobble=wobble,
                nipple=float(rng.uniform(3.0, 6.0)),
                thickness=thickness * float(rng.uniform(1.0, 1.1)),
                skin=skin,
                pectoral=pectoral,
                angle=angle,
            )
        views.append(view)
    return views


def _place_lesion(seed: int, kind: str, laterality: str, views: list[_View]) -> _Lesion:
    """Return a lesion of `kind` that lies inside the breast tissue in both of its views."""
    rng = np.random.default_rng([seed, 0x1E])
    mine = [v for v in views if v.laterality == laterality]
    reach = min(v.depth for v in mine)
    if kind == "round_mass":
        radius = float(rng.uniform(4.0, 12.0))
    elif kind == "spiculated_mass":
        radius = float(rng.uniform(3.5, 8.0))
    else:
        radius = float(rng.uniform(2.5, 5.0))  # the cluster's radius
    spicules: list[tuple[float, float, float, float, float]] = []
    if kind == "spiculated_mass":
        for _ in range(int(rng.integers(8, 21))):
            direction = rng.standard_normal(3)
            direction /= max(float(np.linalg.norm(direction)), 1e-9)
            length = radius * float(rng.uniform(1.6, 3.2))
            width = float(rng.uniform(0.8, 2.0))
            x, lateral, superior = (float(c) for c in direction)
            spicules.append((x, lateral, superior, length, width))
    specks: list[tuple[float, float, float, float]] = []
    if kind == "calcifications":
        for _ in range(int(rng.integers(8, 25))):
            offset = rng.standard_normal(3)
            # Uniform in a ball of the cluster's radius.
            offset *= radius * float(rng.uniform()) ** (1 / 3) / max(np.linalg.norm(offset), 1e-9)
            dx, lateral, superior = (float(c) for c in offset)
            specks.append((dx, lateral, superior, float(rng.uniform(0.35, 1.0))))
    reach_out = radius * (3.3 if kind == "spiculated_mass" else 1.0)
    tries = 200
    for attempt in range(tries):
        # Ask for a clear margin to skin, muscle and chest wall; relax it if none is found
        # (a large spiculated mass in a small breast).
        extent = reach_out * (1.0 - 0.6 * attempt / tries)
        trial = _Lesion(
            kind=kind,
            laterality=laterality,
            depth=float(rng.uniform(0.2, 0.8)) * reach,
            lateral=float(rng.uniform(-0.6, 0.6)) * min(v.above for v in mine),
            superior=float(rng.uniform(-0.6, 0.6)) * min(v.below for v in mine),
            radius=radius,
            spicules=tuple(spicules),
            specks=tuple(specks),
        )
        fits = True
        for v in mine:
            where = _project(trial, v)
            u, top = np.array([where.u]), np.array([where.top])
            skin = float(v.inside_depth(u, top - v.nipple_row)[0])
            muscle = float(v.in_pectoral(u, top)[0])
            fits &= skin > extent + 6.0 and muscle < -(extent + 4.0) and where.u > extent + 8.0
        if fits:
            return trial
    # No room anywhere: on the nipple line, half-way to the chest wall.
    return _Lesion(kind, laterality, 0.45 * reach, 0.0, 0.0, radius, tuple(spicules), tuple(specks))


def _draw_age(rng: np.random.Generator) -> int:
    if rng.random() < 0.75:
        return int(rng.integers(50, 70))
    return int(rng.integers(40, 80))


def _woman(
    seed: int, number: int, *, density: str | None, finding: str | None, age: int | None
) -> _Woman:
    """Return the exam's facts; each is drawn from its own stream so fixing one keeps the rest."""
    if not 0 < number < 100_000:
        raise ValueError("a synthetic exam number is 1 to 99999")
    if density is not None and density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; expected one of {DENSITIES}")
    if finding is not None and finding != RANDOM and finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; expected one of {FINDINGS}, None or random")
    if age is not None and not 18 <= age <= 100:
        raise ValueError("age must be 18 to 100")
    picks = [np.random.default_rng([seed, k, 0xD1]) for k in range(6)]
    if density is None:
        density = DENSITIES[int(picks[0].choice(len(DENSITIES), p=DENSITY_MIX))]
    if finding == RANDOM:
        finding = None if picks[1].random() < 0.5 else FINDINGS[int(picks[1].integers(3))]
    laterality = ("R" if picks[2].random() < 0.5 else "L") if finding is not None else None
    if age is None:
        age = _draw_age(picks[3])
    when = datetime(2024, 1, 2, 7, 30) + timedelta(
        days=int(picks[4].integers(0, 360)), seconds=int(picks[4].integers(0, 10 * 3600))
    )
    # The last birthday fell within the year before the exam, so she is `age` that day.
    birthday = when.date() - timedelta(days=int(picks[5].integers(0, 365)))
    if (birthday.month, birthday.day) == (2, 29):
        birthday -= timedelta(days=1)
    birth = birthday.replace(year=birthday.year - age)
    given = _GIVEN_NAMES[int(picks[5].integers(len(_GIVEN_NAMES)))]
    return _Woman(
        seed=seed,
        number=number,
        age=age,
        density=density,
        finding=finding,
        laterality=laterality,
        when=when,
        birth_date=birth,
        name=f"Demo^{given}",
        accession=f"MG{int(picks[4].integers(10**7, 10**8))}",
    )


def _uid(seed: int, number: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[UID_NAMESPACE, str(seed), str(number), *map(str, parts)]))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def _age_string(woman: _Woman) -> str:
    day, birth = woman.when.date(), woman.birth_date
    years = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _dataset(woman: _Woman, view: _View, image: _Rendered, *, index: int) -> Dataset:
    """Return one complete Digital Mammography X-Ray Image – For Presentation instance."""
    rng = np.random.default_rng([woman.seed, index, 0x3C])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = _uid(woman.seed, woman.number, "instance", index)
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = woman.when.strftime(
        "%Y%m%d"
    )
    acquired = woman.when + timedelta(seconds=40 * index)
    ds.StudyTime = ds.SeriesTime = woman.when.strftime("%H%M%S")
    ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S")
    ds.AccessionNumber = woman.accession
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Lods Demo Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTHMG"
    ds.StudyDescription = "MG SCREENING BILATERAL"
    ds.SeriesDescription = "Screening mammography"
    ds.ManufacturerModelName = UID_NAMESPACE
    ds.DeviceSerialNumber = f"SYNMG{woman.seed % 100_000:05d}"
    ds.SoftwareVersions = "1"
    ds.PatientName = woman.name
    ds.PatientID = f"DEMOMG{woman.number:05d}"
    ds.PatientBirthDate = woman.birth_date.strftime("%Y%m%d")
    ds.PatientSex = "F"
    ds.PatientAge = _age_string(woman)
    ds.PatientIdentityRemoved = "NO"
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "NO"
    # Exposure: harder beams and more mAs for thicker breasts (automatic exposure control).
    kvp = float(np.clip(24.0 + (view.thickness - 30.0) / 6.0 + rng.normal(0.0, 0.5), 25, 34))
    current = int(rng.integers(80, 180))
    seconds = float(np.clip(0.4 + (view.thickness - 30.0) / 45.0 + rng.normal(0, 0.1), 0.3, 2.5))
    ds.KVP = f"{kvp:.0f}"
    # The breast support is 20 mm above the detector: geometric magnification 660/640.
    ds.DistanceSourceToDetector = f"{_SOURCE_TO_DETECTOR:.0f}"
    ds.DistanceSourceToPatient = f"{_SOURCE_TO_SUPPORT:.0f}"
    ds.ExposureTime = round(seconds * 1000)
    ds.XRayTubeCurrent = current
    ds.Exposure = max(1, round(seconds * current))
    ds.ExposureInuAs = round(seconds * current * 1000)
    ds.ExposureControlMode = "AUTOMATIC"
    ds.BodyPartThickness = f"{view.thickness:.0f}"
    ds.CompressionForce = f"{float(rng.uniform(60.0, 150.0)):.0f}"
    ds.RelativeXRayExposure = int(rng.integers(300, 900))
    ds.EntranceDoseInmGy = f"{3.0 + view.thickness / 15.0 + float(rng.uniform(0, 1)):.2f}"
    ds.OrganDose = f"{0.6 + view.thickness / 50.0 + float(rng.uniform(0, 0.4)):.2f}"
    ds.OrganExposed = "BREAST"
    ds.AnodeTargetMaterial = "TUNGSTEN"
    # Tungsten anode: 50 µm rhodium, or 0.7 mm aluminium for the thickest breasts.
    thick = view.thickness > 60
    ds.FilterMaterial = "ALUMINUM" if thick else "RHODIUM"
    ds.FilterThicknessMinimum = ds.FilterThicknessMaximum = "0.7" if thick else "0.05"
    ds.Grid = ["RECIPROCATING", "FOCUSED"]
    ds.FocalSpots = "0.3"
    magnification = _SOURCE_TO_DETECTOR / _SOURCE_TO_SUPPORT
    ds.ImagerPixelSpacing = [f"{view.spacing:.6f}"] * 2
    ds.PixelSpacing = [f"{view.spacing / magnification:.6f}"] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "magnification at the breast support"
    ds.EstimatedRadiographicMagnificationFactor = f"{magnification:.5f}"
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = f"SYNMGD{woman.seed % 1000:03d}"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.PositionerPrimaryAngle = f"{view.angle if view.laterality == 'R' else -view.angle:.0f}"
    ds.PositionerSecondaryAngle = "0"
    ds.ViewPosition = view.view
    ds.StudyInstanceUID = _uid(woman.seed, woman.number, "study")
    ds.SeriesInstanceUID = _uid(woman.seed, woman.number, "series")
    ds.StudyID = woman.accession[-6:]
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = index + 1
    ds.InstanceNumber = index + 1
    ds.PatientOrientation = list(ORIENTATIONS[(view.laterality, view.view)])
    ds.ImageLaterality = view.laterality
    ds.ImageComments = "SYNTHETIC IMAGE - NOT FOR CLINICAL USE"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.QualityControlImage = "NO"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1  # higher values: less X-ray intensity (dense)
    ds.WindowCenter, ds.WindowWidth = image.window_center, image.window_width
    ds.WindowCenterWidthExplanation = "SYNTHETIC"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AnatomicRegionSequence = [_code(*BREAST_CODE)]
    view_code = _code(*VIEW_CODES[view.view])
    view_code.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view_code]
    ds.AcquisitionContextSequence = []
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.PixelData = np.ascontiguousarray(image.pixels, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def make_exam(
    seed: int,
    *,
    number: int = 1,
    size: int | None = None,
    density: str | None = None,
    finding: str | None = RANDOM,
    age: int | None = None,
) -> MammoCase:
    """Return one synthetic screening exam (R CC, L CC, R MLO, L MLO) drawn from `seed`.

    `size` is the long side (rows) of every image in pixels, the physical field staying
    240 × 180 mm; None gives full-size images (0.085–0.1 mm pixels, about 2400–2800 ×
    1800–2100). `density` is a BI-RADS category, `finding` one of FINDINGS, None for a
    normal exam, or "random" (half of the exams normal). Anything not given is drawn from
    `seed` on its own stream, so the same seed with and without a lesion renders the same
    breasts. `number` names the case (`M00001`) and the fake patient.
    """
    woman = _woman(seed, number, density=density, finding=finding, age=age)
    views = _breast_views(seed, size)
    lesion = None
    if woman.finding is not None and woman.laterality is not None:
        lesion = _place_lesion(seed, woman.finding, woman.laterality, views)
    datasets: list[Dataset] = []
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for index, view in enumerate(views):
        image = _render(view, seed=seed, index=index, density=woman.density, lesion=lesion)
        ds = _dataset(woman, view, image, index=index)
        datasets.append(ds)
        if image.box is not None:
            boxes[ds.SOPInstanceUID] = image.box
    return MammoCase(
        case_id=f"M{number:05d}",
        study_uid=datasets[0].StudyInstanceUID,
        patient_id=datasets[0].PatientID,
        age=woman.age,
        density=woman.density,
        label=int(woman.finding is not None),
        finding=woman.finding,
        laterality=woman.laterality,
        datasets=datasets,
        boxes=boxes,
    )


def _quota(weights: tuple[float, ...], count: int) -> list[int]:
    """Split `count` by `weights` with the largest-remainder method."""
    exact = [w * count / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in order[: count - sum(shares)]:
        shares[i] += 1
    return shares


def _plan(*, count: int, seed: int, prevalence: float) -> list[tuple[int, str, str | None]]:
    """Return (exam seed, density, finding) per case: exact prevalence, spread kinds and mix."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError("prevalence is a fraction in [0, 1]")
    rng = np.random.default_rng([seed, 0x91A])
    positives = round(prevalence * count)
    kinds: list[str | None] = [FINDINGS[i % len(FINDINGS)] for i in range(positives)]
    kinds += [None] * (count - positives)
    densities = [
        d for d, n in zip(DENSITIES, _quota(DENSITY_MIX, count), strict=True) for _ in range(n)
    ]
    kind_order = rng.permutation(count)
    density_order = rng.permutation(count)
    seeds = np.random.SeedSequence([seed, 0x5EED]).generate_state(count, dtype=np.uint32)
    return [
        (int(seeds[i]), densities[int(density_order[i])], kinds[int(kind_order[i])])
        for i in range(count)
    ]


def iter_mammo_cases(
    *, count: int, seed: int, prevalence: float = 0.5, size: int | None = None
) -> Iterator[MammoCase]:
    """Yield `count` exams: round(prevalence·count) positives with the finding kinds taking
    turns, and densities in the screening mix (about 10 % a, 40 % b, 40 % c, 10 % d)."""
    for i, (exam_seed, density, finding) in enumerate(
        _plan(count=count, seed=seed, prevalence=prevalence)
    ):
        yield make_exam(exam_seed, number=i + 1, size=size, density=density, finding=finding)


def write_mammo_cases(
    out: Path, *, count: int, seed: int, prevalence: float = 0.5, size: int | None = None
) -> Path:
    """Write the exams as `out/<case_id>/<n>.dcm` plus `labels.json` and `labels.csv`.

    Returns the path of `labels.json`.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases: list[dict[str, object]] = []
    for case in iter_mammo_cases(count=count, seed=seed, prevalence=prevalence, size=size):
        folder = out / case.case_id
        folder.mkdir(exist_ok=True)
        files: list[str] = []
        boxes: list[dict[str, object]] = []
        for ds in case.datasets:
            name = f"{case.case_id}/{ds.InstanceNumber}.dcm"
            ds.save_as(out / name, enforce_file_format=True)
            files.append(name)
            box = case.boxes.get(ds.SOPInstanceUID)
            if box is not None:
                boxes.append(
                    {
                        "sop_instance_uid": ds.SOPInstanceUID,
                        "box": list(box),
                        "finding": case.finding,
                        "view": str(ds.ViewPosition),
                        "image_laterality": ds.ImageLaterality,
                    }
                )
        cases.append(
            {
                "case_id": case.case_id,
                "study_uid": case.study_uid,
                "patient_id": case.patient_id,
                "age": case.age,
                "sex": "F",
                "density": case.density,
                "label": case.label,
                "finding": case.finding,
                "laterality": case.laterality,
                "boxes": boxes,
                "files": files,
            }
        )
    labels = out / "labels.json"
    document = {
        "kind": "mammo",
        "generator": "lods.synth.mammo",
        "seed": seed,
        "count": count,
        "prevalence": prevalence,
        "cases": cases,
    }
    labels.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    columns = ("case_id", "study_uid", "label", "age", "sex", "density", "finding", "laterality")
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for case_row in cases:
            writer.writerow(["" if case_row[c] is None else case_row[c] for c in columns])
    return labels
