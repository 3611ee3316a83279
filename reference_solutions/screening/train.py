"""Train the reference screening AI on synthetic mammograms and write its Lods package.

Run from the repository root: `.venv/bin/python reference_solutions/screening/train.py`.

Everything is deterministic by seed (up to floating-point scheduling): the exams come from
`lods.synth.mammo.iter_mammo_cases`, every view goes through the runtime's own
pre-processing (`frames_of` → `to_unit_range` → `prepare` with the manifest's
`OnnxPreprocess`), so training and serving see the same tensors. Steps:

1. generate a training set (TRAIN_EXAMS, half positive) and a validation set, with the
   image size (long side) cycling through GENERATION_SIZES so the model sees a range of
   source resolutions, all downscaled by `prepare` as a full-size image is in serving;
2. train a small CNN (per view: one lesion logit and a lesion heatmap, supervised with
   the ground-truth boxes mapped through the pre-processing `Geometry`);
3. export it to ONNX and calibrate the 1–10 score on CALIBRATION_EXAMS normal exams
   (nine edges: the deciles of the exam's max-over-views probability, run through ONNX
   Runtime on the exported model);
4. write `package/` (manifest.yaml with the file hashes + model.onnx).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as fn

from lods.solutions.manifest import Normalise, OnnxPreprocess, manifest_from_dict
from lods.solutions.packaging import build_package
from lods.solutions.runtimes.imageprep import Geometry, frames_of, prepare, to_unit_range
from lods.synth.mammo import MammoCase, iter_mammo_cases

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "package"

TRAIN_SEED = 2025_0601
VALIDATION_SEED = 2025_0602
CALIBRATION_SEED = 2025_0603
TORCH_SEED = 7
TRAIN_EXAMS = 1000
VALIDATION_EXAMS = 120
CALIBRATION_EXAMS = 200
#: Long side (rows) of the generated images; exams take turns (0.31–0.63 mm pixels).
GENERATION_SIZES = (384, 512, 640, 768)
STEPS = 4500
BATCH = 48
LEARNING_RATE = 2e-3
#: Training crops (rows, columns of the model input; multiples of STRIDE).
CROP = (128, 96)
VALIDATE_EVERY = 250
#: The heatmap is the input downscaled by this factor.
STRIDE = 8

SPEC = OnnxPreprocess(
    frames="first",
    window="header",
    invert_monochrome1=True,
    resize=(384, 288),
    keep_aspect=True,
    flip_to_left=True,
    normalise=Normalise(mean=0.3, std=0.3),
    channels=1,
)
GRID = (SPEC.resize[0] // STRIDE, SPEC.resize[1] // STRIDE)


# --- data -----------------------------------------------------------------------------------


def box_mask(box: tuple[float, float, float, float], geometry: Geometry) -> np.ndarray:
    """The ground-truth box as a heatmap target: each grid cell's covered fraction (0..1)."""
    cols = geometry.image_shape[1]
    x0, y0, x1, y1 = box
    x1, y1 = x1 + 1.0, y1 + 1.0  # the last pixel's far edge
    if geometry.flipped:
        x0, x1 = cols - x1, cols - x0
    in_h, in_w = geometry.input_shape
    gh, gw = GRID
    gx0 = (geometry.offset_x + x0 * geometry.scale_x) * gw / in_w
    gx1 = (geometry.offset_x + x1 * geometry.scale_x) * gw / in_w
    gy0 = (geometry.offset_y + y0 * geometry.scale_y) * gh / in_h
    gy1 = (geometry.offset_y + y1 * geometry.scale_y) * gh / in_h
    cx, cy = np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)
    over_x = np.clip(np.minimum(cx + 1, gx1) - np.maximum(cx, gx0), 0.0, 1.0)
    over_y = np.clip(np.minimum(cy + 1, gy1) - np.maximum(cy, gy0), 0.0, 1.0)
    return np.asarray(over_y[:, None] * over_x[None, :], dtype=np.float32)


