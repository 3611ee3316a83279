"""Image pre- and post-processing: reading frames, windowing, letterbox geometry, heatmap boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from lods.solutions.manifest import Normalise, OnnxPreprocess, Window
from lods.solutions.runtimes.base import Box, PermanentRuntimeError
from lods.solutions.runtimes.imageprep import (
    Frame,
    Geometry,
    heatmap_boxes,
    load_frames,
    prepare,
    to_unit_range,
)


def _frame(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object) -> Frame:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return Frame(number=1, pixels=pixels.astype(np.float32), dataset=ds, photometric=photometric)


def _write(path: Path, pixels: np.ndarray, **attributes: object) -> Path:
    """Write a Part-10 file: (rows, cols) or (frames, rows, cols) grey, or (rows, cols, 3) RGB."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    if pixels.ndim == 3 and not colour:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    dtype = "u1" if colour else "<u2"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


# --- reading --------------------------------------------------------------------------------


def test_load_frames_applies_rescale_and_drops_pixel_data(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    path = _write(tmp_path / "a.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1024)
    (frame,) = load_frames(path, "first")
    assert frame.number == 1
    assert frame.pixels.dtype == np.float32
    np.testing.assert_allclose(frame.pixels, pixels * 2.0 - 1024.0)
    assert frame.photometric == "MONOCHROME2"
    assert "PixelData" not in frame.dataset
    assert frame.dataset.Rows == 3


def test_load_frames_chooses_first_middle_or_all(tmp_path: Path) -> None:
    stack = np.stack([np.full((4, 5), 10 * (i + 1), dtype=np.uint16) for i in range(5)])
    path = _write(tmp_path / "multi.dcm", stack)
    assert [f.number for f in load_frames(path, "first")] == [1]
    (middle,) = load_frames(path, "middle")
    assert middle.number == 3 and float(middle.pixels[0, 0]) == 30.0
    frames = load_frames(path, "all")
    assert [f.number for f in frames] == [1, 2, 3, 4, 5]
    assert [float(f.pixels.mean()) for f in frames] == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_compressed_pixel_data_is_decoded(tmp_path: Path) -> None:
    pixels = (np.arange(32 * 16, dtype=np.uint16).reshape(32, 16) * 7) % 4096
    path = _write(tmp_path / "plain.dcm", pixels)
    ds = dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    (frame,) = load_frames(tmp_path / "rle.dcm", "first")
    np.testing.assert_array_equal(frame.pixels, pixels.astype(np.float32))


def test_colour_images_become_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 2] = (255, 255, 255)
    (frame,) = load_frames(_write(tmp_path / "rgb.dcm", rgb), "first")
    assert frame.pixels.shape == (2, 3)
    assert frame.photometric == "RGB"
    assert frame.pixels[0, 0] == pytest.approx(0.299 * 255, rel=1e-4)
    assert frame.pixels[1, 2] == pytest.approx(255.0, rel=1e-4)


def test_unreadable_files_are_permanent_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all")
    with pytest.raises(PermanentRuntimeError, match=r"garbage\.dcm"):
        load_frames(garbage, "first")
    truncated = _write(tmp_path / "truncated.dcm", np.zeros((8, 8), dtype=np.uint16))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(PermanentRuntimeError, match="cannot be decoded"):
        load_frames(truncated, "first")
    no_pixels = tmp_path / "nopixels.dcm"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(no_pixels, enforce_file_format=True)
    with pytest.raises(PermanentRuntimeError, match="no pixel data"):
        load_frames(no_pixels, "first")


# --- windowing ------------------------------------------------------------------------------


def test_header_window_uses_the_first_stored_window() -> None:
    values = np.array([[0, 100, 200, 300]])
    frame = _frame(values, WindowCenter=[100, 999], WindowWidth=[200, 10])
    out = to_unit_range(frame, "header", invert_monochrome1=True)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0, 1.0]])


def test_header_without_window_falls_back_to_min_max() -> None:
    frame = _frame(np.array([[10, 20, 30]]))
    np.testing.assert_allclose(to_unit_range(frame, "header", False), [[0.0, 0.5, 1.0]])


