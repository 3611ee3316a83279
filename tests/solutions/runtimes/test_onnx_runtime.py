"""The `onnx` runtime end to end: toy models, small 12-bit DICOM files, findings and boxes."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from lods.solutions.manifest import Manifest, manifest_from_dict
from lods.solutions.runtimes import get_runtime
from lods.solutions.runtimes.base import (
    Box,
    InputImage,
    PermanentRuntimeError,
    RunContext,
    RunResult,
    TransientRuntimeError,
)
from lods.solutions.runtimes.onnx import OnnxRuntime, cached_session
from lods.solutions.toymodels import bright_spot_model, constant_model

ROWS, COLS = 192, 256
#: The bright square: x0, y0, x1, y1 in pixels of the stored image.
SQUARE = (150, 60, 206, 116)
DARK, BRIGHT = 300, 3600


def _pixels(*, bright: bool = True) -> np.ndarray:
    pixels = np.full((ROWS, COLS), DARK, dtype=np.uint16)
    pixels[40:150, 20:120] = 1200  # soft tissue: below the model's threshold
    if bright:
        x0, y0, x1, y1 = SQUARE
        pixels[y0:y1, x0:x1] = BRIGHT
    return pixels


def _write_image(
    path: Path,
    pixels: np.ndarray,
    *,
    monochrome1: bool = False,
    laterality: str = "L",
) -> InputImage:
    """Write a 12-bit DX image (or multi-frame when `pixels` is 3-D) and describe it."""
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.ImageLaterality = laterality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = (4095 - 2048 if monochrome1 else 2048), 4096
    stored = 4095 - pixels if monochrome1 else pixels
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return InputImage(
        sop_instance_uid=ds.SOPInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        path=path,
        number_of_frames=pixels.shape[0] if pixels.ndim == 3 else 1,
        facts={"laterality": laterality},
    )


def _manifest(
    package: Path,
    model: str = "model.onnx",
    classes: tuple[str, ...] = ("bright_spot",),
    **runtime: Any,
) -> Manifest:
    digest = hashlib.sha256((package / model).read_bytes()).hexdigest()
    preprocess = {"resize": [64, 64], **runtime.pop("preprocess", {})}
    postprocess = {
        "scores_output": "scores",
        "heatmap_output": "heatmap",
        "heatmap_threshold": 0.5,
        "min_box_fraction": 0.001,
        **runtime.pop("postprocess", {}),
    }
    return manifest_from_dict(
        {
            "id": "toy.bright-spot",
            "name": "Bright spot",
            "version": "1.0",
            "vendor": "Lods tests",
            "regulatory": {"status": "demonstration"},
            "intended_use": {
                "summary": "Finds bright spots in synthetic radiographs.",
                "input_kind": "dicom-study",
                "modalities": ["DX"],
            },
            "runtime": {
                "kind": "onnx",
                "model": model,
                "classes": list(classes),
                "preprocess": preprocess,
                "postprocess": postprocess,
                **runtime,
            },
            "outputs": {
                "findings": [
                    {
                        "key": "bright_spot",
                        "code": {"scheme": "99LODS", "value": "BS1", "meaning": "Bright spot"},
                        "label": "Bright spot",
                    },
                    {
                        "key": "other",
                        "code": {"scheme": "99LODS", "value": "BS2", "meaning": "Other"},
                        "label": "Other",
                    },
                ],
                "operating_points": {"sure": 0.8, "doubtful": 0.5},
            },
            "data_egress": {"kind": "none"},
            "files": {model: digest},
        }
    )


@pytest.fixture
def package(tmp_path: Path) -> Path:
    folder = tmp_path / "package"
    bright_spot_model(folder / "model.onnx")
    return folder


def _context(
    package: Path, manifest: Manifest, images: list[InputImage], **overrides: Any
) -> RunContext:
    values: dict[str, Any] = {
        "job_id": 1,
        "package_dir": package,
        "manifest": manifest,
        "study_uid": "1.2.3",
        "images": images,
        "deadline": time.monotonic() + 60.0,
    }
    values.update(overrides)
    return RunContext(**values)


def _iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - w * h
    return w * h / union


SQUARE_BOX = Box(*map(float, SQUARE))


@pytest.mark.parametrize("monochrome1", [False, True])
def test_a_bright_square_gives_a_boxed_high_scoring_finding(
    package: Path, tmp_path: Path, monochrome1: bool
) -> None:
    image = _write_image(tmp_path / "bright.dcm", _pixels(), monochrome1=monochrome1)
    beats: list[int] = []
    ctx = _context(package, _manifest(package), [image], heartbeat=lambda: beats.append(1))
    result = OnnxRuntime().run(ctx)
    (finding,) = result.findings
    assert finding.box is not None
    assert _iou(finding.box, SQUARE_BOX) > 0.3
    assert finding.score > 0.9
    assert result.study_score == finding.score
    assert finding.code.scheme == "99LODS" and finding.code.value == "BS1"
    assert finding.label == "Bright spot"
    assert finding.sop_instance_uid == image.sop_instance_uid
    assert finding.frame == 1
    assert beats == [1]
    assert result.details["images"] == 1 and result.details["frames"] == 1
    assert image.sop_instance_uid in result.details["ms_per_image"]


def test_the_heatmap_png_is_on_the_image_grid_and_bright_over_the_square(
    package: Path, tmp_path: Path
) -> None:
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    (finding,) = OnnxRuntime().run(_context(package, _manifest(package), [image])).findings
    assert finding.heatmap_png is not None
    heat = np.asarray(Image.open(io.BytesIO(finding.heatmap_png)))
    assert heat.shape == (ROWS, COLS) and heat.dtype == np.uint8
    x0, y0, x1, y1 = SQUARE
    assert heat[y0 + 10 : y1 - 10, x0 + 10 : x1 - 10].min() > 150
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert x0 <= peak_x < x1 and y0 <= peak_y < y1
    assert heat[:, :100].max() < 30


def test_weaker_boxes_score_by_their_peak_relative_to_the_strongest(
    package: Path, tmp_path: Path
) -> None:
    pixels = _pixels()
    pixels[150:186, 20:56] = 2900  # a second, dimmer square in the bottom-left corner
    image = _write_image(tmp_path / "two.dcm", pixels)
    strong, weak = OnnxRuntime().run(_context(package, _manifest(package), [image])).findings
    assert strong.box is not None and _iou(strong.box, SQUARE_BOX) > 0.3
    assert weak.box is not None  # inside the dimmer square (only its core passes the threshold)
    assert 20 <= weak.box.x0 < weak.box.x1 <= 56 and 150 <= weak.box.y0 < weak.box.y1 <= 186
    assert strong.score > 0.9
    assert 0.3 < weak.score < strong.score
    assert strong.heatmap_png is not None and weak.heatmap_png is None


def test_a_dark_image_gives_a_low_score_and_no_box(package: Path, tmp_path: Path) -> None:
    image = _write_image(tmp_path / "dark.dcm", _pixels(bright=False))
    result = OnnxRuntime().run(_context(package, _manifest(package), [image]))
    (finding,) = result.findings
    assert finding.box is None
    assert finding.score < 0.05
    assert result.study_score == pytest.approx(finding.score)


def test_right_images_flipped_to_the_left_map_back_to_their_own_pixels(
    package: Path, tmp_path: Path
) -> None:
    image = _write_image(tmp_path / "right.dcm", _pixels(), laterality="R")
    manifest = _manifest(package, preprocess={"flip_to_left": True})
    (finding,) = OnnxRuntime().run(_context(package, manifest, [image])).findings
    assert finding.box is not None and _iou(finding.box, SQUARE_BOX) > 0.3


def test_multi_frame_images_give_findings_per_frame(package: Path, tmp_path: Path) -> None:
    stack = np.stack([_pixels(bright=False), _pixels(), _pixels(bright=False)])
    image = _write_image(tmp_path / "multi.dcm", stack)
    every = _manifest(package, preprocess={"frames": "all"})
    result = OnnxRuntime().run(_context(package, every, [image]))
    by_frame = {f.frame: f for f in result.findings}
    assert set(by_frame) == {1, 2, 3} and len(result.findings) == 3
    assert by_frame[2].box is not None and _iou(by_frame[2].box, SQUARE_BOX) > 0.3
    assert by_frame[2].score > 0.9 and by_frame[2].heatmap_png is not None
    assert by_frame[1].box is None and by_frame[1].score < 0.05
    assert by_frame[3].heatmap_png is None
    assert result.details["frames"] == 3
    middle = _manifest(package, preprocess={"frames": "middle"})
    (only,) = OnnxRuntime().run(_context(package, middle, [image])).findings
    assert only.frame == 2 and only.score > 0.9


def test_a_fixed_batch_size_model_gets_padded_batches(tmp_path: Path) -> None:
    import onnx

    package = tmp_path / "fixed"
    path = bright_spot_model(package / "model.onnx")
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, str(path))
    stack = np.stack([_pixels(bright=False), _pixels(), _pixels(bright=False)])
    image = _write_image(tmp_path / "multi.dcm", stack)
    manifest = _manifest(package, preprocess={"frames": "all"})
    result = OnnxRuntime().run(_context(package, manifest, [image]))
    assert [f.frame for f in result.findings] == [1, 2, 3]
    assert [f.box is not None for f in result.findings] == [False, True, False]


def test_several_images_and_study_score(package: Path, tmp_path: Path) -> None:
    images = [
        _write_image(tmp_path / "dark.dcm", _pixels(bright=False)),
        _write_image(tmp_path / "bright.dcm", _pixels()),
    ]
    beats: list[int] = []
    ctx = _context(package, _manifest(package), images, heartbeat=lambda: beats.append(1))
    result = OnnxRuntime().run(ctx)
    assert [f.sop_instance_uid for f in result.findings] == [i.sop_instance_uid for i in images]
    assert result.study_score == max(f.score for f in result.findings) > 0.9
    assert len(beats) == 2


def test_no_images_no_findings(package: Path) -> None:
    result = OnnxRuntime().run(_context(package, _manifest(package), []))
    assert result.findings == [] and result.study_score is None


def test_a_model_without_heatmap_gives_image_level_scores(tmp_path: Path) -> None:
    package = tmp_path / "constant"
    constant_model(package / "model.onnx", score=0.7, size=64)
    manifest = _manifest(package, postprocess={"heatmap_output": None})
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    result = get_runtime("onnx").run(_context(package, manifest, [image]))
    assert isinstance(result, RunResult)
    (finding,) = result.findings
    assert finding.score == pytest.approx(0.7)
    assert finding.box is None and finding.heatmap_png is None
    sigmoid = _manifest(package, postprocess={"heatmap_output": None, "activation": "sigmoid"})
    (squashed,) = OnnxRuntime().run(_context(package, sigmoid, [image])).findings
    assert squashed.score == pytest.approx(1 / (1 + np.exp(-0.7)), rel=1e-5)


def test_a_wrong_shaped_model_is_a_permanent_error(tmp_path: Path) -> None:
    package = tmp_path / "small"
    constant_model(package / "model.onnx", score=0.5, size=32)
    manifest = _manifest(package, postprocess={"heatmap_output": None})
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    with pytest.raises(PermanentRuntimeError, match=r"shape \['N', 1, 32, 32\]"):
        OnnxRuntime().run(_context(package, manifest, [image]))


def test_missing_outputs_and_inputs_are_named(package: Path, tmp_path: Path) -> None:
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    no_output = _manifest(package, postprocess={"heatmap_output": "saliency"})
    with pytest.raises(PermanentRuntimeError, match=r"no output 'saliency'.*heatmap .*, scores"):
        OnnxRuntime().run(_context(package, no_output, [image]))
    no_input = _manifest(package, input_name="pixels")
    with pytest.raises(PermanentRuntimeError, match=r"no input 'pixels'.*image"):
        OnnxRuntime().run(_context(package, no_input, [image]))


def test_a_wrong_class_count_is_a_permanent_error(package: Path, tmp_path: Path) -> None:
    wrong = _manifest(package, classes=("bright_spot", "other"))
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    with pytest.raises(PermanentRuntimeError, match=r"expected \[N, 2\]"):
        OnnxRuntime().run(_context(package, wrong, [image]))


def test_an_unreadable_image_is_a_permanent_error(package: Path, tmp_path: Path) -> None:
    bad = _write_image(tmp_path / "bad.dcm", _pixels())
    bad.path.write_bytes(b"garbage")
    with pytest.raises(PermanentRuntimeError, match=r"bad\.dcm"):
        OnnxRuntime().run(_context(package, _manifest(package), [bad]))


def test_sessions_are_cached_per_package_and_model_hash(package: Path, tmp_path: Path) -> None:
    manifest = _manifest(package)
    first = cached_session(package, manifest)
    assert cached_session(package, manifest) is first
    other = tmp_path / "other"
    bright_spot_model(other / "model.onnx", threshold=0.3)
    assert cached_session(other, _manifest(other)) is not first
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    OnnxRuntime().run(_context(package, manifest, [image]))
    assert cached_session(package, manifest) is first


def test_a_passed_deadline_is_a_transient_error(package: Path, tmp_path: Path) -> None:
    image = _write_image(tmp_path / "bright.dcm", _pixels())
    ctx = _context(package, _manifest(package), [image], deadline=time.monotonic() - 1.0)
    with pytest.raises(TransientRuntimeError):
        OnnxRuntime().run(ctx)


def test_score_bins_turn_probabilities_into_integer_scores() -> None:
    from lods.solutions.runtimes.onnx import binned_score

    bins = [0.1 * i for i in range(1, 10)]
    assert binned_score(0.05, bins) == 1.0
    assert binned_score(0.1, bins) == 2.0
    assert binned_score(0.95, bins) == 10.0
    assert binned_score(0.42, None) == 0.42
