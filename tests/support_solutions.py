"""Helpers for tests of AI solutions: small packages, DX images with a bright square,
and approving/deploying through the real services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from lods.auth.service import get_user
from lods.runtime import Runtime
from lods.sites.service import get_site_by_code
from lods.solutions import service
from lods.solutions.packaging import build_package
from lods.solutions.toymodels import bright_spot_model

ROWS, COLS = 192, 256
#: The bright square of `write_dx_image(bright=True)`: x0, y0, x1, y1 in pixels.
SQUARE = (150, 60, 206, 116)

SPOT_CODE = {"scheme": "99LODS", "value": "SPOT1", "meaning": "Bright spot"}


def write_dx_image(
    path: Path,
    *,
    study_uid: str,
    series_uid: str | None = None,
    body_part: str = "HAND",
    bright: bool = True,
    patient_id: str = "P1",
    patient_age: str = "045Y",
    sex: str = "F",
    laterality: str = "L",
    view: str = "PA",
    instance_number: int = 1,
) -> str:
    """Write a 12-bit DX Part-10 file; return its SOP Instance UID."""
    pixels = np.full((ROWS, COLS), 300, dtype=np.uint16)
    pixels[40:150, 20:120] = 1200
    if bright:
        x0, y0, x1, y1 = SQUARE
        pixels[y0:y1, x0:x1] = 3600
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.PatientAge = patient_age
    ds.PatientSex = sex
    ds.StudyDate = "20261129"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "A" + patient_id
    ds.Modality = "DX"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = 1
    ds.PixelSpacing = [0.15, 0.15]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.Rows, ds.Columns = ROWS, COLS
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def manifest_dict(
    *,
    solution_id: str,
    version: str,
    runtime: dict[str, Any],
    body_parts: list[str] | None = None,
    limits: dict[str, Any] | None = None,
    name: str = "Spot AI",
) -> dict[str, Any]:
    return {
        "id": solution_id,
        "name": name,
        "version": version,
        "vendor": "Lods tests",
        "regulatory": {
            "status": "demonstration",
            "statement": "Demonstration, not a medical device",
        },
        "intended_use": {
            "summary": "Finds bright spots on hand radiographs of adults.",
            "input_kind": "dicom-study",
            "modalities": ["DX", "CR"],
            "body_parts": body_parts if body_parts is not None else ["HAND"],
            "age": {"min_years": 18},
            "limitations": ["Synthetic test images only"],
        },
        "runtime": runtime,
        "outputs": {
            "findings": [{"key": "spot", "code": SPOT_CODE, "label": "Bright spot"}],
            "operating_points": {"sure": 0.8, "doubtful": 0.4},
            "study_result": {
                "positive": "Spot",
                "uncertain": "Maybe a spot",
                "negative": "No spot",
            },
        },
        "data_egress": {"kind": "none"},
        "limits": limits or {"timeout_seconds": 60, "max_attempts": 3},
    }


def spot_package(
    folder: Path, *, solution_id: str = "org.test.spot", version: str = "1.0", **kw: Any
) -> Path:
    """An `onnx` package with the bright-spot toy model."""
    model = bright_spot_model(folder.parent / f"{folder.name}-model.onnx", size=64, threshold=0.6)
    runtime = {
        "kind": "onnx",
        "model": "model.onnx",
        "classes": ["spot"],
        "preprocess": {"resize": [64, 64], "window": "header"},
        "postprocess": {
            "scores_output": "scores",
            "heatmap_output": "heatmap",
            "heatmap_threshold": 0.5,
            "min_box_fraction": 0.001,
        },
    }
    return build_package(
        folder,
        manifest_dict(solution_id=solution_id, version=version, runtime=runtime, **kw),
        {"model.onnx": model},
    )


#: A python-runtime engine: one finding per image, its score taken from the options.
ENGINE = """
from lods.solutions.runtimes.base import CodeRef, FindingResult, RunResult

def run(ctx):
    score = float(ctx.manifest.runtime.options.get("score", 0.9))
    code = CodeRef("99LODS", "SPOT1", "Bright spot")
    findings = [FindingResult(code=code, score=score, sop_instance_uid=i.sop_instance_uid)
                for i in ctx.images]
    return RunResult(findings=findings)
"""


def python_package(
    folder: Path,
    *,
    solution_id: str = "org.test.rule",
    version: str = "1.0",
    source: str = ENGINE,
    options: dict[str, Any] | None = None,
    **kw: Any,
) -> Path:
    runtime = {"kind": "python", "entry_point": "engine.py:run", "options": options or {}}
    return build_package(
        folder,
        manifest_dict(solution_id=solution_id, version=version, runtime=runtime, **kw),
        {"engine.py": source.encode()},
    )


def install_approve_deploy(
    rt: Runtime, package: Path, *, site: str, mode: str = "live", approver: str = "otto"
) -> tuple[int, int]:
    """Install, approve (by `approver`, an ai_owner) and deploy; return the version and
    deployment ids."""
    with rt.sessions() as db, db.begin():
        version = service.install(db, settings=rt.settings, path=package, actor="test")
        user = get_user(db, username=approver)
        assert user is not None
        service.approve(
            db,
            settings=rt.settings,
            version_id=version.id,
            approver=user,
            evidence="validated on the test set: all good",
        )
        found = get_site_by_code(db, code=site)
        assert found is not None
        deployment = service.deploy(
            db, version_id=version.id, site_id=found.id, mode=mode, actor="test"
        )
        return version.id, deployment.id