def test_minmax_ignores_the_header_and_a_fixed_window_is_used_as_given() -> None:
    frame = _frame(np.array([[0, 50, 100]]), WindowCenter=0, WindowWidth=10)
    np.testing.assert_allclose(to_unit_range(frame, "minmax", False), [[0.0, 0.5, 1.0]])
    fixed = to_unit_range(frame, Window(center=50, width=50), False)
    np.testing.assert_allclose(fixed, [[0.0, 0.5, 1.0]])


def test_flat_images_map_to_zero() -> None:
    frame = _frame(np.full((3, 3), 7.0))
    assert not to_unit_range(frame, "minmax", False).any()


def test_monochrome1_is_inverted_only_when_asked() -> None:
    frame = _frame(np.array([[0, 25, 100]]), photometric="MONOCHROME1")
    np.testing.assert_allclose(to_unit_range(frame, "minmax", True), [[1.0, 0.75, 0.0]])
    np.testing.assert_allclose(to_unit_range(frame, "minmax", False), [[0.0, 0.25, 1.0]])
    grey = _frame(np.array([[0, 25, 100]]))
    np.testing.assert_allclose(to_unit_range(grey, "minmax", True), [[0.0, 0.25, 1.0]])


# --- prepare and geometry -------------------------------------------------------------------

_SQUARE = (10, 120, 40, 160)  # x0, y0, x1, y1 in a 200-row × 100-column image


def _image_with_square() -> np.ndarray:
    image = np.zeros((200, 100), dtype=np.float32)
    x0, y0, x1, y1 = _SQUARE
    image[y0:y1, x0:x1] = 1.0
    return image


