"""Train the reference fracture-detection AI on synthetic limb radiographs and package it.

    .venv/bin/python reference_solutions/fracture/train.py

Steps (all seeds fixed, CPU, one thread):

1. Draw training and validation cases with `lods.synth.cases.iter_xray_cases` (size
   `GEN_SIZE`² pixels) and turn every view into the model input with exactly the
   runtime's pre-processing (`imageprep.frames_of` → `to_unit_range` → `prepare`, with the
   manifest's `OnnxPreprocess`); ground-truth boxes are mapped into the input with the
   returned `Geometry`. For every fractured training study the generator also draws its
   intact twin (`make_case` with the same seed and no fracture: the very same pixels but
   inside the fracture's box).
2. Train a patch classifier: does this `PATCH`² window hold a fracture near its centre?
   Positives are windows around each fracture; negatives are (a) the same window of the
   intact twin — so the only difference the model can learn is the fracture itself —,
   (b) windows on the tissue of intact studies and (c) from the second epoch on, "hard"
   windows around the highest-scoring places of intact training views (hard-negative
   mining, redone every `MINE_EVERY` epochs). The classifier is built from unpadded
   ("valid") convolutions and a max-pool, so running it on a whole (zero-padded) view
   gives, for every cell of a 1/8 grid, exactly the score of the window centred there:
   a heatmap whose maximum is the view's score, with no gap between how it was trained
   and how it is served.
3. Choose the operating points on the validation studies (study score = max over views):
   `doubtful` keeps sensitivity ≥ `VAL_SENSITIVITY`, `sure` keeps specificity ≥
   `VAL_SPECIFICITY`.
4. Export `model.onnx` (inputs "image" N×1×H×W; outputs "scores" N×1 and "heatmap"
   N×1×H/8×W/8, logits) and write the package (`manifest.yaml` with hashes) to `package/`.
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
from lods.synth.xray import Case, make_case

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = HERE / "package"
#: Side of the generated synthetic images (the runtime resizes them to `INPUT`).
GEN_SIZE = 768
INPUT = 384
#: The heatmap's grid: one cell per STRIDE² input pixels.
STRIDE = 8
#: The classifier's window, and the zero border that lets windows reach the image edge
#: (PAD puts the centre of the window of cell k at input pixel STRIDE·k + STRIDE/2).
PATCH = 64
PAD = 28
TRAIN_SEED, VAL_SEED = 20_251, 20_252
TRAIN_CASES, VAL_CASES = 1400, 300
PREVALENCE = 0.5
WIDTH = 2
EPOCHS = 20
MINE_EVERY = 2
#: Intact training views whose top places are mined each round.
MINE_VIEWS = 600
BATCH = 32
LEARNING_RATE = 1e-3
VAL_SENSITIVITY = 0.95
VAL_SPECIFICITY = 0.995
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
    #: View index → the same view of the study's intact twin (training only).
    twins: dict[int, np.ndarray]


def _model_input(ds: Any) -> tuple[np.ndarray, Any]:
    (frame,) = frames_of(copy.deepcopy(ds), PREPROCESS.frames)
    tensor, geometry = prepare(
        to_unit_range(frame, PREPROCESS.window, PREPROCESS.invert_monochrome1),
        PREPROCESS,
        laterality=str(ds.get("ImageLaterality", "")),
    )
    return tensor[0].astype(np.float16), geometry


def _twin(case: Case, seed: int, index: int) -> Case:
    """The fractured `case` (number `index` of the set from `seed`) without its fracture;
    `lods.synth.cases` seeds case `index` with seed·1,000,003 + index."""
    return make_case(
        seed * 1_000_003 + index,
        body_part=case.body_part,
        modality=case.modality,
        age=case.age,
        sex=case.sex,
        case_id=case.case_id,
        size=GEN_SIZE,
    )


def load_views(count: int, seed: int, *, twins: bool = False) -> Views:
    """Generate `count` cases from `seed` and pre-process their views as the runtime does."""
    images, boxes, labels, owner, case_labels, kinds = [], [], [], [], [], []
    twin_images: dict[int, np.ndarray] = {}
    for index, case in enumerate(
        iter_xray_cases(count=count, seed=seed, prevalence=PREVALENCE, size=GEN_SIZE)
    ):
        case_labels.append(case.label)
        kinds.append(case.finding)
        twin = _twin(case, seed, index).datasets if twins and case.label else None
        for number, ds in enumerate(case.datasets):
            uid = str(ds.SOPInstanceUID)
            image, geometry = _model_input(ds)
            if twin is not None:
                twin_images[len(images)] = _model_input(twin[number])[0]
            images.append(image)
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
        twins=twin_images,
    )


def window(image: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """The `PATCH`² window of `image` centred at (cx, cy), zero outside the image."""
    out = np.zeros((PATCH, PATCH), dtype=np.float32)
    x0, y0 = int(cx) - PATCH // 2, int(cy) - PATCH // 2
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(image.shape[1], x0 + PATCH), min(image.shape[0], y0 + PATCH)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def _tissue_centre(image: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A window centre on the limb (rarely anywhere), so that negatives look like bone."""
    if rng.random() < 0.1:
        x, y = rng.integers(0, INPUT, size=2)
        return float(x), float(y)
    coarse = image[::4, ::4].astype(np.float32)
    rows, cols = np.nonzero(coarse >= 0.2)
    if len(rows) == 0:
        x, y = rng.integers(0, INPUT, size=2)
        return float(x), float(y)
    pick = int(rng.integers(len(rows)))
    jitter = rng.integers(-2, 3, size=2)
    return float(cols[pick] * 4 + jitter[0]), float(rows[pick] * 4 + jitter[1])


