"""Synthetic CR/DX studies: deterministic, valid DICOM, 12-bit, clearly fake patients."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from lods.synth.xray import (
    BODY_PARTS,
    make_study,
    render_radiograph,
    synthetic_patient,
    write_studies,
)

SMALL = 512  # keeps the tests fast; the demo and the benchmark use 1024² and up

REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstitutionName",
    "BodyPartExamined",
    "ViewPosition",
    "ImageLaterality",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "WindowCenter",
    "WindowWidth",
    "PhotometricInterpretation",
    "PixelData",
)


def _study(seed: int, *, modality: str = "DX", body_part: str = "WRIST") -> list[pydicom.Dataset]:
    patient = synthetic_patient(1, seed=seed)
    return make_study(seed, body_part=body_part, modality=modality, patient=patient, size=SMALL)


def test_make_study_is_identical_for_the_same_seed() -> None:
    first, second = _study(11), _study(11)
    assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in second]
    assert [ds.PixelData for ds in first] == [ds.PixelData for ds in second]
    assert first[0].AccessionNumber == second[0].AccessionNumber


def test_make_study_differs_for_another_seed() -> None:
    first, second = _study(11, modality="CR"), _study(12, modality="CR")
    assert first[0].StudyInstanceUID != second[0].StudyInstanceUID
    assert first[0].PixelData != second[0].PixelData


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_make_study_has_required_attributes_when_built(modality: str) -> None:
    study = _study(3, modality=modality)
    assert 1 <= len(study) <= 3
    for ds in study:
        missing = [k for k in REQUIRED if k not in ds or ds[k].value in (None, "")]
        assert missing == []
        assert ds.Modality == modality
        assert (
            ds.SOPClassUID
            == {
                "CR": ComputedRadiographyImageStorage,
                "DX": DigitalXRayImageStorageForPresentation,
            }[modality]
        )
    assert len({ds.StudyInstanceUID for ds in study}) == 1
    assert len({ds.SeriesInstanceUID for ds in study}) == len(study)


def test_make_study_views_follow_the_standard_projections_when_three_are_asked() -> None:
    study = make_study(
        5,
        body_part="ANKLE",
        modality="DX",
        patient=synthetic_patient(2, seed=5),
        size=SMALL,
        views=3,
    )
    assert [ds.ViewPosition for ds in study] == ["AP", "LAT", "AP"]
    assert len({ds.ImageLaterality for ds in study}) == 1


def test_pixels_stay_within_12_bits_when_decoded() -> None:
    for ds in _study(7, modality="CR") + _study(8, modality="DX", body_part="LEG"):
        pixels = ds.pixel_array
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            12,
            11,
            0,
        )
        assert pixels.shape == (SMALL, SMALL)
        assert int(pixels.max()) <= 4095
        assert len(np.unique(pixels)) > 500  # a real grey-level image, not a flat fill


def test_cr_is_sometimes_monochrome1_with_the_window_inverted() -> None:
    seen: dict[str, pydicom.Dataset] = {}
    for seed in range(40):
        ds = _study(seed, modality="CR", body_part="HAND")[0]
        seen.setdefault(ds.PhotometricInterpretation, ds)
    assert set(seen) == {"MONOCHROME1", "MONOCHROME2"}
    mono1, mono2 = seen["MONOCHROME1"].pixel_array, seen["MONOCHROME2"].pixel_array
    # Air is the most common value of the exposed field: dark in MONOCHROME2, so high in 1.
    assert np.median(mono1) > 2048 > np.median(mono2)
    assert seen["MONOCHROME1"].WindowCenter > 2048 > seen["MONOCHROME2"].WindowCenter


def test_dx_is_always_monochrome2_for_presentation() -> None:
    for seed in range(6):
        ds = _study(seed, modality="DX")[0]
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.PresentationIntentType == "FOR PRESENTATION"


def test_render_radiograph_puts_bone_brighter_than_soft_tissue_and_air() -> None:
    image = render_radiograph(
        np.random.default_rng(1), body_part="FOREARM", view="AP", laterality="R", size=SMALL
    )
    middle_row = image.pixels[SMALL // 2, SMALL // 4 : 3 * SMALL // 4].astype(float)
    air = np.median(middle_row)  # the limb is narrower than half the field
    limb = middle_row[middle_row > air + 300]
    assert air < 400
    assert len(limb) > SMALL // 20
    # Across the limb: soft tissue at its edges and bone in between, far brighter than the
    # ~1,050 units the soft tissue alone reaches above air at this thickness.
    assert np.percentile(limb, 95) > air + 1400
    assert np.percentile(limb, 10) < air + 700


def test_render_radiograph_rejects_unknown_body_part() -> None:
    with pytest.raises(ValueError, match="body part"):
        render_radiograph(np.random.default_rng(0), body_part="SKULL", view="AP", laterality="R")


def test_synthetic_patient_is_clearly_fake() -> None:
    patient = synthetic_patient(42, seed=1)
    assert patient.patient_id == "DEMO0042"
    assert patient.name.startswith("Demo^")
    assert patient.sex in ("F", "M")
    assert synthetic_patient(42, seed=1) == patient


def test_write_studies_covers_every_body_part_and_both_modalities(tmp_path: Path) -> None:
    paths = write_studies(tmp_path, count=5, seed=9, size=SMALL)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.BodyPartExamined for ds in datasets} == set(BODY_PARTS)
    assert {ds.Modality for ds in datasets} == {"CR", "DX"}
    assert {ds.PatientID for ds in datasets} == {f"DEMO{i:04d}" for i in range(1, 6)}
    assert all(p.stat().st_size > SMALL * SMALL * 2 for p in paths)


@pytest.mark.peers
@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_written_file_passes_dciodvfy_without_errors(tmp_path: Path, modality: str) -> None:
    dciodvfy = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not Path(dciodvfy).exists():
        pytest.fail("dciodvfy (dicom3tools) is not installed; run `make system-deps`")
    for ds in _study(21, modality=modality, body_part="HAND"):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        assert ("CRImage" if modality == "CR" else "DXImageForPresentation") in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == []
