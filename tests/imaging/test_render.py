"""Rendering DICOM pixel data for display, and frames as stored: pure functions."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dicom_builders import image, rgb_image
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame

from lods.imaging import render as rnd

RAMP = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (10, 1))  # 10 x 100, values 0..990


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def read_testdata(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return pydicom.dcmread(path)


# --- the grayscale pipeline ----------------------------------------------------------------------


def test_window_maps_center_to_mid_gray_and_clips_outside():
    ds = image(pixels=RAMP)
    out = rnd.display_array(ds, window=rnd.Window(500, 200))
    row = out[0]
    assert row[0] == 0 and row[-1] == 255  # 0 and 990 lie outside 400..600
    assert abs(int(row[50]) - 128) <= 2  # 500 is the centre
    assert np.all(np.diff(row.astype(int)) >= 0)  # monotonic


def test_rescale_applies_before_the_window():
    # Stored 0..990 become -1000..-10 HU; a window centred at -500 shows the middle grey.
    ds = image(pixels=RAMP, RescaleSlope=1, RescaleIntercept=-1000)
    out = rnd.display_array(ds, window=rnd.Window(-500, 100))
    assert abs(int(out[0, 50]) - 128) <= 3
    assert out[0, 0] == 0 and out[0, -1] == 255


def test_stored_window_is_used_when_none_is_asked_for():
    ds = image(pixels=RAMP, WindowCenter=[100, 500], WindowWidth=[50, 200])
    out = rnd.display_array(ds)
    assert abs(int(out[0, 10]) - 128) <= 3  # value 100 at the first stored centre
    assert out[0, 50] == 255


def test_min_max_is_used_without_any_window():
    ds = image(pixels=RAMP + 2000)
    out = rnd.display_array(ds)
    assert out.min() == 0 and out.max() == 255


def test_monochrome1_is_inverted_for_display():
    normal = rnd.display_array(image(pixels=RAMP))
    inverted = rnd.display_array(image(pixels=RAMP, photometric="MONOCHROME1"))
    assert np.array_equal(inverted, 255 - normal)


def test_sigmoid_window_is_monotonic_and_centred():
    values = np.linspace(0, 1000, 101)
    out = rnd.apply_window(values, rnd.Window(500, 200, "sigmoid"))
    assert np.all(np.diff(out.astype(int)) >= 0)
    assert abs(int(out[50]) - 128) <= 1


def test_rgb_passes_through_unchanged():
    out = rnd.display_array(rgb_image())
    assert out.shape == (20, 30, 3)
    assert tuple(out[5, 2]) == (255, 0, 0) and tuple(out[5, 25]) == (0, 0, 255)


def test_frame_selection_renders_the_frame_asked_for():
    frames = np.stack([np.full((8, 8), v, dtype=np.uint16) for v in (100, 900)])
    ds = image(pixels=frames)
    window = rnd.Window(500, 800)
    assert rnd.display_array(ds, frame=0, window=window).mean() < 64
    assert rnd.display_array(ds, frame=1, window=window).mean() > 192
    with pytest.raises(rnd.NoSuchFrame):
        rnd.display_array(ds, frame=2)


def test_instance_without_pixel_data_cannot_be_rendered():
    ds = image()
    del ds.PixelData
    with pytest.raises(rnd.RenderError):
        rnd.render(ds)


# --- size and encoding ---------------------------------------------------------------------------


def test_viewport_keeps_the_aspect_ratio():
    ds = image(pixels=np.zeros((100, 200), dtype=np.uint16))
    png = decoded(rnd.render(ds, viewport=rnd.Viewport(50, 50), media_type=rnd.PNG))
    assert png.format == "PNG" and png.size == (50, 25)


def test_viewport_crop_selects_a_region():
    pixels = np.zeros((10, 20), dtype=np.uint16)
    pixels[:, 10:] = 1000
    ds = image(pixels=pixels)
    out = rnd.render(ds, viewport=rnd.Viewport(10, 10, (10, 0, 10, 10)), media_type=rnd.PNG)
    assert np.asarray(decoded(out)).min() == 255  # only the bright right half is left


def test_jpeg_quality_changes_the_encoding():
    rng = np.random.default_rng(1)
    ds = image(pixels=rng.integers(0, 4096, (64, 64), dtype=np.uint16))
    low = rnd.render(ds, media_type=rnd.JPEG, quality=10)
    high = rnd.render(ds, media_type=rnd.JPEG, quality=95)
    assert low[:2] == high[:2] == b"\xff\xd8"
    assert len(low) < len(high)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, rnd.JPEG),
        ("image/png", rnd.PNG),
        ("image/jpeg;q=0.5, image/png", rnd.PNG),
        ("image/*", rnd.JPEG),
        ("image/gif, */*;q=0.1", rnd.JPEG),
        ("image/gif", None),
    ],
)
def test_rendered_type_follows_accept(accept, expected):
    assert rnd.choose_rendered_type(accept) == expected


@pytest.mark.parametrize(
    "value", ["40", "a,b", "40,0", "40,400,cubic", "40,400,linear,1", "nan,400"]
)
def test_bad_window_parameter_is_refused(value):
    with pytest.raises(ValueError):
        rnd.parse_window(value)


def test_window_parameter_parses_function():
    assert rnd.parse_window("40,400,linear-exact") == rnd.Window(40, 400, "linear_exact")


@pytest.mark.parametrize("value", ["100", "0,100", "100,x", "1,2,3", "100,100,0,0,0,10"])
def test_bad_viewport_parameter_is_refused(value):
    with pytest.raises(ValueError):
        rnd.parse_viewport(value)


@pytest.mark.parametrize("value", ["0", "101", "high"])
def test_bad_quality_parameter_is_refused(value):
    with pytest.raises(ValueError):
        rnd.parse_quality(value)


# --- frames as stored ----------------------------------------------------------------------------


def test_native_frames_are_sliced_from_the_pixel_data():
    frames = np.stack([np.full((4, 5), v, dtype=np.uint16) for v in (1, 2, 3)])
    ds = image(pixels=frames)
    assert rnd.stored_frame(ds, 1) == frames[1].tobytes()
    with pytest.raises(rnd.NoSuchFrame):
        rnd.stored_frame(ds, 3)


def test_big_endian_frames_come_back_little_endian():
    little = read_testdata("MR_small.dcm")
    big = read_testdata("MR_small_bigendian.dcm")
    assert rnd.stored_frame(big, 0) == rnd.stored_frame(little, 0) == little.PixelData


def test_encapsulated_frames_are_returned_as_compressed():
    ds = read_testdata("SC_rgb_rle_2frame.dcm")
    second = rnd.stored_frame(ds, 1)
    assert second == get_frame(ds.PixelData, 1, number_of_frames=2)
    assert rnd.is_encapsulated(ds)


def test_encapsulated_frames_decode_to_native_bytes():
    ds = read_testdata("JPEG2000.dcm")
    raw = rnd.decoded_frame(ds, 0)
    assert raw == ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()


def test_compressed_images_render():
    ds = read_testdata("JPEG2000.dcm")
    png = decoded(rnd.render(ds, media_type=rnd.PNG, viewport=rnd.Viewport(128, 128)))
    assert max(png.size) == 128
