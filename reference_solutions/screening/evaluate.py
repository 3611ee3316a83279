"""Measure the screening package through the real `onnx` runtime on a fresh held-out set.

Run from the repository root: `.venv/bin/python reference_solutions/screening/evaluate.py`.

Each held-out exam (a seed the training never used) is written as four DICOM files and run
through `OnnxRuntime().run(RunContext(...))` on the committed package, exactly as a Lods
worker runs it. Reported:

* exam-level AUC of the platform's study score (1–10, max over findings) and of the raw
  probability (the same package run with its score bins removed: max over views);
* sensitivity and specificity at the operating points (sure ≥ 10, doubtful ≥ 8);
* AUC per breast density and per finding kind (each kind against all normal exams);
* localisation: in detected positives, how often the top finding's box overlaps the truth;
* the distribution of normal exams over the 1–10 score;
* inference milliseconds per image (read + pre-process + model + post-process).

`--size` sets the generated image size (long side); `--full-size N` adds N exams at the
generator's full detector resolution (about 2400–2800 rows), as a hospital sends them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lods.solutions.manifest import Manifest
from lods.solutions.packaging import package_problems, read_manifest
from lods.solutions.runtimes.base import InputImage, RunContext, RunResult
from lods.solutions.runtimes.onnx import OnnxRuntime
from lods.synth.mammo import MammoCase, iter_mammo_cases

PACKAGE = Path(__file__).resolve().parent / "package"
HELD_OUT_SEED = 2025_0701
FULL_SIZE_SEED = 2025_0702


@dataclass
class ExamResult:
    label: int
    density: str
    finding: str | None
    score: float
    probability: float
    localised: bool | None
    ms_per_image: list[float]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def write_exam(case: MammoCase, folder: Path) -> list[InputImage]:
    """Write the exam's four images as Part-10 files and describe them as a worker would."""
    images: list[InputImage] = []
    for ds in case.datasets:
        path = folder / f"{ds.InstanceNumber}.dcm"
        ds.save_as(path, enforce_file_format=True)
        images.append(
            InputImage(
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                path=path,
                facts={
                    "laterality": str(ds.ImageLaterality),
                    "view_position": str(ds.ViewPosition),
                },
            )
        )
    return images


def run_exam(
    package: Path, manifest: Manifest, case: MammoCase, images: list[InputImage]
) -> RunResult:
    ctx = RunContext(
        job_id=1,
        package_dir=package,
        manifest=manifest,
        study_uid=case.study_uid,
        images=images,
        deadline=time.monotonic() + 600.0,
    )
    return OnnxRuntime().run(ctx)


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def top_box_hits(result: RunResult, case: MammoCase) -> bool:
    """Whether a highest-scoring finding with a box overlaps a ground-truth box."""
    boxed = [f for f in result.findings if f.box is not None]
    if not boxed:
        return False
    best = max(f.score for f in boxed)
    for found in boxed:
        truth = case.boxes.get(found.sop_instance_uid or "")
        box = found.box
        if (
            found.score == best
            and truth is not None
            and box is not None
            and overlaps((box.x0, box.y0, box.x1, box.y1), truth)
        ):
            return True
    return False


def evaluate_cases(package: Path, cases: Iterator[MammoCase], doubtful: float) -> list[ExamResult]:
    manifest, _ = read_manifest(package)
    spec = manifest.runtime
    raw_post = spec.postprocess.model_copy(update={"score_bins": None})  # type: ignore[union-attr]
    raw_manifest = manifest.model_copy(
        update={
            "runtime": spec.model_copy(update={"postprocess": raw_post}),
            "outputs": manifest.outputs.model_copy(
                update={
                    "score_range": (0.0, 1.0),
                    "operating_points": manifest.outputs.operating_points.model_copy(
                        update={"sure": 1.0, "doubtful": 0.5}
                    ),
                }
            ),
        }
    )
    results: list[ExamResult] = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="lods-screening-") as tmp:
            images = write_exam(case, Path(tmp))
            scored = run_exam(package, manifest, case, images)
            raw = run_exam(package, raw_manifest, case, images)
        score = float(scored.study_score or 0.0)
        localised = top_box_hits(scored, case) if case.label and score >= doubtful else None
        results.append(
            ExamResult(
                label=case.label,
                density=case.density,
                finding=case.finding,
                score=score,
                probability=float(raw.study_score or 0.0),
                localised=localised,
                ms_per_image=list(scored.details["ms_per_image"].values()),
            )
        )
    return results


def report(results: list[ExamResult], manifest: Manifest, title: str) -> None:
    labels = np.array([r.label for r in results])
    scores = np.array([r.score for r in results])
    probs = np.array([r.probability for r in results])
    points = manifest.outputs.operating_points
    print(f"\n== {title}: {len(results)} exams ({int(labels.sum())} with a lesion) ==")
    print(f"exam AUC, 1-10 study score:      {auc(scores, labels):.3f}")
    print(f"exam AUC, max-view probability:  {auc(probs, labels):.3f}")
    for name, cut in (("sure", points.sure), ("doubtful", points.doubtful)):
        flagged = scores >= cut
        sens = float(flagged[labels == 1].mean())
        spec = float((~flagged)[labels == 0].mean())
        print(f"at {name:8s} (score >= {cut:g}): sensitivity {sens:.3f}  specificity {spec:.3f}")
    normal = Counter(int(s) for s in scores[labels == 0])
    share = "  ".join(
        f"{k}:{normal.get(k, 0) / max(1, int((labels == 0).sum())):.0%}" for k in range(1, 11)
    )
    print(f"normal exams per score:  {share}")
    print("per density (AUC of max-view probability):")
    for density in "abcd":
        keep = np.array([r.density == density for r in results])
        n_pos, n_neg = int(labels[keep].sum()), int((labels[keep] == 0).sum())
        print(f"  {density}: {auc(probs[keep], labels[keep]):.3f}  ({n_pos} pos / {n_neg} neg)")
    print("per finding (against all normal exams):")
    for kind in ("round_mass", "spiculated_mass", "calcifications"):
        keep = np.array([r.finding in (kind, None) for r in results])
        n_pos = int(labels[keep].sum())
        print(f"  {kind:16s} {auc(probs[keep], labels[keep]):.3f}  ({n_pos} exams)")
    hits = [r.localised for r in results if r.localised is not None]
    if hits:
        print(
            f"top box overlaps the truth in {sum(hits)}/{len(hits)} detected positives "
            f"({sum(hits) / len(hits):.0%})"
        )
    ms = np.array([m for r in results for m in r.ms_per_image])
    print(f"inference per image: median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=PACKAGE)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--full-size", type=int, default=12)
    args = parser.parse_args()
    manifest, _ = read_manifest(args.package)
    problems = package_problems(args.package, manifest.files)
    if problems:
        raise SystemExit("the package does not match its manifest: " + "; ".join(problems))
    doubtful = manifest.outputs.operating_points.doubtful
    started = time.perf_counter()
    cases = iter_mammo_cases(count=args.count, seed=args.seed, prevalence=0.5, size=args.size)
    results = evaluate_cases(args.package, cases, doubtful)
    report(results, manifest, f"held-out, seed {args.seed}, size {args.size}")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.full_size:
        started = time.perf_counter()
        cases = iter_mammo_cases(count=args.full_size, seed=FULL_SIZE_SEED, prevalence=0.5)
        full = evaluate_cases(args.package, cases, doubtful)
        report(full, manifest, f"full detector resolution, seed {FULL_SIZE_SEED}")
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
