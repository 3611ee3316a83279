"""Secondary Capture images with the findings' boxes burned in, for PACS viewers that
cannot show an SR: a pure builder, a source image and boxes in, a data set out.

Why Secondary Capture and not a Grayscale Softcopy Presentation State: the viewers this
is for are the ones that ignore SR, and most of those ignore GSPS graphics too (or show
them only when the user picks the presentation state). A Secondary Capture is an image
every viewer shows next to the originals, in the same study, with nothing to switch on.
The cost is that the boxes are pixels, not objects: the SR stays the machine-readable
result, and this image says so (Burned In Annotation YES, Image Type DERIVED\\SECONDARY,
the original named in Source Image Sequence).

The image is the source frame rendered as a viewer would (Modality LUT, the stored
window, MONOCHROME1 inverted), converted to RGB, the boxes drawn in colour — solid for a
confirmed or sure finding, dashed for a doubtful one — each with its label, and a caption
bar across the top saying whose result it is ("verified by …" or "AI suggestion — not
verified"). Coordinates are (column, row) pixels of the source image, so the capture has
the source's size and its boxes sit exactly where the SR's regions are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from lods.exports.results import DocumentIds
from lods.exports.sr import MANUFACTURER
from lods.imaging.render import display_array, number_of_frames
from lods.solutions.runtimes.base import Box

#: Colours (RGB) of the boxes: confirmed by a clinician, AI sure, AI doubtful.
CONFIRMED = (64, 220, 96)
AI_SURE = (255, 170, 0)
AI_DOUBTFUL = (255, 230, 64)
_CAPTION_BACKGROUND = (0, 0, 0)
_CAPTION_TEXT = (255, 255, 255)


@dataclass(frozen=True)
class Overlay:
    """One box to burn in, with its label, colour and line style."""

    box: Box
    label: str
    colour: tuple[int, int, int] = CONFIRMED
    dashed: bool = False


def _rgb(source: Dataset, frame_index: int) -> np.ndarray:
    pixels = display_array(source, frame=frame_index)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3], dtype=np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _dashed_line(
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    end: tuple[float, float],
    *,
    colour: tuple[int, int, int],
    width: int,
    dash: float,
) -> None:
    (x0, y0), (x1, y1) = start, end
    length = float(np.hypot(x1 - x0, y1 - y0))
    if length == 0:
        return
    steps = max(1, int(length // dash))
    for i in range(0, steps, 2):
        a, b = i / steps, min(1.0, (i + 1) / steps)
        draw.line(
            [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
            fill=colour,
            width=width,
        )


def _draw_box(draw: ImageDraw.ImageDraw, overlay: Overlay, *, width: int) -> None:
    box = overlay.box
    corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
    if not overlay.dashed:
        draw.line([*corners, corners[0]], fill=overlay.colour, width=width, joint="curve")
        return
    for start, end in zip(corners, [*corners[1:], corners[0]], strict=True):
        _dashed_line(draw, start, end, colour=overlay.colour, width=width, dash=4.0 * width)


def _label(
    draw: ImageDraw.ImageDraw,
    overlay: Overlay,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    *,
    top: int,
    size: tuple[int, int],
) -> None:
    if not overlay.label:
        return
    left, upper, right, lower = draw.textbbox((0, 0), overlay.label, font=font)
    width, height = right - left, lower - upper
    x = min(max(0.0, overlay.box.x0), max(0.0, size[0] - width - 2))
    y = overlay.box.y0 - height - 4
    if y < top:
        y = min(overlay.box.y1 + 2, size[1] - height - 2)
    draw.rectangle([x, y, x + width + 2, y + height + 2], fill=(0, 0, 0))
    draw.text((x + 1 - left, y + 1 - upper), overlay.label, fill=overlay.colour, font=font)


def burn_in(pixels: np.ndarray, overlays: Sequence[Overlay], caption: str) -> np.ndarray:
    """Return a copy of the RGB `pixels` with the boxes, labels and a caption bar drawn."""
    image = Image.fromarray(pixels, mode="RGB")
    rows, columns = pixels.shape[:2]
    short = min(rows, columns)
    font = _font(max(10, short // 40))
    width = max(1, short // 300)
    draw = ImageDraw.Draw(image)
    top = 0
    if caption:
        left, upper, _right, lower = draw.textbbox((0, 0), caption, font=font)
        top = int(lower - upper) + 6
        draw.rectangle([0, 0, columns, top], fill=_CAPTION_BACKGROUND)
        draw.text((3 - left, 3 - upper), caption, fill=_CAPTION_TEXT, font=font)
    for overlay in overlays:
        _draw_box(draw, overlay, width=width)
    for overlay in overlays:
        _label(draw, overlay, font, top=top, size=(columns, rows))
    return np.asarray(image, dtype=np.uint8)


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    pair = (str(value[0]), str(value[1]))
    try:
        hd.PatientOrientationValuesBiped(pair[0][:1])
        hd.PatientOrientationValuesBiped(pair[1][:1])
    except ValueError:
        return None
    return pair


def _copy_laterality(source: Dataset, sc: Dataset) -> None:
    """Series Laterality is type 2C for a paired body part (PS3.3 C.7.3.1): the source's
    image or series laterality when it is left or right, else present and empty."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            sc.Laterality = value
            return
    sc.Laterality = None


def build_overlay_sc(
    source: Dataset,
    overlays: Sequence[Overlay],
    *,
    ids: DocumentIds,
    caption: str,
    frame: int | None = None,
    description: str = "Boxes of AI findings burned in by Lods",
) -> Dataset:
    """Return a Secondary Capture of frame `frame` (1-based; None: the first) of `source`
    with `overlays` and `caption` burned in."""
    index = (frame or 1) - 1
    if not 0 <= index < number_of_frames(source):
        raise ValueError(f"the image has no frame {frame}")
    rows, columns = int(source.Rows), int(source.Columns)
    for overlay in overlays:
        box = overlay.box
        if not (0 <= box.x0 <= box.x1 <= columns and 0 <= box.y0 <= box.y1 <= rows):
            raise ValueError(f"box {box.as_list()} is outside the {columns}×{rows} image")
    pixels = burn_in(_rgb(source, index), overlays, caption)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        # highdicom insists on an orientation; an unknown one is written empty below.
        patient_orientation=orientation or ("A", "F"),
        series_instance_uid=ids.series_uid,
        series_number=ids.series_number,
        sop_instance_uid=ids.sop_instance_uid,
        instance_number=ids.instance_number,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if orientation is None:
        sc.PatientOrientation = []  # type 2: present, empty
    _copy_laterality(source, sc)
    now = datetime.now(UTC)
    sc.DateOfSecondaryCapture = DA(now.date())
    sc.TimeOfSecondaryCapture = TM(now.time())
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = description[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if number_of_frames(source) > 1:
        reference.ReferencedFrameNumber = index + 1
    purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [reference]
    sc.ImageComments = caption[:10240]
    sc.SeriesDescription = (ids.series_description or "AI findings (burned in)")[:64]
    return sc
