"""Sites over HTTP: clinical users may list hospitals; only administrators change them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from lods.sites import service
from support import CAST, auth, login

NON_ADMINS = sorted(name for name in CAST if name != "ada")


def last_action(rt: Runtime) -> tuple[str, str]:
    with rt.sessions() as db:
        ev = db.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
        return ev.action, ev.actor


@pytest.fixture
def admin(client: TestClient, app_runtime: Runtime) -> TestClient:
    client.headers.update(auth(app_runtime, "ada"))
    return client


def test_sites_api_refuses_anonymous_requests(client: TestClient) -> None:
    assert client.get("/api/sites").status_code == 401
    assert client.post("/api/sites", json={"code": "X", "name": "X"}).status_code == 401


@pytest.mark.parametrize("name", NON_ADMINS)
def test_only_admins_change_sites_and_the_auditor_cannot_list_them(
    client: TestClient, app_runtime: Runtime, name: str
) -> None:
    with app_runtime.sessions() as db, db.begin():
        service.create_site(db, code="AUH", name="Aarhus", actor="test")
    headers = auth(app_runtime, name)
    listed = client.get("/api/sites", headers=headers)
    assert listed.status_code == (403 if name == "aud" else 200)
    if name != "aud":
        assert [s["code"] for s in listed.json()] == ["AUH"]
    attempts = [
        client.post("/api/sites", json={"code": "RH", "name": "Rigshospitalet"}, headers=headers),
        client.get("/api/sites/AUH", headers=headers),
        client.post("/api/sites/AUH/nodes", json={"ae_title": "CT1"}, headers=headers),
        client.delete("/api/sites/AUH/nodes/CT1", headers=headers),
    ]
    assert [r.status_code for r in attempts] == [403] * 4


def test_admin_builds_a_site_with_departments_and_nodes(
    admin: TestClient, app_runtime: Runtime
) -> None:
    created = admin.post("/api/sites", json={"code": "AUH", "name": "Aarhus Universitetshospital"})
    assert created.status_code == 201 and created.json()["code"] == "AUH"
    assert last_action(app_runtime) == ("site.create", "ada")
    dept = admin.post(
        "/api/sites/AUH/departments", json={"code": "RAD", "name": "Radiologi", "kind": "radiology"}
    )
    assert dept.status_code == 201
    node = admin.post(
        "/api/sites/AUH/nodes",
        json={"ae_title": "CR_ROOM1", "department": "RAD", "host": "10.1.2.3", "port": 104},
    )
    assert node.status_code == 201
    assert node.json() | {} == {
        "ae_title": "CR_ROOM1", "site": "AUH", "department": "RAD", "kind": "modality",
        "host": "10.1.2.3", "port": 104, "description": "", "active": True,
    }  # fmt: skip
    assert last_action(app_runtime) == ("node.add", "ada")
    detail = admin.get("/api/sites/AUH").json()
    assert [d["code"] for d in detail["departments"]] == ["RAD"]
    assert [n["ae_title"] for n in detail["nodes"]] == ["CR_ROOM1"]
    renamed = admin.patch("/api/sites/AUH", json={"name": "AUH Skejby"})
    assert renamed.json()["name"] == "AUH Skejby"


def test_admin_errors_map_to_404_409_422(admin: TestClient) -> None:
    admin.post("/api/sites", json={"code": "AUH", "name": "Aarhus"})
    admin.post("/api/sites/AUH/nodes", json={"ae_title": "CT1"})
    assert admin.post("/api/sites", json={"code": "AUH", "name": "Again"}).status_code == 409
    assert admin.post("/api/sites", json={"code": "a b", "name": "Bad"}).status_code == 422
    assert admin.get("/api/sites/NOPE").status_code == 404
    assert admin.post("/api/sites/AUH/nodes", json={"ae_title": "CT1"}).status_code == 409
    assert admin.post("/api/sites/AUH/nodes", json={"ae_title": "A\\B"}).status_code == 422
    assert admin.post("/api/sites/AUH/nodes", json={"ae_title": "   "}).status_code == 422
    assert (
        admin.post("/api/sites/AUH/nodes", json={"ae_title": "X", "kind": "fax"}).status_code == 422
    )
    assert (
        admin.post("/api/sites/AUH/nodes", json={"ae_title": "X", "department": "NOPE"}).status_code
        == 404
    )


def test_removing_a_node_refuses_its_ae_title_afterwards(
    admin: TestClient, app_runtime: Runtime
) -> None:
    admin.post("/api/sites", json={"code": "AUH", "name": "Aarhus"})
    admin.post("/api/sites", json={"code": "RH", "name": "Rigshospitalet"})
    admin.post("/api/sites/AUH/nodes", json={"ae_title": "CT 1"})
    assert admin.delete("/api/sites/RH/nodes/CT 1").status_code == 404
    assert admin.delete("/api/sites/AUH/nodes/CT 1").status_code == 204
    assert last_action(app_runtime) == ("node.remove", "ada")
    assert admin.get("/api/sites/AUH/nodes").json() == []
    removed = admin.get("/api/sites/AUH/nodes", params={"include_inactive": True}).json()
    assert [(n["ae_title"], n["active"]) for n in removed] == [("CT 1", False)]
    with app_runtime.sessions() as db:
        assert service.site_for_calling_ae(db, ae_title="CT 1", accept_unknown=False) is None


def test_session_changes_need_the_csrf_token(client: TestClient) -> None:
    login(client, "ada")
    body = {"code": "AUH", "name": "Aarhus"}
    assert client.post("/api/sites", json=body).status_code == 403
    token = client.cookies.get("lods_csrf") or ""
    assert client.post("/api/sites", json=body, headers={"X-CSRF-Token": token}).status_code == 201