def epoch_windows(
    views: Views, hard: dict[int, list[tuple[int, int]]], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's windows and labels: per fractured view a positive and its twin's
    negative, as many windows of intact views again (half hard ones once mined); flips."""
    xs: list[np.ndarray] = []
    ys: list[float] = []
    positives = np.nonzero(views.labels == 1)[0]
    negatives = np.nonzero(views.labels == 0)[0]
    for i in positives:
        x0, y0, x1, y1 = views.boxes[i]
        cx, cy = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + rng.integers(-10, 11, size=2)
        xs.append(window(views.images[i], cx, cy))
        ys.append(1.0)
        twin = views.twins.get(int(i))
        if twin is not None:
            xs.append(window(twin, cx, cy))
            ys.append(0.0)
    for i in rng.choice(negatives, len(positives)):
        places = hard.get(int(i))
        if places and rng.random() < 0.5:
            px, py = places[int(rng.integers(len(places)))]
            jx, jy = rng.integers(-8, 9, size=2)
            cx, cy = float(px + jx), float(py + jy)
        else:
            cx, cy = _tissue_centre(views.images[i], rng)
        xs.append(window(views.images[i], cx, cy))
        ys.append(0.0)
    batch = np.stack(xs)
    flip = rng.random(len(batch)) < 0.5
    batch[flip] = batch[flip, :, ::-1]
    flip = rng.random(len(batch)) < 0.5
    batch[flip] = batch[flip, ::-1]
    return torch.from_numpy(np.ascontiguousarray(batch))[:, None], torch.tensor(ys)


# --- model ----------------------------------------------------------------------------------


def _valid(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution without padding, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=0, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class FractureNet(nn.Module):
    """A `PATCH`² window classifier made of valid convolutions (receptive field of the
    last features 61 px, three stride-2 layers) and a 3×3 max-pool over them; on a
    `PATCH`² window it gives one logit, on a whole view padded by `PAD` one logit per
    1/8-grid cell (the heatmap), whose maximum is the view's score."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        a, b, c = 16 * width, 32 * width, 64 * width
        self.features = nn.Sequential(
            _valid(1, a),
            _valid(a, a, 2),
            _valid(a, b),
            _valid(b, b, 2),
            _valid(b, c),
            _valid(c, c, 2),
            _valid(c, c),
        )
        self.pool = nn.MaxPool2d(3, 1)
        self.head = nn.Conv2d(c, 1, 1)

    def cells(self, padded: torch.Tensor) -> torch.Tensor:
        """Logits of every window of a (padded) input, on the 1/8 grid."""
        return self.head(self.pool(self.features(padded)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap = self.cells(F.pad(image, (PAD, PAD, PAD, PAD)))
        return torch.amax(heatmap, dim=(2, 3)), heatmap


def heatmaps(model: FractureNet, views: Views, indices: np.ndarray, batch: int = 16) -> np.ndarray:
    """Heatmap logits (N×H/8×W/8) of the given views, as served."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            x = torch.from_numpy(views.images[chunk].astype(np.float32))[:, None]
            out.append(model(x)[1][:, 0].numpy())
    return np.concatenate(out)


def predict(model: FractureNet, views: Views) -> np.ndarray:
    """Sigmoid scores of every view (whole inputs, as served)."""
    maps = heatmaps(model, views, np.arange(len(views.labels)))
    return 1.0 / (1.0 + np.exp(-maps.reshape(len(maps), -1).max(axis=1)))


def mine(
    model: FractureNet, views: Views, rng: np.random.Generator, per_view: int = 5
) -> dict[int, list[tuple[int, int]]]:
    """The `per_view` highest-scoring, separated places (input pixels) of `MINE_VIEWS`
    intact training views."""
    negatives = np.nonzero(views.labels == 0)[0]
    chosen = rng.choice(negatives, min(MINE_VIEWS, len(negatives)), replace=False)
    maps = heatmaps(model, views, chosen)
    hard: dict[int, list[tuple[int, int]]] = {}
    for k, i in enumerate(chosen):
        peaks: list[tuple[int, int]] = []
        for flat in np.argsort(maps[k].ravel())[::-1][:60]:
            row, col = divmod(int(flat), maps.shape[-1])
            if all(abs(row - r) + abs(col - c) > 3 for c, r in peaks):
                peaks.append((col, row))
            if len(peaks) == per_view:
                break
        hard[int(i)] = [(c * STRIDE + STRIDE // 2, r * STRIDE + STRIDE // 2) for c, r in peaks]
    return hard


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
    epochs: int = EPOCHS,
    validation: Views | None = None,
) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    hard: dict[int, list[tuple[int, int]]] = {}
    for epoch in range(epochs):
        started = time.perf_counter()
        if epoch >= MINE_EVERY and epoch % MINE_EVERY == 0:
            hard = mine(model, views, rng)
        for group in optimiser.param_groups:  # cosine decay per epoch
            group["lr"] = LEARNING_RATE * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs))
        images, labels = epoch_windows(views, hard, rng)
        model.train()
        order = torch.randperm(len(labels))
        total, steps = 0.0, 0
        for start in range(0, len(labels), BATCH):
            chosen = order[start : start + BATCH]
            logits = model.cells(images[chosen]).flatten(1).amax(dim=1)
            loss = F.binary_cross_entropy_with_logits(logits, labels[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, steps = total + loss.item(), steps + 1
        line = (
            f"epoch {epoch + 1}/{epochs}: {len(labels)} windows, loss {total / steps:.4f} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        if validation is not None and (epoch % 4 == 3 or epoch == epochs - 1):
            study = study_scores(validation, predict(model, validation))
            line += f", validation study AUC {auc(validation.case_labels, study):.3f}"
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
        "version": "1.1.0",
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
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--width", type=int, default=WIDTH)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    log: list[str] = []
    started = time.perf_counter()
    train_views = load_views(args.train_cases, TRAIN_SEED, twins=True)
    val_views = load_views(args.val_cases, VAL_SEED)
    data_s = time.perf_counter() - started
    print(
        f"data: {len(train_views.labels)} train views (+{len(train_views.twins)} intact "
        f"twins), {len(val_views.labels)} val views ({data_s:.0f} s)",
        flush=True,
    )
    model = FractureNet(args.width)
    params = sum(p.numel() for p in model.parameters())
    train_started = time.perf_counter()
    train(model, train_views, rng, log, args.epochs, val_views)
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
