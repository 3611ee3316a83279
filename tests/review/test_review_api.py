"""The clinical review as JSON (/api/review): who may read and act, the worklist order,
claims, decisions, added findings, signing with a named radiologist, amendments, audit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_ui_support import (
    COLS,
    ROWS,
    StudyRef,
    add_radiologist,
    add_result,
    add_study,
    deploy,
    site,
)
from sqlalchemy import select

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.auth.models import User
from lods.review.models import FindingDecision, Report, ReportRevision, StudyClaim
from lods.runtime import Runtime
from support import add_cast, auth, csrf, login

BOX = (150.0, 60.0, 206.0, 116.0)


@dataclass
class Scene:
    rt: Runtime
    client: TestClient
    deployment: int
    study: StudyRef
    sure: int
    doubtful: int

    def headers(self, user: str) -> dict[str, str]:
        return auth(self.rt, user)

    def url(self, tail: str = "") -> str:
        return f"/api/review/studies/{self.study.uid}{tail}"


def _scene(rt: Runtime, client: TestClient, tmp_path: Path) -> Scene:
    hav = site(rt, "HAV", "Havnby")
    deployment = deploy(rt, tmp_path / "spot", site_code="HAV")
    study = add_study(rt, site_id=hav, patient_id="0101801234", patient_name="Berg^Anna")
    sure, doubtful = add_result(
        rt,
        deployment_id=deployment,
        study=study,
        findings=[(0.93, BOX), (0.55, (20.0, 40.0, 120.0, 150.0))],
        heatmap_on_first=True,
    )
    return Scene(rt, client, deployment, study, sure, doubtful)


@pytest.fixture
def scene(app_runtime: Runtime, client: TestClient, tmp_path: Path) -> Scene:
    return _scene(app_runtime, client, tmp_path)


@pytest.fixture
def any_db_client(runtime: Runtime) -> Iterator[TestClient]:
    """The cast and an app on each database backend (SQLite, and PostgreSQL when set)."""
    add_cast(runtime)
    with TestClient(create_app(runtime), base_url="http://testserver") as c:
        yield c


def _user_id(rt: Runtime, username: str) -> int:
    with rt.sessions() as db:
        found = db.scalar(select(User.id).where(User.username == username))
        assert found is not None
        return found


# --- who may do what -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["nina", "aud", "otto", "peter"])
def test_only_radiologists_and_admins_see_the_worklist(scene: Scene, who: str) -> None:
    response = scene.client.get("/api/review/worklist", headers=scene.headers(who))
    assert response.status_code == 403
    for allowed in ("rita", "ada"):
        ok = scene.client.get("/api/review/worklist", headers=scene.headers(allowed))
        assert ok.status_code == 200, allowed


@pytest.mark.parametrize("who", ["nina", "aud", "otto"])
def test_nurse_auditor_and_ai_owner_see_no_review_data(scene: Scene, who: str) -> None:
    headers = scene.headers(who)
    assert scene.client.get("/api/review/ed", headers=headers).status_code == 403
    assert scene.client.get(scene.url(), headers=headers).status_code == 403
    heatmap = scene.url(f"/findings/{scene.sure}/heatmap")
    assert scene.client.get(heatmap, headers=headers).status_code == 403


def test_anonymous_requests_are_refused(scene: Scene) -> None:
    assert scene.client.get("/api/review/worklist").status_code == 401
    assert scene.client.post(scene.url("/sign"), json={}).status_code == 401


def test_physician_reads_but_cannot_claim_decide_or_sign(scene: Scene) -> None:
    headers = scene.headers("peter")
    state = scene.client.get(scene.url(), headers=headers)
    assert state.status_code == 200
    assert state.json()["you"] == {
        "username": "peter",
        "full_name": "Peter",
        "reader": False,
        "holder": False,
        "editable": False,
    }
    attempts = [
        ("POST", scene.url("/claim"), None),
        ("POST", scene.url(f"/findings/{scene.sure}/decision"), {"decision": "agree"}),
        (
            "POST",
            scene.url("/added"),
            {"code": "fracture", "sop_instance_uid": scene.study.sop_uids[0], "box": [1, 1, 9, 9]},
        ),
        ("PUT", scene.url("/report"), {"text": "x", "conclusion": "negative"}),
        ("POST", scene.url("/sign"), {"text": "x", "conclusion": "negative"}),
        ("POST", scene.url("/amend"), {"text": "x", "conclusion": "negative", "reason": "r"}),
    ]
    for method, url, body in attempts:
        response = scene.client.request(method, url, json=body, headers=headers)
        assert response.status_code == 403, (method, url)
    with scene.rt.sessions() as db:
        assert db.scalar(select(Report)) is None
        assert db.scalar(select(FindingDecision)) is None
        assert db.scalar(select(StudyClaim)) is None


def test_admin_sees_the_worklist_but_does_not_read(scene: Scene) -> None:
    response = scene.client.post(scene.url("/claim"), headers=scene.headers("ada"))
    assert response.status_code == 403


# --- the worklist --------------------------------------------------------------------------------


def test_worklist_orders_by_ai_urgency_then_waiting_time(
    app_runtime: Runtime, client: TestClient, tmp_path: Path
) -> None:
    rt = app_runtime
    hav, other = site(rt, "HAV"), site(rt, "OUH")
    deployment = deploy(rt, tmp_path / "spot", site_code="HAV")

    def study(pid: str, minutes: int, scores: list[float] | None, at: int = hav) -> str:
        ref = add_study(rt, site_id=at, patient_id=pid, waiting=timedelta(minutes=minutes))
        if scores is not None:
            add_result(rt, deployment_id=deployment, study=ref, findings=[(s, BOX) for s in scores])
        return ref.uid

    negative_old = study("P-NEG", 180, [0.1])
    sure_new = study("P-SURE-NEW", 10, [0.95])
    doubtful = study("P-DOUBT", 60, [0.5, 0.2])
    unanalysed_oldest = study("P-NONE", 300, None)
    sure_old = study("P-SURE-OLD", 120, [0.85])
    elsewhere = study("P-OUH", 500, [0.99], at=other)

    response = client.get("/api/review/worklist", headers=auth(rt, "rita"))
    assert response.status_code == 200
    rows = response.json()["rows"]
    order = [r["study_uid"] for r in rows]
    assert order == [elsewhere, sure_old, sure_new, doubtful, negative_old, unanalysed_oldest]
    labels = [r["ai"]["urgency_label"] for r in rows]
    assert labels == ["sure", "sure", "sure", "doubtful", "negative", "not analysed"]
    assert rows[1]["waiting_seconds"] > rows[2]["waiting_seconds"]
    assert rows[1]["ai"]["text"] == "Spot" and rows[1]["ai"]["score"] == pytest.approx(0.85)
    assert rows[-1]["ai"]["outcome"] is None
    assert response.json()["label"].startswith("AI suggestion")

    only_hav = client.get("/api/review/worklist?site=HAV", headers=auth(rt, "rita")).json()
    assert [r["study_uid"] for r in only_hav["rows"]] == order[1:]
    unknown = client.get("/api/review/worklist?site=NOPE", headers=auth(rt, "rita"))
    assert unknown.status_code == 404
    with rt.sessions() as db:
        event = db.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "worklist.view")
            .order_by(AuditEvent.seq.desc())
        ).first()
        assert event is not None and event.actor == "rita"


# --- claims --------------------------------------------------------------------------------------


def test_a_claimed_study_is_locked_for_a_second_radiologist(scene: Scene) -> None:
    add_radiologist(scene.rt, "rolf", "Rolf Dahl")
    rita, rolf = scene.headers("rita"), scene.headers("rolf")
    mine = scene.client.post(scene.url("/claim"), headers=rita)
    assert mine.status_code == 200
    assert mine.json()["claim"]["mine"] is True and mine.json()["you"]["editable"] is True

    refused = scene.client.post(scene.url("/claim"), headers=rolf)
    assert refused.status_code == 409
    assert refused.json() == {"detail": "Rita is reading this study"}
    decision = scene.client.post(
        scene.url(f"/findings/{scene.sure}/decision"), json={"decision": "agree"}, headers=rolf
    )
    assert decision.status_code == 409

    seen_by_rolf = scene.client.get(scene.url(), headers=rolf).json()
    assert seen_by_rolf["claim"]["full_name"] == "Rita"
    assert seen_by_rolf["claim"]["mine"] is False
    assert seen_by_rolf["you"]["editable"] is False
    row = scene.client.get("/api/review/worklist", headers=rolf).json()["rows"][0]
    assert row["claim"]["username"] == "rita" and row["claim"]["mine"] is False

    assert scene.client.post(scene.url("/release"), headers=rolf).status_code == 403
    assert scene.client.post(scene.url("/release"), headers=rita).json()["claim"] is None
    taken = scene.client.post(scene.url("/claim"), headers=rolf)
    assert taken.status_code == 200 and taken.json()["claim"]["username"] == "rolf"


def test_session_requests_need_the_csrf_token(scene: Scene) -> None:
    assert login(scene.client, "rita").status_code == 303
    assert scene.client.post(scene.url("/claim")).status_code == 403
    ok = scene.client.post(scene.url("/claim"), headers={"X-CSRF-Token": csrf(scene.client)})
    assert ok.status_code == 200 and ok.json()["claim"]["mine"] is True


# --- deciding, adding, signing -------------------------------------------------------------------


def test_full_review_flow_ends_in_a_report_signed_by_the_radiologist(
    runtime: Runtime, any_db_client: TestClient, tmp_path: Path
) -> None:
    s = _scene(runtime, any_db_client, tmp_path)
    client, rita = s.client, s.headers("rita")

    state = client.get(s.url(), headers=rita).json()
    assert [f["id"] for f in state["findings"]] == [s.sure, s.doubtful]
    assert [f["certainty"] for f in state["findings"]] == ["sure", "doubtful"]
    assert state["findings"][0]["box"] == list(BOX)
    assert state["undecided"] == 2 and state["report"] is None
    assert state["solutions"][0]["intended_use"].startswith("Finds bright spots")
    assert state["solutions"][0]["limitations"] == ["Synthetic test images only"]
    assert state["images"][0]["columns"] == COLS and state["images"][0]["rows"] == ROWS
    assert state["label"].startswith("AI suggestion")

    assert client.post(s.url("/claim"), headers=rita).status_code == 200
    agreed = client.post(
        s.url(f"/findings/{s.sure}/decision"), json={"decision": "agree"}, headers=rita
    )
    assert agreed.status_code == 200 and agreed.json()["undecided"] == 1
    refused = client.post(s.url("/sign"), json={"text": "Fracture.", "conclusion": "positive"})
    assert refused.status_code == 401  # no credentials at all
    refused = client.post(
        s.url("/sign"), json={"text": "Fracture.", "conclusion": "positive"}, headers=rita
    )
    assert refused.status_code == 400
    assert refused.json()["detail"] == "1 AI finding(s) still need agree, disagree or amend"

    disagreed = client.post(
        s.url(f"/findings/{s.doubtful}/decision"),
        json={"decision": "disagree", "comment": "overlapping soft tissue"},
        headers=rita,
    )
    assert disagreed.status_code == 200 and disagreed.json()["undecided"] == 0
    added = client.post(
        s.url("/added"),
        json={
            "code": "fracture",
            "sop_instance_uid": s.study.sop_uids[0],
            "box": [30, 40, 90, 100],
        },
        headers=rita,
    )
    assert added.status_code == 200
    assert added.json()["added"][0]["code"] == {
        "scheme": "SCT",
        "value": "125605004",
        "meaning": "Fracture of bone",
    }
    draft = client.put(
        s.url("/report"), json={"text": "Distal radius fracture.", "conclusion": ""}, headers=rita
    )
    assert draft.json()["report"]["state"] == "draft"
    no_conclusion = client.post(s.url("/sign"), json={}, headers=rita)
    assert no_conclusion.status_code == 400
    assert no_conclusion.json()["detail"] == "state a conclusion before signing"

    signed = client.post(s.url("/sign"), json={"conclusion": "positive"}, headers=rita)
    assert signed.status_code == 200
    report = signed.json()["report"]
    assert report["state"] == "signed" and report["signer"] == "Rita"
    assert report["signer_username"] == "rita" and report["signed_at"] is not None
    assert report["text"] == "Distal radius fracture." and report["version"] == 1
    assert signed.json()["claim"] is None and signed.json()["you"]["editable"] is False

    rita_id = _user_id(runtime, "rita")
    with runtime.sessions() as db:
        row = db.scalar(select(Report))
        assert row is not None
        assert (row.state, row.signer_fk, row.conclusion) == ("signed", rita_id, "positive")
        decisions = {
            (d.finding_fk, d.decision, d.code_value, d.user_fk, d.comment)
            for d in db.scalars(select(FindingDecision))
        }
        assert decisions == {
            (s.sure, "agree", None, rita_id, ""),
            (s.doubtful, "disagree", None, rita_id, "overlapping soft tissue"),
            (None, "added", "125605004", rita_id, ""),
        }
        actions = set(db.scalars(select(AuditEvent.action)))
        assert {"review.claim", "review.decision", "report.signed", "study.view"} <= actions

    late = client.post(
        s.url(f"/findings/{s.sure}/decision"), json={"decision": "disagree"}, headers=rita
    )
    assert late.status_code == 409
    assert client.post(s.url("/claim"), headers=rita).status_code == 409
    no_reason = client.post(
        s.url("/amend"), json={"text": "x", "conclusion": "negative", "reason": " "}, headers=rita
    )
    assert no_reason.status_code == 400
    amended = client.post(
        s.url("/amend"),
        json={"text": "No fracture.", "conclusion": "negative", "reason": "second look"},
        headers=rita,
    )
    assert amended.status_code == 200
    final = amended.json()["report"]
    assert (final["state"], final["version"], final["amendment_reason"]) == (
        "amended",
        2,
        "second look",
    )
    assert [r["version"] for r in final["revisions"]] == [1, 2]
    with runtime.sessions() as db:
        assert len(db.scalars(select(ReportRevision)).all()) == 2


def test_signing_is_refused_while_a_finding_is_undecided(scene: Scene) -> None:
    rita = scene.headers("rita")
    scene.client.post(
        scene.url(f"/findings/{scene.sure}/decision"), json={"decision": "agree"}, headers=rita
    )
    refused = scene.client.post(
        scene.url("/sign"), json={"text": "Normal.", "conclusion": "negative"}, headers=rita
    )
    assert refused.status_code == 400
    assert "still need agree, disagree or amend" in refused.json()["detail"]
    with scene.rt.sessions() as db:
        report = db.scalar(select(Report))
        assert report is not None
        # The refused request changed nothing: still a draft without the text it carried.
        assert (report.state, report.signer_fk, report.text) == ("draft", None, "")
        assert db.scalar(select(ReportRevision)) is None


def test_amend_a_finding_with_a_new_box_and_code(scene: Scene) -> None:
    rita = scene.headers("rita")
    decision = scene.url(f"/findings/{scene.doubtful}/decision")
    outside = scene.client.post(
        decision, json={"decision": "amend", "box": [10, 10, COLS + 5, 50]}, headers=rita
    )
    assert (
        outside.status_code == 400 and outside.json()["detail"] == "the box lies outside the image"
    )
    backwards = scene.client.post(
        decision, json={"decision": "amend", "box": [50, 10, 40, 50]}, headers=rita
    )
    assert backwards.status_code == 400
    nothing = scene.client.post(decision, json={"decision": "amend"}, headers=rita)
    assert nothing.status_code == 400
    unknown = scene.client.post(decision, json={"decision": "amend", "code": "xyz"}, headers=rita)
    assert unknown.status_code == 400
    wrong = scene.client.post(decision, json={"decision": "added"}, headers=rita)
    assert wrong.status_code == 400
    nonsense = scene.client.post(decision, json={"decision": "maybe"}, headers=rita)
    assert nonsense.status_code == 400

    amended = scene.client.post(
        decision,
        json={"decision": "amend", "box": [25, 45, 110, 140], "code": "mass"},
        headers=rita,
    )
    assert amended.status_code == 200
    found = next(f for f in amended.json()["findings"] if f["id"] == scene.doubtful)
    assert found["decision"]["decision"] == "amend"
    assert found["decision"]["box"] == [25, 45, 110, 140]
    assert found["decision"]["code"]["value"] == "4147007"
    assert found["decision"]["sop_instance_uid"] == scene.study.sop_uids[0]
    # The AI's own finding is untouched.
    assert found["box"] == [20.0, 40.0, 120.0, 150.0] and found["code"]["value"] == "SPOT1"


def test_an_added_finding_can_be_removed_while_drafting(scene: Scene) -> None:
    rita = scene.headers("rita")
    body = {
        "code": {"scheme": "SCT", "value": "18115005", "meaning": "Pathologic calcification"},
        "sop_instance_uid": scene.study.sop_uids[0],
        "box": [5, 5, 25, 25],
        "comment": "small",
    }
    added = scene.client.post(scene.url("/added"), json=body, headers=rita).json()["added"]
    assert [(a["code"]["value"], a["comment"], a["by"]) for a in added] == [
        ("18115005", "small", "Rita")
    ]
    elsewhere = scene.client.post(
        scene.url("/added"), json={**body, "sop_instance_uid": "1.2.3.4"}, headers=rita
    )
    assert elsewhere.status_code == 400
    removed = scene.client.delete(scene.url(f"/added/{added[0]['id']}"), headers=rita)
    assert removed.status_code == 200 and removed.json()["added"] == []
    again = scene.client.delete(scene.url(f"/added/{added[0]['id']}"), headers=rita)
    assert again.status_code == 404


def test_unknown_study_and_finding_answer_404(scene: Scene) -> None:
    rita = scene.headers("rita")
    assert scene.client.get("/api/review/studies/1.2.3.999", headers=rita).status_code == 404
    missing = scene.client.post(
        scene.url("/findings/999999/decision"), json={"decision": "agree"}, headers=rita
    )
    assert missing.status_code == 404


def test_shadow_findings_stay_off_the_review_screen(scene: Scene, tmp_path: Path) -> None:
    shadow = deploy(scene.rt, tmp_path / "shadowspot", site_code="HAV", mode="shadow")
    (hidden,) = add_result(scene.rt, deployment_id=shadow, study=scene.study, findings=[(0.9, BOX)])
    rita = scene.headers("rita")
    state = scene.client.get(scene.url(), headers=rita).json()
    assert hidden not in [f["id"] for f in state["findings"]]
    assert all(s["mode"] != "shadow" for s in state["solutions"])
    refused = scene.client.post(
        scene.url(f"/findings/{hidden}/decision"), json={"decision": "agree"}, headers=rita
    )
    assert refused.status_code == 403
    heatmap = scene.client.get(scene.url(f"/findings/{hidden}/heatmap"), headers=rita)
    assert heatmap.status_code == 404


# --- reading is audited --------------------------------------------------------------------------


def test_reading_a_study_and_its_heatmap_is_audited(scene: Scene) -> None:
    peter = scene.headers("peter")
    state = scene.client.get(scene.url(), headers=peter).json()
    first = state["findings"][0]
    assert first["heatmap_url"] == scene.url(f"/findings/{scene.sure}/heatmap")
    assert state["findings"][1]["heatmap_url"] is None
    png = scene.client.get(first["heatmap_url"], headers=peter)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    none = scene.client.get(scene.url(f"/findings/{scene.doubtful}/heatmap"), headers=peter)
    assert none.status_code == 404
    with scene.rt.sessions() as db:
        events = db.scalars(
            select(AuditEvent).where(AuditEvent.actor == "peter").order_by(AuditEvent.seq)
        ).all()
    assert [(e.action, e.study_uid, e.patient_id) for e in events] == [
        ("study.view", scene.study.uid, "0101801234"),
        ("ai.heatmap.view", scene.study.uid, "0101801234"),
    ]
    assert '"via": "review-api"' in events[0].detail


# --- the emergency department's view -------------------------------------------------------------


def test_ed_view_shows_the_preliminary_answer_then_the_signed_report(scene: Scene) -> None:
    peter = scene.headers("peter")
    view = scene.client.get("/api/review/ed?hours=2", headers=peter)
    assert view.status_code == 200
    (row,) = view.json()["rows"]
    assert row["label"] == "AI suggestion — not verified by a radiologist"
    assert row["ai"]["urgency_label"] == "sure" and row["report"] is None
    (image,) = row["images"]
    assert image["sop_instance_uid"] == scene.study.sop_uids[0]
    assert [(b["finding_id"], b["certainty"]) for b in image["boxes"]] == [
        (scene.sure, "sure"),
        (scene.doubtful, "doubtful"),
    ]
    assert image["rendered_url"].startswith("/dicom-web/studies/")

    rita = scene.headers("rita")
    for finding in (scene.sure, scene.doubtful):
        scene.client.post(
            scene.url(f"/findings/{finding}/decision"), json={"decision": "agree"}, headers=rita
        )
    scene.client.put(scene.url("/report"), json={"text": "Fracture."}, headers=rita)
    draft_row = scene.client.get("/api/review/ed", headers=peter).json()["rows"][0]
    assert draft_row["report"] is None  # a draft is not shown outside the reading room
    scene.client.post(scene.url("/sign"), json={"conclusion": "positive"}, headers=rita)
    final = scene.client.get("/api/review/ed", headers=peter).json()["rows"][0]["report"]
    assert final["state"] == "signed" and final["signer"] == "Rita"
    assert final["text"] == "Fracture." and final["conclusion"] == "positive"
    assert scene.client.get("/api/review/ed?site=NOPE", headers=peter).status_code == 404
