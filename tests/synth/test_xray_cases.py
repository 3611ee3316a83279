"""Labelled fracture cases: deterministic, valid DICOM, and labels that match the pixels."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lods.synth.cases import CSV_COLUMNS, iter_xray_cases, write_xray_cases
from lods.synth.fractures import BUCKLE_AGES, FRACTURE_TYPES, FractureSpec
from lods.synth.xray import Case, make_case, make_study, synthetic_patient

SMALL = 256
SET_SEED = 4


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return labels.json of 10 written cases: five negatives and one of each fracture."""
    out = tmp_path_factory.mktemp("cases")
    return write_xray_cases(out, count=10, seed=SET_SEED, prevalence=0.5, size=SMALL)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return list(iter_xray_cases(count=20, seed=SET_SEED + 1, prevalence=0.5, size=SMALL))


def _monochrome2(ds: pydicom.Dataset) -> np.ndarray:
    pixels = ds.pixel_array.astype(np.int32)
    return 4095 - pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels


def _without_fracture(case: Case) -> Case:
    return make_case(
        case.seed,
        body_part=case.body_part,
        modality=case.modality,
        age=case.age,
        sex=case.sex,
        case_id=case.case_id,
        views=len(case.datasets),
        size=case.size,
    )


def test_iter_xray_cases_is_identical_for_the_same_seed() -> None:
    first = list(iter_xray_cases(count=6, seed=2, prevalence=0.5, size=SMALL))
    second = list(iter_xray_cases(count=6, seed=2, prevalence=0.5, size=SMALL))
    for a, b in zip(first, second, strict=True):
        assert [ds.PixelData for ds in a.datasets] == [ds.PixelData for ds in b.datasets]
        assert (a.study_uid, a.label, a.finding, a.boxes, a.age, a.sex) == (
            b.study_uid,
            b.label,
            b.finding,
            b.boxes,
            b.age,
            b.sex,
        )
    other = list(iter_xray_cases(count=6, seed=3, prevalence=0.5, size=SMALL))
    assert {c.study_uid for c in first}.isdisjoint({c.study_uid for c in other})


def test_write_xray_cases_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    a = write_xray_cases(tmp_path / "a", count=4, seed=8, prevalence=0.5, size=SMALL)
    b = write_xray_cases(tmp_path / "b", count=4, seed=8, prevalence=0.5, size=SMALL)
    files_a = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.parent) for p in b.parent.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()


def test_labels_follow_the_format_and_point_at_the_files(written: Path) -> None:
    document = json.loads(written.read_text())
    assert list(document) == ["kind", "generator", "seed", "count", "prevalence", "cases"]
    assert (document["kind"], document["generator"]) == ("xray", "lods.synth.xray")
    assert (document["seed"], document["count"], document["prevalence"]) == (SET_SEED, 10, 0.5)
    root = written.parent
    for record in document["cases"]:
        assert list(record) == [
            "case_id",
            "study_uid",
            "patient_id",
            "age",
            "sex",
            "body_part",
            "modality",
            "label",
            "finding",
            "boxes",
            "files",
        ]
        datasets = [pydicom.dcmread(root / name) for name in record["files"]]
        assert all(name.startswith(record["case_id"] + "/") for name in record["files"])
        assert {ds.StudyInstanceUID for ds in datasets} == {record["study_uid"]}
        assert {ds.PatientID for ds in datasets} == {record["patient_id"]}
        assert {ds.BodyPartExamined for ds in datasets} == {record["body_part"]}
        assert {ds.Modality for ds in datasets} == {record["modality"]}
        assert {ds.PatientSex for ds in datasets} == {record["sex"]}
        assert {ds.PatientAge for ds in datasets} == {f"{record['age']:03d}Y"}
        if record["label"] == 0:
            assert record["finding"] is None and record["boxes"] == []
            continue
        assert record["finding"] in FRACTURE_TYPES
        # One box per image, each inside it, the fracture's kind on it.
        by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
        assert sorted(b["sop_instance_uid"] for b in record["boxes"]) == sorted(by_uid)
        for box in record["boxes"]:
            x0, y0, x1, y1 = box["box"]
            ds = by_uid[box["sop_instance_uid"]]
            assert 0 <= x0 < x1 <= ds.Columns and 0 <= y0 < y1 <= ds.Rows
            assert box["finding"] == record["finding"]
    with (root / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["case_id"] for r in rows] == [c["case_id"] for c in document["cases"]]
    assert [int(r["label"]) for r in rows] == [c["label"] for c in document["cases"]]
    assert [r["finding"] for r in rows] == [c["finding"] or "" for c in document["cases"]]


