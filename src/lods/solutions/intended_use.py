"""The intended-use matcher: may this solution read this study, and which of its images?

A solution's manifest states its intended use (`IntendedUse`): the input kind, the
patients (age, sex) and, for imaging, what each image must be (modality, SOP class, body
part, view, laterality, matrix, pixel spacing, exclusions) and which views a study must
hold. `match` compares that with the facts read from a study's headers (`StudyFacts`)
and returns a `MatchResult`: matched or not, the images the solution may read, and in
plain words every criterion that was not met. Missing information counts as outside the
intended use: a solution restricted to hands does not read an image without a body part.

Everything here is pure: the `*_from_dataset(s)` functions only read pydicom datasets
already in memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass
from datetime import date
from functools import lru_cache

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from lods.solutions.bodyparts import (
    body_part_name,
    laterality_name,
    normalise_body_part,
    normalise_laterality,
    normalise_view_position,
)
from lods.solutions.manifest import Exclusion, InputKind, IntendedUse

#: Machine names of the criteria, in the order unmet criteria are reported.
CRITERIA: tuple[str, ...] = (
    "input_kind",
    "modality",
    "sop_class",
    "body_part",
    "view_position",
    "laterality",
    "required_views",
    "age",
    "sex",
    "matrix",
    "pixel_spacing",
    "exclusion",
    "no_images",
)

INPUT_KIND_NAMES: dict[InputKind, str] = {
    InputKind.DICOM_STUDY: "a DICOM imaging study",
    InputKind.VITALS: "vital signs",
    InputKind.SENSOR_EVENTS: "sensor events",
}
SEX_NAMES: dict[str, str] = {"F": "female", "M": "male", "O": "other"}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DAYS_PER_YEAR = 365.2425
_OLDEST_PLAUSIBLE_YEARS = 150.0
_SPACING_TOLERANCE_MM = 1e-9
_TEXT_FIELDS = frozenset({"series_description", "study_description", "manufacturer"})


# --- facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What the matcher knows about one image, read from its header and normalised."""

    sop_instance_uid: str
    series_uid: str = ""
    modality: str = ""
    sop_class_uid: str = ""
    body_part: str = ""
    view_position: str = ""
    #: ImageLaterality, else Laterality, else "".
    laterality: str = ""
    rows: int | None = None
    columns: int | None = None
    #: The larger of PixelSpacing (else ImagerPixelSpacing) values, in mm.
    pixel_spacing_mm: float | None = None
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    study_description: str = ""
    manufacturer: str = ""
    number_of_frames: int = 1


@dataclass(frozen=True)
class StudyFacts:
    """What the matcher knows about one input: its kind, images and patient."""

    input_kind: InputKind
    images: tuple[ImageFacts, ...] = ()
    patient_age_years: float | None = None
    #: "F", "M", "O" or "" when not recorded.
    patient_sex: str = ""


@dataclass(frozen=True)
class Unmet:
    """One criterion that was not met: `criterion` (see CRITERIA) and plain words."""

    criterion: str
    text: str


@dataclass(frozen=True)
class MatchResult:
    """The outcome of `match`.

    `eligible` holds the SOP Instance UIDs the solution may read (sorted; empty unless
    matched); `unmet` every criterion that failed (empty when matched); `ignored` the
    images of a matched study that were left out, each with its reasons.
    """

    matched: bool
    eligible: tuple[str, ...]
    unmet: tuple[Unmet, ...]
    ignored: tuple[tuple[str, tuple[Unmet, ...]], ...]

    @property
    def reasons(self) -> list[str]:
        """The unmet criteria in plain words."""
        return [u.text for u in self.unmet]


# --- reading headers ----------------------------------------------------------------------


def _first(value: object) -> object:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value


def _text(ds: Dataset, keyword: str) -> str:
    """The attribute's (first) value as stripped text; "" when absent, empty or unreadable."""
    try:
        value = _first(ds.get(keyword))
    except (ValueError, TypeError, KeyError, AttributeError):
        return ""
    if value is None:
        return ""
    return str(value).replace("\x00", " ").strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    try:
        return int(float(text)) if text else None
    except (ValueError, OverflowError):
        return None


