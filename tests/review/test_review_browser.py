"""The review in a real browser: headless Chromium against `lods serve`.

A radiologist opens the acute worklist, opens the top study, agrees with one AI finding,
disagrees with another (by keyboard), draws a finding the AI missed and signs; the report
is then final with her as the signer, every decision is stored, and the server's outbox
delivers the VERIFIED SR to the site's PACS (a real Orthanc).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from review_ui_support import COLS, ROWS, add_result, add_study, deploy, site
from sqlalchemy import select

import support
from lods.auth.models import User
from lods.review.models import FindingDecision, Report
from lods.runtime import Runtime
from lods.sites.service import add_dicom_node
from orthanc_peer import Orthanc

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
BOX = (150.0, 60.0, 206.0, 116.0)

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


def test_radiologist_reviews_and_signs_the_top_study_of_the_worklist(
    live_server: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    rt = Runtime.open(
        support.make_settings(live_server.data_dir, live_server.database_url), migrate=False
    )
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    try:
        test_site = site(rt, "TEST")
        with rt.sessions() as db, db.begin():
            add_dicom_node(
                db,
                site_id=test_site,
                ae_title=pacs.ae_title,
                kind="pacs",
                host="127.0.0.1",
                port=pacs.dicom_port,
                actor="test",
            )
        deployment = deploy(rt, tmp_path / "spot", site_code="TEST")
        calm = add_study(
            rt,
            site_id=test_site,
            patient_id="BR-2",
            patient_name="Calm^Carl",
            waiting=timedelta(hours=3),
        )
        add_result(rt, deployment_id=deployment, study=calm, findings=[(0.1, None)])
        top = add_study(
            rt,
            site_id=test_site,
            patient_id="BR-1",
            patient_name="Urgent^Ulla",
            waiting=timedelta(minutes=20),
        )
        sure, doubtful = add_result(
            rt,
            deployment_id=deployment,
            study=top,
            findings=[(0.93, BOX), (0.55, (20.0, 40.0, 120.0, 150.0))],
            heatmap_on_first=True,
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # Script errors only: refused requests (a 400 on purpose, no favicon) are not.
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource")
                    else None
                ),
            )
            try:
                page.goto(live_server.base_url + "/review")  # redirects to the login form
                page.fill("#username", "rita")
                page.fill("#password", support.PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url("**/review")
                first = page.locator("tr.rv-row").first
                assert first.get_attribute("data-study-uid") == top.uid
                assert "Sure finding" in first.inner_text()
                first.locator("a.open-study").click()

                page.wait_for_url(f"**/review/studies/{top.uid}")
                page.wait_for_selector("#review[data-ready=true]")
                page.wait_for_function("() => !document.getElementById('rv-add').disabled")
                assert "You are reading this study" in page.inner_text("#rv-claim")
                page.wait_for_function(
                    "() => { const i = document.getElementById('rv-image');"
                    " return i.complete && i.naturalWidth > 0; }",
                    timeout=30_000,
                )
                drawn = page.eval_on_selector_all(
                    "#rv-boxes rect[data-finding]",
                    "rs => rs.map(r =>"
                    " [Number(r.dataset.finding), r.getAttribute('stroke-dasharray')])",
                )
                assert sorted(f for f, _ in drawn) == sorted([sure, doubtful])
                dashes = dict(drawn)
                assert (
                    dashes[sure] is None and dashes[doubtful]
                )  # solid when sure, dashed when doubtful
                page.check("#rv-heatmap")
                page.wait_for_selector("#rv-heat image.rv-heatmap", state="attached")

                # Agree with the first finding by its button.
                page.click(f'.rv-finding[data-finding-id="{sure}"] button.rv-decide.agree')
                page.wait_for_selector(
                    f'.rv-finding[data-finding-id="{sure}"][data-decision="agree"]'
                )
                # Signing now is refused, and the page says why.
                page.select_option("#rv-conclusion", "positive")
                page.once("dialog", lambda dialog: dialog.accept())
                page.click("#rv-sign")
                page.wait_for_selector("#rv-report-error:not([hidden])")
                assert page.inner_text("#rv-report-error") == (
                    "1 AI finding(s) still need agree, disagree or amend"
                )
                # Disagree with the next one by keyboard: N selects it, D disagrees.
                page.keyboard.press("n")
                page.wait_for_selector(f'.rv-finding.selected[data-finding-id="{doubtful}"]')
                page.keyboard.press("d")
                page.wait_for_selector(
                    f'.rv-finding[data-finding-id="{doubtful}"][data-decision="disagree"]'
                )

                # Add a finding the AI missed: draw a box with the mouse, pick a code.
                page.click("#rv-add")
                page.locator("#rv-stage").scroll_into_view_if_needed()
                area = page.locator("#rv-overlay-svg").bounding_box()
                assert area is not None
                page.mouse.move(area["x"] + area["width"] * 0.1, area["y"] + area["height"] * 0.2)
                page.mouse.down()
                page.mouse.move(
                    area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.5, steps=6
                )
                page.mouse.up()
                page.wait_for_function(
                    "() => document.getElementById('rv-draft-box').getAttribute('visibility')"
                    " === 'visible'"
                )
                page.select_option("#rv-add-code", "fracture")
                page.click("#rv-add-save")
                page.wait_for_selector("#rv-added li[data-decision-id]")
                page.wait_for_selector("#rv-boxes rect.rv-box.added", state="attached")

                page.fill("#rv-report-text", "Fracture of the fifth metacarpal.")
                page.select_option("#rv-conclusion", "positive")
                page.once("dialog", lambda dialog: dialog.accept())
                page.click("#rv-sign")
                page.wait_for_selector('#rv-final[data-state="signed"]', timeout=30_000)
                assert "Signed by Rita" in page.inner_text("#rv-final")
                assert page.locator("#rv-sign").count() == 0
                assert errors == []
            except Exception:
                print("page errors:", errors)
                page.screenshot(path=str(tmp_path / "review-failure.png"), full_page=True)
                raise
            finally:
                browser.close()

        # The API and the database agree: final, signed by the radiologist, decisions kept.
        state = httpx.get(
            f"{live_server.base_url}/api/review/studies/{top.uid}",
            headers=support.auth(rt, "rita"),
            timeout=30,
        ).json()
        assert state["report"]["state"] == "signed"
        assert state["report"]["signer_username"] == "rita"
        with rt.sessions() as db:
            rita = db.scalar(select(User.id).where(User.username == "rita"))
            report = db.scalar(select(Report).where(Report.study_fk == top.id))
            assert report is not None
            assert (report.state, report.signer_fk, report.conclusion) == (
                "signed",
                rita,
                "positive",
            )
            assert report.text == "Fracture of the fifth metacarpal."
            decisions = db.scalars(
                select(FindingDecision).where(FindingDecision.report_fk == report.id)
            ).all()
        kinds = {(d.finding_fk, d.decision) for d in decisions}
        assert kinds == {(sure, "agree"), (doubtful, "disagree"), (None, "added")}
        added = next(d for d in decisions if d.decision == "added")
        assert added.code_value == "125605004" and added.sop_instance_uid == top.sop_uids[0]
        assert added.user_fk == rita
        # The box drawn from 10 %/20 % to 30 %/50 % of the image, in its pixels.
        assert added.box_x0 == pytest.approx(0.1 * COLS, abs=3)
        assert added.box_y0 == pytest.approx(0.2 * ROWS, abs=3)
        assert added.box_x1 == pytest.approx(0.3 * COLS, abs=3)
        assert added.box_y1 == pytest.approx(0.5 * ROWS, abs=3)

        # The server's outbox sender delivers the VERIFIED SR to the PACS on its own.
        deadline = time.monotonic() + 90
        verified: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not verified:
            verified = [
                i
                for i in pacs.instances_of_study(top.uid)
                if pacs.tags(i["ID"]).get("VerificationFlag") == "VERIFIED"
            ]
            time.sleep(0.5)
        assert verified, "the VERIFIED SR did not reach the PACS"
        assert pacs.tags(verified[0]["ID"])["Modality"] == "SR"
    finally:
        pacs.stop()
        rt.close()
