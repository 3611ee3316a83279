"""The ED page keeps itself current by polling a fingerprint that carries no patient data:
it needs a login with an ED role, changes when an AI answer arrives, and is not audited
as a read of patient data (the page it triggers is)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from review_support import Unit, screening_exam, screening_unit
from sqlalchemy import func, select

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from support import auth, login


def test_the_ed_changes_endpoint_tracks_arrivals_without_patient_data(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    unit: Unit = screening_unit(sqlite_runtime, tmp_path)
    rt = unit[0]
    with TestClient(create_app(rt), base_url="http://testserver") as api:
        assert api.get("/api/review/ed/changes").status_code == 401
        assert api.get("/api/review/ed/changes", headers=auth(rt, "nina")).status_code == 403
        headers = auth(rt, "peter")
        before = api.get("/api/review/ed/changes?site=SCR", headers=headers).json()
        screening_exam(unit, "Nielsen^Ane", 4)
        with rt.sessions() as db:
            events = db.scalar(select(func.count()).select_from(AuditEvent))
        after = api.get("/api/review/ed/changes?site=SCR", headers=headers).json()
        assert set(after) == {"fingerprint"} and after != before
        assert "Nielsen" not in after["fingerprint"]
        with rt.sessions() as db:  # the poll itself wrote no audit event
            assert db.scalar(select(func.count()).select_from(AuditEvent)) == events


def test_the_ed_page_carries_its_fingerprint_and_poller(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    unit: Unit = screening_unit(sqlite_runtime, tmp_path)
    with TestClient(create_app(unit[0]), base_url="http://testserver") as web:
        assert login(web, "peter").status_code in (302, 303)
        page = web.get("/review/ed?site=SCR")
        assert page.status_code == 200
        assert 'id="ed-live"' in page.text and "/static/ed.js" in page.text
        assert "/api/review/ed/changes?site=SCR" in page.text
        assert web.get("/static/ed.js").status_code == 200
