"""Every route of the app refuses anonymous requests, except health checks and login."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from lods.app import ROUTERS, create_app
from lods.imaging import dicomweb
from lods.runtime import Runtime

#: Routes that are open by design: liveness for load balancers, and the login form itself.
PUBLIC = {("GET", "/healthz"), ("GET", "/login"), ("POST", "/login")}

_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def _concrete(path: str) -> str:
    """Return the path with every parameter filled with a plausible value."""
    return _PARAM.sub(lambda m: "1.2.3" if "uid" in m.group(1).lower() else "1", path)


def _all_routes(rt: Runtime) -> list[tuple[str, str]]:
    """Return (method, path) of every route: the app's own and every included router's."""
    app = create_app(rt)
    routes = [(r, "") for r in app.routes if isinstance(r, APIRoute)]
    routes += [(r, "") for router in ROUTERS for r in router.routes]
    routes += [(r, dicomweb.PREFIX) for router in dicomweb.ROUTERS for r in router.routes]
    found = []
    for route, prefix in routes:
        assert isinstance(route, APIRoute)
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            found.append((method, prefix + route.path))
    return found


def test_app_has_routes_for_every_domain(sqlite_runtime: Runtime) -> None:
    paths = {path for _method, path in _all_routes(sqlite_runtime)}
    assert len(paths) > 40
    for prefix in ("/api/", "/dicom-web/", "/studies", "/audit", "/admin/", "/login"):
        assert any(p.startswith(prefix) for p in paths), prefix


def test_every_route_refuses_anonymous_requests(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    open_routes = []
    for method, path in _all_routes(sqlite_runtime):
        if (method, path) in PUBLIC:
            continue
        response = client.request(method, _concrete(path), follow_redirects=False)
        refused = response.status_code in (401, 403) or (
            response.status_code in (302, 303, 307)
            and response.headers["location"].startswith("/login")
        )
        if not refused:
            open_routes.append((method, path, response.status_code))
    assert open_routes == []


def test_anonymous_api_request_gets_401_with_bearer_challenge(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    response = client.get("/api/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_anonymous_page_request_redirects_to_login(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    response = client.get("/studies?q=x", headers={"accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/studies%3Fq%3Dx"


@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/docs"])
def test_api_docs_need_a_login(sqlite_runtime: Runtime, path: str) -> None:
    client = TestClient(create_app(sqlite_runtime))
    assert client.get(path).status_code == 401


def test_healthz_answers_without_login(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_dicomweb_allows_a_configured_viewer_origin_only(tmp_path, sqlite_url: str) -> None:
    from support import make_settings

    rt = Runtime.open(
        make_settings(
            tmp_path / "d", sqlite_url, dicomweb_cors_origins=["https://viewer.example.org"]
        ),
        migrate=False,
    )
    client = TestClient(create_app(rt))
    preflight = {"access-control-request-method": "GET"}
    allowed = client.options(
        "/dicom-web/studies", headers={"origin": "https://viewer.example.org", **preflight}
    )
    other = client.options(
        "/dicom-web/studies", headers={"origin": "https://evil.example.com", **preflight}
    )
    rt.close()
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example.org"
    assert "access-control-allow-origin" not in other.headers


def test_no_cross_origin_access_by_default(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    response = client.get("/healthz", headers={"origin": "https://viewer.example.org"})
    assert "access-control-allow-origin" not in response.headers
