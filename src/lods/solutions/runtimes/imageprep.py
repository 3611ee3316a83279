"""Image pre- and post-processing for model runtimes: DICOM frames in, tensors and boxes out.

Pure functions over numpy arrays (plus pydicom to read the file), shared by the `onnx`
runtime and the vendor-appliance simulator:

* `load_frames` reads the chosen frames of a Part-10 file as float32 modality values;
* `to_unit_range` windows a frame to 0..1 (bright = dense when asked);
* `prepare` turns that into the model's (C, H, W) input and a `Geometry`;
* `heatmap_boxes` finds boxes in a model heatmap, and `Geometry` maps them (and the
  heatmap itself) back onto the stored image.

Coordinates are continuous: pixel column c covers x in [c, c + 1), row r covers y in
[r, r + 1); a box (x0, y0, x1, y1) spans from its first cell's edge to its last cell's far edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array
from scipy import ndimage

from lods.imaging.render import modality_values, stored_window
from lods.solutions.manifest import OnnxPreprocess, Window
from lods.solutions.runtimes.base import Box, PermanentRuntimeError

FrameChoice = Literal["first", "middle", "all"]
WindowChoice = Literal["header", "minmax"] | Window

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: ITU-R BT.601 luma weights, as DICOM uses for YBR_FULL.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Frame:
    """One frame of a stored image: float32 modality values and the header it came with."""

    #: 1-based frame number within the instance.
    number: int
    #: 2-D float32 values after the Modality LUT (or rescale slope and intercept);
    #: colour images are reduced to luminance.
    pixels: np.ndarray
    #: The instance's header (pixel data removed); shared by all frames of the instance.
    dataset: Dataset
    #: Photometric Interpretation as stored (e.g. MONOCHROME1, MONOCHROME2, RGB).
    photometric: str


# --- reading --------------------------------------------------------------------------------


def _frame_count(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _chosen_indices(count: int, frames: FrameChoice) -> list[int]:
    if frames == "first":
        return [0]
    if frames == "middle":
        return [count // 2]
    return list(range(count))


def _grey(ds: Dataset, arr: np.ndarray, index: int, photometric: str) -> np.ndarray:
    """One decoded frame as 2-D float32: modality values, or luminance for colour."""
    if photometric == "PALETTE COLOR":
        arr = np.asarray(apply_color_lut(arr, ds))
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.float32)
        return np.asarray(rgb @ _LUMA, dtype=np.float32)
    return modality_values(ds, arr, index).astype(np.float32)


def load_frames(path: Path, frames: FrameChoice) -> list[Frame]:
    """Read the chosen frames of the Part-10 file at `path` (first, middle or all)."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PermanentRuntimeError(f"{path.name} is not a readable DICOM file: {exc}") from exc
    return frames_of(ds, frames, name=path.name)


