"""The alerts page, the menu's open-alerts badge and the alerts API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.alerts.models import Alert
from lods.alerts.service import raise_alert
from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from support import add_cast, auth, csrf, login

HTML = {"Accept": "text/html"}


@dataclass
class Alerts:
    integrity: int  # for admins and AI owners, urgent
    disk: int  # for admins only, a warning


def raise_two(rt: Runtime) -> Alerts:
    with rt.sessions() as db, db.begin():
        integrity = raise_alert(
            db,
            kind="solution.integrity",
            subject="solution_version:1",
            title="Fracture AI 1.0 refused to run: its installed files were changed",
            detail="engine.py does not match its SHA-256",
            severity="urgent",
            audience=("admin", "ai_owner"),
        )
        raise_alert(
            db,
            kind="solution.integrity",
            subject="solution_version:1",
            title="Fracture AI 1.0 refused to run: its installed files were changed",
            severity="urgent",
            audience=("admin", "ai_owner"),
        )
        disk = raise_alert(
            db,
            kind="storage.disk",
            subject="blobs",
            title="The image store is 91% full",
            severity="warning",
            audience=("admin",),
        )
        return Alerts(integrity=integrity.id, disk=disk.id)


def alert(rt: Runtime, alert_id: int) -> Alert:
    with rt.sessions() as db:
        row = db.get(Alert, alert_id)
        assert row is not None
        return row


def audited(rt: Runtime, action: str) -> list[str]:
    with rt.sessions() as db:
        return [e.actor for e in db.scalars(select(AuditEvent).where(AuditEvent.action == action))]


@pytest.fixture
def alerts(app_runtime: Runtime) -> Alerts:
    return raise_two(app_runtime)


def as_user(client: TestClient, name: str) -> TestClient:
    client.cookies.clear()
    assert login(client, name).status_code == 303
    return client


def test_alerts_are_for_admins_and_ai_owners(client: TestClient, alerts: Alerts) -> None:
    for name in ("rita", "peter", "nina", "aud"):
        as_user(client, name)
        assert client.get("/alerts", headers=HTML).status_code == 403
        assert client.get("/alerts/badge", headers=HTML).status_code == 403
        assert 'hx-get="/alerts/badge"' not in client.get("/").text
    home = as_user(client, "ada").get("/")
    assert 'hx-get="/alerts/badge"' in home.text and 'href="/alerts"' in home.text


def test_each_role_sees_the_alerts_addressed_to_it(client: TestClient, alerts: Alerts) -> None:
    page = as_user(client, "ada").get("/alerts")
    assert page.status_code == 200
    # Urgent first, with how often it happened.
    assert page.text.index(f'id="alert-{alerts.integrity}"') < page.text.index(
        f'id="alert-{alerts.disk}"'
    )
    assert "engine.py does not match its SHA-256" in page.text
    assert "The image store is 91% full" in page.text
    badge = client.get("/alerts/badge", headers={"HX-Request": "true"})
    assert ">2<" in badge.text and "urgent" in badge.text
    owner = as_user(client, "otto").get("/alerts")
    assert f'id="alert-{alerts.integrity}"' in owner.text
    assert "The image store is 91% full" not in owner.text
    assert ">1<" in client.get("/alerts/badge").text


def test_acknowledge_and_resolve_through_the_page(
    client: TestClient, app_runtime: Runtime, alerts: Alerts
) -> None:
    as_user(client, "otto").get("/alerts")
    # Not the AI owner's alert to handle.
    hidden = client.post(f"/alerts/{alerts.disk}/acknowledge", data={"csrf_token": csrf(client)})
    assert hidden.status_code == 404
    assert alert(app_runtime, alerts.disk).state == "raised"
    acknowledged = client.post(
        f"/alerts/{alerts.integrity}/acknowledge",
        data={"csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert acknowledged.status_code == 303
    row = alert(app_runtime, alerts.integrity)
    assert (row.state, row.acknowledged_by) == ("acknowledged", "otto")
    page = client.get(acknowledged.headers["location"])
    assert "The alert was acknowledged." in page.text
    assert f'action="/alerts/{alerts.integrity}/acknowledge"' not in page.text
    twice = client.post(
        f"/alerts/{alerts.integrity}/acknowledge", data={"csrf_token": csrf(client)}
    )
    assert twice.status_code == 409
    empty = client.post(
        f"/alerts/{alerts.integrity}/resolve",
        data={"csrf_token": csrf(client), "resolution": "  "},
    )
    assert empty.status_code == 422 and "say how the alert was resolved" in empty.text
    resolved = client.post(
        f"/alerts/{alerts.integrity}/resolve",
        data={"csrf_token": csrf(client), "resolution": "Reinstalled a clean copy as 1.0.1"},
        follow_redirects=False,
    )
    assert resolved.status_code == 303
    row = alert(app_runtime, alerts.integrity)
    assert (row.state, row.resolved_by, row.resolution) == (
        "resolved",
        "otto",
        "Reinstalled a clean copy as 1.0.1",
    )
    page = client.get("/alerts")
    assert "No open alerts." in page.text and "Reinstalled a clean copy as 1.0.1" in page.text
    assert client.get("/alerts/badge").text.strip() == ""
    assert audited(app_runtime, "alert.acknowledge") == ["otto"]
    assert audited(app_runtime, "alert.resolve") == ["otto"]
    without_token = client.post(f"/alerts/{alerts.disk}/acknowledge", data={})
    assert without_token.status_code == 403


@pytest.fixture
def api(runtime: Runtime) -> Iterator[tuple[TestClient, Alerts]]:
    """The same alerts on SQLite and PostgreSQL."""
    add_cast(runtime)
    raised = raise_two(runtime)
    with TestClient(create_app(runtime), base_url="http://testserver") as client:
        yield client, raised


def test_alerts_api(api: tuple[TestClient, Alerts], runtime: Runtime) -> None:
    client, alerts = api
    assert client.get("/api/alerts").status_code == 401
    assert client.get("/api/alerts", headers=auth(runtime, "rita")).status_code == 403
    ada, otto = auth(runtime, "ada"), auth(runtime, "otto")
    listed = client.get("/api/alerts", headers=ada).json()
    assert [a["id"] for a in listed] == [alerts.integrity, alerts.disk]
    assert listed[0]["occurrences"] == 2 and listed[0]["audience"] == ["admin", "ai_owner"]
    assert [a["id"] for a in client.get("/api/alerts", headers=otto).json()] == [alerts.integrity]
    assert client.post(f"/api/alerts/{alerts.disk}/acknowledge", headers=otto).status_code == 404
    acknowledged = client.post(f"/api/alerts/{alerts.disk}/acknowledge", headers=ada)
    assert acknowledged.status_code == 200
    assert acknowledged.json()["state"] == "acknowledged"
    assert acknowledged.json()["acknowledged_by"] == "ada"
    assert client.post(f"/api/alerts/{alerts.disk}/acknowledge", headers=ada).status_code == 409
    assert (
        client.post(
            f"/api/alerts/{alerts.disk}/resolve", json={"resolution": " "}, headers=ada
        ).status_code
        == 422
    )
    resolved = client.post(
        f"/api/alerts/{alerts.integrity}/resolve",
        json={"resolution": "Reinstalled a clean copy"},
        headers=otto,
    )
    assert resolved.status_code == 200 and resolved.json()["state"] == "resolved"
    # Resolving an unacknowledged alert acknowledges it by the same act.
    assert resolved.json()["acknowledged_by"] == "otto"
    assert client.post("/api/alerts/999/acknowledge", headers=ada).status_code == 404
    assert [a["id"] for a in client.get("/api/alerts", headers=ada).json()] == [alerts.disk]
    everything = client.get("/api/alerts?include_resolved=true", headers=ada).json()
    assert {a["id"]: a["state"] for a in everything} == {
        alerts.integrity: "resolved",
        alerts.disk: "acknowledged",
    }
    assert audited(runtime, "alert.resolve") == ["otto"]
