"""The committed reference screening package: intact, and it works on fresh synthetic exams.

The held-out exams here use a seed that neither training, calibration nor
`reference_solutions/screening/evaluate.py` uses; they are written as DICOM files and run
through the real `onnx` runtime, as a Lods worker runs the package.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from reference_support import REFERENCE, auc, overlap, run_cases

from lods.solutions.manifest import Manifest
from lods.solutions.packaging import package_problems, read_manifest
from lods.solutions.runtimes.base import RunResult
from lods.synth.mammo import write_mammo_cases

PACKAGE = REFERENCE / "screening" / "package"
TEST_SEED = 2025_0901
EXAMS = 120
SIZE = 640
#: Exam AUC of the 1–10 study score (what the platform shows): measured 0.897 on this set
#: (0.917 on the model card's 200 held-out exams; 0.941 for the underlying probability). The
#: bound leaves room for sampling noise on 120 exams; the issue's goal is 0.90.
MIN_AUC = 0.85


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    parsed, _ = read_manifest(PACKAGE)
    return parsed


@pytest.fixture(scope="module")
def held_out(
    tmp_path_factory: pytest.TempPathFactory, manifest: Manifest
) -> list[tuple[dict[str, Any], RunResult]]:
    """(labels.json case, runtime result) per fresh exam."""
    folder = tmp_path_factory.mktemp("screening")
    labels = write_mammo_cases(folder, count=EXAMS, seed=TEST_SEED, prevalence=0.5, size=SIZE)
    return run_cases(PACKAGE, manifest, labels)


def test_package_files_match_manifest(manifest: Manifest) -> None:
    assert package_problems(PACKAGE, manifest.files) == []
    assert manifest.id == "org.lods.reference.screening"
    assert manifest.regulatory.status.value == "demonstration"
    assert tuple(manifest.outputs.score_range) == (1.0, 10.0)
    assert (PACKAGE / "model.onnx").stat().st_size < 2 * 1024 * 1024


def test_exam_auc_on_fresh_exams(held_out: list[tuple[dict[str, Any], RunResult]]) -> None:
    labels = np.array([int(case["label"]) for case, _ in held_out])
    scores = np.array([float(result.study_score or 0.0) for _, result in held_out])
    assert set(np.unique(scores)) <= {float(k) for k in range(1, 11)}
    assert labels.sum() == EXAMS // 2
    assert auc(scores, labels) >= MIN_AUC


def test_score_bins_spread_normal_exams(
    held_out: list[tuple[dict[str, Any], RunResult]],
) -> None:
    normal = [float(r.study_score or 0.0) for case, r in held_out if case["label"] == 0]
    counts = Counter(normal)
    assert max(counts.values()) <= 0.4 * len(normal)
    assert len(counts) >= 5


def test_top_box_overlaps_truth_in_detected_positives(
    manifest: Manifest, held_out: list[tuple[dict[str, Any], RunResult]]
) -> None:
    doubtful = manifest.outputs.operating_points.doubtful
    hits, detected = 0, 0
    for case, result in held_out:
        if case["label"] != 1 or float(result.study_score or 0.0) < doubtful:
            continue
        detected += 1
        truth = {b["sop_instance_uid"]: b["box"] for b in case["boxes"]}
        boxed = [f for f in result.findings if f.box is not None]
        if not boxed:
            continue
        best = max(f.score for f in boxed)
        top = [f for f in boxed if f.score == best]
        if any(
            f.box is not None
            and f.sop_instance_uid in truth
            and overlap(f.box.as_list(), truth[f.sop_instance_uid])
            for f in top
        ):
            hits += 1
    assert detected >= 20
    assert hits >= 0.5 * detected
