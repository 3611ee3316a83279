"""TID 1500 measurement reports: build one, check it with dciodvfy, parse it back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from lods.findings.sr import (
    SCORE_CONCEPT,
    ParsedFinding,
    ReportError,
    build_measurement_report,
    parse_measurement_report,
    scoord_box,
)
from lods.solutions.runtimes.base import Box, CodeRef
from lods.synth.xray import make_study, synthetic_patient

FRACTURE = CodeRef("SCT", "125605004", "Fracture of bone")
NODULE = CodeRef("SCT", "27925004", "Nodule")
DEVICE_UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def study() -> list[Dataset]:
    return make_study(
        11,
        body_part="WRIST",
        modality="DX",
        patient=synthetic_patient(3, seed=11),
        views=2,
        size=256,
    )


def _findings(study: list[Dataset]) -> list[ParsedFinding]:
    first, second = (str(ds.SOPInstanceUID) for ds in study)
    return [
        ParsedFinding(code=FRACTURE, score=0.93, label="fracture overall"),
        ParsedFinding(
            code=FRACTURE, score=0.91, sop_instance_uid=first, box=Box(10.5, 20.0, 42.0, 61.25)
        ),
        ParsedFinding(
            code=NODULE, score=0.12, sop_instance_uid=second, box=Box(100.0, 120.0, 130.0, 150.0)
        ),
        ParsedFinding(code=NODULE, score=0.2, sop_instance_uid=second, label="nodule on image"),
    ]


def _report(study: list[Dataset], findings: list[ParsedFinding]) -> Dataset:
    return build_measurement_report(
        study,
        findings,
        manufacturer="Lods Vendor Simulator",
        algorithm_name="bright-spot",
        algorithm_version="2.1",
        device_uid=DEVICE_UID,
        device_name="VENDORAI",
        model_name="Simulator model",
    )


def test_built_report_passes_dciodvfy(study: list[Dataset], tmp_path: Path) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; apt-get install dicom3tools")
    path = tmp_path / "sr.dcm"
    _report(study, _findings(study)).save_as(path, enforce_file_format=True)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == [], output
    assert "Comprehensive3DSR" in output


def test_parse_round_trips_codes_boxes_scores_and_references(
    study: list[Dataset], tmp_path: Path
) -> None:
    findings = _findings(study)
    path = tmp_path / "sr.dcm"
    _report(study, findings).save_as(path, enforce_file_format=True)

    report = parse_measurement_report(pydicom.dcmread(path))

    assert report.study_uid == str(study[0].StudyInstanceUID)
    assert report.verified is False
    assert report.algorithm_name == "bright-spot"
    assert report.algorithm_version == "2.1"
    assert report.manufacturer == "Lods Vendor Simulator"
    assert report.model_name == "Simulator model"
    assert report.device_uid == DEVICE_UID
    assert report.device_name == "VENDORAI"
    assert report.skipped_groups == 0
    assert len(report.findings) == len(findings)
    by_kind = {(f.code, f.sop_instance_uid, f.box is not None): f for f in report.findings}
    for want in findings:
        got = by_kind[(want.code, want.sop_instance_uid, want.box is not None)]
        assert got.score == pytest.approx(want.score)
        assert got.frame is None
        if want.box is not None:
            assert got.box is not None
            assert got.box.as_list() == pytest.approx(want.box.as_list())
            assert got.graphic_type == "POLYLINE"
            assert got.sop_class_uid == str(study[0].SOPClassUID)
        if want.label:
            assert got.label == want.label
        assert got.category is not None and got.category.value == "49755003"
        assert got.tracking_uid


def test_report_without_scores_parses(study: list[Dataset]) -> None:
    uid = str(study[0].SOPInstanceUID)
    findings = [
        ParsedFinding(code=FRACTURE, sop_instance_uid=uid, box=Box(1.0, 2.0, 3.0, 4.0)),
        ParsedFinding(code=FRACTURE),
    ]
    report = parse_measurement_report(_report(study, findings))
    assert [f.score for f in report.findings] == [None, None]
    assert report.findings[0].box == Box(1.0, 2.0, 3.0, 4.0)
    assert report.findings[0].sop_instance_uid == uid


def test_build_refuses_a_box_on_an_image_it_was_not_given(study: list[Dataset]) -> None:
    stray = ParsedFinding(code=FRACTURE, score=0.5, sop_instance_uid="1.2.3", box=Box(0, 0, 1, 1))
    with pytest.raises(ValueError, match="not evidence"):
        _report(study, [stray])
    with pytest.raises(ValueError, match="at least one finding"):
        _report(study, [])


# --- a vendor's hand-made report: other shapes, concepts and schemes -----------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(
    value_type: str, name: Dataset, relationship: str = "CONTAINS", **values: object
) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [name]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _image_ref(sop_uid: str, frame: int | None = None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ref.ReferencedSOPInstanceUID = sop_uid
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    image = Dataset()
    image.RelationshipType = "SELECTED FROM"
    image.ValueType = "IMAGE"
    image.ReferencedSOPSequence = [ref]
    return image


def _vendor_report() -> Dataset:
    """An Enhanced SR as another vendor might write it: SRT codes, a circle, a percentage."""
    circle = _item(
        "SCOORD",
        _code("111030", "DCM", "Image Region"),
        GraphicType="CIRCLE",
        GraphicData=[50.0, 60.0, 50.0, 70.0],
    )
    circle.ContentSequence = [_image_ref("1.2.3.4", frame=2)]
    certainty = _item("NUM", _code("111012", "DCM", "Certainty of Finding"))
    measured = Dataset()
    measured.NumericValue = "85"
    measured.MeasurementUnitsCodeSequence = [_code("%", "UCUM", "percent")]
    certainty.MeasuredValueSequence = [measured]
    confidence = _item("NUM", _code("X1", "99VENDOR", "Model confidence"))
    weak = Dataset()
    weak.NumericValue = "0.3"
    weak.MeasurementUnitsCodeSequence = [_code("1", "UCUM", "no units")]
    confidence.MeasuredValueSequence = [weak]
    group = _item(
        "CONTAINER", _code("125007", "DCM", "Measurement Group"), ContinuityOfContent="SEPARATE"
    )
    group.ContentSequence = DicomSequence(
        [
            _item(
                "TEXT",
                _code("112039", "DCM", "Tracking Identifier"),
                "HAS OBS CONTEXT",
                TextValue="lesion 1",
            ),
            _item(
                "CODE",
                _code("121071", "DCM", "Finding"),
                ConceptCodeSequence=[_code("125605004", "SRT", "Fracture of bone")],
            ),
            circle,
            confidence,
            certainty,
        ]
    )
    empty_group = _item(
        "CONTAINER", _code("125007", "DCM", "Measurement Group"), ContinuityOfContent="SEPARATE"
    )
    empty_group.ContentSequence = [
        _item(
            "TEXT", _code("112039", "DCM", "Tracking Identifier"), "HAS OBS CONTEXT", TextValue="x"
        )
    ]
    measurements = _item(
        "CONTAINER", _code("126010", "DCM", "Imaging Measurements"), ContinuityOfContent="SEPARATE"
    )
    measurements.ContentSequence = [group, empty_group]
    qualitative = _item(
        "CONTAINER",
        _code("C0034375", "UMLS", "Qualitative Evaluations"),
        ContinuityOfContent="SEPARATE",
    )
    qualitative.ContentSequence = [
        _item(
            "CODE",
            _code("27925004", "SCT", "Nodule"),
            ConceptCodeSequence=[_code("272519000", "SCT", "Absent")],
        )
    ]
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = generate_uid()
    ds.Manufacturer = "Other Vendor"
    ds.SoftwareVersions = ["3.0", "build 7"]
    ds.VerificationFlag = "VERIFIED"
    ds.CompletionFlag = "COMPLETE"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("126000", "DCM", "Imaging Measurement Report")]
    ds.ContentSequence = [measurements, qualitative]
    return ds


def test_tolerant_parsing_of_another_vendors_report() -> None:
    report = parse_measurement_report(_vendor_report())

    assert report.verified is True and report.complete is True
    assert report.manufacturer == "Other Vendor"
    assert report.software_versions == "3.0\\build 7"
    assert report.skipped_groups == 1
    fracture, nodule = report.findings
    assert fracture.code == CodeRef("SCT", "125605004", "Fracture of bone")
    assert fracture.score == pytest.approx(0.85)
    assert fracture.box == Box(40.0, 50.0, 60.0, 70.0)
    assert (fracture.sop_instance_uid, fracture.frame) == ("1.2.3.4", 2)
    assert fracture.label == "lesion 1"
    assert nodule.code == NODULE
    assert nodule.present is False and nodule.score is None and nodule.box is None


def test_not_a_report_is_refused() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    with pytest.raises(ReportError, match="not a structured report"):
        parse_measurement_report(ds)


def test_scoord_shapes_become_bounding_boxes() -> None:
    assert scoord_box("POINT", [5, 6]) == Box(5, 6, 5, 6)
    assert scoord_box("POLYGON", [1, 9, 4, 2, 7, 5]) == Box(1, 2, 7, 9)
    ellipse = scoord_box("ELLIPSE", [0, 10, 20, 10, 10, 7, 10, 13])
    assert ellipse is not None
    assert ellipse.as_list() == pytest.approx([0, 7, 20, 13])
    assert scoord_box("CIRCLE", [1, 2, 3]) is None
    assert scoord_box("SPLINE", [1, 2, 3, 4]) is None


def test_score_concept_is_documented() -> None:
    assert (SCORE_CONCEPT.scheme, SCORE_CONCEPT.value) == ("DCM", "122157")
