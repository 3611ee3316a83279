"""Turn stored DICOM pixel data into display images and frame payloads; pure functions.

Rendering follows the DICOM grayscale pipeline (PS3.3 C.11 and PS3.4 N.2): decode one
frame, apply the Modality LUT (rescale slope/intercept or a LUT), then a VOI window (the
one asked for, else the first stored window, else a VOI LUT, else the frame's min–max),
invert MONOCHROME1 for display, pass colour images through as RGB, fit the result into the
requested viewport keeping its aspect ratio, and encode PNG or JPEG (PS3.18 8.3.5).

The frame helpers give a frame's bytes as stored (native or one encapsulated frame), for
WADO-RS frame retrieval, without decoding compressed data.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pack_bits, pixel_array, unpack_bits
from pydicom.uid import UID

PNG = "image/png"
JPEG = "image/jpeg"
RENDERED_MEDIA_TYPES = (JPEG, PNG)
WindowFunction = Literal["linear", "linear_exact", "sigmoid"]
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MAX_VIEWPORT = 8192


class RenderError(ValueError):
    """The instance cannot be rendered as asked (no pixel data, undecodable data...)."""


class NoSuchFrame(RenderError):
    """The frame asked for does not exist in the instance."""


@dataclass(frozen=True)
class Window:
    """A VOI window: centre and width in modality units, and the VOI LUT function."""

    center: float
    width: float
    function: WindowFunction = "linear"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError("window center and width must be finite numbers")
        minimum = 1.0 if self.function == "linear" else 0.0
        if self.width < minimum or (self.function != "linear" and self.width <= 0):
            raise ValueError(f"window width must be {'>= 1' if minimum else '> 0'}")


@dataclass(frozen=True)
class Viewport:
    """Output size (fit inside, aspect kept) and an optional source crop (PS3.18 8.3.5.1.3)."""

    width: int
    height: int
    crop: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh; negative sw/sh flips

    def __post_init__(self) -> None:
        if not (0 < self.width <= _MAX_VIEWPORT and 0 < self.height <= _MAX_VIEWPORT):
            raise ValueError(f"viewport sizes must be between 1 and {_MAX_VIEWPORT}")


# --- parameters ----------------------------------------------------------------------------------


def parse_window(value: str) -> Window:
    """Return the window of a `window=center,width[,function]` parameter or raise ValueError."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window must be 'center,width' or 'center,width,function'")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError("window center and width must be numbers") from None
    function = (parts[2] if len(parts) == 3 else "linear").lower().replace("-", "_")
    if function not in ("linear", "linear_exact", "sigmoid"):
        raise ValueError("window function must be linear, linear-exact or sigmoid")
    return Window(center, width, function)  # type: ignore[arg-type]


def parse_viewport(value: str) -> Viewport:
    """Return the viewport of `viewport=vw,vh[,sx,sy,sw,sh]` or raise ValueError."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 6):
        raise ValueError("viewport must be 'vw,vh' or 'vw,vh,sx,sy,sw,sh'")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError("viewport values must be integers") from None
    crop = None
    if len(numbers) == 6:
        sx, sy, sw, sh = numbers[2:]
        if sx < 0 or sy < 0 or sw == 0 or sh == 0:
            raise ValueError("viewport source origin must be >= 0 and its size non-zero")
        crop = (sx, sy, sw, sh)
    return Viewport(numbers[0], numbers[1], crop)


def parse_quality(value: str) -> int:
    """Return a JPEG quality 1–100 from the `quality` parameter or raise ValueError."""
    try:
        quality = int(value)
    except ValueError:
        raise ValueError("quality must be an integer from 1 to 100") from None
    if not 1 <= quality <= 100:
        raise ValueError("quality must be an integer from 1 to 100")
    return quality


def choose_rendered_type(accept: str | None) -> str | None:
    """Return the image type to render for an Accept value (JPEG by default), or None.

    `accept` is the `accept` query parameter or the Accept header; media ranges are tried
    in order of their q-value, `image/*` and `*/*` meaning our default, JPEG.
    """
    if not accept or not accept.strip():
        return JPEG
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(raw)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.lower()))
    for _q, _pos, media in sorted(ranked):
        if media in RENDERED_MEDIA_TYPES:
            return media
        if media in ("image/*", "*/*"):
            return JPEG
    return None


# --- frames as stored ----------------------------------------------------------------------------


def pixel_keyword(ds: Dataset) -> str | None:
    """Return which pixel data element the data set holds, or None."""
    return next((k for k in _PIXEL_TAGS if k in ds), None)


def number_of_frames(ds: Dataset) -> int:
    """Return the number of frames of an image (1 when NumberOfFrames is absent or bad)."""
    try:
        value = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


def _check_frame(ds: Dataset, index: int) -> None:
    if pixel_keyword(ds) is None:
        raise RenderError("the instance has no pixel data")
    count = number_of_frames(ds)
    if not 0 <= index < count:
        raise NoSuchFrame(f"frame {index + 1} does not exist (the instance has {count})")


def is_encapsulated(ds: Dataset) -> bool:
    """Return True when the data set's pixel data is compressed (encapsulated)."""
    return bool(ds.file_meta.TransferSyntaxUID.is_encapsulated)


