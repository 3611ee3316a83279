"""Read and write DICOM TID 1500 Measurement Reports: how a vendor appliance answers.

`parse_measurement_report(ds)` turns a vendor's Measurement Report SR (Enhanced, Comprehensive
or Comprehensive 3D SR holding TID 1500) into a `ParsedReport`: who produced it (algorithm
name, version, manufacturer, device), whether a person verified it, and one `ParsedFinding`
per measurement group or study-level qualitative evaluation. It walks the content tree with
plain pydicom and is tolerant: a group it cannot read is counted in `skipped_groups`, never
fatal; only a data set that is not an SR with a root CONTAINER raises `ReportError`.

What is read from each measurement group (TID 1410 planar ROI, TID 1501 image-free group):

- finding type (DCM 121071 "Finding") is the finding's code; finding category
  (SCT 276214006) is kept beside it. A group without a finding type may name the finding
  in a qualitative evaluation whose concept is "Finding" (DCM 121071 or SCT 404684003).
- the image region (DCM 111030 SCOORD) and the image it is SELECTED FROM: its SOP
  Instance UID, frame and the graphic data as a `Box` (POINT, MULTIPOINT, POLYLINE,
  POLYGON: bounding box of the points; CIRCLE: centre and a point on the circle;
  ELLIPSE: both axis end points). A group without a region may reference its image by
  an IMAGE item ("Source", "Source of Measurement").
- the score: the NUM whose concept comes first in `SCORE_CONCEPTS` — DCM 122157
  "Probability", DCM 111012 "Certainty of Finding", DCM 111047 "Probability of cancer",
  DCM 111011 "Certainty of Feature", SCT 246262008 "Score" — or, failing those, whose
  meaning contains probability, likelihood, confidence, certainty or score. A value in
  UCUM "%" is divided by 100; any other unit is taken as it is.
- presence: a qualitative evaluation valued Present/Absent (or Yes/No) sets `present`.

Study-level findings also come from the report's "Qualitative Evaluations" container
(UMLS C0034375): a CODE item "Finding" = <finding code>, or <finding code> = Present/Absent.
Such findings, and TID 1501 groups without an image, have no instance reference and no box.

Coordinates: SCOORD graphic data are (column, row) with (0, 0) at the top-left corner of
the top-left pixel, the convention of `lods.solutions.runtimes.base.Box`; no conversion.

`build_measurement_report(...)` writes such a report with highdicom (a Comprehensive 3D SR,
verification UNVERIFIED): one TID 1410 group per boxed finding (a closed POLYLINE, the score
as DCM 122157 "Probability" with UCUM unit "1"), one TID 1501 group per finding without a
box. `parse_measurement_report(build_measurement_report(...))` gives back the codes, boxes,
scores and instance references it was given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lods.solutions.runtimes.base import Box, CodeRef

#: Concepts (scheme, value) whose NUM value is read as the finding's score.
SCORE_CONCEPTS: tuple[tuple[str, str], ...] = (
    ("DCM", "122157"),  # Probability
    ("DCM", "111012"),  # Certainty of Finding
    ("DCM", "111047"),  # Probability of cancer
    ("DCM", "111011"),  # Certainty of Feature
    ("SCT", "246262008"),  # Score
)
#: Words that make an unknown NUM concept count as a score (case-insensitive).
SCORE_WORDS: tuple[str, ...] = ("probability", "likelihood", "confidence", "certainty", "score")
#: What `build_measurement_report` writes as the score's concept and unit.
SCORE_CONCEPT = CodeRef("DCM", "122157", "Probability")
SCORE_UNIT = CodeRef("UCUM", "1", "no units")
#: Finding category written for findings that do not name one.
DEFAULT_CATEGORY = CodeRef("SCT", "49755003", "Morphologically abnormal structure")
#: Procedure reported when the caller does not name one.
DEFAULT_PROCEDURE = CodeRef("SCT", "363679005", "Imaging procedure")

_SOP_CLASSES_SR = {
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR",
}
_MEASUREMENT_GROUP = ("DCM", "125007")
_IMAGING_MEASUREMENTS = ("DCM", "126010")
_QUALITATIVE_EVALUATIONS = ("UMLS", "C0034375")
_FINDING = {("DCM", "121071"), ("SCT", "404684003")}
_FINDING_CATEGORY = ("SCT", "276214006")
_IMAGE_REGION = ("DCM", "111030")
_TRACKING_ID = ("DCM", "112039")
_TRACKING_UID = ("DCM", "112040")
_ALGORITHM_NAME = ("DCM", "111001")
_ALGORITHM_VERSION = ("DCM", "111003")
_ALGORITHM_MANUFACTURER = ("DCM", "122405")
_DEVICE_UID = ("DCM", "121012")
_DEVICE_NAME = ("DCM", "121013")
_DEVICE_MANUFACTURER = ("DCM", "121014")
_DEVICE_MODEL = ("DCM", "121015")
_PRESENT = {("DCM", "121053"), ("SCT", "52101004"), ("SCT", "373066001")}  # present, yes
_ABSENT = {("DCM", "121054"), ("SCT", "272519000"), ("SCT", "373067005")}  # absent, no
#: Old SNOMED designators that mean the same scheme as SCT.
_SCHEME_ALIASES = {"SRT": "SCT", "SNM3": "SCT"}


class ReportError(ValueError):
    """The data set is not a measurement report Lods can read."""


@dataclass(frozen=True)
class ParsedFinding:
    """One finding of a report: a coded finding, optionally on an image region, with a score."""

    code: CodeRef
    score: float | None = None
    sop_instance_uid: str | None = None
    frame: int | None = None
    box: Box | None = None
    category: CodeRef | None = None
    label: str = ""
    #: True/False when a qualitative evaluation says Present/Absent; None when silent.
    present: bool | None = None
    sop_class_uid: str | None = None
    graphic_type: str | None = None
    tracking_uid: str | None = None


@dataclass(frozen=True)
class ParsedReport:
    """What Lods needs of a vendor's measurement report."""

    study_uid: str
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    algorithm_name: str = ""
    algorithm_version: str = ""
    manufacturer: str = ""
    model_name: str = ""
    software_versions: str = ""
    device_uid: str = ""
    device_name: str = ""
    verified: bool = False
    complete: bool = False
    findings: list[ParsedFinding] = field(default_factory=list)
    #: Measurement groups that named no finding (kept out of `findings`).
    skipped_groups: int = 0

    def identification(self) -> dict[str, str]:
        """Return the producer's identification as a flat, JSON-ready mapping."""
        values = {
            "algorithm_name": self.algorithm_name,
            "algorithm_version": self.algorithm_version,
            "manufacturer": self.manufacturer,
            "model_name": self.model_name,
            "software_versions": self.software_versions,
            "device_uid": self.device_uid,
            "device_name": self.device_name,
        }
        return {key: value for key, value in values.items() if value}


