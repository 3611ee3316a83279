"""Running a committed reference package on freshly written, labelled synthetic cases
through the real `onnx` runtime, as a Lods worker runs it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from lods.solutions.manifest import Manifest
from lods.solutions.runtimes.base import InputImage, RunContext, RunResult
from lods.solutions.runtimes.onnx import OnnxRuntime

REFERENCE = Path(__file__).resolve().parents[2] / "reference_solutions"


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def overlap(a: list[float], b: list[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def run_cases(
    package: Path, manifest: Manifest, labels: Path
) -> list[tuple[dict[str, Any], RunResult]]:
    """(labels.json case, runtime result) for every case written beside `labels`."""
    folder = labels.parent
    cases = json.loads(labels.read_text(encoding="utf-8"))["cases"]
    runtime = OnnxRuntime()
    out: list[tuple[dict[str, Any], RunResult]] = []
    for number, case in enumerate(cases, start=1):
        images: list[InputImage] = []
        for rel in case["files"]:
            path = folder / rel
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            images.append(
                InputImage(
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_uid=str(ds.SeriesInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    path=path,
                    facts={"laterality": str(ds.get("ImageLaterality", ""))},
                )
            )
        ctx = RunContext(
            job_id=number,
            package_dir=package,
            manifest=manifest,
            study_uid=case["study_uid"],
            images=images,
            deadline=time.monotonic() + 120.0,
        )
        out.append((case, runtime.run(ctx)))
    return out