def case_views(case: MammoCase) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(input tensor C×H×W, heatmap target h×w, label) per view, via the serving pre-processing."""
    views: list[tuple[np.ndarray, np.ndarray, int]] = []
    for ds in case.datasets:
        uid = str(ds.SOPInstanceUID)
        frame = frames_of(copy.deepcopy(ds), SPEC.frames)[0]
        image01 = to_unit_range(frame, SPEC.window, SPEC.invert_monochrome1)
        tensor, geometry = prepare(image01, SPEC, laterality=str(ds.ImageLaterality))
        box = case.boxes.get(uid)
        mask = box_mask(box, geometry) if box else np.zeros(GRID, dtype=np.float32)
        views.append((tensor, mask, int(box is not None)))
    return views


def make_set(
    count: int, seed: int, prevalence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, C, H, W) float16, masks (N, h, w), view labels (N,), exam labels (N // 4,)."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    labels: list[int] = []
    exams: list[int] = []
    for i, size in enumerate(GENERATION_SIZES):
        part = len(range(i, count, len(GENERATION_SIZES)))
        if part == 0:
            continue
        # One draw per generation size (its own seed), so every size holds the same mix.
        for case in iter_mammo_cases(
            count=part, seed=seed * 10 + i, prevalence=prevalence, size=size
        ):
            for tensor, mask, label in case_views(case):
                images.append(tensor.astype(np.float16))
                masks.append(mask)
                labels.append(label)
            exams.append(case.label)
    return (
        np.stack(images),
        np.stack(masks),
        np.asarray(labels, dtype=np.float32),
        np.asarray(exams, dtype=np.int64),
    )


# --- model ----------------------------------------------------------------------------------


def _block(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Module:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ScreeningNet(nn.Module):
    """Per view: a lesion logit (N, 1) and a lesion heatmap of logits (N, 1, H/8, W/8)."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            _block(1, a, 5, 2),
            _block(a, b, 3, 2),
            _block(b, b),
            _block(b, c, 3, 2),
            _block(c, c),
            _block(c, c, dilation=2),
            _block(c, c, dilation=4),
        )
        self.heat = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat = self.heat(self.features(x))
        # The view's score is its most suspicious cell: the same on a crop or a whole view.
        return heat.amax(dim=(2, 3)), heat


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def predict(net: ScreeningNet, images: np.ndarray) -> np.ndarray:
    """Per-view probabilities."""
    net.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            x = torch.from_numpy(images[start : start + 32].astype(np.float32))
            out.append(torch.sigmoid(net(x)[0][:, 0]).numpy())
    return np.concatenate(out)