def _spacing(ds: Dataset, keyword: str) -> float | None:
    """The larger of a spacing attribute's values, in mm; None when absent or not positive."""
    try:
        raw = ds.get(keyword)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if raw is None:
        return None
    values = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    numbers: list[float] = []
    for item in values:
        try:
            number = float(str(item).strip())
        except ValueError:
            return None
        if not math.isfinite(number) or number <= 0:
            return None
        numbers.append(number)
    return max(numbers) if numbers else None


def _image_type(ds: Dataset) -> tuple[str, ...]:
    try:
        raw = ds.get("ImageType")
    except (ValueError, TypeError, KeyError, AttributeError):
        return ()
    if raw is None:
        return ()
    values = list(raw) if isinstance(raw, MultiValue | list | tuple) else str(raw).split("\\")
    return tuple(str(v).replace("\x00", " ").strip().upper() for v in values)


def _code_meaning(ds: Dataset, keyword: str) -> str:
    """The Code Meaning of the first item of a code sequence, or ""."""
    try:
        items = ds.get(keyword)
        if not items:
            return ""
        return str(items[0].get("CodeMeaning", "") or "").strip()
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return ""


def image_facts_from_dataset(ds: Dataset) -> ImageFacts:
    """Read the matcher's facts from one image header.

    Body part and view fall back to the Anatomic Region / View Code Sequence meanings
    when Body Part Examined / View Position are absent.
    """
    body_part = _text(ds, "BodyPartExamined") or _code_meaning(ds, "AnatomicRegionSequence")
    view = _text(ds, "ViewPosition") or _code_meaning(ds, "ViewCodeSequence")
    laterality = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
    spacing = _spacing(ds, "PixelSpacing")
    if spacing is None:
        spacing = _spacing(ds, "ImagerPixelSpacing")
    frames = _int(ds, "NumberOfFrames")
    return ImageFacts(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality").upper(),
        sop_class_uid=_text(ds, "SOPClassUID"),
        body_part=normalise_body_part(body_part),
        view_position=normalise_view_position(view),
        laterality=normalise_laterality(laterality),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        pixel_spacing_mm=spacing,
        image_type=_image_type(ds),
        series_description=_text(ds, "SeriesDescription"),
        study_description=_text(ds, "StudyDescription"),
        manufacturer=_text(ds, "Manufacturer"),
        number_of_frames=frames if frames is not None and frames >= 1 else 1,
    )


