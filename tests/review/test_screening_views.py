"""The screening list on the web and in the API: the blind second reader sees no score,
reads are posted by radiologists only, the same reader twice is refused, and the list is
audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_support import Unit, screening_exam, screening_unit
from sqlalchemy import select

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.imaging.models import Study
from lods.runtime import Runtime
from support import auth, csrf, login


@pytest.fixture
def unit(sqlite_runtime: Runtime, tmp_path: Path) -> Unit:
    return screening_unit(sqlite_runtime, tmp_path)


@pytest.fixture
def web(unit: Unit) -> Iterator[TestClient]:
    with TestClient(create_app(unit[0]), base_url="http://testserver") as client:
        yield client


def _uid(rt: Runtime, study_id: int) -> str:
    with rt.sessions() as db:
        uid = db.scalar(select(Study.study_uid).where(Study.id == study_id))
        assert uid is not None
        return uid


def test_the_second_reader_reads_blind(unit: Unit) -> None:
    rt = unit[0]
    uid = _uid(rt, screening_exam(unit, "Jensen^Eva", 9))
    with TestClient(create_app(rt), base_url="http://testserver") as api:
        first = api.get("/api/review/screening", headers=auth(rt, "rita")).json()
        assert [(r["ai_score"], r["state"]) for r in first] == [(9.0, "awaiting first read")]
        done = api.post(
            f"/api/review/screening/{uid}/read",
            json={"outcome": "recall"},
            headers=auth(rt, "rita"),
        )
        assert done.json() == {"state": "awaiting second read", "outcome": None}
        second = api.get("/api/review/screening", headers=auth(rt, "rolf")).json()
        assert second[0]["ai_score"] is None and second[0]["reads_done"] == 1
        again = api.post(
            f"/api/review/screening/{uid}/read",
            json={"outcome": "recall"},
            headers=auth(rt, "rita"),
        )
        assert again.status_code == 409 and "already read" in again.json()["detail"]
        agree = api.post(
            f"/api/review/screening/{uid}/read",
            json={"outcome": "recall"},
            headers=auth(rt, "rolf"),
        )
        assert agree.json() == {"state": "done", "outcome": "recall"}
        assert api.get("/api/review/screening", headers=auth(rt, "rita")).json() == []


def test_only_radiologists_post_reads_and_others_cannot_list(unit: Unit) -> None:
    rt = unit[0]
    uid = _uid(rt, screening_exam(unit, "Holm^Ida", 3))
    with TestClient(create_app(rt), base_url="http://testserver") as api:
        for name in ("peter", "nina", "aud", "otto"):
            assert api.get("/api/review/screening", headers=auth(rt, name)).status_code == 403
        for name in ("peter", "ada"):
            reply = api.post(
                f"/api/review/screening/{uid}/read",
                json={"outcome": "no_recall"},
                headers=auth(rt, name),
            )
            assert reply.status_code == 403
        assert api.get("/api/review/screening", headers=auth(rt, "ada")).status_code == 200
        assert api.get("/api/review/screening").status_code == 401


def test_the_page_shows_the_strategy_and_takes_a_read(unit: Unit, web: TestClient) -> None:
    rt = unit[0]
    uid = _uid(rt, screening_exam(unit, "Berg^Anna", 10))
    assert login(web, "rolf").status_code in (302, 303)
    page = web.get("/review/screening")
    assert page.status_code == 200
    assert "Berg" in page.text and 'data-state="awaiting first read"' in page.text
    posted = web.post(
        f"/review/screening/{uid}/read",
        data={"outcome": "no_recall", "csrf_token": csrf(web)},
        follow_redirects=False,
    )
    assert posted.status_code == 303
    after = web.get("/review/screening")
    assert 'data-state="awaiting second read"' in after.text
    assert "Nothing for you now" in after.text  # rolf cannot read it a second time
    refused = web.post(
        f"/review/screening/{uid}/read",
        data={"outcome": "recall"},
        follow_redirects=False,
    )
    assert refused.status_code == 403  # no CSRF token
    with rt.sessions() as db:
        actions = list(db.scalars(select(AuditEvent.action)))
    assert "screening.list" in actions and "screening.read" in actions
