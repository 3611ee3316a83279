"""Train the reference fracture-detection AI on synthetic limb radiographs and package it.

    .venv/bin/python reference_solutions/fracture/train.py

Steps (all seeds fixed, CPU, one thread):

1. Draw training and validation cases with `lods.synth.cases.iter_xray_cases` (size
   `GEN_SIZE`² pixels) and turn every view into the model input with exactly the
   runtime's pre-processing (`imageprep.frames_of` → `to_unit_range` → `prepare`, with the
   manifest's `OnnxPreprocess`); ground-truth boxes are mapped into the input with the
   returned `Geometry`.
2. Train a small fully convolutional CNN: a heatmap on a 1/8 grid (per-cell BCE against
   the box mask) and an image score = the maximum of the heatmap (BCE against the
   image label: positive when the view's SOP Instance UID has a box). Phase A trains on
   crops (cheap); phase B on whole inputs (`EPOCHS_FULL`, 0 in the committed version:
   see MODEL_CARD.md, the model does not yet reach its goal).
3. Choose the operating points on the validation studies (study score = max over views):
   `doubtful` keeps sensitivity ≥ `VAL_SENSITIVITY`, `sure` keeps specificity ≥
   `VAL_SPECIFICITY`.
4. Export `model.onnx` (inputs "image" N×1×H×W; outputs "scores" N×1 and "heatmap"
   N×1×h×w, logits) and write the package (`manifest.yaml` with hashes) to `package/`.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lods.solutions.manifest import OnnxPreprocess, manifest_from_dict
from lods.solutions.packaging import build_package
from lods.solutions.runtimes.imageprep import frames_of, prepare, to_unit_range
from lods.synth.cases import iter_xray_cases

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = HERE / "package"
#: Side of the generated synthetic images (the runtime resizes them to `INPUT`).
GEN_SIZE = 768
INPUT = 384
STRIDE = 8
GRID = INPUT // STRIDE
TRAIN_SEED, VAL_SEED = 20_251, 20_252
TRAIN_CASES, VAL_CASES = 1400, 300
PREVALENCE = 0.5
CROP = 128
EPOCHS_CROP, EPOCHS_FULL = 20, 0
VAL_SENSITIVITY = 0.93
VAL_SPECIFICITY = 0.95
PREPROCESS = OnnxPreprocess(
    frames="first",
    window="header",
    invert_monochrome1=True,
    resize=(INPUT, INPUT),
    keep_aspect=True,
    channels=1,
)


# --- data -----------------------------------------------------------------------------------


@dataclass
class Views:
    """Model inputs of many views (float16, N×H×W), their boxes in input pixels and facts."""

    images: np.ndarray
    #: (x0, y0, x1, y1) in model-input pixels; NaN for a view without a fracture.
    boxes: np.ndarray
    labels: np.ndarray
    #: Index of the case (study) each view belongs to.
    case: np.ndarray
    case_labels: np.ndarray
    case_kinds: list[str | None]


def load_views(count: int, seed: int) -> Views:
    """Generate `count` cases from `seed` and pre-process their views as the runtime does."""
    images, boxes, labels, owner, case_labels, kinds = [], [], [], [], [], []
    for index, case in enumerate(
        iter_xray_cases(count=count, seed=seed, prevalence=PREVALENCE, size=GEN_SIZE)
    ):
        case_labels.append(case.label)
        kinds.append(case.finding)
        for ds in case.datasets:
            uid = str(ds.SOPInstanceUID)
            (frame,) = frames_of(copy.deepcopy(ds), PREPROCESS.frames)
            tensor, geometry = prepare(
                to_unit_range(frame, PREPROCESS.window, PREPROCESS.invert_monochrome1),
                PREPROCESS,
                laterality=str(ds.get("ImageLaterality", "")),
            )
            images.append(tensor[0].astype(np.float16))
            box = case.boxes.get(uid)
            if box is None:
                boxes.append((np.nan,) * 4)
                labels.append(0)
            else:
                x0, y0, x1, y1 = box
                sx, sy = geometry.scale_x, geometry.scale_y
                ox, oy = geometry.offset_x, geometry.offset_y
                boxes.append((x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy))
                labels.append(1)
            owner.append(index)
    return Views(
        images=np.stack(images),
        boxes=np.asarray(boxes, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.float32),
        case=np.asarray(owner),
        case_labels=np.asarray(case_labels),
        case_kinds=kinds,
    )


def box_mask(box: np.ndarray, origin: tuple[int, int], size: int) -> np.ndarray:
    """The heatmap target: grid cells (stride `STRIDE`) of a `size`² window at `origin`
    (x, y) whose area overlaps the box by at least half a cell width each way."""
    cells = size // STRIDE
    mask = np.zeros((cells, cells), dtype=np.float32)
    if np.isnan(box[0]):
        return mask
    x0, y0, x1, y1 = (box - np.array([*origin, *origin], dtype=np.float32)) / STRIDE
    c0, c1 = int(np.clip(np.floor(x0 + 0.5), 0, cells)), int(np.clip(np.ceil(x1 - 0.5), 0, cells))
    r0, r1 = int(np.clip(np.floor(y0 + 0.5), 0, cells)), int(np.clip(np.ceil(y1 - 0.5), 0, cells))
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    if 0 <= cx < cells and 0 <= cy < cells:  # at least the centre cell
        mask[cy, cx] = 1.0
    mask[r0:r1, c0:c1] = 1.0
    return mask


def _negative_origin(image: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A crop origin for a view without a fracture: mostly centred on bone (the densest
    quarter of the image), as positive crops are, so that bone itself is no cue."""
    limit = INPUT - CROP
    if rng.random() < 0.2:
        ox, oy = (int(v) for v in rng.integers(0, limit // STRIDE + 1, size=2) * STRIDE)
        return ox, oy
    coarse = image[::STRIDE, ::STRIDE].astype(np.float32)
    rows, cols = np.nonzero(coarse >= np.quantile(coarse, 0.75))
    pick = int(rng.integers(len(rows)))
    centre = np.array([cols[pick], rows[pick]]) * STRIDE + rng.integers(-24, 25, size=2)
    ox, oy = (int(np.clip((c - CROP // 2) // STRIDE * STRIDE, 0, limit)) for c in centre)
    return ox, oy


def crop_batch(
    views: Views, indices: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops of `CROP`² (stride-aligned) holding the whole box for positive views, anywhere
    inside the image for negatives; with flips. Returns images, labels, heatmap masks."""
    xs, ys, ms = [], [], []
    limit = INPUT - CROP
    for i in indices:
        box = views.boxes[i]
        if np.isnan(box[0]):
            ox, oy = _negative_origin(views.images[i], rng)
        else:
            origin = []
            for low, high in ((box[0], box[2]), (box[1], box[3])):
                first = max(0, int(np.ceil((high - CROP) / STRIDE)))
                last = min(limit // STRIDE, int(np.floor(low / STRIDE)))
                origin.append(int(rng.integers(min(first, last), max(first, last) + 1)) * STRIDE)
            ox, oy = origin
        image = views.images[i, oy : oy + CROP, ox : ox + CROP].astype(np.float32)
        mask = box_mask(box, (ox, oy), CROP)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        xs.append(np.ascontiguousarray(image))
        ms.append(np.ascontiguousarray(mask))
        ys.append(views.labels[i])
    return (
        torch.from_numpy(np.stack(xs))[:, None],
        torch.tensor(ys, dtype=torch.float32),
        torch.from_numpy(np.stack(ms))[:, None],
    )


def full_batch(
    views: Views, indices: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole model inputs with their labels and heatmap masks (with flips)."""
    xs, ms = [], []
    for i in indices:
        image = views.images[i].astype(np.float32)
        mask = box_mask(views.boxes[i], (0, 0), INPUT)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        xs.append(np.ascontiguousarray(image))
        ms.append(np.ascontiguousarray(mask))
    return (
        torch.from_numpy(np.stack(xs))[:, None],
        torch.from_numpy(views.labels[indices]),
        torch.from_numpy(np.stack(ms))[:, None],
    )


# --- model ----------------------------------------------------------------------------------


def _block(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class FractureNet(nn.Module):
    """Fully convolutional: a 1/8 grid of heatmap logits; the image score is the heatmap's
    maximum, so crops and whole images are scored alike and a score ≥ 0.5 has a box."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 16, 2),
            _block(16, 16),
            _block(16, 32, 2),
            _block(32, 32),
            _block(32, 64, 2),
            _block(64, 64),
            _block(64, 64, dilation=2),
            _block(64, 64, dilation=4),
        )
        self.head = nn.Conv2d(64, 1, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap = self.head(self.features(image))
        return torch.amax(heatmap, dim=(2, 3)), heatmap


def loss_of(
    model: FractureNet, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    scores, heatmap = model(images)
    score_loss = F.binary_cross_entropy_with_logits(scores[:, 0], labels)
    cells = F.binary_cross_entropy_with_logits(heatmap, masks, reduction="none")
    positive = (cells * masks).sum() / masks.sum().clamp(min=1.0)
    negative = (cells * (1.0 - masks)).sum() / (1.0 - masks).sum().clamp(min=1.0)
    return score_loss + positive + negative


def predict(model: FractureNet, views: Views, batch: int = 16) -> np.ndarray:
    """Sigmoid scores of every view (whole inputs, as served)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(views.labels), batch):
            x = torch.from_numpy(views.images[start : start + batch].astype(np.float32))[:, None]
            out.append(torch.sigmoid(model(x)[0][:, 0]).numpy())
    return np.concatenate(out)


def study_scores(views: Views, image_scores: np.ndarray) -> np.ndarray:
    """Study score = maximum over its views (as the platform does)."""
    result = np.zeros(len(views.case_labels), dtype=np.float64)
    np.maximum.at(result, views.case, image_scores)
    return result


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def operating_points(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(doubtful, sure): the highest threshold keeping sensitivity ≥ VAL_SENSITIVITY, and
    the lowest keeping specificity ≥ VAL_SPECIFICITY (never below doubtful)."""
    pos = np.sort(scores[labels == 1])
    neg = np.sort(scores[labels == 0])
    allowed_misses = int(np.floor((1.0 - VAL_SENSITIVITY) * len(pos)))
    doubtful = float(pos[allowed_misses])  # scores ≥ this: at least the wanted share
    allowed_fp = int(np.floor((1.0 - VAL_SPECIFICITY) * len(neg)))
    sure = float(np.nextafter(neg[len(neg) - 1 - allowed_fp], np.inf))
    doubtful = float(np.floor(doubtful * 1e4) / 1e4)
    sure = float(np.ceil(sure * 1e4) / 1e4)
    return doubtful, max(sure, doubtful)


# --- training -------------------------------------------------------------------------------


def train(
    model: FractureNet,
    views: Views,
    rng: np.random.Generator,
    log: list[str],
    epochs: tuple[int, int] = (EPOCHS_CROP, EPOCHS_FULL),
) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    n = len(views.labels)
    crop_epochs, full_epochs = epochs
    crop_steps = crop_epochs * (n // 16)
    full_steps = full_epochs * (n // 8)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=2e-3, total_steps=crop_steps + full_steps, pct_start=0.1
    )
    phases = (("crop", crop_epochs, 16, crop_batch), ("full", full_epochs, 8, full_batch))
    for name, epochs, size, make in phases:
        for epoch in range(epochs):
            model.train()
            started, total, steps = time.perf_counter(), 0.0, 0
            order = rng.permutation(n)
            for start in range(0, n - size + 1, size):
                images, labels, masks = make(views, order[start : start + size], rng)
                loss = loss_of(model, images, labels, masks)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total, steps = total + loss.item(), steps + 1
            line = (
                f"{name} epoch {epoch + 1}/{epochs}: loss {total / steps:.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
            log.append(line)
            print(line, flush=True)


def export(model: FractureNet, target: io.BytesIO) -> None:
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, INPUT, INPUT),),
        target,
        input_names=["image"],
        output_names=["scores", "heatmap"],
        dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}, "heatmap": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def manifest(doubtful: float, sure: float) -> dict[str, Any]:
    """The package manifest (without `files`, which `build_package` fills in)."""
    return {
        "id": "org.lods.reference.fracture",
        "name": "Lods Fracture AI (demonstration)",
        "version": "1.0.0",
        "vendor": "Lods project",
        "description": (
            "Reference fracture detector of the Lods project: a small CNN that scores each "
            "limb radiograph for a fracture and outlines where. Trained on synthetic images."
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
                "Flags possible fractures of the hand, wrist, forearm, ankle and lower leg "
                "on DX and CR radiographs of patients aged 2 years and older, and marks "
                "where they are, for a radiologist to review."
            ),
            "input_kind": "dicom-study",
            "modalities": ["DX", "CR"],
            "sop_classes": ["1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1"],
            "body_parts": ["HAND", "WRIST", "FOREARM", "ANKLE", "LEG"],
            "age": {"min_years": 2},
            "limitations": [
                "Trained and tested only on synthetic radiographs, never on real patients.",
                "Trained on 768×768-pixel images; real radiographs have other sizes, "
                "detectors, noise and exposure.",
                "Not trained on casts, splints, implants, screws or plates.",
                "Not for the skull, spine, chest, pelvis, hip, shoulder, elbow, knee or foot.",
                "The synthetic children's bones have no growth plates: it has not learnt "
                "to tell a growth plate from a fracture.",
                "Hairline fractures and buckle fractures are missed more often than "
                "other fractures.",
                "Only one fracture per study was present in training; further fractures "
                "may be missed.",
                "A study result is the most suspicious image; it does not replace reading "
                "every image.",
            ],
        },
        "runtime": {
            "kind": "onnx",
            "model": "model.onnx",
            "input_name": "image",
            "classes": ["fracture"],
            "preprocess": PREPROCESS.model_dump(mode="json"),
            "postprocess": {
                "scores_output": "scores",
                "heatmap_output": "heatmap",
                "activation": "sigmoid",
                "heatmap_activation": "sigmoid",
                "heatmap_threshold": 0.5,
                "min_box_fraction": 0.0003,
                "max_boxes": 3,
            },
            "intra_op_threads": 1,
        },
        "outputs": {
            "findings": [
                {
                    "key": "fracture",
                    "code": {"scheme": "SCT", "value": "125605004", "meaning": "Fracture of bone"},
                    "label": "Fracture",
                }
            ],
            "score_range": [0.0, 1.0],
            "operating_points": {"sure": sure, "doubtful": doubtful},
            "study_result": {
                "positive": "Fracture (AI)",
                "uncertain": "Possible fracture (AI)",
                "negative": "No fracture found (AI)",
            },
        },
        "data_egress": {"kind": "none"},
        "limits": {"timeout_seconds": 120, "max_attempts": 2},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-cases", type=int, default=TRAIN_CASES)
    parser.add_argument("--val-cases", type=int, default=VAL_CASES)
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR)
    parser.add_argument("--crop-epochs", type=int, default=EPOCHS_CROP)
    parser.add_argument("--full-epochs", type=int, default=EPOCHS_FULL)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    log: list[str] = []
    started = time.perf_counter()
    train_views = load_views(args.train_cases, TRAIN_SEED)
    val_views = load_views(args.val_cases, VAL_SEED)
    data_s = time.perf_counter() - started
    print(
        f"data: {len(train_views.labels)} train views, {len(val_views.labels)} val views "
        f"({data_s:.0f} s)",
        flush=True,
    )
    model = FractureNet()
    params = sum(p.numel() for p in model.parameters())
    train_started = time.perf_counter()
    train(model, train_views, rng, log, (args.crop_epochs, args.full_epochs))
    train_s = time.perf_counter() - train_started
    val_study = study_scores(val_views, predict(model, val_views))
    labels = val_views.case_labels
    doubtful, sure = operating_points(labels, val_study)
    pos, neg = val_study[labels == 1], val_study[labels == 0]
    summary = {
        "parameters": params,
        "data_seconds": round(data_s),
        "train_seconds": round(train_s),
        "val_auc": round(auc(labels, val_study), 4),
        "doubtful": doubtful,
        "sure": sure,
        "val_sens_doubtful": round(float((pos >= doubtful).mean()), 4),
        "val_spec_doubtful": round(float((neg < doubtful).mean()), 4),
        "val_sens_sure": round(float((pos >= sure).mean()), 4),
        "val_spec_sure": round(float((neg < sure).mean()), 4),
        "log": log,
    }
    print(json.dumps(summary, indent=1), flush=True)
    buffer = io.BytesIO()
    export(model, buffer)
    data = manifest(doubtful, sure)
    manifest_from_dict({**data, "files": {"model.onnx": "0" * 64}})  # validate early
    build_package(args.out, data, {"model.onnx": buffer.getvalue()})
    print(f"package written to {args.out}", flush=True)


if __name__ == "__main__":
    main()
