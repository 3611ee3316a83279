"""The review pages as the browser gets them: the acute worklist, the ED view and the
review screen (server-rendered HTML with the review state for its script)."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from review_ui_support import StudyRef, add_radiologist, add_result, add_study, deploy, site
from sqlalchemy import select

import support
from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.runtime import Runtime

BOX = (150.0, 60.0, 206.0, 116.0)


def _as(rt: Runtime, username: str) -> TestClient:
    """A browser of its own, logged in as `username`."""
    client = TestClient(create_app(rt), base_url="http://testserver")
    assert support.login(client, username).status_code == 303
    return client


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="rv-row[^"]*" data-study-uid="([^"]+)"', page)


def _state(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="rv-state">(.*?)</script>', page, re.S)
    assert found is not None
    state: dict[str, Any] = json.loads(found.group(1))
    return state


@dataclass
class Ward:
    rt: Runtime
    sure: StudyRef
    doubtful: StudyRef
    unanalysed: StudyRef
    other: StudyRef
    finding: int


@pytest.fixture
def ward(app_runtime: Runtime, tmp_path: Path) -> Ward:
    """Three studies at HAV (sure, doubtful, unanalysed) and one at OUH."""
    rt = app_runtime
    hav, ouh = site(rt, "HAV", "Havnby"), site(rt, "OUH", "Odense")
    deployment = deploy(rt, tmp_path / "spot", site_code="HAV")
    unanalysed = add_study(
        rt, site_id=hav, patient_id="P3", patient_name="Cox^Carl", waiting=timedelta(hours=5)
    )
    doubtful = add_study(
        rt, site_id=hav, patient_id="P2", patient_name="Berg^Bo", waiting=timedelta(hours=2)
    )
    sure = add_study(
        rt,
        site_id=hav,
        patient_id="P1",
        patient_name="Alm^Ann",
        waiting=timedelta(minutes=25),
    )
    other = add_study(
        rt, site_id=ouh, patient_id="P4", patient_name="Dahl^Dan", waiting=timedelta(days=1)
    )
    findings = add_result(rt, deployment_id=deployment, study=sure, findings=[(0.9, BOX)])
    add_result(rt, deployment_id=deployment, study=doubtful, findings=[(0.5, BOX), (0.1, None)])
    return Ward(rt, sure, doubtful, unanalysed, other, findings[0])


def test_worklist_lists_studies_by_urgency_then_waiting(ward: Ward) -> None:
    rt = ward.rt
    page = _as(rt, "rita").get("/review?site=HAV")
    assert page.status_code == 200
    assert _rows(page.text) == [ward.sure.uid, ward.doubtful.uid, ward.unanalysed.uid]
    text = html.unescape(page.text)
    assert "Sure finding" in text and "Doubtful" in text and "Not analysed" in text
    assert "Alm, Ann" in text and "ACC-P1" in text
    assert "25 min" in text and "2 h 0 min" in text and "5 h 0 min" in text
    assert "AI suggestion — preliminary, not verified by a clinician" in text
    assert f'href="/review/studies/{ward.sure.uid}"' in page.text

    everywhere = _as(rt, "ada").get("/review")
    assert _rows(everywhere.text) == [
        ward.sure.uid,
        ward.doubtful.uid,
        ward.other.uid,
        ward.unanalysed.uid,
    ]
    assert "1 d 0 h" in everywhere.text
    unknown = _as(rt, "rita").get("/review?site=NOPE")
    assert unknown.status_code == 200 and _rows(unknown.text) == []
    assert "There is no site with code NOPE." in unknown.text
    with rt.sessions() as db:
        actions = db.scalars(select(AuditEvent.action).where(AuditEvent.actor == "rita")).all()
    assert actions.count("worklist.view") == 2


def test_worklist_in_danish(ward: Ward) -> None:
    client = _as(ward.rt, "rita")
    page = client.get("/review", headers={"Accept-Language": "da"})
    assert "Akut røntgen-arbejdsliste" in page.text and "Sikkert fund" in page.text


def test_a_claimed_study_shows_as_locked_to_a_second_radiologist(ward: Ward) -> None:
    rt = ward.rt
    add_radiologist(rt, "rolf", "Rolf Dahl")
    uid = ward.sure.uid
    rita = _as(rt, "rita")
    rita.get(f"/review/studies/{uid}")
    claimed = rita.post(
        f"/api/review/studies/{uid}/claim", headers={"X-CSRF-Token": support.csrf(rita)}
    )
    assert claimed.status_code == 200

    rolf = _as(rt, "rolf")
    worklist = rolf.get("/review").text
    row = re.search(
        rf'<tr class="rv-row([^"]*)" data-study-uid="{re.escape(uid)}".*?</tr>', worklist, re.S
    )
    assert row is not None
    assert "locked" in row.group(1)
    assert "Read by Rita" in row.group(0)
    assert "You are reading it" in rita.get("/review").text

    screen = rolf.get(f"/review/studies/{uid}")
    assert screen.status_code == 200
    assert "Rita is reading this study — read-only for you." in html.unescape(screen.text)
    state = _state(screen.text)
    assert state["claim"]["full_name"] == "Rita" and state["claim"]["mine"] is False
    assert state["you"]["editable"] is False


def test_review_screen_carries_the_ai_panel_findings_and_shortcuts(ward: Ward) -> None:
    rt, uid = ward.rt, ward.sure.uid
    page = _as(rt, "rita").get(f"/review/studies/{uid}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "Spot AI" in text and "version 1.0" in text
    assert "Finds bright spots on hand radiographs of adults." in text
    assert "Synthetic test images only" in text and "Demonstration, not a medical device" in text
    assert "confidence 0.90" in text
    assert "AI suggestion — preliminary, not verified by a clinician" in text
    for key in ("<kbd>A</kbd>", "<kbd>D</kbd>", "<kbd>N</kbd>", "<kbd>S</kbd>", "<kbd>X</kbd>"):
        assert key in page.text
    assert 'id="rv-sign"' in page.text and 'src="/static/review.js"' in page.text
    state = _state(page.text)
    assert [f["id"] for f in state["findings"]] == [ward.finding]
    assert state["findings"][0]["box"] == list(BOX)
    assert state["images"][0]["url"].startswith(f"/dicom-web/studies/{uid}/series/")
    assert state["you"] == {
        "username": "rita",
        "full_name": "Rita",
        "reader": True,
        "holder": False,
        "editable": False,
    }
    assert [c["key"] for c in state["codes"]] == ["fracture", "mass", "calcification", "other"]
    with rt.sessions() as db:
        event = db.scalars(
            select(AuditEvent).where(AuditEvent.action == "study.view", AuditEvent.actor == "rita")
        ).one()
    assert event.study_uid == uid and event.patient_id == "P1" and '"via": "review"' in event.detail
    assert _as(rt, "rita").get("/review/studies/1.2.3.404").status_code == 404


def test_physician_has_the_ed_view_and_a_read_only_review_screen(ward: Ward) -> None:
    rt = ward.rt
    peter = _as(rt, "peter")
    assert peter.get("/review").status_code == 403
    ed = peter.get("/review/ed?hours=6")
    assert ed.status_code == 200
    text = html.unescape(ed.text)
    assert text.count("AI suggestion — not verified by a radiologist") == 3
    assert "Not yet reported by a radiologist." in text
    # The sure finding's box, solid; the doubtful one's, dashed.
    assert re.search(r'<rect class="rv-box ai sure" x="150.0" y="60.0" width="56.0"', ed.text)
    doubtful = re.search(r'<rect class="rv-box ai doubtful"[^>]*>', ed.text)
    assert doubtful is not None and "stroke-dasharray" in doubtful.group(0)
    assert 'href="/review/ed"' in ed.text and 'href="/review"' not in ed.text
    screen = peter.get(f"/review/studies/{ward.sure.uid}")
    assert screen.status_code == 200
    assert "View only: only a radiologist reads and signs." in screen.text
    assert 'id="rv-sign"' not in screen.text


def test_ed_view_shows_the_signed_report_with_its_signer(ward: Ward) -> None:
    rt, uid = ward.rt, ward.sure.uid
    rita = support.auth(rt, "rita")
    client = _as(rt, "peter")
    url = f"/api/review/studies/{uid}"
    client.post(f"{url}/findings/{ward.finding}/decision", json={"decision": "agree"}, headers=rita)
    signed = client.post(
        f"{url}/sign", json={"text": "Scaphoid fracture.", "conclusion": "positive"}, headers=rita
    )
    assert signed.status_code == 200
    ed = html.unescape(client.get("/review/ed").text)
    assert "Final report" in ed and "Signed by Rita" in ed and "Scaphoid fracture." in ed
    assert _rows(_as(rt, "rita").get("/review").text).count(uid) == 0  # off the acute list
    screen = html.unescape(_as(rt, "rita").get(f"/review/studies/{uid}").text)
    assert 'data-state="signed"' in screen and "Amend the signed report" in screen
    assert "The report is final: read-only. A radiologist may amend it." in screen


@pytest.mark.parametrize("who", ["nina", "aud"])
def test_nurse_and_auditor_cannot_open_review_pages(ward: Ward, who: str) -> None:
    client = _as(ward.rt, who)
    for path in ("/review", "/review/ed", f"/review/studies/{ward.sure.uid}"):
        assert client.get(path, headers={"accept": "text/html"}).status_code == 403, path


def test_review_pages_redirect_anonymous_users_to_login(client: TestClient) -> None:
    response = client.get("/review", headers={"accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/review"


def test_navigation_offers_the_worklist_to_readers_and_the_ed_view_to_physicians(
    app_runtime: Runtime,
) -> None:
    rita = _as(app_runtime, "rita").get("/studies").text
    assert 'href="/review"' in rita and 'href="/review/ed"' in rita
    otto = _as(app_runtime, "otto").get("/studies").text
    assert 'href="/review"' not in otto and 'href="/review/ed"' not in otto
