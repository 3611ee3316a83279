"""Who may reach which auth route: anonymous callers and the wrong roles are refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lods.runtime import Runtime
from support import CAST, bearer_token, login

NON_ADMINS = [name for name, role in CAST.items() if role != "admin"]

ADMIN_PAGES = [("GET", "/admin/users")]
ADMIN_FORMS = [
    ("POST", "/admin/users"),
    ("POST", "/admin/users/nina/deactivate"),
    ("POST", "/admin/users/nina/unlock"),
    ("POST", "/admin/users/nina/tokens"),
    ("POST", "/admin/tokens/1/revoke"),
]
ADMIN_API = [
    ("GET", "/api/users"),
    ("POST", "/api/users"),
    ("POST", "/api/users/nina/deactivate"),
    ("POST", "/api/users/nina/unlock"),
    ("POST", "/api/users/nina/tokens"),
    ("GET", "/api/tokens"),
    ("DELETE", "/api/tokens/1"),
]
LOGGED_IN_ONLY = [("GET", "/"), ("POST", "/logout"), ("POST", "/language"), ("GET", "/api/me")]


@pytest.mark.parametrize("name", NON_ADMINS)
def test_admin_pages_refused_for_other_roles(client: TestClient, name: str) -> None:
    login(client, name)
    csrf = {"csrf_token": client.cookies["lods_csrf"]}
    for method, path in ADMIN_PAGES + ADMIN_FORMS:
        response = client.request(
            method,
            path,
            data=csrf if method == "POST" else None,
            headers={"Accept": "text/html"},
            follow_redirects=False,
        )
        assert response.status_code == 403, (name, method, path)


@pytest.mark.parametrize("name", NON_ADMINS)
def test_admin_api_refused_for_other_roles(
    client: TestClient, app_runtime: Runtime, name: str
) -> None:
    headers = {"Authorization": f"Bearer {bearer_token(app_runtime, name)}"}
    for method, path in ADMIN_API:
        body = {"username": "x", "roles": ["nurse"]} if path == "/api/users" else {}
        response = client.request(
            method, path, json=body if method == "POST" else None, headers=headers
        )
        assert response.status_code == 403, (name, method, path)


def test_admin_nothing_changed_by_refused_requests(
    client: TestClient, app_runtime: Runtime
) -> None:
    login(client, "nina")
    client.post(
        "/admin/users/rita/deactivate",
        data={"csrf_token": client.cookies["lods_csrf"]},
        follow_redirects=False,
    )
    from lods.auth.service import get_user

    with app_runtime.sessions() as db:
        rita = get_user(db, username="rita")
        assert rita is not None and rita.is_active


@pytest.mark.parametrize("method_path", ADMIN_PAGES + ADMIN_FORMS + ADMIN_API + LOGGED_IN_ONLY)
def test_anonymous_requests_refused(client: TestClient, method_path: tuple[str, str]) -> None:
    method, path = method_path
    client.get("/login")  # a CSRF cookie, so refusals are about identity, not CSRF
    csrf = client.cookies["lods_csrf"]
    response = client.request(
        method,
        path,
        data={"csrf_token": csrf} if method == "POST" and not path.startswith("/api") else None,
        headers={"X-CSRF-Token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 401, (method, path)
    assert response.json() == {"detail": "authentication required"}


def test_anonymous_browser_is_sent_to_login(client: TestClient) -> None:
    response = client.get("/admin/users", headers={"Accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/admin/users"


def test_login_page_and_static_are_public(client: TestClient) -> None:
    assert client.get("/login").status_code == 200
    assert client.get("/static/lods.css").status_code == 200
    assert client.get("/static/htmx.min.js").status_code == 200


def test_admin_sees_user_page(client: TestClient) -> None:
    login(client, "ada")
    page = client.get("/admin/users")
    assert page.status_code == 200
    for name in CAST:
        assert f'id="user-{name}"' in page.text


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("rita", "/studies"),
        ("peter", "/studies"),
        ("otto", "/studies"),
        ("ada", "/studies"),
        ("aud", "/audit"),
    ],
)
def test_home_sends_each_role_to_its_page(client: TestClient, name: str, target: str) -> None:
    login(client, name)
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == target


def test_home_for_nurse_says_no_modules_yet(client: TestClient) -> None:
    login(client, "nina")
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 200
    assert "no modules for your role yet" in response.text
    assert 'href="/studies"' not in response.text
    assert 'href="/admin/users"' not in response.text