def stored_frame(ds: Dataset, index: int) -> bytes:
    """Return frame `index` (0-based) as stored: one encapsulated frame, or native bytes.

    Native frames come back little endian (big-endian data is byte-swapped), so they are
    valid in Explicit VR Little Endian as WADO-RS expects.
    """
    _check_frame(ds, index)
    data: bytes = ds[pixel_keyword(ds) or "PixelData"].value
    if is_encapsulated(ds):
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return get_frame(
            data, index, number_of_frames=number_of_frames(ds), extended_offsets=offsets
        )
    return _native_frame(ds, data, index)


def _native_frame(ds: Dataset, data: bytes, index: int) -> bytes:
    bits = int(ds.get("BitsAllocated", 8))
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    if bits == 1:
        start_bit = index * pixels
        if start_bit % 8 == 0 and pixels % 8 == 0:
            return bytes(data[start_bit // 8 : (start_bit + pixels) // 8])
        bits_array = np.asarray(unpack_bits(data))[start_bit : start_bit + pixels]
        return pack_bits(bits_array)
    length = pixels * bits // 8
    if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
        length = length * 2 // 3  # two chroma samples shared by each pair of pixels
    frame = bytes(data[index * length : (index + 1) * length])
    if len(frame) != length:
        raise RenderError(f"frame {index + 1} is truncated in the stored pixel data")
    if not ds.file_meta.TransferSyntaxUID.is_little_endian and bits in (16, 32, 64):
        frame = np.frombuffer(frame, dtype=f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
    return frame


def decoded_frame(ds: Dataset, index: int) -> bytes:
    """Return frame `index` decoded to native little-endian bytes (colour as RGB)."""
    _check_frame(ds, index)
    if not is_encapsulated(ds):
        return stored_frame(ds, index)
    arr = _decode(ds, index)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()


# --- rendering -----------------------------------------------------------------------------------


def _decode(ds: Dataset, index: int) -> np.ndarray:
    try:
        if number_of_frames(ds) > 1:
            return pixel_array(ds, index=index)
        return pixel_array(ds)
    except Exception as exc:  # decoders raise many types; the caller needs one
        raise RenderError(f"the pixel data cannot be decoded: {exc}") from exc


def _functional_group_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """Return the per-frame (else shared) functional group item `sequence`, or None."""
    for groups, item_index in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items and len(items) > item_index and items[item_index].get(sequence):
            item: Dataset = items[item_index].get(sequence)[0]
            return item
    return None


def modality_values(ds: Dataset, arr: np.ndarray, index: int = 0) -> np.ndarray:
    """Return stored values mapped to modality units (LUT or slope/intercept)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    source: Any = ds
    if "RescaleSlope" not in ds:
        source = _functional_group_item(ds, index, "PixelValueTransformationSequence") or ds
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    return arr.astype(np.float64) * slope + intercept


def _first(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def stored_window(ds: Dataset, index: int = 0) -> Window | None:
    """Return the first usable window stored in the data set (or its frame group), or None."""
    for source in (ds, _functional_group_item(ds, index, "FrameVOILUTSequence")):
        if source is None:
            continue
        center = _first(source.get("WindowCenter"))
        width = _first(source.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            function = str(source.get("VOILUTFunction", "LINEAR")).lower()
            func = function if function in ("linear_exact", "sigmoid") else "linear"
            return Window(center, width, func)  # type: ignore[arg-type]
    return None


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Return `values` mapped to 0–255 by the VOI LUT function of PS3.3 C.11.2.1.2."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "linear_exact":
        out = ((values - c) / w + 0.5) * 255.0
    else:
        out = (
            ((values - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
            if w > 1
            else (np.where(values > c - 0.5, 255.0, 0.0))
        )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grayscale_display(
    ds: Dataset, arr: np.ndarray, *, index: int = 0, window: Window | None = None
) -> np.ndarray:
    """Return an 8-bit display image of a grayscale frame (before MONOCHROME1 inversion)."""
    if window is None and ds.get("VOILUTSequence") and "WindowCenter" not in ds:
        voi = apply_voi_lut(np.asarray(arr), ds, index=0, prefer_lut=True)
        return _min_max(np.asarray(voi, dtype=np.float64))
    values = modality_values(ds, arr, index)
    window = window or stored_window(ds, index)
    return apply_window(values, window) if window is not None else _min_max(values)


def _colour_display(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    maximum = float(arr.max()) if arr.size else 0.0
    bits = max(8, math.ceil(math.log2(maximum + 1))) if maximum > 0 else 8
    return (arr.astype(np.float64) / (2**bits - 1) * 255.0).round().astype(np.uint8)


def display_array(
    ds: Dataset, *, frame: int = 0, window: Window | None = None, invert: bool = False
) -> np.ndarray:
    """Return frame `frame` (0-based) as an 8-bit (H, W) grayscale or (H, W, 3) RGB array."""
    _check_frame(ds, frame)
    arr = _decode(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        out = _colour_display(arr[..., :3])
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        out = _colour_display(np.asarray(apply_color_lut(arr, ds)))
    else:
        out = grayscale_display(ds, arr.reshape(arr.shape[:2]), index=frame, window=window)
        if photometric == "MONOCHROME1":
            invert = not invert
    return 255 - out if invert else out


def fit_to_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Return `image` cropped as the viewport asks and scaled to fit it, aspect kept."""
    if viewport is None:
        return image
    if viewport.crop is not None:
        sx, sy, sw, sh = viewport.crop
        box = (min(sx, sx + sw), min(sy, sy + sh), max(sx, sx + sw), max(sy, sy + sh))
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_image(image: Image.Image, media_type: str, *, quality: int = 90) -> bytes:
    """Return `image` encoded as PNG or JPEG."""
    buffer = io.BytesIO()
    if media_type == PNG:
        image.save(buffer, format="PNG", compress_level=3)
    elif media_type == JPEG:
        image.save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"cannot encode {media_type!r}; use {PNG} or {JPEG}")
    return buffer.getvalue()


def render(
    ds: Dataset,
    *,
    frame: int = 0,
    window: Window | None = None,
    viewport: Viewport | None = None,
    media_type: str = JPEG,
    quality: int = 90,
    invert: bool = False,
) -> bytes:
    """Return frame `frame` (0-based) of `ds` rendered for display as PNG or JPEG bytes."""
    arr = display_array(ds, frame=frame, window=window, invert=invert)
    image = Image.fromarray(np.ascontiguousarray(arr))
    return encode_image(fit_to_viewport(image, viewport), media_type, quality=quality)


def transfer_syntax(ds: Dataset) -> UID:
    """Return the transfer syntax the data set was stored in."""
    return UID(ds.file_meta.TransferSyntaxUID)
