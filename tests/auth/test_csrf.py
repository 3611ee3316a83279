"""Double-submit CSRF: forms and cookie-authenticated API calls must echo the cookie."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lods.runtime import Runtime
from support import PASSWORD, bearer_token, login


def _login_form(client: TestClient, csrf: str | None) -> dict[str, str]:
    data = {"username": "nina", "password": PASSWORD, "next": "/"}
    if csrf is not None:
        data["csrf_token"] = csrf
    return data


def test_login_page_sets_readable_strict_csrf_cookie(client: TestClient) -> None:
    page = client.get("/login")
    header = next(h for h in page.headers.get_list("set-cookie") if h.startswith("lods_csrf="))
    parts = [p.strip().lower() for p in header.split(";")]
    assert "samesite=strict" in parts
    assert "httponly" not in parts
    token = client.cookies["lods_csrf"]
    assert f'name="csrf_token" value="{token}"' in page.text


def test_csrf_cookie_not_reissued_when_present(client: TestClient) -> None:
    client.get("/login")
    token = client.cookies["lods_csrf"]
    again = client.get("/login")
    assert not any(h.startswith("lods_csrf=") for h in again.headers.get_list("set-cookie"))
    assert f'value="{token}"' in again.text


def test_login_without_csrf_token_is_forbidden(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data=_login_form(client, None), follow_redirects=False)
    assert response.status_code == 403
    assert "lods_session" not in response.cookies


def test_login_with_wrong_csrf_token_is_forbidden(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data=_login_form(client, "forged"), follow_redirects=False)
    assert response.status_code == 403


def test_login_without_csrf_cookie_is_forbidden(client: TestClient) -> None:
    client.get("/login")
    token = client.cookies["lods_csrf"]
    client.cookies.clear()
    response = client.post("/login", data=_login_form(client, token), follow_redirects=False)
    assert response.status_code == 403


def test_login_with_csrf_header_is_accepted(client: TestClient) -> None:
    client.get("/login")
    response = client.post(
        "/login",
        data=_login_form(client, None),
        headers={"X-CSRF-Token": client.cookies["lods_csrf"]},
        follow_redirects=False,
    )
    assert response.status_code == 303


def test_login_rotates_csrf_token(client: TestClient) -> None:
    client.get("/login")
    before = client.cookies["lods_csrf"]
    login(client, "nina")
    assert client.cookies["lods_csrf"] != before


@pytest.mark.parametrize("csrf", [None, "forged"])
def test_protected_form_refused_without_matching_token(
    client: TestClient, app_runtime: Runtime, csrf: str | None
) -> None:
    login(client, "ada")
    data = {"username": "newbie", "roles": "nurse", "password": "a long enough password"}
    if csrf is not None:
        data["csrf_token"] = csrf
    response = client.post("/admin/users", data=data, follow_redirects=False)
    assert response.status_code == 403
    from lods.auth.service import get_user

    with app_runtime.sessions() as db:
        assert get_user(db, username="newbie") is None


def test_protected_form_accepted_with_matching_token(
    client: TestClient, app_runtime: Runtime
) -> None:
    login(client, "ada")
    data = {
        "username": "newbie",
        "roles": "nurse",
        "password": "a long enough password",
        "csrf_token": client.cookies["lods_csrf"],
    }
    response = client.post("/admin/users", data=data, follow_redirects=False)
    assert response.status_code == 303
    from lods.auth.service import get_user

    with app_runtime.sessions() as db:
        assert get_user(db, username="newbie") is not None


def test_logout_without_csrf_token_is_refused(client: TestClient) -> None:
    login(client, "nina")
    assert client.post("/logout", follow_redirects=False).status_code == 403
    assert client.get("/api/me").status_code == 200


def test_cookie_authenticated_api_call_needs_csrf_header(client: TestClient) -> None:
    login(client, "ada")
    body = {"username": "newbie", "roles": ["nurse"], "password": "a long enough password"}
    assert client.post("/api/users", json=body).status_code == 403
    ok = client.post("/api/users", json=body, headers={"X-CSRF-Token": client.cookies["lods_csrf"]})
    assert ok.status_code == 201


def test_bearer_token_requests_are_exempt(app_runtime: Runtime, client: TestClient) -> None:
    token = bearer_token(app_runtime, "ada")
    body = {"username": "newbie", "roles": ["nurse"], "password": "a long enough password"}
    response = client.post("/api/users", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201


def test_htmx_gets_csrf_header_from_body(client: TestClient) -> None:
    login(client, "nina")
    page = client.get("/")
    token = client.cookies["lods_csrf"]
    assert f'hx-headers=\'{{"X-CSRF-Token": "{token}"}}\'' in page.text
