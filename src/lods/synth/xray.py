"""Synthetic CR and DX limb radiographs as valid DICOM, deterministic by seed.

A study is one to three projections of a hand, wrist, forearm, ankle or lower leg of a
clearly fake patient (`DEMO0001`). The pixels come from `lods.synth.projection`: a
soft-tissue envelope, long bones with cortex, medullary canal and joint ends, small
carpal/tarsal bones, quantum noise, collimation and a lead L/R marker. Values are 12-bit
unsigned in 16-bit words; DX is MONOCHROME2, CR sometimes MONOCHROME1 as many CR
readers send. UIDs are derived from the seed, so the same seed gives the same study.

A study may show a fracture (`lods.synth.fractures`): `make_case` returns it with its
ground truth, a box per image in stored-pixel coordinates. A later issue adds
mammography (another anatomy and IOD), which plugs into `render_radiograph` and
`_image_dataset` below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from lods.synth.anatomy import FIELDS, limb_anatomy
from lods.synth.fractures import FractureSpec, fractured
from lods.synth.projection import (
    COLLIMATED_ATTENUATION,
    Placement,
    attenuation,
    burn_marker,
    collimation_mask,
    expose,
    window_for,
)

BITS_STORED = 12
MAX_VALUE = (1 << BITS_STORED) - 1
BODY_PARTS = ("HAND", "WRIST", "FOREARM", "ANKLE", "LEG")
MODALITIES = ("CR", "DX")
SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
#: The standard projections per body part; a third exposure repeats the first view.
STANDARD_VIEWS = {
    "HAND": ("PA", "LAT"),
    "WRIST": ("PA", "LAT"),
    "FOREARM": ("AP", "LAT"),
    "ANKLE": ("AP", "LAT"),
    "LEG": ("AP", "LAT"),
}
#: SNOMED CT codes of DICOM CID 4009 (DX anatomy imaged) and CID 4010 (DX view).
ANATOMY_CODES = {
    "HAND": ("85562004", "Hand"),
    "WRIST": ("74670003", "Wrist joint"),
    "FOREARM": ("14975008", "Forearm"),
    "ANKLE": ("70258002", "Ankle joint"),
    "LEG": ("30021000", "Lower leg"),
}
VIEW_CODES = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("272479007", "postero-anterior"),
    "LAT": ("399067008", "lateral"),
}
UID_NAMESPACE = "lods.synth.xray"
MANUFACTURER = "Lods synthetic"
_GIVEN_NAMES = {
    "F": ("Astrid", "Freja", "Ida", "Karen", "Maja", "Sofie", "Inge", "Lene"),
    "M": ("Anders", "Bo", "Emil", "Jens", "Lars", "Mads", "Niels", "Ole"),
}
_LSB_PER_LOG_UNIT = 760.0  # detector gain: stored value per unit of −ln(N/N₀)
_AIR_VALUE = 180.0  # stored value of unattenuated beam (MONOCHROME2 sense)
#: Margin around a fracture's ground-truth box, mm (at least `_BOX_MARGIN_PX` pixels).
_BOX_MARGIN_MM = 1.0
_BOX_MARGIN_PX = 2
#: The least share of a fracture inside the exposed field for a case to count as positive.
_MIN_VISIBLE = 0.6

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SyntheticPatient:
    """A fake patient: the ID and name make it obvious nobody real is meant."""

    patient_id: str
    name: str
    birth_date: date
    sex: str

    def age_on(self, day: date) -> str:
        """Return the DICOM age string (e.g. `034Y`) on `day`."""
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return f"{max(years, 0):03d}Y"


@dataclass(frozen=True)
class Radiograph:
    """Rendered pixels (12-bit, MONOCHROME2 sense), their spacing and a VOI window.

    With a fracture, `fracture_box` is the (x0, y0, x1, y1) pixel box around its visible
    part (columns x0 to x1 − 1, rows y0 to y1 − 1, so `pixels[y0:y1, x0:x1]`), with a
    small margin, and `fracture_visible` the share of it inside the exposed field.
    """

    pixels: np.ndarray
    spacing_mm: float
    window_center: int
    window_width: int
    fracture_box: Box | None = None
    fracture_visible: float = 1.0


def synthetic_patient(number: int, *, seed: int) -> SyntheticPatient:
    """Return fake patient `DEMO<number>` with a seeded sex, first name and birth date."""
    if not 0 < number < 10_000:
        raise ValueError("a synthetic patient number is 1 to 9999")
    rng = np.random.default_rng([seed, number, 0x5A])
    sex = "F" if rng.random() < 0.5 else "M"
    given = _GIVEN_NAMES[sex][int(rng.integers(len(_GIVEN_NAMES[sex])))]
    birth = date(1935, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 83)))
    return SyntheticPatient(
        patient_id=f"DEMO{number:04d}", name=f"Demo^{given}", birth_date=birth, sex=sex
    )


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    rows, cols = (size, size) if isinstance(size, int) else size
    if min(rows, cols) < 256 or max(rows, cols) > 8192:
        raise ValueError("image size must be 256 to 8192 pixels per side")
    return rows, cols


def _fracture_box(marks: np.ndarray, field: np.ndarray, *, spacing: float) -> Box | None:
    """Return the pixel box around the marked pixels inside the field, with a margin."""
    visible = marks & field
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if len(rows) == 0:
        return None
    field_rows, field_cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
    margin = max(_BOX_MARGIN_PX, math.ceil(_BOX_MARGIN_MM / spacing))
    return (
        max(int(cols[0]) - margin, int(field_cols[0])),
        max(int(rows[0]) - margin, int(field_rows[0])),
        min(int(cols[-1]) + 1 + margin, int(field_cols[-1]) + 1),
        min(int(rows[-1]) + 1 + margin, int(field_rows[-1]) + 1),
    )


def render_radiograph(
    rng: np.random.Generator,
    *,
    body_part: str,
    view: str,
    laterality: str,
    size: int | tuple[int, int] = 1024,
    fracture: FractureSpec | None = None,
    body_scale: float = 1.0,
) -> Radiograph:
    """Return a rendered limb radiograph: 12-bit pixels where bone is bright.

    `fracture` breaks a bone and draws nothing from `rng`: the same draws give the same
    image but inside the fracture's box. `body_scale` shrinks the limb (a child's) and
    the field of view with it, so only the pixel spacing and the fracture's size change.
    """
    if body_part not in FIELDS:
        raise ValueError(f"unknown body part {body_part!r}; expected one of {BODY_PARTS}")
    if laterality not in ("L", "R"):
        raise ValueError("laterality is 'L' or 'R'")
    if not 0.3 <= body_scale <= 1.5:
        raise ValueError("body_scale is 0.3 to 1.5")
    shape = _shape(size)
    center_y, field_mm = FIELDS[body_part]
    spacing = body_scale * field_mm * rng.uniform(0.95, 1.05) / min(shape)
    where = Placement(
        angle_deg=float(np.clip(rng.normal(0.0, 3.0), -7.0, 7.0)),
        scale=body_scale * float(rng.uniform(0.93, 1.07)),
        dx=body_scale * float(rng.uniform(-8.0, 8.0)),
        dy=body_scale * (-center_y + float(rng.uniform(-8.0, 8.0))),
        mirror=laterality == "L",
    )
    anatomy = limb_anatomy(body_part=body_part, view=view)
    if fracture is not None:
        anatomy = fractured(anatomy, fracture, body_part=body_part, view=view)
    marks = np.zeros(shape, dtype=bool) if fracture is not None else None
    line = attenuation(anatomy.placed(where), shape=shape, spacing=spacing, rng=rng, marks=marks)
    # Heel effect: the beam is a little weaker towards the anode side.
    line += np.linspace(0.0, 0.06, shape[0], dtype=np.float32)[:, None]
    field = collimation_mask(shape=shape, rng=rng)
    burn_marker(line, letter=laterality, mask=field, spacing=spacing, right_side=rng.random() < 0.5)
    line[~field] = COLLIMATED_ATTENUATION
    signal = expose(line, rng=rng, photons=float(rng.uniform(2500.0, 5000.0)))
    values = np.clip(_AIR_VALUE + _LSB_PER_LOG_UNIT * signal, 0, MAX_VALUE)
    pixels = np.rint(values).astype(np.uint16)
    center, width = window_for(pixels, mask=field)
    box, visible = None, 1.0
    if marks is not None:
        box = _fracture_box(marks, field, spacing=spacing)
        visible = float((marks & field).sum() / max(int(marks.sum()), 1))
    return Radiograph(
        pixels=pixels,
        spacing_mm=spacing,
        window_center=center,
        window_width=width,
        fracture_box=box,
        fracture_visible=visible,
    )


def patient_orientation(*, body_part: str, view: str, laterality: str) -> list[str]:
    """Return Patient Orientation (row, column direction) as the image is rendered.

    Upper limbs are shown fingers up (down the columns is towards the head), lower limbs
    knee up (towards the feet). Frontal views are displayed as if facing the patient (AP)
    or from behind (PA); in the lateral views a left limb is the mirror of a right one.
    """
    column = "H" if body_part in ("HAND", "WRIST", "FOREARM") else "F"
    if view == "AP":
        return ["L", column]
    if view == "PA":
        return ["R", column]
    anterior_right = (column == "F") == (laterality == "R")
    return ["A" if anterior_right else "P", column]


def _uid(key: object, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[UID_NAMESPACE, str(key), *map(str, parts)]))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


@dataclass(frozen=True)
class _StudyFacts:
    seed: int
    body_part: str
    modality: str
    patient: SyntheticPatient
    when: datetime
    laterality: str
    accession: str
    institution: str
    station: str
    size: int | None
    uid_key: str
    fracture: FractureSpec | None = None
    body_scale: float = 1.0


def _study_dataset(facts: _StudyFacts) -> Dataset:
    """Return the patient, study and equipment attributes every image of the study shares."""
    ds = Dataset()
    p = facts.patient
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = p.name, p.patient_id
    ds.PatientBirthDate, ds.PatientSex = p.birth_date.strftime("%Y%m%d"), p.sex
    ds.PatientAge = p.age_on(facts.when.date())
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = _uid(facts.uid_key, "study")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = facts.when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = facts.when.strftime("%H%M%S")
    ds.AccessionNumber = facts.accession
    ds.StudyID = facts.accession[-6:]
    ds.ReferringPhysicianName = ""
    side = "RIGHT" if facts.laterality == "R" else "LEFT"
    ds.StudyDescription = f"XR {facts.body_part} {side}"
    ds.Modality = facts.modality
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = UID_NAMESPACE
    ds.DeviceSerialNumber = f"SYN{facts.seed % 100_000:05d}"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = facts.institution
    ds.StationName = facts.station
    ds.BodyPartExamined = facts.body_part
    return ds


def _pixel_attributes(ds: Dataset, image: Radiograph, *, monochrome1: bool) -> None:
    pixels = MAX_VALUE - image.pixels if monochrome1 else image.pixels
    center = MAX_VALUE - image.window_center if monochrome1 else image.window_center
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = center, image.window_width
    ds.WindowCenterWidthExplanation = "SYNTHETIC"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    spacing = f"{image.spacing_mm:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "magnification at the detector plane"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def _modality_attributes(ds: Dataset, *, body_part: str, view: str, monochrome1: bool) -> None:
    """Add what the CR Image or the DX (for presentation) IOD needs beyond the common part."""
    if ds.Modality == "CR":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PlateType = "CR plate"
        return
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    # -1: higher stored values mean less X-ray intensity at the detector (bone is bright).
    ds.PixelIntensityRelationshipSign = 1 if monochrome1 else -1
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.AnatomicRegionSequence = [_code(*ANATOMY_CODES[body_part])]
    ds.ViewCodeSequence = [_code(*VIEW_CODES[view])]
    ds.AcquisitionContextSequence = []
    ds.PositionerType = "NONE"
    ds.DistanceSourceToPatient = "950"


def _image_dataset(
    facts: _StudyFacts, *, index: int, view: str, monochrome1: bool
) -> tuple[Dataset, Radiograph]:
    """Return one complete image (file meta included) of the study described by `facts`,
    and the radiograph it holds (with the fracture's box, if any)."""
    rng = np.random.default_rng([facts.seed, index, 0x1A])
    size = facts.size or 1024 + 256 * int(rng.integers(0, 5))
    image = render_radiograph(
        rng,
        body_part=facts.body_part,
        view=view,
        laterality=facts.laterality,
        size=size,
        fracture=facts.fracture,
        body_scale=facts.body_scale,
    )
    ds = _study_dataset(facts)
    ds.SOPClassUID = SOP_CLASSES[facts.modality]
    ds.SOPInstanceUID = _uid(facts.uid_key, "instance", index)
    ds.SeriesInstanceUID = _uid(facts.uid_key, "series", index)
    ds.SeriesNumber, ds.InstanceNumber = index + 1, 1
    ds.SeriesDescription = f"{facts.body_part} {view}"
    ds.ViewPosition = view
    # Image Laterality is sent, so the series-level Laterality must not be (PS3.3 C.7.3.1).
    ds.ImageLaterality = facts.laterality
    ds.PatientOrientation = patient_orientation(
        body_part=facts.body_part, view=view, laterality=facts.laterality
    )
    ds.KVP = f"{rng.uniform(50.0, 62.0):.1f}"
    ds.ExposureTime = int(rng.integers(8, 25))
    ds.XRayTubeCurrent = int(rng.integers(100, 320))
    ds.Exposure = max(1, ds.ExposureTime * ds.XRayTubeCurrent // 1000)
    ds.DistanceSourceToDetector = "1000"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = facts.when.strftime("%Y%m%d%H%M%S")
    _modality_attributes(ds, body_part=facts.body_part, view=view, monochrome1=monochrome1)
    _pixel_attributes(ds, image, monochrome1=monochrome1)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds, image


def _views_for(body_part: str, count: int) -> list[str]:
    standard = STANDARD_VIEWS[body_part]
    return [standard[i % len(standard)] for i in range(count)]


def _study(
    seed: int,
    *,
    body_part: str,
    modality: str,
    patient: SyntheticPatient,
    views: int | None,
    size: int | None,
    when: datetime | None,
    institution: str,
    station: str,
    uid_key: str,
    fracture: FractureSpec | None = None,
    body_scale: float = 1.0,
) -> list[tuple[Dataset, Radiograph]]:
    """Return the images of one study and the radiographs they hold; see `make_study`."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if body_part not in BODY_PARTS:
        raise ValueError(f"unknown body part {body_part!r}; expected one of {BODY_PARTS}")
    rng = np.random.default_rng([seed, 0x57])
    count = int(rng.integers(1, 4)) if views is None else views
    if not 1 <= count <= 3:
        raise ValueError("a synthetic study has 1 to 3 views")
    default_when = datetime(2024, 1, 1, 7) + timedelta(
        days=int(rng.integers(0, 365)), seconds=int(rng.integers(0, 14 * 3600))
    )
    facts = _StudyFacts(
        seed=seed,
        body_part=body_part,
        modality=modality,
        patient=patient,
        when=when or default_when,
        laterality="R" if rng.random() < 0.5 else "L",
        accession=f"A{int(rng.integers(10**8, 10**9))}",
        institution=institution,
        station=station,
        size=size,
        uid_key=uid_key,
        fracture=fracture,
        body_scale=body_scale,
    )
    monochrome1 = modality == "CR" and rng.random() < 0.4
    return [
        _image_dataset(facts, index=i, view=view, monochrome1=monochrome1)
        for i, view in enumerate(_views_for(body_part, count))
    ]


def make_study(
    seed: int,
    *,
    body_part: str,
    modality: str,
    patient: SyntheticPatient,
    views: int | None = None,
    size: int | None = None,
    when: datetime | None = None,
    institution: str = "Lods Demo Hospital",
    station: str = "SYNTH",
    fracture: FractureSpec | None = None,
) -> list[Dataset]:
    """Return the images (1–3 views, one series each) of one synthetic radiograph study.

    Everything not given is drawn from `seed`: laterality, view count, accession number,
    date and time (within 2024), and for CR whether the reader sends MONOCHROME1. Images
    are `size`² pixels, or of varying sizes from 1024² to 2048² when `size` is None.
    `fracture` breaks a bone in every view; `make_case` also returns where.
    """
    study = _study(
        seed,
        body_part=body_part,
        modality=modality,
        patient=patient,
        views=views,
        size=size,
        when=when,
        institution=institution,
        station=station,
        uid_key=str(seed),
        fracture=fracture,
    )
    return [ds for ds, _ in study]


@dataclass(frozen=True)
class Case:
    """One labelled study: its images and the ground truth a fracture detector is scored on.

    `label` is 1 with a fracture of kind `finding`, 0 without (then `finding` is None and
    `boxes` empty). `boxes` maps each image's SOP Instance UID to the (x0, y0, x1, y1)
    pixel box of the fracture in the stored image: columns x0 to x1 − 1 and rows y0 to
    y1 − 1, so `pixel_array[y0:y1, x0:x1]`. `seed` and `size` regenerate it.
    """

    case_id: str
    seed: int
    datasets: list[Dataset]
    label: int
    finding: str | None
    boxes: dict[str, Box]
    age: int
    sex: str
    body_part: str
    modality: str
    laterality: str
    size: int | None
    fracture: FractureSpec | None = field(default=None, repr=False)

    @property
    def study_uid(self) -> str:
        """Return the Study Instance UID every image shares."""
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def patient_id(self) -> str:
        """Return the (fake) Patient ID."""
        return str(self.datasets[0].PatientID)


def body_scale_for_age(age: int) -> float:
    """Return how large a limb is at `age` relative to an adult's (about 0.6 at two)."""
    return min(1.0, 0.55 + 0.03 * max(age, 0))


def case_patient(
    rng: np.random.Generator, *, case_id: str, age: int, sex: str, on: date
) -> SyntheticPatient:
    """Return fake patient `DEMO<case_id>`, of `sex` and exactly `age` years old `on`."""
    if sex not in ("F", "M"):
        raise ValueError("sex is 'F' or 'M'")
    if not 0 <= age <= 120:
        raise ValueError("age is 0 to 120 years")
    given = _GIVEN_NAMES[sex][int(rng.integers(len(_GIVEN_NAMES[sex])))]
    try:
        birthday = on.replace(year=on.year - age)
    except ValueError:  # born on 29 February: the birthday is kept on the 28th
        birthday = on.replace(year=on.year - age, day=28)
    birth = birthday - timedelta(days=int(rng.integers(0, 365)))
    return SyntheticPatient(
        patient_id=f"DEMO{case_id}", name=f"Demo^{given}", birth_date=birth, sex=sex
    )


def make_case(
    seed: int,
    *,
    body_part: str,
    modality: str,
    age: int,
    sex: str,
    fracture: FractureSpec | None = None,
    case_id: str = "X00000",
    views: int | None = None,
    size: int | None = None,
) -> Case:
    """Return one labelled study of a `age`-year-old patient, with `fracture` or without.

    Two or three views (drawn from `seed` unless given); the same arguments but for the
    fracture give the very same images but inside the fracture's boxes. A child's limb
    is smaller (the pixel spacing shows it). Raises ValueError when the fracture is not
    mostly inside the exposed field of every view.
    """
    rng = np.random.default_rng([seed, 0xCA5E])
    count = 2 if rng.random() < 0.8 else 3
    when = datetime(2024, 1, 1, 7) + timedelta(
        days=int(rng.integers(0, 365)), seconds=int(rng.integers(0, 14 * 3600))
    )
    patient = case_patient(rng, case_id=case_id, age=age, sex=sex, on=when.date())
    study = _study(
        seed,
        body_part=body_part,
        modality=modality,
        patient=patient,
        views=count if views is None else views,
        size=size,
        when=when,
        institution="Lods Demo Hospital",
        station="SYNTH",
        uid_key=f"case:{seed}",
        fracture=fracture,
        body_scale=body_scale_for_age(age),
    )
    boxes: dict[str, Box] = {}
    for index, (ds, image) in enumerate(study):
        if fracture is None:
            continue
        if image.fracture_box is None or image.fracture_visible < _MIN_VISIBLE:
            raise ValueError(f"the fracture is not inside the exposed field of image {index}")
        boxes[str(ds.SOPInstanceUID)] = image.fracture_box
    return Case(
        case_id=case_id,
        seed=seed,
        datasets=[ds for ds, _ in study],
        label=int(fracture is not None),
        finding=None if fracture is None else fracture.kind,
        boxes=boxes,
        age=age,
        sex=sex,
        body_part=body_part,
        modality=modality,
        laterality=str(study[0][0].ImageLaterality),
        size=size,
        fracture=fracture,
    )


def write_studies(out_dir: Path, *, count: int, seed: int, size: int | None = None) -> list[Path]:
    """Write `count` synthetic studies (Part-10 files) under `out_dir`; return the paths.

    Body parts and modalities rotate so that any five consecutive studies cover every
    body part and both CR and DX; patient `DEMO<n>` belongs to study n.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(count):
        patient = synthetic_patient(i + 1, seed=seed)
        study = make_study(
            seed * 10_007 + i,
            body_part=BODY_PARTS[i % len(BODY_PARTS)],
            modality=MODALITIES[(i // len(BODY_PARTS) + i) % len(MODALITIES)],
            patient=patient,
            size=size,
        )
        for ds in study:
            path = out_dir / f"{patient.patient_id}_{ds.Modality}_{ds.SeriesNumber}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