def test_prevalence_sets_the_positives_and_every_kind_occurs(written: Path) -> None:
    document = json.loads(written.read_text())
    assert sum(c["label"] for c in document["cases"]) == 5
    assert sorted(c["finding"] for c in document["cases"] if c["label"]) == sorted(FRACTURE_TYPES)
    for count, prevalence, positives in ((20, 0.3, 6), (7, 0.0, 0), (3, 1.0, 3), (9, 0.25, 2)):
        labels = [
            c.label for c in iter_xray_cases(count=count, seed=1, prevalence=prevalence, size=SMALL)
        ]
        assert (len(labels), sum(labels)) == (count, positives)


def test_cases_vary_and_buckle_fractures_are_in_children() -> None:
    many = list(iter_xray_cases(count=60, seed=11, prevalence=0.5, size=SMALL))
    assert len({c.body_part for c in many}) == 5
    assert {c.modality for c in many} == {"CR", "DX"}
    assert {c.sex for c in many} == {"F", "M"}
    ages = [c.age for c in many]
    assert min(ages) >= 2 and max(ages) <= 95 and max(ages) - min(ages) > 50
    buckle = [c.age for c in many if c.finding == "buckle"]
    assert buckle and all(BUCKLE_AGES[0] <= age <= BUCKLE_AGES[1] for age in buckle)


def test_patient_age_and_birth_date_agree_with_the_study_date(cases: list[Case]) -> None:
    for case in cases:
        ds = case.datasets[0]
        born = date.fromisoformat(
            f"{ds.PatientBirthDate[:4]}-{ds.PatientBirthDate[4:6]}-{ds.PatientBirthDate[6:]}"
        )
        on = date.fromisoformat(f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}")
        years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
        assert years == case.age
        assert ds.PatientAge == f"{case.age:03d}Y"


def test_the_fracture_is_inside_its_box_on_the_bone(cases: list[Case]) -> None:
    positives = [c for c in cases if c.label == 1]
    assert {c.finding for c in positives} == set(FRACTURE_TYPES)
    for case in positives:
        clean = _without_fracture(case)
        assert clean.label == 0 and clean.boxes == {}
        for ds, ds_clean in zip(case.datasets, clean.datasets, strict=True):
            assert ds.SOPInstanceUID == ds_clean.SOPInstanceUID
            x0, y0, x1, y1 = case.boxes[ds.SOPInstanceUID]
            image, reference = _monochrome2(ds), _monochrome2(ds_clean)
            diff = np.abs(image - reference)
            inside = diff[y0:y1, x0:x1].sum() / diff.sum()
            if case.finding == "displaced":
                # The whole fragment moves, but the break itself, in the box, dominates.
                outside = (diff.sum() - diff[y0:y1, x0:x1].sum()) / (
                    diff.size - diff[y0:y1, x0:x1].size
                )
                assert diff[y0:y1, x0:x1].mean() > 3 * outside
            else:
                assert inside > 0.8, (case.case_id, case.finding, inside)
            # The box is on a bone: across it, the middle is brighter than its edges.
            profile = reference[(y0 + y1) // 2, x0:x1]
            assert profile.max() - min(profile[0], profile[-1]) > 150, case.case_id


def test_negative_cases_have_no_boxes(cases: list[Case]) -> None:
    negatives = [c for c in cases if c.label == 0]
    assert negatives
    assert all(c.finding is None and c.boxes == {} and c.fracture is None for c in negatives)


def test_a_small_case_takes_well_under_a_fifth_of_a_second() -> None:
    list(iter_xray_cases(count=2, seed=0, prevalence=1.0, size=SMALL))  # warm up
    started = time.perf_counter()
    made = list(iter_xray_cases(count=10, seed=21, prevalence=0.5, size=SMALL))
    assert (time.perf_counter() - started) / len(made) < 0.1


def test_written_cases_pass_dciodvfy_without_errors(written: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    files = sorted(written.parent.rglob("*.dcm"))
    assert len(files) >= 20
    for path in files:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        assert "CRImage" in report or "DXImageForPresentation" in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], (path, errors)


def test_make_study_takes_a_fracture_and_still_returns_the_datasets() -> None:
    patient = synthetic_patient(3, seed=6)
    spec = FractureSpec(kind="transverse", bone="fibula", position=0.4, gap_mm=0.5, depth=0.8)
    plain = make_study(6, body_part="LEG", modality="DX", patient=patient, size=SMALL, views=2)
    broken = make_study(
        6, body_part="LEG", modality="DX", patient=patient, size=SMALL, views=2, fracture=spec
    )
    assert [ds.SOPInstanceUID for ds in plain] == [ds.SOPInstanceUID for ds in broken]
    assert all(a.PixelData != b.PixelData for a, b in zip(plain, broken, strict=True))