def frames_of(ds: Dataset, frames: FrameChoice, *, name: str = "the image") -> list[Frame]:
    """The chosen frames of a data set in memory (training uses exactly what serving does).

    The pixel data element is removed from `ds` once decoded (the frames keep the header).
    """
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise PermanentRuntimeError(f"{name} has no pixel data")
    count = _frame_count(ds)
    indices = _chosen_indices(count, frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if frames == "all":
            decoded = np.asarray(pixel_array(ds))
            chosen = list(zip(indices, decoded if count > 1 else decoded[np.newaxis], strict=True))
        else:
            index = indices[0]
            decoded = np.asarray(pixel_array(ds, index=index) if count > 1 else pixel_array(ds))
            chosen = [(index, decoded)]
    except Exception as exc:  # decoders raise many types; the caller needs one
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise PermanentRuntimeError(
            f"the pixel data of {name} cannot be decoded (transfer syntax {syntax}): {exc}"
        ) from exc
    del ds[keyword]
    result: list[Frame] = []
    for index, arr in chosen:
        pixels = _grey(ds, arr, index, photometric)
        if pixels.ndim != 2 or pixels.size == 0:
            raise PermanentRuntimeError(
                f"frame {index + 1} of {name} has an unusable shape {list(pixels.shape)}"
            )
        result.append(Frame(number=index + 1, pixels=pixels, dataset=ds, photometric=photometric))
    return result


# --- windowing ------------------------------------------------------------------------------


def header_window(frame: Frame) -> Window | None:
    """The frame's first stored VOI window (instance level, else its functional group)."""
    stored = stored_window(frame.dataset, frame.number - 1)
    if stored is None:
        return None
    return Window(center=stored.center, width=stored.width)


def _min_max(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def to_unit_range(frame: Frame, window: WindowChoice, invert_monochrome1: bool) -> np.ndarray:
    """The frame's values mapped to 0..1 float32.

    `window` is "header" (the first stored VOI window, min–max when there is none),
    "minmax" (the frame's value range) or a fixed `Window`; the window is linear:
    center - width/2 maps to 0, center + width/2 to 1. With `invert_monochrome1`, a
    MONOCHROME1 frame is inverted afterwards so that bright means dense.
    """
    values = frame.pixels.astype(np.float32, copy=False)
    chosen = header_window(frame) if window == "header" else window
    if isinstance(chosen, Window):
        low = chosen.center - chosen.width / 2.0
        out = (values - np.float32(low)) / np.float32(chosen.width)
    else:
        out = _min_max(values)
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)
    if invert_monochrome1 and frame.photometric == "MONOCHROME1":
        out = np.float32(1.0) - out
    return out


# --- geometry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How a stored image was placed into the model input, to map results back.

    The image (`image_shape` rows × columns) was mirrored left–right when `flipped`,
    scaled by (`scale_y`, `scale_x`) and placed at (`offset_y`, `offset_x`) in an input of
    `input_shape`; the rest of the input is padding.
    """

    image_shape: tuple[int, int]
    input_shape: tuple[int, int]
    scale_y: float
    scale_x: float
    offset_y: int
    offset_x: int
    flipped: bool

    def _content(self) -> tuple[float, float, float, float]:
        """The image's area in model-input coordinates: (x0, y0, x1, y1)."""
        rows, cols = self.image_shape
        x0, y0 = float(self.offset_x), float(self.offset_y)
        return x0, y0, x0 + cols * self.scale_x, y0 + rows * self.scale_y

    def to_image(self, box: Box, grid_shape: tuple[int, int]) -> Box:
        """Map `box`, in a grid of `grid_shape` (h, w) covering the model input, to image pixels.

        Undoes the grid's resolution, letterbox padding, scaling and mirroring; the result
        is clipped to the image (it may be empty when the box lies in the padding).
        """
        grid_h, grid_w = grid_shape
        in_h, in_w = self.input_shape
        rows, cols = self.image_shape
        fx, fy = in_w / grid_w, in_h / grid_h
        x0 = (box.x0 * fx - self.offset_x) / self.scale_x
        x1 = (box.x1 * fx - self.offset_x) / self.scale_x
        y0 = (box.y0 * fy - self.offset_y) / self.scale_y
        y1 = (box.y1 * fy - self.offset_y) / self.scale_y
        if self.flipped:
            x0, x1 = cols - x1, cols - x0
        x0, x1 = sorted((min(max(x0, 0.0), cols), min(max(x1, 0.0), cols)))
        y0, y1 = sorted((min(max(y0, 0.0), rows), min(max(y1, 0.0), rows)))
        return Box(x0=x0, y0=y0, x1=x1, y1=y1)

    def map_to_image(self, grid: np.ndarray, *, max_side: int | None = None) -> np.ndarray:
        """Resample a 2-D `grid` covering the model input onto the image, float32.

        The result has the image's shape, or is scaled down (aspect kept) so that its
        longer side is at most `max_side`; padding is cut off and mirroring undone.
        """
        rows, cols = self.image_shape
        factor = 1.0 if max_side is None else min(1.0, max_side / max(rows, cols))
        out_h, out_w = max(1, round(rows * factor)), max(1, round(cols * factor))
        grid_h, grid_w = grid.shape
        in_h, in_w = self.input_shape
        x0, y0, x1, y1 = self._content()
        source = (x0 * grid_w / in_w, y0 * grid_h / in_h, x1 * grid_w / in_w, y1 * grid_h / in_h)
        picture = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32), mode="F")
        resized = picture.resize((out_w, out_h), Image.Resampling.BILINEAR, box=source)
        out = np.asarray(resized, dtype=np.float32)
        return np.ascontiguousarray(out[:, ::-1]) if self.flipped else out


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape == (height, width):
        return image
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def prepare(
    image01: np.ndarray, spec: OnnxPreprocess, *, laterality: str = ""
) -> tuple[np.ndarray, Geometry]:
    """The model input slice (C, H, W) float32 for a 0..1 image, and its `Geometry`.

    Right-side images are mirrored when `spec.flip_to_left`; the image is resized to
    `spec.resize` (letterboxed, centred, padded with 0 when `keep_aspect`, else
    stretched); then normalised as (x - mean) / std and repeated to `spec.channels`.
    """
    if image01.ndim != 2 or image01.size == 0:
        raise PermanentRuntimeError(f"expected a 2-D image, got shape {list(image01.shape)}")
    rows, cols = image01.shape
    target_h, target_w = spec.resize
    flipped = spec.flip_to_left and laterality.strip().upper() == "R"
    image = image01[:, ::-1] if flipped else image01
    if spec.keep_aspect:
        scale = min(target_h / rows, target_w / cols)
        new_h = min(target_h, max(1, round(rows * scale)))
        new_w = min(target_w, max(1, round(cols * scale)))
        offset_y, offset_x = (target_h - new_h) // 2, (target_w - new_w) // 2
        canvas = np.zeros((target_h, target_w), dtype=np.float32)
        canvas[offset_y : offset_y + new_h, offset_x : offset_x + new_w] = _resize(
            image, new_h, new_w
        )
    else:
        new_h, new_w, offset_y, offset_x = target_h, target_w, 0, 0
        canvas = _resize(image, target_h, target_w)
    norm = spec.normalise
    canvas = (canvas - np.float32(norm.mean)) / np.float32(norm.std)
    tensor = np.repeat(canvas[np.newaxis], spec.channels, axis=0).astype(np.float32)
    geometry = Geometry(
        image_shape=(rows, cols),
        input_shape=(target_h, target_w),
        scale_y=new_h / rows,
        scale_x=new_w / cols,
        offset_y=offset_y,
        offset_x=offset_x,
        flipped=flipped,
    )
    return tensor, geometry