# --- parsing --------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _concept(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> CodeRef | None:
    seq = item.get(keyword)
    if not seq:
        return None
    code = seq[0]
    value = _text(code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue"))
    scheme = _text(code.get("CodingSchemeDesignator")).upper()
    if not value:
        return None
    return CodeRef(_SCHEME_ALIASES.get(scheme, scheme), value, _text(code.get("CodeMeaning")))


def _key(code: CodeRef | None) -> tuple[str, str] | None:
    return None if code is None else (code.scheme, code.value)


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _walk(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(_children(item))


def _value_type(item: Dataset) -> str:
    return _text(item.get("ValueType")).upper()


def _score_rank(name: CodeRef) -> int | None:
    """Return how strongly a concept names a score (0 best), None when it does not."""
    key = (name.scheme, name.value)
    if key in SCORE_CONCEPTS:
        return SCORE_CONCEPTS.index(key)
    meaning = name.meaning.lower()
    return len(SCORE_CONCEPTS) if any(word in meaning for word in SCORE_WORDS) else None


def _numeric(item: Dataset) -> tuple[float, CodeRef | None] | None:
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return None
    raw = seq[0].get("NumericValue")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw[0] if isinstance(raw, list | tuple) else raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return value, _concept(seq[0], "MeasurementUnitsCodeSequence")


def _score(item: Dataset) -> tuple[int, float] | None:
    """Return (rank, score) of a NUM item naming a score, scaled to 0..1 from percent."""
    name = _concept(item)
    rank = None if name is None or _value_type(item) != "NUM" else _score_rank(name)
    numeric = None if rank is None else _numeric(item)
    if rank is None or numeric is None:
        return None
    value, unit = numeric
    if unit is not None and unit.scheme == "UCUM" and unit.value == "%":
        value /= 100.0
    return rank, value


def _referenced(item: Dataset) -> tuple[str, str | None, int | None] | None:
    """Return (SOP instance UID, SOP class UID, frame) an IMAGE item or SCOORD references."""
    seq = item.get("ReferencedSOPSequence")
    if not seq:
        return None
    ref = seq[0]
    uid = _text(ref.get("ReferencedSOPInstanceUID"))
    if not uid:
        return None
    sop_class = _text(ref.get("ReferencedSOPClassUID")) or None
    frames = ref.get("ReferencedFrameNumber")
    if isinstance(frames, MultiValue | list | tuple):
        frames = frames[0] if frames else None
    try:
        frame = int(frames) if frames not in (None, "") else None
    except (TypeError, ValueError):
        frame = None
    return uid, sop_class, frame


def scoord_box(graphic_type: str, data: Sequence[float]) -> Box | None:
    """Return the bounding box of SCOORD graphic data (column, row pairs), None if unusable."""
    points = np.asarray([float(v) for v in data], dtype=float)
    if points.size < 2 or points.size % 2 or not np.all(np.isfinite(points)):
        return None
    xy = points.reshape(-1, 2)
    kind = graphic_type.upper()
    if kind == "CIRCLE":
        if len(xy) != 2:
            return None
        (cx, cy), edge = xy[0], xy[1]
        radius = float(np.hypot(*(edge - xy[0])))
        return Box(cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "ELLIPSE":
        if len(xy) != 4:
            return None
        center = (xy[0] + xy[1]) / 2.0
        major, minor = (xy[1] - xy[0]) / 2.0, (xy[3] - xy[2]) / 2.0
        half_w = float(np.hypot(major[0], minor[0]))
        half_h = float(np.hypot(major[1], minor[1]))
        return Box(center[0] - half_w, center[1] - half_h, center[0] + half_w, center[1] + half_h)
    if kind in {"POINT", "MULTIPOINT", "POLYLINE", "POLYGON"}:
        low, high = xy.min(axis=0), xy.max(axis=0)
        return Box(float(low[0]), float(low[1]), float(high[0]), float(high[1]))
    return None


@dataclass
class _Group:
    """What one measurement group says, before it becomes a `ParsedFinding`."""

    finding: CodeRef | None = None
    category: CodeRef | None = None
    label: str = ""
    tracking_uid: str | None = None
    score: float | None = None
    score_rank: int = len(SCORE_CONCEPTS) + 1
    present: bool | None = None
    reference: tuple[str, str | None, int | None] | None = None
    box: Box | None = None
    graphic_type: str | None = None

    def finish(self) -> ParsedFinding | None:
        if self.finding is None:
            return None
        uid, sop_class, frame = self.reference or (None, None, None)
        return ParsedFinding(
            code=self.finding,
            score=self.score,
            sop_instance_uid=uid,
            frame=frame,
            box=self.box,
            category=self.category,
            label=self.label,
            present=self.present,
            sop_class_uid=sop_class,
            graphic_type=self.graphic_type,
            tracking_uid=self.tracking_uid,
        )


def _presence(value: CodeRef | None) -> bool | None:
    key = _key(value)
    if key in _PRESENT:
        return True
    if key in _ABSENT:
        return False
    return None


def _read_group(container: Dataset) -> _Group:
    group = _Group()
    for item in _children(container):
        name, kind = _concept(item), _value_type(item)
        key = _key(name)
        if kind == "CODE":
            value = _concept(item, "ConceptCodeSequence")
            if key in _FINDING and group.finding is None and _presence(value) is None:
                group.finding = value
            elif key == _FINDING_CATEGORY:
                group.category = value
            elif (presence := _presence(value)) is not None:
                group.present = presence
                if group.finding is None and key not in _FINDING:
                    group.finding = name
        elif kind == "TEXT" and key == _TRACKING_ID:
            group.label = _text(item.get("TextValue"))
        elif kind == "UIDREF" and key == _TRACKING_UID:
            group.tracking_uid = _text(item.get("UID")) or None
        elif kind == "SCOORD" and group.box is None:
            # The Image Region, or any other SCOORD (e.g. "Center") locating the finding.
            graphic_type = _text(item.get("GraphicType")).upper()
            box = scoord_box(graphic_type, list(item.get("GraphicData") or []))
            images = [c for c in _children(item) if _value_type(c) == "IMAGE"]
            reference = _referenced(images[0]) if images else None
            if box is not None and reference is not None:
                group.box, group.graphic_type, group.reference = box, graphic_type, reference
        elif kind == "IMAGE" and group.reference is None:
            group.reference = _referenced(item)
        elif kind == "NUM":
            scored = _score(item)
            if scored is not None and scored[0] < group.score_rank:
                group.score_rank, group.score = scored
            if group.reference is None:
                sources = [c for c in _children(item) if _value_type(c) == "IMAGE"]
                group.reference = _referenced(sources[0]) if sources else None
    return group


def _qualitative_findings(container: Dataset) -> list[ParsedFinding]:
    """Study-level findings from a TID 1500 "Qualitative Evaluations" container."""
    found: list[ParsedFinding] = []
    for item in _children(container):
        if _value_type(item) != "CODE":
            continue
        name, value = _concept(item), _concept(item, "ConceptCodeSequence")
        if name is None or value is None:
            continue
        presence = _presence(value)
        if _key(name) in _FINDING and presence is None:
            found.append(ParsedFinding(code=value, present=True, label=value.meaning))
        elif presence is not None and _key(name) not in _FINDING:
            found.append(ParsedFinding(code=name, present=presence, label=name.meaning))
    return found


def _identification(ds: Dataset, content: Sequence[Dataset]) -> dict[str, str]:
    found: dict[str, str] = {}
    wanted = {
        _ALGORITHM_NAME: "algorithm_name",
        _ALGORITHM_VERSION: "algorithm_version",
        _ALGORITHM_MANUFACTURER: "algorithm_manufacturer",
        _DEVICE_UID: "device_uid",
        _DEVICE_NAME: "device_name",
        _DEVICE_MANUFACTURER: "device_manufacturer",
        _DEVICE_MODEL: "device_model",
    }
    for item in _walk(content):
        key = _key(_concept(item))
        if key not in wanted or wanted[key] in found:
            continue
        value = item.get("UID") if _value_type(item) == "UIDREF" else item.get("TextValue")
        if text := _text(value):
            found[wanted[key]] = text
    # The SR's own equipment made it; else the first processing equipment that contributed.
    processing = [
        item
        for item in ds.get("ContributingEquipmentSequence") or []
        if _key(_concept(item, "PurposeOfReferenceCodeSequence")) == ("DCM", "109102")
    ]
    first = processing[0] if processing else Dataset()
    versions = ds.get("SoftwareVersions") or first.get("SoftwareVersions") or ""
    if not isinstance(versions, str):
        versions = "\\".join(str(v) for v in versions)
    return {
        "algorithm_name": found.get("algorithm_name", ""),
        "algorithm_version": found.get("algorithm_version", ""),
        "manufacturer": found.get("algorithm_manufacturer")
        or found.get("device_manufacturer")
        or _text(ds.get("Manufacturer"))
        or _text(first.get("Manufacturer")),
        "model_name": found.get("device_model")
        or _text(ds.get("ManufacturerModelName"))
        or _text(first.get("ManufacturerModelName")),
        "software_versions": _text(versions),
        "device_uid": found.get("device_uid", ""),
        "device_name": found.get("device_name", ""),
    }


def is_measurement_report(ds: Dataset) -> bool:
    """Return True when `ds` is an SR whose root container is a TID 1500 report or holds groups."""
    if (
        _text(ds.get("SOPClassUID")) not in _SOP_CLASSES_SR
        or _text(ds.get("ValueType")) != "CONTAINER"
    ):
        return False
    templates = ds.get("ContentTemplateSequence") or []
    if any(_text(t.get("TemplateIdentifier")) == "1500" for t in templates):
        return True
    return any(_key(_concept(i)) == _MEASUREMENT_GROUP for i in _walk(_children(ds)))


def parse_measurement_report(ds: Dataset) -> ParsedReport:
    """Return the findings and producer of a TID 1500 measurement report SR."""
    sop_class = _text(ds.get("SOPClassUID"))
    if sop_class not in _SOP_CLASSES_SR:
        raise ReportError(f"SOP class {sop_class or '(none)'} is not a structured report")
    if _text(ds.get("ValueType")) != "CONTAINER":
        raise ReportError("the SR has no root CONTAINER content item")
    content = _children(ds)
    findings: list[ParsedFinding] = []
    skipped = 0
    for item in _walk(content):
        key, kind = _key(_concept(item)), _value_type(item)
        if kind != "CONTAINER":
            continue
        if key == _MEASUREMENT_GROUP:
            parsed = _read_group(item).finish()
            if parsed is None:
                skipped += 1
            else:
                findings.append(parsed)
        elif key == _QUALITATIVE_EVALUATIONS or _is_qualitative_container(item):
            findings.extend(_qualitative_findings(item))
    ident = _identification(ds, content)
    return ParsedReport(
        study_uid=_text(ds.get("StudyInstanceUID")),
        sop_instance_uid=_text(ds.get("SOPInstanceUID")),
        series_uid=_text(ds.get("SeriesInstanceUID")),
        sop_class_uid=sop_class,
        verified=_text(ds.get("VerificationFlag")).upper() == "VERIFIED",
        complete=_text(ds.get("CompletionFlag")).upper() == "COMPLETE",
        findings=findings,
        skipped_groups=skipped,
        **ident,
    )


def _is_qualitative_container(item: Dataset) -> bool:
    concept = _concept(item)
    return concept is not None and concept.meaning.strip().lower() == "qualitative evaluations"


# --- building -------------------------------------------------------------------------------


def _coded(code: CodeRef) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _closed_polyline(box: Box) -> np.ndarray:
    return np.array(
        [
            [box.x0, box.y0],
            [box.x1, box.y0],
            [box.x1, box.y1],
            [box.x0, box.y1],
            [box.x0, box.y0],
        ],
        dtype=float,
    )


def _frames(source: Dataset, frame: int | None) -> list[int] | None:
    if frame is None or int(source.get("NumberOfFrames") or 1) <= 1:
        return None
    return [frame]


def _score_measurement(score: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=_coded(SCORE_CONCEPT), value=float(score), unit=_coded(SCORE_UNIT)
    )


#: Type 2 attributes highdicom copies from the evidence; absent ones are added empty.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2_patient_study(ds: Dataset) -> Dataset:
    """A shallow copy of `ds` with every copied type 2 attribute present (empty if unknown)."""
    missing = [k for k in _TYPE2_COPIED if k not in ds]
    if not missing:
        return ds
    copy = Dataset()
    copy.update(ds)
    for keyword in missing:
        setattr(copy, keyword, None)
    return copy


def build_measurement_report(
    evidence: Sequence[Dataset],
    findings: Sequence[ParsedFinding],
    *,
    manufacturer: str,
    algorithm_name: str,
    algorithm_version: str,
    device_uid: str,
    device_name: str | None = None,
    model_name: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 9901,
    instance_number: int = 1,
    institution_name: str | None = None,
    procedure: CodeRef = DEFAULT_PROCEDURE,
) -> Dataset:
    """Return an UNVERIFIED Comprehensive 3D SR (TID 1500) reporting `findings` on `evidence`.

    `evidence` are the source images (headers suffice) of one study; each finding with a box
    must reference one of them. Findings without a box become TID 1501 groups (on their image
    when they name one, else study-level). At least one finding is required.
    """
    if not evidence:
        raise ValueError("a measurement report needs its source images as evidence")
    if not findings:
        raise ValueError("a measurement report needs at least one finding")
    sources = {_text(ds.SOPInstanceUID): ds for ds in evidence}
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name, version=algorithm_version, manufacturer=manufacturer
    )
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for number, finding in enumerate(findings, start=1):
        tracking = hd.sr.TrackingIdentifier(
            uid=finding.tracking_uid or generate_uid(),
            identifier=finding.label or f"{finding.code.meaning} {number}",
        )
        measurements = [_score_measurement(finding.score)] if finding.score is not None else None
        category = _coded(finding.category or DEFAULT_CATEGORY)
        source = sources.get(finding.sop_instance_uid or "")
        if finding.sop_instance_uid and source is None:
            raise ValueError(
                f"finding {number} references {finding.sop_instance_uid}, not evidence"
            )
        if finding.box is not None:
            if source is None:
                raise ValueError(f"finding {number} has a box but names no source image")
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=_closed_polyline(finding.box),
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=_text(source.SOPClassUID),
                    referenced_sop_instance_uid=_text(source.SOPInstanceUID),
                    referenced_frame_numbers=_frames(source, finding.frame),
                ),
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=region,
                    finding_type=_coded(finding.code),
                    finding_category=category,
                    algorithm_id=algorithm,
                    measurements=measurements,
                )
            )
            continue
        images = None
        if source is not None:
            images = [
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=_text(source.SOPClassUID),
                    referenced_sop_instance_uid=_text(source.SOPInstanceUID),
                    referenced_frame_numbers=_frames(source, finding.frame),
                )
            ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=_coded(finding.code),
                finding_category=category,
                algorithm_id=algorithm,
                measurements=measurements,
                source_images=images,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid,
            name=device_name,
            manufacturer_name=manufacturer,
            model_name=model_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_coded(procedure),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name or algorithm_name,
        software_versions=algorithm_version,
        contribution_description=f"{algorithm_name} {algorithm_version}",
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_with_type2_patient_study(ds) for ds in evidence],
        content=report[0],
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        institution_name=institution_name,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[equipment],
    )
    if model_name:
        sr.ManufacturerModelName = model_name
    sr.SoftwareVersions = algorithm_version
    sr.SeriesDescription = f"{algorithm_name} results"[:64]
    return sr