_AGE = re.compile(r"^(\d{1,3})\s*([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / _DAYS_PER_YEAR, "W": 7 / _DAYS_PER_YEAR, "M": 1 / 12, "Y": 1.0}


def _date(ds: Dataset, keyword: str) -> date | None:
    try:
        value = _first(ds.get(keyword))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if isinstance(value, date):
        return value
    digits = str(value or "").strip().replace(".", "").replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _anniversary(birth: date, year: int) -> date:
    try:
        return birth.replace(year=year)
    except ValueError:  # 29 February in a common year: the birthday counts from 1 March
        return date(year, 3, 1)


def _years_between(birth: date, day: date) -> float:
    """Completed years from `birth` to `day` plus the fraction of the current year."""
    years = day.year - birth.year
    if _anniversary(birth, day.year) > day:
        years -= 1
    last = _anniversary(birth, birth.year + years)
    following = _anniversary(birth, birth.year + years + 1)
    return years + (day - last).days / (following - last).days


def _plausible(age: float) -> float | None:
    return age if 0 <= age <= _OLDEST_PLAUSIBLE_YEARS else None


def patient_age_years(ds: Dataset) -> float | None:
    """The patient's age in years at the study; None when unknown or implausible.

    From Patient's Age ("034Y", "006M", "003W", "010D"), else from Patient's Birth Date
    and the Study Date (else Acquisition Date, else Content Date).
    """
    match_ = _AGE.fullmatch(_text(ds, "PatientAge").upper())
    if match_:
        return _plausible(int(match_.group(1)) * _AGE_UNIT_YEARS[match_.group(2)])
    birth = _date(ds, "PatientBirthDate")
    if birth is None:
        return None
    for keyword in ("StudyDate", "AcquisitionDate", "ContentDate"):
        day = _date(ds, keyword)
        if day is not None:
            if day < birth:
                return None
            return _plausible(_years_between(birth, day))
    return None


def study_facts_from_datasets(
    datasets: Sequence[Dataset], *, input_kind: InputKind = InputKind.DICOM_STUDY
) -> StudyFacts:
    """Read the facts of a study from its image headers.

    The age is the first one the images give; the sex counts only when every image that
    records one agrees (conflicting values are treated as not recorded).
    """
    images = tuple(image_facts_from_dataset(ds) for ds in datasets)
    age = next((a for a in map(patient_age_years, datasets) if a is not None), None)
    sexes = {_text(ds, "PatientSex").upper() for ds in datasets} & set(SEX_NAMES)
    return StudyFacts(
        input_kind=input_kind,
        images=images,
        patient_age_years=age,
        patient_sex=sexes.pop() if len(sexes) == 1 else "",
    )


# --- plain words --------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:g}"


def _duration(years: float) -> str:
    """A bound such as 2 -> "2 years", 0.5 -> "6 months"."""
    if years == int(years):
        return "1 year" if years == 1 else f"{int(years)} years"
    months = years * 12
    if abs(months - round(months)) < 1e-9:
        return "1 month" if round(months) == 1 else f"{round(months)} months"
    return f"{_number(years)} years"


def _age_words(age: float) -> str:
    """A patient's age as people say it: completed years, months under 2, days under 1 month."""
    if age >= 2:
        return f"{math.floor(age)} years"
    months = math.floor(age * 12 + 1e-9)
    if months >= 1:
        return "1 month" if months == 1 else f"{months} months"
    days = math.floor(age * _DAYS_PER_YEAR + 1e-9)
    return "1 day" if days == 1 else f"{days} days"


def _age_range_words(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        if low == high:
            return f"aged {_duration(low)}"
        return f"aged {_duration(low).removesuffix(' years')} to {_duration(high)}"
    if low is not None:
        return f"aged {_duration(low)} or older"
    return f"aged up to {_duration(high)}" if high is not None else "of any age"


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else uid


def _view_words(laterality: str, view_position: str) -> str:
    return f"{normalise_laterality(laterality)} {normalise_view_position(view_position)}"


def _joined(values: Iterable[str]) -> str:
    return ", ".join(values)


def _sexes_words(sexes: Sequence[str]) -> str:
    if list(sexes) == ["F"]:
        return "women only"
    if list(sexes) == ["M"]:
        return "men only"
    return _joined(SEX_NAMES.get(s, s) for s in sexes)


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe(use: IntendedUse) -> list[str]:
    """The intended use in plain words, one line per criterion (for the catalogue)."""
    lines = [f"Input: {INPUT_KIND_NAMES[use.input_kind]}"]
    if use.modalities:
        lines.append(f"Modalities: {_joined(use.modalities)}")
    if use.sop_classes:
        lines.append(f"SOP classes: {_joined(_sop_class_name(uid) for uid in use.sop_classes)}")
    if use.body_parts:
        lines.append(f"Body parts: {_joined(body_part_name(p) for p in use.body_parts)}")
    if use.view_positions:
        positions = (normalise_view_position(v) for v in use.view_positions)
        lines.append(f"Views: {_joined(positions)}")
    if use.lateralities:
        sides = (laterality_name(s) for s in use.lateralities)
        lines.append(f"Laterality: {_joined(sides)}")
    if use.required_views:
        views = _joined(_view_words(v.laterality, v.view_position) for v in use.required_views)
        count = len(use.required_views)
        if count == 1:
            lines.append(f"Needs the view: {views}")
        elif count == 2:
            lines.append(f"Needs both views: {views}")
        else:
            word = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
            lines.append(f"Needs all {word} views: {views}")
    if use.age is not None and (use.age.min_years is not None or use.age.max_years is not None):
        lines.append(f"Patients {_age_range_words(use.age.min_years, use.age.max_years)}")
    if use.sexes:
        words = _sexes_words(use.sexes)
        lines.append(_first_upper(words) if "only" in words else f"Patient sex: {words}")
    if use.min_rows is not None or use.min_columns is not None:
        lines.append(f"Images of at least {_matrix_minimum(use)}")
    if use.max_pixel_spacing_mm is not None:
        lines.append(f"Pixel spacing {_number(use.max_pixel_spacing_mm)} mm or finer")
    for exclusion in use.exclusions:
        lines.append(f"Excluded: {exclusion.reason}")
    return lines


def _matrix_minimum(use: IntendedUse) -> str:
    if use.min_rows is not None and use.min_columns is not None:
        return f"{use.min_rows} × {use.min_columns} pixels (rows × columns)"
    if use.min_rows is not None:
        return f"{use.min_rows} rows"
    return f"{use.min_columns} columns"


# --- per-image criteria -------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """One image failing one criterion: `value` is the offending value, None when missing.

    `key` groups failures across images: the criterion, or the exclusion's index.
    """

    criterion: str
    value: str | None
    key: str


def _pattern_matches(pattern: str, value: str) -> bool:
    """Whether `value` matches `pattern` (case-insensitive; `*` and `?` are wildcards)."""
    return _wildcard(pattern.casefold()).fullmatch(value.casefold()) is not None


@lru_cache(maxsize=512)
def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


_FIELD_NORMALISERS: dict[str, Callable[[str], str]] = {
    "body_part": normalise_body_part,
    "view_position": normalise_view_position,
    "laterality": normalise_laterality,
}


def _exclusion_applies(exclusion: Exclusion, image: ImageFacts) -> bool:
    """Whether one of the exclusion's values matches the image's field (blank never does)."""
    if exclusion.field == "image_type":
        values = [v for v in image.image_type if v]
    else:
        value = str(getattr(image, exclusion.field))
        normaliser = _FIELD_NORMALISERS.get(exclusion.field)
        values = [normaliser(value) if normaliser else value.strip()]
        values = [v for v in values if v]
    for pattern in exclusion.any_of:
        wild = "*" in pattern or "?" in pattern
        normaliser = _FIELD_NORMALISERS.get(exclusion.field)
        wanted = normaliser(pattern) if normaliser and not wild else pattern.strip()
        for value in values:
            if exclusion.field in _TEXT_FIELDS and not wild:
                if wanted.casefold() in value.casefold():
                    return True
            elif _pattern_matches(wanted, value):
                return True
    return False


def _listed(criterion: str, value: str, allowed: set[str]) -> list[_Failure]:
    if not value:
        return [_Failure(criterion, None, criterion)]
    return [] if value in allowed else [_Failure(criterion, value, criterion)]


def _image_failures(use: IntendedUse, image: ImageFacts) -> list[_Failure]:
    """Every per-image criterion the image fails, in CRITERIA order."""
    failures: list[_Failure] = []
    if use.modalities:
        allowed = {m.strip().upper() for m in use.modalities}
        failures += _listed("modality", image.modality.strip().upper(), allowed)
    if use.sop_classes:
        allowed = {uid.strip() for uid in use.sop_classes}
        failures += _listed("sop_class", image.sop_class_uid.strip(), allowed)
    if use.body_parts:
        allowed = {normalise_body_part(p) for p in use.body_parts}
        failures += _listed("body_part", normalise_body_part(image.body_part), allowed)
    if use.view_positions:
        allowed = {normalise_view_position(v) for v in use.view_positions}
        view = normalise_view_position(image.view_position)
        failures += _listed("view_position", view, allowed)
    if use.lateralities:
        allowed = {normalise_laterality(s) for s in use.lateralities}
        failures += _listed("laterality", normalise_laterality(image.laterality), allowed)
    failures += _matrix_failures(use, image)
    if use.max_pixel_spacing_mm is not None:
        spacing = image.pixel_spacing_mm
        if spacing is None:
            failures.append(_Failure("pixel_spacing", None, "pixel_spacing"))
        elif spacing > use.max_pixel_spacing_mm + _SPACING_TOLERANCE_MM:
            failures.append(_Failure("pixel_spacing", _number(spacing), "pixel_spacing"))
    for index, exclusion in enumerate(use.exclusions):
        if _exclusion_applies(exclusion, image):
            failures.append(_Failure("exclusion", None, f"exclusion:{index}"))
    return failures


def _matrix_failures(use: IntendedUse, image: ImageFacts) -> list[_Failure]:
    needs_rows, needs_columns = use.min_rows is not None, use.min_columns is not None
    if not (needs_rows or needs_columns):
        return []
    if (needs_rows and image.rows is None) or (needs_columns and image.columns is None):
        return [_Failure("matrix", None, "matrix")]
    too_few_rows = use.min_rows is not None and image.rows is not None and image.rows < use.min_rows
    too_few_columns = (
        use.min_columns is not None
        and image.columns is not None
        and image.columns < use.min_columns
    )
    if too_few_rows or too_few_columns:
        return [_Failure("matrix", f"{image.rows} × {image.columns}", "matrix")]
    return []


_LABELS = {
    "modality": "modality",
    "sop_class": "SOP class",
    "body_part": "body part",
    "view_position": "view position",
    "laterality": "laterality",
    "matrix": "image size",
    "pixel_spacing": "pixel spacing",
}


def _allowed_words(use: IntendedUse, criterion: str) -> str:
    """The intended values of a criterion, as they appear in brackets after a failure."""
    if criterion == "modality":
        return _joined(use.modalities)
    if criterion == "sop_class":
        return _joined(_sop_class_name(uid) for uid in use.sop_classes)
    if criterion == "body_part":
        return _joined(body_part_name(p) for p in use.body_parts)
    if criterion == "view_position":
        return _joined(normalise_view_position(v) for v in use.view_positions)
    if criterion == "laterality":
        return _joined(normalise_laterality(s) for s in use.lateralities)
    return ""


def _failure_text(use: IntendedUse, failure: _Failure, values: Sequence[str]) -> str:
    """Plain words for a failure, naming the offending `values` (empty when missing)."""
    criterion = failure.criterion
    if criterion == "exclusion":
        index = int(failure.key.partition(":")[2])
        return use.exclusions[index].reason
    label = _LABELS[criterion]
    if not values:
        return f"{label} is not recorded in the images"
    names = (_sop_class_name(v) for v in values) if criterion == "sop_class" else values
    shown = _joined(names)
    if criterion == "matrix":
        return f"image size {shown} pixels is below the minimum ({_matrix_minimum(use)})"
    if criterion == "pixel_spacing":
        maximum = _number(use.max_pixel_spacing_mm or 0)
        return f"pixel spacing {shown} mm is coarser than the maximum ({maximum} mm)"
    return f"{label} {shown} is outside the intended use ({_allowed_words(use, criterion)})"


def _order(unmet: Unmet) -> int:
    return CRITERIA.index(unmet.criterion)


def _aggregate(use: IntendedUse, failures: Iterable[_Failure]) -> list[Unmet]:
    """One Unmet per failing criterion (values sorted), plus one per criterion left blank."""
    values: dict[str, set[str]] = {}
    missing: dict[str, _Failure] = {}
    first: dict[str, _Failure] = {}
    for failure in failures:
        first.setdefault(failure.key, failure)
        if failure.value is None:
            missing[failure.key] = failure
        else:
            values.setdefault(failure.key, set()).add(failure.value)
    unmet: list[Unmet] = []
    for key in sorted(first, key=_failure_key_order):
        sample = first[key]
        if key in values:
            unmet.append(Unmet(sample.criterion, _failure_text(use, sample, sorted(values[key]))))
        if key in missing:
            unmet.append(Unmet(sample.criterion, _failure_text(use, missing[key], [])))
    return unmet


def _failure_key_order(key: str) -> tuple[int, int]:
    criterion, _, index = key.partition(":")
    return CRITERIA.index(criterion), int(index or 0)


# --- matching -----------------------------------------------------------------------------


def _study_unmet(use: IntendedUse, facts: StudyFacts) -> list[Unmet]:
    unmet: list[Unmet] = []
    if facts.input_kind is not use.input_kind:
        unmet.append(
            Unmet(
                "input_kind",
                f"the input is {INPUT_KIND_NAMES[facts.input_kind]}, but the solution reads "
                f"{INPUT_KIND_NAMES[use.input_kind]}",
            )
        )
    age_range = use.age
    if age_range is not None and (
        age_range.min_years is not None or age_range.max_years is not None
    ):
        age = facts.patient_age_years
        if age is None:
            unmet.append(Unmet("age", "patient age is not recorded"))
        elif not _age_fits(age, age_range.min_years, age_range.max_years):
            wanted = _age_range_words(age_range.min_years, age_range.max_years)
            unmet.append(
                Unmet(
                    "age",
                    f"patient age {_age_words(age)} is outside the intended use "
                    f"(patients {wanted})",
                )
            )
    if use.sexes:
        sex = facts.patient_sex.strip().upper()
        if sex not in SEX_NAMES:
            unmet.append(Unmet("sex", "patient sex is not recorded"))
        elif sex not in use.sexes:
            unmet.append(
                Unmet(
                    "sex",
                    f"patient sex {SEX_NAMES[sex]} is outside the intended use "
                    f"({_sexes_words(use.sexes)})",
                )
            )
    return unmet


def _age_fits(age: float, low: float | None, high: float | None) -> bool:
    """Inclusive bounds; a whole-year upper bound takes the whole year (69 means under 70)."""
    if low is not None and age < low:
        return False
    if high is None or age <= high:
        return True
    return high == int(high) and math.floor(age) <= high


def _required_view_unmet(
    use: IntendedUse,
    images: Sequence[ImageFacts],
    failures: dict[int, list[_Failure]],
    *,
    any_eligible: bool,
) -> list[Unmet]:
    """The required views not among the eligible images.

    A view no image shows is missing. A view shown only by left-out images is named with
    their reasons, unless no image at all is eligible (the per-image reasons say it then).
    """
    unmet: list[Unmet] = []
    for view in use.required_views:
        wanted = (
            normalise_laterality(view.laterality),
            normalise_view_position(view.view_position),
        )
        showing = [
            index
            for index, image in enumerate(images)
            if (
                normalise_laterality(image.laterality),
                normalise_view_position(image.view_position),
            )
            == wanted
        ]
        words = _view_words(*wanted)
        if not showing:
            unmet.append(Unmet("required_views", f"the {words} view is missing"))
        elif any_eligible and all(failures[index] for index in showing):
            reasons = _aggregate(use, (f for index in showing for f in failures[index]))
            unmet.append(
                Unmet(
                    "required_views",
                    f"the {words} view is outside the intended use: "
                    + "; ".join(u.text for u in reasons),
                )
            )
    return unmet


def match(use: IntendedUse, facts: StudyFacts) -> MatchResult:
    """Decide whether the solution may read the study and which of its images.

    Matched when every study-level criterion holds, at least one image is eligible and
    every required view is among the eligible images. Otherwise `unmet` names every
    criterion that failed. The result does not depend on the order of the images.
    """
    unmet = _study_unmet(use, facts)
    if use.input_kind is not InputKind.DICOM_STUDY:
        if unmet:
            return MatchResult(False, (), tuple(sorted(unmet, key=_order)), ())
        uids = tuple(sorted({image.sop_instance_uid for image in facts.images}))
        return MatchResult(True, uids, (), ())
    images = sorted(facts.images, key=_image_order)
    if not images:
        unmet.append(Unmet("no_images", "the study holds no images"))
        return MatchResult(False, (), tuple(sorted(unmet, key=_order)), ())
    failures = {index: _image_failures(use, image) for index, image in enumerate(images)}
    eligible = sorted({images[i].sop_instance_uid for i, found in failures.items() if not found})
    if not eligible:
        unmet += _aggregate(use, (f for found in failures.values() for f in found))
    unmet += _required_view_unmet(use, images, failures, any_eligible=bool(eligible))
    if unmet:
        return MatchResult(False, (), tuple(sorted(unmet, key=_order)), ())
    ignored: dict[str, list[_Failure]] = {}
    for index, found in failures.items():
        uid = images[index].sop_instance_uid
        if found and uid not in eligible:
            ignored.setdefault(uid, []).extend(found)
    return MatchResult(
        matched=True,
        eligible=tuple(eligible),
        unmet=(),
        ignored=tuple(
            (uid, tuple(sorted(_aggregate(use, found), key=_order)))
            for uid, found in sorted(ignored.items())
        ),
    )


def _image_order(image: ImageFacts) -> str:
    """A total order on images so that results never depend on the order given."""
    return repr(astuple(image))