def _bright_box(grid: np.ndarray, threshold: float = 0.5) -> Box:
    rows, cols = np.nonzero(grid >= threshold)
    return Box(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def _iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - w * h
    return w * h / union


def test_prepare_letterboxes_normalises_and_repeats_channels() -> None:
    spec = OnnxPreprocess(resize=(64, 64), normalise=Normalise(mean=0.5, std=0.25), channels=3)
    tensor, geometry = prepare(np.ones((200, 100), dtype=np.float32), spec)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    assert geometry.offset_x == 16 and geometry.offset_y == 0
    assert geometry.scale_x == pytest.approx(0.32) and geometry.scale_y == pytest.approx(0.32)
    # content (1.0) becomes 2.0, letterbox padding (0.0) becomes -2.0
    np.testing.assert_allclose(tensor[:, :, 16:48], 2.0)
    np.testing.assert_allclose(tensor[:, :, :16], -2.0)
    np.testing.assert_allclose(tensor[:, :, 48:], -2.0)
    assert np.array_equal(tensor[0], tensor[2])


def test_prepare_stretches_without_keep_aspect() -> None:
    spec = OnnxPreprocess(resize=(32, 64), keep_aspect=False)
    tensor, geometry = prepare(np.ones((200, 100), dtype=np.float32), spec)
    assert tensor.shape == (1, 32, 64)
    np.testing.assert_allclose(tensor, 1.0)
    assert (geometry.offset_x, geometry.offset_y) == (0, 0)
    assert geometry.scale_x == pytest.approx(0.64) and geometry.scale_y == pytest.approx(0.16)


@pytest.mark.parametrize(
    ("keep_aspect", "laterality", "flipped"),
    [(True, "L", False), (True, "R", True), (False, "R", True), (True, "", False)],
)
def test_a_box_in_model_space_maps_back_onto_the_right_pixels(
    keep_aspect: bool, laterality: str, flipped: bool
) -> None:
    spec = OnnxPreprocess(resize=(64, 64), keep_aspect=keep_aspect, flip_to_left=True)
    tensor, geometry = prepare(_image_with_square(), spec, laterality=laterality)
    assert geometry.flipped is flipped
    in_model = _bright_box(tensor[0])
    if flipped:  # the square sits on the other side in model space
        assert in_model.x0 > 64 - in_model.x1
    else:
        assert in_model.x0 < 64 - in_model.x1
    square = Box(*map(float, _SQUARE))
    assert _iou(geometry.to_image(in_model, (64, 64)), square) > 0.85
    # a coarser heatmap grid (16 × 16) over the same input maps back as well
    coarse = tensor[0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
    ((box, peak),) = heatmap_boxes(coarse, threshold=0.5, min_fraction=0.0, max_boxes=5)
    assert peak == pytest.approx(1.0)
    assert _iou(geometry.to_image(box, coarse.shape), square) > 0.6


def test_to_image_clips_to_the_image_and_undoes_the_letterbox_exactly() -> None:
    geometry = Geometry(
        image_shape=(200, 100),
        input_shape=(64, 64),
        scale_y=0.32,
        scale_x=0.32,
        offset_y=0,
        offset_x=16,
        flipped=False,
    )
    whole = geometry.to_image(Box(0, 0, 64, 64), (64, 64))
    assert whole == Box(0.0, 0.0, 100.0, 200.0)
    content = geometry.to_image(Box(4, 0, 12, 16), (16, 16))  # a 16-grid: 4 input pixels a cell
    assert content.as_list() == pytest.approx([0.0, 0.0, 100.0, 200.0])
    padding = geometry.to_image(Box(0, 0, 16, 64), (64, 64))
    assert padding.x1 - padding.x0 == 0.0
    mirrored = Geometry(**{**geometry.__dict__, "flipped": True})
    left_quarter = geometry.to_image(Box(16, 0, 24, 64), (64, 64))
    right_quarter = mirrored.to_image(Box(16, 0, 24, 64), (64, 64))
    assert left_quarter.as_list() == pytest.approx([0.0, 0.0, 25.0, 200.0])
    assert right_quarter.as_list() == pytest.approx([75.0, 0.0, 100.0, 200.0])


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_map_to_image_puts_a_heatmap_back_on_the_image(laterality: str) -> None:
    spec = OnnxPreprocess(resize=(64, 64), flip_to_left=True)
    tensor, geometry = prepare(_image_with_square(), spec, laterality=laterality)
    heatmap = tensor[0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
    on_image = geometry.map_to_image(heatmap)
    assert on_image.shape == (200, 100)
    assert _iou(_bright_box(on_image), Box(*map(float, _SQUARE))) > 0.7
    small = geometry.map_to_image(heatmap, max_side=50)
    assert small.shape == (50, 25)


# --- heatmap boxes --------------------------------------------------------------------------


def test_heatmap_boxes_finds_regions_strongest_first() -> None:
    heatmap = np.zeros((20, 20), dtype=np.float32)
    heatmap[2:6, 2:6] = 0.7  # 16 cells, peak 0.7
    heatmap[10:13, 12:15] = 0.6
    heatmap[11, 13] = 0.9  # 9 cells, peak 0.9
    heatmap[17, 17] = 0.8  # a single cell: too small below
    heatmap[15, 2] = heatmap[16, 3] = 0.5  # diagonal neighbours, exactly at the threshold
    found = heatmap_boxes(heatmap, threshold=0.5, min_fraction=2 / 400, max_boxes=10)
    assert [peak for _, peak in found] == pytest.approx([0.9, 0.7, 0.5])
    assert found[0][0] == Box(12.0, 10.0, 15.0, 13.0)
    assert found[1][0] == Box(2.0, 2.0, 6.0, 6.0)
    assert found[2][0] == Box(2.0, 15.0, 4.0, 17.0)
    everything = heatmap_boxes(heatmap, threshold=0.5, min_fraction=0.0, max_boxes=10)
    assert len(everything) == 4 and everything[1][1] == pytest.approx(0.8)
    assert len(heatmap_boxes(heatmap, threshold=0.5, min_fraction=0.0, max_boxes=2)) == 2
    assert heatmap_boxes(heatmap, threshold=0.5, min_fraction=0.0, max_boxes=0) == []
    assert heatmap_boxes(heatmap, threshold=0.95, min_fraction=0.0, max_boxes=5) == []
