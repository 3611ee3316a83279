"""The administrators' sites page."""

from __future__ import annotations

from fastapi.testclient import TestClient

from lods.runtime import Runtime
from lods.sites import service
from support import csrf, login


def test_sites_page_is_for_admins_only(client: TestClient) -> None:
    html = {"Accept": "text/html"}
    assert client.get("/admin/sites", headers=html, follow_redirects=False).status_code == 303
    login(client, "rita")
    assert client.get("/admin/sites", headers=html).status_code == 403
    assert (
        client.post(
            "/admin/sites", data={"code": "X", "name": "X", "csrf_token": csrf(client)}
        ).status_code
        == 403
    )


def test_admin_creates_a_site_department_and_node_through_the_forms(
    client: TestClient, app_runtime: Runtime
) -> None:
    login(client, "ada")
    assert client.get("/sites").url.path == "/admin/sites"
    done = client.post(
        "/admin/sites",
        data={"code": "AUH", "name": "Aarhus Universitetshospital", "csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/admin/sites?done=")
    client.post(
        "/admin/sites/AUH/departments",
        data={
            "dept_code": "RAD",
            "name": "Radiologi",
            "kind": "radiology",
            "csrf_token": csrf(client),
        },
    )
    page = client.post(
        "/admin/sites/AUH/nodes",
        data={
            "ae_title": "CR_ROOM1",
            "department": "RAD",
            "port": "104",
            "host": "cr1",
            "csrf_token": csrf(client),
        },
    )
    assert page.status_code == 200
    assert "Aarhus Universitetshospital" in page.text and 'id="node-CR_ROOM1"' in page.text
    with app_runtime.sessions() as db:
        assert service.known_ae_titles(db) == frozenset({"CR_ROOM1"})


def test_sites_page_shows_why_a_node_was_refused(client: TestClient, app_runtime: Runtime) -> None:
    with app_runtime.sessions() as db, db.begin():
        service.create_site(db, code="AUH", name="Aarhus", actor="test")
    login(client, "ada")
    client.get("/admin/sites")
    page = client.post(
        "/admin/sites/AUH/nodes",
        data={"ae_title": "WAY_TOO_LONG_AE_TITLE", "csrf_token": csrf(client)},
    )
    assert page.status_code == 422 and 'role="alert"' in page.text and "16" in page.text
    assert client.post("/admin/sites/AUH/nodes", data={"ae_title": "CT1"}).status_code == 403


def test_admin_removes_a_node_from_the_page(client: TestClient, app_runtime: Runtime) -> None:
    with app_runtime.sessions() as db, db.begin():
        site = service.create_site(db, code="AUH", name="Aarhus", actor="test")
        service.add_dicom_node(db, site_id=site.id, ae_title="CT1", actor="test")
    login(client, "ada")
    client.get("/admin/sites")
    page = client.post(
        "/admin/sites/AUH/nodes/remove", data={"ae_title": "CT1", "csrf_token": csrf(client)}
    )
    assert page.status_code == 200
    with app_runtime.sessions() as db:
        assert service.known_ae_titles(db) == frozenset()


def test_sites_page_speaks_danish(client: TestClient) -> None:
    login(client, "ada")
    client.post(
        "/language", data={"language": "da", "next": "/admin/sites", "csrf_token": csrf(client)}
    )
    page = client.get("/admin/sites")
    assert "Hospitaler og DICOM-noder" in page.text
