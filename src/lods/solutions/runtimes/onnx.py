"""The `onnx` runtime: run a packaged ONNX model on each input image with ONNX Runtime (CPU).

For every image the chosen frames are windowed, resized and normalised as the manifest's
`preprocess` says (`lods.solutions.runtimes.imageprep`), run in batches (all frames of
the image, at most `MAX_BATCH` at a time, or the model's fixed batch size, padded), and
the outputs turned into raw findings as `postprocess` says:

* `scores_output` (N, C) gives, after the activation, one score per frame and class
  (C = len(runtime.classes), in that order);
* without `heatmap_output`, each frame and class gives one image-level finding carrying
  that score;
* with `heatmap_output` (N, C, h, w), each class heatmap is thresholded into connected
  regions, and each region becomes a finding with its box on the stored image. Box score
  rule: the strongest box carries the class score; a weaker box carries the class score
  scaled by its peak relative to the strongest peak (so a box never outscores its
  class). A class without boxes still gives one image-level finding with its score.
  The heatmap of the highest-scoring frame and class of each image is attached, as an
  8-bit PNG on the image's grid (scaled to at most `HEATMAP_MAX_SIDE` pixels on its
  longer side), to that class's first finding.

Sessions are cached per (package folder, model SHA-256): a locked version's model never
changes, and the platform re-verifies the files before each run.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from scipy.special import expit, softmax

from lods.solutions.manifest import Manifest, OnnxPostprocess, OnnxRuntimeSpec
from lods.solutions.runtimes.base import (
    Box,
    CodeRef,
    FindingResult,
    InputImage,
    PermanentRuntimeError,
    RunContext,
    RunResult,
    TransientRuntimeError,
)
from lods.solutions.runtimes.imageprep import (
    Frame,
    Geometry,
    heatmap_boxes,
    load_frames,
    prepare,
    to_unit_range,
)

#: Sessions kept per process (least recently used dropped first).
SESSION_CACHE_SIZE = 8
#: Frames run together at most, when the model accepts any batch size.
MAX_BATCH = 16
#: Longest side of an attached heatmap PNG (the image's aspect ratio is kept).
HEATMAP_MAX_SIDE = 1024
PROVIDERS = ["CPUExecutionProvider"]

_sessions: OrderedDict[tuple[str, str], ort.InferenceSession] = OrderedDict()
_sessions_lock = threading.Lock()


def _onnx_spec(manifest: Manifest) -> OnnxRuntimeSpec:
    spec = manifest.runtime
    if not isinstance(spec, OnnxRuntimeSpec):
        raise PermanentRuntimeError(f"the package's runtime is {spec.kind!r}, not 'onnx'")
    return spec


def _new_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=PROVIDERS)
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise PermanentRuntimeError(f"the model {path.name} cannot be loaded: {exc}") from exc


def cached_session(package_dir: Path, manifest: Manifest) -> ort.InferenceSession:
    """The process's session for the manifest's model in `package_dir`, loading it once."""
    spec = _onnx_spec(manifest)
    digest = manifest.files.get(spec.model)
    if not digest:
        raise PermanentRuntimeError(f"the model {spec.model!r} is not listed under files")
    root = package_dir.resolve()
    path = (root / spec.model).resolve()
    if not path.is_relative_to(root):
        raise PermanentRuntimeError(f"the model {spec.model!r} lies outside the package")
    if not path.is_file():
        raise PermanentRuntimeError(f"the model file {spec.model!r} is missing from the package")
    key = (str(root), digest)
    with _sessions_lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    session = _new_session(path, spec.intra_op_threads)
    with _sessions_lock:
        session = _sessions.setdefault(key, session)
        _sessions.move_to_end(key)
        while len(_sessions) > SESSION_CACHE_SIZE:
            _sessions.popitem(last=False)
    return session


def clear_session_cache() -> None:
    """Forget every cached session (tests; a worker never needs to)."""
    with _sessions_lock:
        _sessions.clear()


# --- the model's signature ------------------------------------------------------------------


def _describe(args: list[Any]) -> str:
    return ", ".join(f"{a.name} {list(a.shape)}" for a in args) or "none"


@dataclass(frozen=True)
class _Signature:
    input_name: str
    #: The model's fixed batch size, or None when it takes any.
    batch: int | None
    output_names: list[str]


def _signature(session: ort.InferenceSession, spec: OnnxRuntimeSpec) -> _Signature:
    """Check the model fits the manifest (input name and shape, outputs) and say how to call it."""
    inputs = session.get_inputs()
    if spec.input_name is not None:
        found = [i for i in inputs if i.name == spec.input_name]
        if not found:
            raise PermanentRuntimeError(
                f"the model has no input {spec.input_name!r}; its inputs: {_describe(inputs)}"
            )
        model_input = found[0]
    elif len(inputs) == 1:
        model_input = inputs[0]
    else:
        raise PermanentRuntimeError(
            f"the model has {len(inputs)} inputs ({_describe(inputs)}); "
            "the manifest must name one as runtime.input_name"
        )
    pre = spec.preprocess
    expected = [pre.channels, pre.resize[0], pre.resize[1]]
    shape = list(model_input.shape)
    fits = len(shape) == 4 and all(
        not isinstance(d, int) or d <= 0 or d == e for d, e in zip(shape[1:], expected, strict=True)
    )
    if not fits:
        raise PermanentRuntimeError(
            f"the model's input {model_input.name!r} has shape {shape}, but the manifest's "
            f"preprocess makes [N, {expected[0]}, {expected[1]}, {expected[2]}]"
        )
    if model_input.type != "tensor(float)":
        raise PermanentRuntimeError(
            f"the model's input {model_input.name!r} is {model_input.type}, not tensor(float)"
        )
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    wanted = [spec.postprocess.scores_output]
    if spec.postprocess.heatmap_output:
        wanted.append(spec.postprocess.heatmap_output)
    for name in wanted:
        if name not in names:
            raise PermanentRuntimeError(
                f"the model has no output {name!r}; its outputs: {_describe(outputs)}"
            )
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return _Signature(input_name=model_input.name, batch=batch, output_names=wanted)


# --- post-processing ------------------------------------------------------------------------


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return np.asarray(expit(values), dtype=np.float32)
    if activation == "softmax":
        return np.asarray(softmax(values, axis=1), dtype=np.float32)
    return values.astype(np.float32, copy=False)


def _heatmap_png(heatmap: np.ndarray, geometry: Geometry) -> bytes:
    """The heatmap (values clipped to 0..1) on the image's grid, as an 8-bit grey PNG."""
    grid = geometry.map_to_image(heatmap, max_side=HEATMAP_MAX_SIDE)
    levels = np.rint(np.clip(np.nan_to_num(grid, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _class_findings(
    score: float, heatmap: np.ndarray | None, geometry: Geometry, post: OnnxPostprocess
) -> list[tuple[float, Box | None]]:
    """(score, box) of each finding of one frame and class, by this module's box score rule."""
    boxes: list[tuple[Box, float]] = []
    if heatmap is not None:
        grid_shape = (int(heatmap.shape[0]), int(heatmap.shape[1]))
        for box, peak in heatmap_boxes(
            heatmap,
            threshold=post.heatmap_threshold,
            min_fraction=post.min_box_fraction,
            max_boxes=post.max_boxes,
        ):
            on_image = geometry.to_image(box, grid_shape)
            if on_image.x1 > on_image.x0 and on_image.y1 > on_image.y0:  # not in the padding
                boxes.append((on_image, peak))
    if not boxes:
        return [(score, None)]
    strongest = boxes[0][1]
    return [
        (score * (1.0 if strongest <= 0 else min(max(peak / strongest, 0.0), 1.0)), box)
        for box, peak in boxes
    ]


@dataclass(frozen=True)
class _ImageFinding:
    class_index: int
    score: float
    box: Box | None
    frame: int
    heatmap_png: bytes | None


# --- the runtime ----------------------------------------------------------------------------


class OnnxRuntime:
    """Runs an `onnx` solution version; see the module docstring for the rules."""

    def run(self, ctx: RunContext) -> RunResult:
        """Run the package's model on every input image and return raw findings."""
        manifest: Manifest = ctx.manifest
        spec = _onnx_spec(manifest)
        _check_deadline(ctx)
        started = time.perf_counter()
        session = cached_session(ctx.package_dir, manifest)
        load_ms = (time.perf_counter() - started) * 1000.0
        signature = _signature(session, spec)
        try:
            codes = {key: manifest.outputs.finding(key) for key in spec.classes}
        except KeyError as exc:
            raise PermanentRuntimeError(f"runtime class {exc} is not in outputs.findings") from exc
        findings: list[FindingResult] = []
        timings: dict[str, float] = {}
        frame_count = 0
        for image in ctx.images:
            _check_deadline(ctx)
            ctx.heartbeat()
            image_started = time.perf_counter()
            frames = load_frames(image.path, spec.preprocess.frames)
            frame_count += len(frames)
            for item in self._image_findings(ctx, session, signature, spec, image, frames):
                output = codes[spec.classes[item.class_index]]
                findings.append(
                    FindingResult(
                        code=CodeRef(output.code.scheme, output.code.value, output.code.meaning),
                        score=item.score,
                        label=output.label,
                        sop_instance_uid=image.sop_instance_uid,
                        frame=item.frame,
                        box=item.box,
                        heatmap_png=item.heatmap_png,
                    )
                )
            timings[image.sop_instance_uid] = round((time.perf_counter() - image_started) * 1e3, 2)
        return RunResult(
            findings=findings,
            study_score=max((f.score for f in findings), default=None),
            details={
                "runtime": "onnx",
                "model": spec.model,
                "model_sha256": manifest.files[spec.model],
                "session_ms": round(load_ms, 2),
                "images": len(ctx.images),
                "frames": frame_count,
                "ms_per_image": timings,
                "ms_total": round((time.perf_counter() - started) * 1000.0, 2),
            },
        )

    def _image_findings(
        self,
        ctx: RunContext,
        session: ort.InferenceSession,
        signature: _Signature,
        spec: OnnxRuntimeSpec,
        image: InputImage,
        frames: list[Frame],
    ) -> list[_ImageFinding]:
        """Pre-process, infer and post-process the chosen frames of one image."""
        pre, post = spec.preprocess, spec.postprocess
        prepared = [
            prepare(
                to_unit_range(frame, pre.window, pre.invert_monochrome1),
                pre,
                laterality=_laterality(image, frame),
            )
            for frame in frames
        ]
        scores, heatmaps = self._infer(ctx, session, signature, spec, image, prepared)
        best = tuple(int(i) for i in np.unravel_index(int(np.argmax(scores)), scores.shape))
        result: list[_ImageFinding] = []
        for n, (_, geometry) in enumerate(prepared):
            for k in range(len(spec.classes)):
                heatmap = None if heatmaps is None else heatmaps[n, k]
                items = _class_findings(float(scores[n, k]), heatmap, geometry, post)
                for i, (score, box) in enumerate(items):
                    png = None
                    if heatmap is not None and i == 0 and (n, k) == best:
                        png = _heatmap_png(heatmap, geometry)
                    binned = binned_score(score, post.score_bins)
                    result.append(_ImageFinding(k, binned, box, frames[n].number, png))
        return result

    def _infer(
        self,
        ctx: RunContext,
        session: ort.InferenceSession,
        signature: _Signature,
        spec: OnnxRuntimeSpec,
        image: InputImage,
        prepared: list[tuple[np.ndarray, Geometry]],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the model in batches; return activated scores (N, C) and heatmaps (N, C, h, w)."""
        post = spec.postprocess
        size = signature.batch or MAX_BATCH
        scores_parts: list[np.ndarray] = []
        heatmap_parts: list[np.ndarray] = []
        for start in range(0, len(prepared), size):
            if start:
                _check_deadline(ctx)
                ctx.heartbeat()
            batch = np.stack([tensor for tensor, _ in prepared[start : start + size]])
            count = batch.shape[0]
            if signature.batch and count < signature.batch:  # a fixed batch size: pad
                padding = np.zeros((signature.batch - count, *batch.shape[1:]), dtype=np.float32)
                batch = np.concatenate([batch, padding])
            try:
                outputs = session.run(signature.output_names, {signature.input_name: batch})
            except Exception as exc:  # ONNX Runtime raises its own exception types
                raise PermanentRuntimeError(
                    f"the model failed on image {image.sop_instance_uid}: {exc}"
                ) from exc
            scores_parts.append(_scores(np.asarray(outputs[0])[:count], post, len(spec.classes)))
            if post.heatmap_output:
                heat = np.asarray(outputs[1])[:count]
                heatmap_parts.append(_heatmaps(heat, post, len(spec.classes)))
        scores = np.concatenate(scores_parts)
        if not np.all(np.isfinite(scores)):
            raise PermanentRuntimeError(
                f"the model gave non-finite scores for image {image.sop_instance_uid}"
            )
        return scores, np.concatenate(heatmap_parts) if heatmap_parts else None


def binned_score(score: float, bins: list[float] | None) -> float:
    """`score` itself, or with `bins` (ascending) the integer 1 + how many bins it reaches.

    Screening AI reports a score 1–10 whose bins each hold ~10 % of normal exams; the
    bins are part of the locked package, calibrated when the model was made.
    """
    if not bins:
        return score
    return float(1 + sum(1 for edge in bins if score >= edge))


def _scores(raw: np.ndarray, post: OnnxPostprocess, classes: int) -> np.ndarray:
    count = raw.shape[0] if raw.ndim else 0
    if raw.ndim < 2 or raw.size != count * classes:
        raise PermanentRuntimeError(
            f"the model's output {post.scores_output!r} has shape {list(raw.shape)}; "
            f"expected [N, {classes}] (one score per class)"
        )
    return _activate(raw.reshape(count, classes), post.activation)


def _heatmaps(raw: np.ndarray, post: OnnxPostprocess, classes: int) -> np.ndarray:
    if raw.ndim != 4 or raw.shape[1] != classes or min(raw.shape[2:]) < 1:
        raise PermanentRuntimeError(
            f"the model's output {post.heatmap_output!r} has shape {list(raw.shape)}; "
            f"expected [N, {classes}, h, w] (one heatmap per class)"
        )
    if post.heatmap_activation == "sigmoid":
        return np.asarray(expit(raw), dtype=np.float32)
    return raw.astype(np.float32, copy=False)


def _laterality(image: InputImage, frame: Frame) -> str:
    """The image's laterality: from the matcher's facts, else the header."""
    value = image.facts.get("laterality") or frame.dataset.get("ImageLaterality")
    return str(value or frame.dataset.get("Laterality") or "")


def _check_deadline(ctx: RunContext) -> None:
    if time.monotonic() > ctx.deadline:
        raise TransientRuntimeError("the run passed its deadline")
