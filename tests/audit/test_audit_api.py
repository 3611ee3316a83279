"""The audit trail over HTTP: only auditors read it, and every read is itself audited."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.audit import service
from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from support import CAST, auth, login

OTHER_ROLES = sorted(name for name in CAST if name != "aud")
API_ROUTES = ["/api/audit/events", "/api/audit/verify", "/api/audit/export"]


def actions(rt: Runtime) -> list[str]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def seed(rt: Runtime) -> None:
    with rt.sessions() as db, db.begin():
        service.record(db, actor="rita", action="study.view", patient_id="0101", study_uid="1.2.3")
        service.record(db, actor="peter", action="study.view", patient_id="0202")
        service.record(
            db,
            actor="dicom:CR1",
            action="study.store",
            patient_id="=HYPERLINK(1)",
            outcome="failure",
        )


# --- who may read the trail --------------------------------------------------------------


def test_audit_api_refuses_anonymous_requests(client: TestClient) -> None:
    assert [client.get(route).status_code for route in API_ROUTES] == [401, 401, 401]


@pytest.mark.parametrize("name", OTHER_ROLES)
def test_audit_api_and_page_refuse_every_role_but_auditor(
    client: TestClient, app_runtime: Runtime, name: str
) -> None:
    headers = auth(app_runtime, name)
    assert [client.get(route, headers=headers).status_code for route in API_ROUTES] == [403] * 3
    login(client, name)
    assert client.get("/audit", headers={"Accept": "text/html"}).status_code == 403
    assert (
        client.post(
            "/audit/verify", data={"csrf_token": client.cookies.get("lods_csrf")}
        ).status_code
        == 403
    )


def test_audit_page_sends_anonymous_browsers_to_login(client: TestClient) -> None:
    response = client.get("/audit", headers={"Accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


# --- reading -----------------------------------------------------------------------------


def test_events_are_listed_newest_first_and_the_read_is_audited(
    client: TestClient, app_runtime: Runtime
) -> None:
    seed(app_runtime)
    response = client.get(
        "/api/audit/events", params={"action": "study.view"}, headers=auth(app_runtime, "aud")
    )
    assert response.status_code == 200
    page = response.json()
    assert page["total"] == 2
    assert [e["patient_id"] for e in page["events"]] == ["0202", "0101"]
    assert page["events"][1]["study_uid"] == "1.2.3"
    assert actions(app_runtime)[-1] == "audit.read"


def test_events_filter_by_patient_outcome_and_time(
    client: TestClient, app_runtime: Runtime
) -> None:
    seed(app_runtime)
    headers = auth(app_runtime, "aud")
    by_patient = client.get("/api/audit/events", params={"patient_id": "0101"}, headers=headers)
    assert [e["actor"] for e in by_patient.json()["events"]] == ["rita"]
    failures = client.get("/api/audit/events", params={"outcome": "failure"}, headers=headers)
    assert [e["action"] for e in failures.json()["events"]] == ["study.store"]
    future = client.get("/api/audit/events", params={"since": "2999-01-01"}, headers=headers)
    assert future.json()["total"] == 0
    past = client.get("/api/audit/events", params={"until": "2000-01-01T00:00:00"}, headers=headers)
    assert past.json()["total"] == 0


def test_events_page_with_limit_and_offset(client: TestClient, app_runtime: Runtime) -> None:
    seed(app_runtime)
    seed(app_runtime)
    headers = auth(app_runtime, "aud")
    # Each read is audited and grows the trail, so page through a filter it does not match.
    query = {"action": "study.view", "limit": 2}
    first = client.get("/api/audit/events", params=query, headers=headers).json()
    second = client.get("/api/audit/events", params={**query, "offset": 2}, headers=headers).json()
    seqs = [e["seq"] for e in first["events"] + second["events"]]
    assert len(first["events"]) == 2
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 4


def test_verify_reports_an_intact_chain(client: TestClient, app_runtime: Runtime) -> None:
    seed(app_runtime)
    response = client.get("/api/audit/verify", headers=auth(app_runtime, "aud"))
    body = response.json()
    assert response.status_code == 200
    assert body["ok"] is True and body["problems"] == [] and body["events"] > 3
    assert actions(app_runtime)[-1] == "audit.verify"


def test_verify_reports_tampering(client: TestClient, app_runtime: Runtime) -> None:
    seed(app_runtime)
    with app_runtime.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        conn.exec_driver_sql("UPDATE audit_events SET actor = 'nobody' WHERE seq = 2")
    body = client.get("/api/audit/verify", headers=auth(app_runtime, "aud")).json()
    assert body["ok"] is False
    assert [(p["seq"], p["kind"]) for p in body["problems"]] == [(2, "edited")]


# --- export ------------------------------------------------------------------------------


def test_export_jsonl_streams_events_whose_hashes_recompute(
    client: TestClient, app_runtime: Runtime
) -> None:
    seed(app_runtime)
    response = client.get(
        "/api/audit/export", params={"format": "jsonl"}, headers=auth(app_runtime, "aud")
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    events = [json.loads(line) for line in response.text.splitlines()]
    assert events[-1]["action"] == "audit.export"  # on record before any of it left
    for ev in events:
        fields = {k: v for k, v in ev.items() if k not in ("hash", "prev_hash", "occurred_at")}

        when = datetime.fromisoformat(ev["occurred_at"])
        assert (
            service.event_hash(prev_hash=ev["prev_hash"], occurred_at=when, **fields) == ev["hash"]
        )
    assert [e["prev_hash"] for e in events[1:]] == [e["hash"] for e in events[:-1]]


def test_export_csv_of_one_patient_defuses_formulas(
    client: TestClient, app_runtime: Runtime
) -> None:
    seed(app_runtime)
    response = client.get(
        "/api/audit/export",
        params={"format": "csv", "patient_id": "=HYPERLINK(1)"},
        headers=auth(app_runtime, "aud"),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["action"] for r in rows] == ["study.store"]
    assert rows[0]["patient_id"] == "'=HYPERLINK(1)"


def test_export_rejects_an_unknown_format(client: TestClient, app_runtime: Runtime) -> None:
    response = client.get(
        "/api/audit/export", params={"format": "xml"}, headers=auth(app_runtime, "aud")
    )
    assert response.status_code == 422


# --- the page ----------------------------------------------------------------------------


def test_audit_page_lists_filters_and_audits_the_view(
    client: TestClient, app_runtime: Runtime
) -> None:
    seed(app_runtime)
    login(client, "aud")
    page = client.get("/audit", params={"patient_id": "0202"})
    assert page.status_code == 200
    assert "0202" in page.text and "0101" not in page.text
    assert actions(app_runtime)[-1] == "audit.read"


def test_audit_page_says_when_a_time_is_unreadable(
    client: TestClient, app_runtime: Runtime
) -> None:
    login(client, "aud")
    page = client.get("/audit", params={"since": "yesterday"})
    assert page.status_code == 200
    assert 'role="alert"' in page.text


def test_audit_page_verify_button_shows_the_result(
    client: TestClient, app_runtime: Runtime
) -> None:
    seed(app_runtime)
    login(client, "aud")
    client.get("/audit")
    csrf = client.cookies.get("lods_csrf")
    refused = client.post("/audit/verify", data={})
    assert refused.status_code == 403
    page = client.post("/audit/verify", data={"csrf_token": csrf})
    assert page.status_code == 200
    assert 'id="verify-result"' in page.text and 'class="notice"' in page.text
    assert actions(app_runtime)[-2:] == ["audit.verify", "audit.read"]


def test_audit_page_verify_lists_each_problem(client: TestClient, app_runtime: Runtime) -> None:
    seed(app_runtime)
    with app_runtime.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
        conn.exec_driver_sql("DELETE FROM audit_events WHERE seq = 3")
    login(client, "aud")
    client.get("/audit")
    page = client.post("/audit/verify", data={"csrf_token": client.cookies.get("lods_csrf")})
    assert page.status_code == 200
    result = page.text.split('id="verify-result"')[1].split("</section>")[0]
    assert 'role="alert"' in result
    assert "<td>3</td><td>Deleted</td>" in result


def test_verifying_leaves_the_database_writable_for_intake(
    app_runtime: Runtime, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long verify must not hold SQLite's write lock (DICOM intake would wait on it)."""
    import sqlite3

    path = app_runtime.engine.url.database
    assert path
    real_verify = service.verify
    writable: list[bool] = []

    def verify_while_probing(db: object) -> object:
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            writable.append(True)
        except sqlite3.OperationalError:
            writable.append(False)
        finally:
            probe.close()
        return real_verify(db)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "verify", verify_while_probing)
    response = client.get("/api/audit/verify", headers=auth(app_runtime, "aud"))
    assert response.status_code == 200
    assert writable == [True]
