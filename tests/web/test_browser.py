"""A smoke test in a real browser: headless Chromium logs in and opens a study.

The study arrives the way a modality sends it, by C-STORE to the live server's DICOM
port; the page then shows it through WADO-RS rendered images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

import support

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


def chest_image(study_uid: str, series_uid: str, instance_number: int) -> Dataset:
    """Return a small CR image: a bright disc on a dark ground."""
    y, x = np.mgrid[:256, :200]
    pixels = np.where((x - 100) ** 2 + (y - 128) ** 2 < 80**2, 3000, 200).astype(np.uint16)
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Browser^Test"
    ds.PatientID = "BROWSER-1"
    ds.StudyDate = "20240301"
    ds.Modality = "CR"
    ds.AccessionNumber = "ACC-BROWSER"
    ds.StudyDescription = "Thorax"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1600, 3200
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


def send_study(server: Any, study_uid: str) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="LODS")
    assert assoc.is_established
    series_uid = generate_uid()
    try:
        for n in (1, 2):
            assert assoc.send_c_store(chest_image(study_uid, series_uid, n)).Status == 0x0000
    finally:
        assoc.release()


def test_radiologist_logs_in_and_sees_a_study_image(
    live_server: Any, request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import sync_playwright

    study_uid = generate_uid()
    send_study(live_server, study_uid)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(live_server.base_url + "/studies")  # redirects to the login form
            page.fill("#username", "rita")
            page.fill("#password", support.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url("**/studies*")
            link = page.locator(f'tr[data-study-uid="{study_uid}"] a.study-link')
            assert link.inner_text() == "Browser, Test"
            link.click()
            page.wait_for_url(f"**/studies/{study_uid}")
            page.wait_for_function(
                "() => { const i = document.getElementById('viewer-image');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=30_000,
            )
            width = page.eval_on_selector("#viewer-image", "i => i.naturalWidth")
            assert width > 0
            assert page.is_hidden("#frame-control")  # single-frame images have no frame choice
            thumbnails = page.eval_on_selector_all(
                ".series-list img", "imgs => imgs.map(i => i.complete && i.naturalWidth)"
            )
            assert thumbnails and all(thumbnails)
            page.select_option("#wl-preset", "400,1800")  # bone: the image is fetched anew
            page.wait_for_function(
                "() => { const i = document.getElementById('viewer-image');"
                " return i.src.includes('window=400%2C1800') && i.complete && i.naturalWidth > 0; }"
            )
            assert page.input_value("#wl-center") == "400"
            page.check("#invert")
            assert "inverted" in (page.get_attribute("#viewer-image", "class") or "")
            page.click("#next-image")
            page.wait_for_function(
                "() => document.getElementById('image-position').textContent.startsWith('2')"
            )
        finally:
            browser.close()
