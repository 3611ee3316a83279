"""Secondary Captures with the boxes burned in: valid DICOM (dciodvfy), in the source's
study, naming the source image, with the boxes where the findings are — and after a
sign-off only the findings the radiologist confirmed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from exports_support import ADDED_BOX, AI_FINDINGS, dciodvfy_errors, reading_scene, sign_reading
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from lods.exports import service
from lods.exports.models import OutboxItem
from lods.exports.results import DocumentIds
from lods.exports.sc import AI_DOUBTFUL, CONFIRMED, Overlay, build_overlay_sc, burn_in
from lods.imaging.store import BlobStore
from lods.runtime import Runtime
from lods.solutions.runtimes.base import Box
from lods.synth.xray import make_study, synthetic_patient

BOX = Box(40.0, 60.0, 120.0, 150.0)


@pytest.fixture(scope="module")
def source() -> Dataset:
    return make_study(
        3,
        body_part="WRIST",
        modality="DX",
        patient=synthetic_patient(2, seed=3),
        views=1,
        size=256,
    )[0]


def _ids() -> DocumentIds:
    return DocumentIds(str(generate_uid()), str(generate_uid()), 9803, 1)


def _edge_pixel(pixels: np.ndarray, box: Box) -> tuple[int, ...]:
    """The pixel in the middle of the box's top edge."""
    return tuple(int(v) for v in pixels[int(box.y0), int((box.x0 + box.x1) / 2)])


@pytest.mark.peers
def test_capture_passes_dciodvfy_and_belongs_to_the_source_study(
    source: Dataset, tmp_path: Path
) -> None:
    capture = build_overlay_sc(
        source,
        [Overlay(BOX, "Fracture 0.91 · agreed")],
        ids=_ids(),
        caption="Findings verified by Rita Hansen, Havnby Hospital",
    )
    path = tmp_path / "sc.dcm"
    capture.save_as(path, enforce_file_format=True)
    errors, output = dciodvfy_errors(path)
    assert errors == [], output
    assert "SCImage" in output
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert (sc.StudyInstanceUID, sc.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sc.BurnedInAnnotation, sc.PhotometricInterpretation) == ("YES", "RGB")
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.Laterality == source.ImageLaterality
    pixels = sc.pixel_array
    assert _edge_pixel(pixels, BOX) == CONFIRMED
    r, g, b = (pixels[200, 200, c] for c in range(3))  # away from box, label and caption
    assert r == g == b  # still the grey image


@pytest.mark.peers
def test_a_monochrome1_source_without_orientation_still_passes(
    source: Dataset, tmp_path: Path
) -> None:
    odd = source.copy()
    odd.PhotometricInterpretation = "MONOCHROME1"
    del odd.PatientOrientation
    del odd.ImageLaterality
    path = tmp_path / "sc.dcm"
    build_overlay_sc(odd, [Overlay(BOX, "x")], ids=_ids(), caption="AI suggestion").save_as(
        path, enforce_file_format=True
    )
    errors, output = dciodvfy_errors(path)
    assert errors == [], output


def test_doubtful_boxes_are_dashed_and_sure_ones_solid() -> None:
    grey = np.full((200, 200, 3), 90, dtype=np.uint8)
    solid = Box(10.0, 40.0, 90.0, 90.0)
    dashed = Box(110.0, 40.0, 190.0, 90.0)
    out = burn_in(
        grey,
        [Overlay(solid, "", CONFIRMED), Overlay(dashed, "", AI_DOUBTFUL, dashed=True)],
        caption="",
    )
    solid_edge = {tuple(p) for p in out[40, 12:88]}
    dashed_edge = {tuple(p) for p in out[40, 112:188]}
    assert solid_edge == {CONFIRMED}
    assert dashed_edge == {AI_DOUBTFUL, (90, 90, 90)}  # dashes and gaps


def test_a_box_outside_the_image_is_refused(source: Dataset) -> None:
    with pytest.raises(ValueError, match="outside"):
        build_overlay_sc(source, [Overlay(Box(0, 0, 999, 10), "x")], ids=_ids(), caption="")
    with pytest.raises(ValueError, match="no frame 2"):
        build_overlay_sc(source, [], ids=_ids(), caption="", frame=2)


@pytest.mark.peers
def test_sign_off_captures_show_only_what_the_radiologist_confirmed(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1)])
    report_id = sign_reading(scene)
    with rt.sessions() as db, db.begin():
        service.on_report_signed(db, report_id, rt.settings)
    with rt.sessions() as db:
        rows = list(db.scalars(select(OutboxItem).where(OutboxItem.what == "sc")))
    store = BlobStore.from_settings(rt.settings)
    captures = {}
    for row in rows:
        assert row.payload_sha256 is not None
        path = store.path_for(row.payload_sha256)
        errors, output = dciodvfy_errors(path)
        assert errors == [], output
        sc = pydicom.dcmread(path)
        captures[str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)] = sc
    assert sorted(captures) == sorted(scene.uids)  # one per image with a confirmed box
    (_, agreed, _), (_, disagreed, _) = AI_FINDINGS
    first, second = (captures[uid].pixel_array for uid in scene.uids)
    assert _edge_pixel(first, agreed) == CONFIRMED
    assert _edge_pixel(second, ADDED_BOX) == CONFIRMED
    r, g, b = _edge_pixel(second, disagreed)
    assert r == g == b  # the finding the radiologist rejected is not drawn
    assert "Rita" in str(captures[scene.uids[0]].ImageComments)