# --- heatmaps -------------------------------------------------------------------------------


def heatmap_boxes(
    heatmap: np.ndarray, *, threshold: float, min_fraction: float, max_boxes: int
) -> list[tuple[Box, float]]:
    """Boxes around connected regions of `heatmap` at or above `threshold`, with their peak.

    Regions are 8-connected; a box covering less than `min_fraction` of the grid is
    dropped. Boxes are in grid coordinates, strongest peak first, at most `max_boxes`.
    """
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap is 2-D, got shape {list(heatmap.shape)}")
    if max_boxes <= 0 or heatmap.size == 0:
        return []
    values = np.nan_to_num(heatmap.astype(np.float32, copy=False), nan=-np.inf)
    labels, count = ndimage.label(values >= threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    peaks = ndimage.maximum(values, labels, index=np.arange(1, count + 1))
    found: list[tuple[Box, float]] = []
    for slices, peak in zip(ndimage.find_objects(labels), np.atleast_1d(peaks), strict=True):
        if slices is None:
            continue
        rows, cols = slices
        area = (rows.stop - rows.start) * (cols.stop - cols.start)
        if area < min_fraction * heatmap.size:
            continue
        box = Box(
            x0=float(cols.start), y0=float(rows.start), x1=float(cols.stop), y1=float(rows.stop)
        )
        found.append((box, float(peak)))
    found.sort(key=lambda item: item[1], reverse=True)
    return found[:max_boxes]
