"""Measure the committed fracture package through the real `onnx` runtime.

    .venv/bin/python reference_solutions/fracture/evaluate.py [--count 400] [--seed 20253]

A fresh held-out set (a seed used neither for training nor validation) is written as
DICOM files with `lods.synth.cases.write_xray_cases`; every study is run through
`OnnxRuntime().run(RunContext(...))` with the package's own manifest, exactly as a
worker does. Reported: study-level AUC, sensitivity and specificity at the doubtful
(sure + doubtful) and the sure operating point, sensitivity per fracture type and per
body part, specificity per body part, how often the top box of a detected positive
touches the ground truth, and inference milliseconds per image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from lods.solutions.manifest import Manifest
from lods.solutions.packaging import package_problems, read_manifest
from lods.solutions.runtimes.base import Box, InputImage, RunContext
from lods.solutions.runtimes.onnx import OnnxRuntime
from lods.synth.cases import write_xray_cases

PACKAGE_DIR = Path(__file__).resolve().parent / "package"
#: The generation size the model was trained for (see train.py).
GEN_SIZE = 768
HELD_OUT_SEED = 20_253
HELD_OUT_CASES = 400


@dataclass(frozen=True)
class StudyOutcome:
    """One held-out study: truth, the runtime's study score and box check."""

    case_id: str
    label: int
    finding: str | None
    body_part: str
    modality: str
    score: float
    #: For a positive study: whether the top-scoring finding's box overlaps a
    #: ground-truth box of its image (None when the top finding has no box).
    top_box_hits: bool | None
    ms_per_image: list[float]


def load_package(folder: Path = PACKAGE_DIR) -> Manifest:
    """The package's manifest, after checking every file against its hash."""
    manifest, _ = read_manifest(folder)
    problems = package_problems(folder, manifest.files)
    if problems:
        raise SystemExit("the package does not match its manifest: " + "; ".join(problems))
    return manifest


def _overlaps(box: Box, truth: list[int]) -> bool:
    x0, y0, x1, y1 = truth
    return min(box.x1, x1) > max(box.x0, x0) and min(box.y1, y1) > max(box.y0, y0)


def run_cases(folder: Path, manifest: Manifest, cases_dir: Path) -> list[StudyOutcome]:
    """Run the package on every study under `cases_dir` (as `write_xray_cases` wrote it)."""
    labels = json.loads((cases_dir / "labels.json").read_text(encoding="utf-8"))
    runtime = OnnxRuntime()
    outcomes = []
    for job, record in enumerate(labels["cases"], start=1):
        images = []
        for rel in record["files"]:
            path = cases_dir / rel
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
            job_id=job,
            package_dir=folder,
            manifest=manifest,
            study_uid=record["study_uid"],
            images=images,
            deadline=time.monotonic() + manifest.limits.timeout_seconds,
        )
        result = runtime.run(ctx)
        top = max(result.findings, key=lambda f: f.score)
        hits: bool | None = None
        if record["label"] == 1 and top.box is not None:
            truth = {b["sop_instance_uid"]: b["box"] for b in record["boxes"]}
            hits = top.sop_instance_uid in truth and _overlaps(top.box, truth[top.sop_instance_uid])
        outcomes.append(
            StudyOutcome(
                case_id=record["case_id"],
                label=int(record["label"]),
                finding=record["finding"],
                body_part=record["body_part"],
                modality=record["modality"],
                score=float(result.study_score if result.study_score is not None else 0.0),
                top_box_hits=hits,
                ms_per_image=list(result.details["ms_per_image"].values()),
            )
        )
    return outcomes


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _rate(values: list[bool]) -> dict[str, Any]:
    return {"n": len(values), "rate": round(float(np.mean(values)), 4) if values else None}


def metrics(outcomes: list[StudyOutcome], manifest: Manifest) -> dict[str, Any]:
    """Study-level metrics at the manifest's operating points."""
    points = manifest.outputs.operating_points
    labels = np.array([o.label for o in outcomes])
    scores = np.array([o.score for o in outcomes])
    result: dict[str, Any] = {
        "studies": len(outcomes),
        "positives": int(labels.sum()),
        "auc": round(auc(labels, scores), 4),
        "operating_points": {"doubtful": points.doubtful, "sure": points.sure},
    }
    for name, threshold in (("doubtful", points.doubtful), ("sure", points.sure)):
        pos = [o.score >= threshold for o in outcomes if o.label == 1]
        neg = [o.score < threshold for o in outcomes if o.label == 0]
        result[name] = {
            "sensitivity": _rate(pos)["rate"],
            "specificity": _rate(neg)["rate"],
            "sensitivity_by_type": {
                kind: _rate([o.score >= threshold for o in outcomes if o.finding == kind])
                for kind in sorted({o.finding for o in outcomes if o.finding})
            },
            "sensitivity_by_body_part": {
                part: _rate(
                    [o.score >= threshold for o in outcomes if o.label and o.body_part == part]
                )
                for part in sorted({o.body_part for o in outcomes})
            },
            "specificity_by_body_part": {
                part: _rate(
                    [o.score < threshold for o in outcomes if not o.label and o.body_part == part]
                )
                for part in sorted({o.body_part for o in outcomes})
            },
        }
    detected = [
        o.top_box_hits
        for o in outcomes
        if o.label == 1 and o.score >= points.doubtful and o.top_box_hits is not None
    ]
    boxless = sum(
        1
        for o in outcomes
        if o.label == 1 and o.score >= points.doubtful and o.top_box_hits is None
    )
    result["top_box_overlaps_truth"] = {**_rate(detected), "detected_without_box": boxless}
    ms = [m for o in outcomes for m in o.ms_per_image]
    result["ms_per_image"] = {
        "mean": round(float(np.mean(ms)), 1),
        "median": round(float(np.median(ms)), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
    }
    return result


def evaluate(
    folder: Path, count: int, seed: int, size: int, work: Path
) -> tuple[dict[str, Any], list[StudyOutcome]]:
    """Write `count` held-out cases to `work`, run the package on them, return metrics."""
    manifest = load_package(folder)
    write_xray_cases(work, count=count, seed=seed, prevalence=0.5, size=size)
    outcomes = run_cases(folder, manifest, work)
    return metrics(outcomes, manifest), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=PACKAGE_DIR)
    parser.add_argument("--count", type=int, default=HELD_OUT_CASES)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--size", type=int, default=GEN_SIZE)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lods-fracture-eval-") as tmp:
        result, _ = evaluate(args.package, args.count, args.seed, args.size, Path(tmp))
    result["command"] = (
        "reference_solutions/fracture/evaluate.py "
        f"--count {args.count} --seed {args.seed} --size {args.size}"
    )
    result["seconds"] = round(time.perf_counter() - started)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