def _crops(
    images: np.ndarray,
    masks: np.ndarray,
    views: np.ndarray,
    rng: np.random.Generator,
    *,
    positive: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """CROP-sized pieces (aligned to the heatmap grid) of the given views, with their targets.

    A positive crop holds its view's lesion centre (jittered); a negative one lies at a
    random place with breast tissue in it.
    """
    ch, cw = CROP[0] // STRIDE, CROP[1] // STRIDE
    gh, gw = GRID
    xs, ms = [], []
    for v in views:
        mask = masks[v]
        if positive:
            rows, cols = np.nonzero(mask > 0.25)
            r, c = int(rows.mean()), int(cols.mean())
            top = int(np.clip(r - rng.integers(2, ch - 2), 0, gh - ch))
            left = int(np.clip(c - rng.integers(2, cw - 2), 0, gw - cw))
        else:
            for _ in range(10):
                top, left = int(rng.integers(0, gh - ch + 1)), int(rng.integers(0, gw - cw + 1))
                piece = images[v, 0, top * STRIDE : top * STRIDE + 16, left * STRIDE :]
                if float(piece.mean()) > 0.0:
                    break
        y0, x0 = top * STRIDE, left * STRIDE
        xs.append(images[v, :, y0 : y0 + CROP[0], x0 : x0 + CROP[1]].astype(np.float32))
        ms.append(mask[top : top + ch, left : left + cw])
    return np.stack(xs), np.stack(ms)


def train(
    train_set: tuple[np.ndarray, ...], val_set: tuple[np.ndarray, ...], steps: int
) -> tuple[ScreeningNet, list[dict[str, float]]]:
    """Train on crops (half holding a lesion), validate on whole views of whole exams."""
    images, masks, labels, _ = train_set
    val_images, _, _, val_exams = val_set
    rng = np.random.default_rng(TORCH_SEED)
    net = ScreeningNet()
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    optimiser = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LEARNING_RATE, total_steps=steps, pct_start=0.1
    )
    heat_weight = torch.tensor(5.0)
    history: list[dict[str, float]] = []
    best_auc, best_state = -1.0, copy.deepcopy(net.state_dict())
    started, total = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        net.train()
        half = BATCH // 2
        px, pm = _crops(images, masks, rng.choice(positives, half), rng, positive=True)
        nx, nm = _crops(images, masks, rng.choice(negatives, half), rng, positive=False)
        x = torch.from_numpy(np.concatenate([px, nx]))
        m = torch.from_numpy(np.concatenate([pm, nm]))[:, None]
        y = (m.amax(dim=(1, 2, 3)) > 0.25).float()
        score, heat = net(x)
        loss = fn.binary_cross_entropy_with_logits(score[:, 0], y)
        loss = loss + fn.binary_cross_entropy_with_logits(heat, m, pos_weight=heat_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        total += float(loss.detach())
        if step % VALIDATE_EVERY == 0 or step == steps:
            probs = predict(net, val_images).reshape(-1, 4).max(axis=1)
            val_auc = auc(probs, val_exams)
            row = {
                "step": step,
                "loss": total / VALIDATE_EVERY,
                "val_exam_auc": val_auc,
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            print(
                f"step {step:5d}  loss {row['loss']:.4f}  val exam AUC {val_auc:.4f}  "
                f"{row['seconds']:.0f} s",
                flush=True,
            )
            total = 0.0
            if val_auc >= best_auc:
                best_auc, best_state = val_auc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    return net, history


# --- export, calibration, package -----------------------------------------------------------


def export_onnx(net: ScreeningNet, path: Path) -> None:
    net.eval()
    dummy = torch.zeros(1, SPEC.channels, *SPEC.resize)
    torch.onnx.export(
        net,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["scores", "heatmap"],
        dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}, "heatmap": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def onnx_probabilities(model: Path, images: np.ndarray) -> np.ndarray:
    """Per-view probabilities from the exported model (as the runtime computes them)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    out: list[np.ndarray] = []
    for start in range(0, len(images), 16):
        batch = images[start : start + 16].astype(np.float32)
        out.append(np.asarray(session.run(["scores"], {"image": batch})[0])[:, 0])
    return np.asarray(1.0 / (1.0 + np.exp(-np.concatenate(out))), dtype=np.float64)


def calibrate(model: Path) -> list[float]:
    """Nine edges: the deciles of normal exams' max-over-views probability."""
    images, _, _, _ = make_set(CALIBRATION_EXAMS, CALIBRATION_SEED, prevalence=0.0)
    exam = onnx_probabilities(model, images).reshape(-1, 4).max(axis=1)
    edges = [float(f"{q:.6g}") for q in np.quantile(exam, np.arange(1, 10) / 10.0)]
    for i in range(1, len(edges)):  # strictly ascending, as the manifest requires
        if edges[i] <= edges[i - 1]:
            edges[i] = float(np.nextafter(edges[i - 1], 1.0))
    return edges


def manifest(edges: list[float]) -> dict[str, Any]:
    return {
        "id": "org.lods.reference.screening",
        "name": "Lods Screening AI (demonstration)",
        "version": "1.0.0",
        "vendor": "Lods project",
        "description": (
            "Reference screening mammography model of the Lods project: a small CNN scores "
            "each of the four views for a suspicious lesion (mass, spiculated mass or "
            "calcification cluster) and marks where it is; the exam gets a 1-10 score whose "
            "ten bins each hold about 10 % of normal (synthetic) screening exams."
        ),
        "regulatory": {
            "status": "demonstration",
            "statement": (
                "Demonstration model trained on synthetic images; not a medical device; "
                "not for clinical use"
            ),
        },
        "intended_use": {
            "summary": (
                "Demonstrates screening mammography AI in Lods: a 1-10 suspicion score for "
                "a four-view screening exam, with marks on suspicious regions."
            ),
            "input_kind": "dicom-study",
            "modalities": ["MG"],
            "sop_classes": ["1.2.840.10008.5.1.4.1.1.1.2"],
            "body_parts": ["BREAST"],
            "required_views": [
                {"laterality": "L", "view_position": "CC"},
                {"laterality": "L", "view_position": "MLO"},
                {"laterality": "R", "view_position": "CC"},
                {"laterality": "R", "view_position": "MLO"},
            ],
            "sexes": ["F"],
            "age": {"min_years": 50, "max_years": 69},
            "exclusions": [
                {
                    "field": "series_description",
                    "any_of": ["*implant*"],
                    "reason": "Breast implants were never part of the training data.",
                }
            ],
            "limitations": [
                "Trained and tested only on synthetic images from the Lods generator; its "
                "performance on real mammograms is unknown.",
                "Not for breasts with implants, after surgery or with markers or clips.",
                "Reads each view on its own: no comparison with prior exams and no "
                "matching of the CC and MLO views.",
                "Knows three synthetic lesion types only (round mass, spiculated mass, "
                "calcification cluster); architectural distortion, asymmetries and other "
                "findings are not detected.",
                "Boxes are coarse (about 5 mm cells) and mark where to look, not lesion size.",
                "Demonstration, not a medical device: never use it to decide on recall.",
            ],
        },
        "runtime": {
            "kind": "onnx",
            "model": "model.onnx",
            "input_name": "image",
            "classes": ["suspicious_lesion"],
            "preprocess": SPEC.model_dump(mode="json"),
            "postprocess": {
                "scores_output": "scores",
                "heatmap_output": "heatmap",
                "activation": "sigmoid",
                "heatmap_activation": "sigmoid",
                "heatmap_threshold": 0.5,
                "min_box_fraction": 0.0005,
                "max_boxes": 3,
                "score_bins": edges,
            },
            "intra_op_threads": 1,
        },
        "outputs": {
            "findings": [
                {
                    "key": "suspicious_lesion",
                    "code": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
                    "label": "Suspicious lesion (AI)",
                }
            ],
            "score_range": [1, 10],
            "operating_points": {"sure": 10, "doubtful": 8},
            "study_result": {
                "positive": "Recall suggested (AI)",
                "uncertain": "Intermediate (AI)",
                "negative": "Low suspicion (AI)",
            },
        },
        "data_egress": {"kind": "none"},
        "limits": {"timeout_seconds": 120, "max_attempts": 2},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--train-exams", type=int, default=TRAIN_EXAMS)
    parser.add_argument("--out", type=Path, default=PACKAGE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(TORCH_SEED)
    started = time.perf_counter()
    train_set = make_set(args.train_exams, TRAIN_SEED, prevalence=0.5)
    val_set = make_set(VALIDATION_EXAMS, VALIDATION_SEED, prevalence=0.5)
    print(
        f"data: {len(train_set[0])} training views ({int(train_set[2].sum())} positive), "
        f"{len(val_set[0])} validation views, {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    trained_at = time.perf_counter()
    net, _ = train(train_set, val_set, args.steps)
    params = sum(p.numel() for p in net.parameters())
    print(f"trained: {params} parameters, {time.perf_counter() - trained_at:.0f} s", flush=True)
    del train_set
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "model.onnx"
    export_onnx(net, model)
    edges = calibrate(model)
    print("score_bins:", edges, flush=True)
    document = manifest(edges)
    manifest_from_dict({**document, "files": {"model.onnx": "0" * 64}})  # validate first
    build_package(args.out, document, {"model.onnx": model.read_bytes()})
    print(
        f"package written to {args.out} ({model.stat().st_size / 1024:.0f} KiB model), "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
