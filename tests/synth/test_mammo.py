"""Synthetic screening mammograms: deterministic, valid MG DICOM, lesions with ground truth."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation

from lods.synth.mammo import (
    DENSITIES,
    FINDINGS,
    MammoCase,
    iter_mammo_cases,
    make_exam,
    write_mammo_cases,
)

SMALL = 256  # the training size; every test stays at or below it except the full-size one
TINY = 128  # for the tests that only count labels


def _pixels(case: MammoCase) -> list[np.ndarray]:
    return [ds.pixel_array.astype(np.float64) for ds in case.datasets]


def _breast_mask(image: np.ndarray) -> np.ndarray:
    """Return where the breast is: background is ~40, the thinnest tissue several hundred."""
    return image > 200


def _radial_power(patch: np.ndarray) -> np.ndarray:
    """Return a square patch's radially averaged power spectrum (index: cycles per patch)."""
    n = patch.shape[0]
    yy, xx = np.mgrid[:n, :n]
    design = np.c_[np.ones(n * n), xx.ravel(), yy.ravel()]
    coef, *_ = np.linalg.lstsq(design, patch.ravel(), rcond=None)
    flat = patch - (design @ coef).reshape(n, n)  # no plane trend leaking into low f
    window = np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(flat * window))) ** 2
    radius = np.hypot(yy - n // 2, xx - n // 2).astype(int).ravel()
    return np.bincount(radius, power.ravel()) / np.bincount(radius)


def _log_log_slope(radial: np.ndarray, n: int) -> float:
    f = np.arange(3, n // 4)
    return float(np.polyfit(np.log(f), np.log(radial[f]), 1)[0])


def test_make_exam_is_identical_for_the_same_seed() -> None:
    first = make_exam(17, size=SMALL, finding="spiculated_mass")
    second = make_exam(17, size=SMALL, finding="spiculated_mass")
    assert [ds.SOPInstanceUID for ds in first.datasets] == [
        ds.SOPInstanceUID for ds in second.datasets
    ]
    assert [ds.PixelData for ds in first.datasets] == [ds.PixelData for ds in second.datasets]
    assert first.boxes == second.boxes
    assert (first.study_uid, first.age, first.density, first.laterality) == (
        second.study_uid,
        second.age,
        second.density,
        second.laterality,
    )


def test_make_exam_differs_for_another_seed_or_number() -> None:
    first, other = make_exam(17, size=SMALL), make_exam(18, size=SMALL)
    assert first.study_uid != other.study_uid
    assert first.datasets[0].PixelData != other.datasets[0].PixelData
    renumbered = make_exam(17, number=2, size=SMALL)
    assert renumbered.study_uid != first.study_uid
    assert (renumbered.case_id, renumbered.patient_id) == ("M00002", "DEMOMG00002")
    assert renumbered.datasets[0].PixelData == first.datasets[0].PixelData


def test_exam_has_the_four_screening_views_with_codes_and_orientation() -> None:
    case = make_exam(5, size=SMALL, density="b", finding=None, age=61)
    assert (case.age, case.density, case.label, case.finding, case.laterality) == (
        61,
        "b",
        0,
        None,
        None,
    )
    assert case.boxes == {}
    got = [
        (
            ds.ImageLaterality,
            ds.ViewPosition,
            ds.ViewCodeSequence[0].CodeValue,
            list(ds.PatientOrientation),
        )
        for ds in case.datasets
    ]
    assert got == [
        ("R", "CC", "399162004", ["P", "L"]),
        ("L", "CC", "399162004", ["A", "R"]),
        ("R", "MLO", "399368009", ["P", "FL"]),
        ("L", "MLO", "399368009", ["A", "FR"]),
    ]
    for ds in case.datasets:
        assert ds.SOPClassUID == DigitalMammographyXRayImageStorageForPresentation
        assert ds.Modality == "MG"
        assert (ds.PatientSex, ds.PatientAge, ds.BodyPartExamined) == ("F", "061Y", "BREAST")
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert ds.AnatomicRegionSequence[0].CodeValue == "76752008"
        assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert (ds.BreastImplantPresent, ds.PartialView) == ("NO", "NO")
        assert ds.Manufacturer == "Lods Synthetic"
        assert ds.StudyInstanceUID == case.study_uid
        assert ds.pixel_array.shape == (SMALL, 192)
        assert int(ds.pixel_array.max()) <= 4095
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(240 / SMALL, rel=1e-4)
        angle = abs(float(ds.PositionerPrimaryAngle))
        assert angle == 0 if ds.ViewPosition == "CC" else 40 <= angle <= 55
    # The chest wall is at the right edge of right breasts and the left edge of left ones.
    for image, ds in zip(_pixels(case), case.datasets, strict=True):
        chest, nipple_side = image[:, -8:].mean(), image[:, :8].mean()
        if ds.ImageLaterality == "L":
            chest, nipple_side = nipple_side, chest
        assert chest > nipple_side + 300


def test_full_size_images_are_realistic_in_pixels_and_millimetres() -> None:
    small = make_exam(23, size=SMALL, finding="round_mass")
    full = make_exam(23, finding="round_mass")
    ds = full.datasets[0]
    assert 2000 <= ds.Rows <= 3000 and 1600 <= ds.Columns <= 2400
    assert 0.07 <= float(ds.ImagerPixelSpacing[0]) <= 0.1
    # The same breast and lesion at either size: boxes agree in millimetres.
    for (_, big), (_, little) in zip(
        sorted(full.boxes.items()), sorted(small.boxes.items()), strict=True
    ):
        pitch = float(ds.ImagerPixelSpacing[0])
        assert np.allclose(np.array(big) * pitch, np.array(little) * 240 / SMALL, atol=2.0)


@pytest.mark.parametrize("finding", FINDINGS)
def test_lesion_shows_in_both_views_of_its_breast_and_nowhere_else(finding: str) -> None:
    for seed in (31, 32):
        case = make_exam(seed, size=SMALL, finding=finding, density="b")
        clean = make_exam(seed, size=SMALL, finding=None, density="b")
        assert case.label == 1 and case.finding == finding and case.laterality in ("L", "R")
        affected = [ds for ds in case.datasets if ds.ImageLaterality == case.laterality]
        assert set(case.boxes) == {ds.SOPInstanceUID for ds in affected}
        assert {ds.ViewPosition for ds in affected} == {"CC", "MLO"}
        for with_lesion, without, ds in zip(
            _pixels(case), _pixels(clean), case.datasets, strict=True
        ):
            diff = np.abs(with_lesion - without)
            if ds.ImageLaterality != case.laterality:
                assert diff.max() == 0
                continue
            x0, y0, x1, y1 = case.boxes[ds.SOPInstanceUID]
            assert 0 <= x0 < x1 <= ds.Columns - 1 and 0 <= y0 < y1 <= ds.Rows - 1
            inside = diff[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1]
            assert inside.sum() > 0
            assert inside.sum() >= 0.95 * diff.sum()
        # Same lesion, same size in both views: box sizes agree within a few pixels.
        sizes = [
            np.subtract(case.boxes[ds.SOPInstanceUID][2:], case.boxes[ds.SOPInstanceUID][:2])
            for ds in affected
        ]
        if finding != "spiculated_mass":  # spicules foreshorten differently per view
            assert np.allclose(sizes[0], sizes[1], atol=6.0)


def test_lesion_box_lies_at_the_same_depth_from_the_nipple_in_both_views() -> None:
    for seed in range(40, 46):
        case = make_exam(seed, size=SMALL, finding="round_mass", density="a")
        depths = []
        for image, ds in zip(_pixels(case), case.datasets, strict=True):
            if ds.SOPInstanceUID not in case.boxes:
                continue
            x0, _, x1, _ = case.boxes[ds.SOPInstanceUID]
            columns = np.flatnonzero(_breast_mask(image).any(axis=0))
            nipple = columns[0] if ds.ImageLaterality == "R" else columns[-1]
            depths.append(abs((x0 + x1) / 2 - nipple))
        assert len(depths) == 2
        assert abs(depths[0] - depths[1]) <= 6.0  # pixels of 0.94 mm


def test_masses_are_harder_to_see_in_dense_breasts() -> None:
    def contrast(density: str, seed: int) -> float:
        case = make_exam(seed, size=SMALL, finding="round_mass", density=density)
        clean = make_exam(seed, size=SMALL, finding=None, density=density)
        ds = next(ds for ds in case.datasets if ds.SOPInstanceUID in case.boxes)
        index = case.datasets.index(ds)
        x0, y0, x1, y1 = (int(v) for v in case.boxes[ds.SOPInstanceUID])
        lesion = _pixels(case)[index][y0:y1, x0:x1]
        background = _pixels(clean)[index][y0:y1, x0:x1]
        return float((lesion - background).max() / max(background.std(), 1.0))

    for seed in (51, 52, 53):
        assert contrast("a", seed) > 2 * contrast("d", seed)


def test_dense_breasts_have_more_glandular_signal_than_fatty_ones() -> None:
    for seed in (61, 62, 63):
        means = []
        for density in DENSITIES:
            image = _pixels(make_exam(seed, size=SMALL, density=density, finding=None))[0]
            means.append(float(image[_breast_mask(image)].mean()))
        assert means == sorted(means)
        assert means[3] > means[0] + 500


def test_parenchymal_texture_has_a_power_law_spectrum_with_beta_near_3() -> None:
    n = 48  # 45 mm of central breast tissue, away from skin line and chest wall
    spectra = []
    for seed in range(70, 78):
        case = make_exam(seed, size=SMALL, density="c", finding=None)
        image = _pixels(case)[0]  # R CC: chest wall at the right edge
        breast = _breast_mask(image)
        middle = int(np.flatnonzero(breast.any(axis=1)).mean())
        centre = (np.flatnonzero(breast[middle])[0] + image.shape[1]) // 2
        rows = slice(middle - n // 2, middle + n // 2)
        cols = slice(centre - n // 2, centre + n // 2)
        assert breast[rows, cols].all()
        spectra.append(_radial_power(image[rows, cols]))
    # One patch's estimate scatters by ±0.5; the mean spectrum of eight is steady.
    slope = _log_log_slope(np.mean(spectra, axis=0), n)
    assert -3.4 <= slope <= -2.6, slope


def test_iter_mammo_cases_honours_prevalence_and_density_mix() -> None:
    cases = list(iter_mammo_cases(count=20, seed=4, prevalence=0.5, size=TINY))
    assert [c.case_id for c in cases] == [f"M{i:05d}" for i in range(1, 21)]
    assert sum(c.label for c in cases) == 10
    kinds = [c.finding for c in cases if c.label]
    assert sorted(kinds.count(k) for k in FINDINGS) == [3, 3, 4]
    assert all(c.finding is None and c.boxes == {} for c in cases if not c.label)
    assert all(len(c.boxes) == 2 for c in cases if c.label)
    assert [sum(c.density == d for c in cases) for d in DENSITIES] == [2, 8, 8, 2]
    assert all(40 <= c.age <= 79 for c in cases)
    assert len({c.study_uid for c in cases}) == 20
    few = list(iter_mammo_cases(count=10, seed=4, prevalence=0.3, size=TINY))
    assert sum(c.label for c in few) == 3


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="density"):
        make_exam(1, size=SMALL, density="e")
    with pytest.raises(ValueError, match="finding"):
        make_exam(1, size=SMALL, finding="cyst")
    with pytest.raises(ValueError, match="size"):
        make_exam(1, size=64)
    with pytest.raises(ValueError, match="prevalence"):
        next(iter_mammo_cases(count=2, seed=1, prevalence=1.5))


def test_write_mammo_cases_writes_files_and_labels(tmp_path: Path) -> None:
    labels_path = write_mammo_cases(tmp_path, count=6, seed=8, size=SMALL)
    assert labels_path == tmp_path / "labels.json"
    labels = json.loads(labels_path.read_text())
    assert {k: labels[k] for k in ("kind", "generator", "seed", "count", "prevalence")} == {
        "kind": "mammo",
        "generator": "lods.synth.mammo",
        "seed": 8,
        "count": 6,
        "prevalence": 0.5,
    }
    cases = labels["cases"]
    assert {c["finding"] for c in cases} == {None, *FINDINGS}
    assert {c["density"] for c in cases} == set(DENSITIES)
    for case in cases:
        assert case["files"] == [f"{case['case_id']}/{n}.dcm" for n in range(1, 5)]
        assert case["sex"] == "F"
        datasets = {
            ds.SOPInstanceUID: ds
            for ds in map(pydicom.dcmread, (tmp_path / name for name in case["files"]))
        }
        assert {ds.StudyInstanceUID for ds in datasets.values()} == {case["study_uid"]}
        assert len(case["boxes"]) == 2 * case["label"]
        for box in case["boxes"]:
            ds = datasets[box["sop_instance_uid"]]
            assert box["image_laterality"] == ds.ImageLaterality == case["laterality"]
            assert box["view"] == ds.ViewPosition
            assert box["finding"] == case["finding"]
            assert len(box["box"]) == 4
    with (tmp_path / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "case_id",
        "study_uid",
        "label",
        "age",
        "sex",
        "density",
        "finding",
        "laterality",
    ]
    assert [r["case_id"] for r in rows] == [c["case_id"] for c in cases]
    assert [int(r["label"]) for r in rows] == [c["label"] for c in cases]


def test_written_files_pass_dciodvfy_without_errors(tmp_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    write_mammo_cases(tmp_path, count=6, seed=8, size=SMALL)
    files = sorted(tmp_path.glob("M*/*.dcm"))
    assert len(files) == 24
    for path in files:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        assert "MammographyImageForPresentation" in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], path
        # The only warning left: dciodvfy knows no CC/MLO among DX View Position terms,
        # yet mammography units send them and readers hang the views by them.
        warnings = [line for line in report.splitlines() if line.startswith("Warning")]
        assert all("View Position" in line for line in warnings), warnings
