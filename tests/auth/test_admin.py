"""User administration through the admin pages and the JSON API."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.auth import service
from lods.auth.deps import token_digest
from lods.auth.models import ApiToken
from lods.runtime import Runtime
from support import PASSWORD, bearer_token, login


def _form(client: TestClient, **data: object) -> dict[str, object]:
    return {**data, "csrf_token": client.cookies["lods_csrf"]}


def _actions(rt: Runtime) -> list[tuple[str, str]]:
    with rt.sessions() as db:
        rows = db.execute(select(AuditEvent.actor, AuditEvent.action).order_by(AuditEvent.seq))
        return [(r[0], r[1]) for r in rows]


def test_admin_creates_user_with_generated_password_shown_once(
    client: TestClient, app_runtime: Runtime
) -> None:
    login(client, "ada")
    page = client.post(
        "/admin/users",
        data=_form(client, username="Hanne", full_name="Hanne Holm", roles=["nurse", "physician"]),
    )
    assert page.status_code == 200
    secret = re.search(r'<code class="secret-value">([^<]+)</code>', page.text)
    assert secret is not None
    # The new user logs in with the password shown.
    other = TestClient(client.app, base_url="http://testserver")
    assert login(other, "hanne", secret.group(1)).status_code == 303
    assert sorted(other.get("/api/me").json()["roles"]) == ["nurse", "physician"]
    # It is not on the page again.
    assert secret.group(1) not in client.get("/admin/users").text
    assert ("ada", "user.create") in _actions(app_runtime)


def test_admin_duplicate_user_is_reported(client: TestClient) -> None:
    login(client, "ada")
    page = client.post(
        "/admin/users", data=_form(client, username="rita", roles=["nurse"], password=PASSWORD)
    )
    assert page.status_code == 409
    assert "already exists" in page.text


def test_admin_short_password_is_reported(client: TestClient) -> None:
    login(client, "ada")
    page = client.post(
        "/admin/users", data=_form(client, username="kim", roles=["nurse"], password="short")
    )
    assert page.status_code == 422
    assert "at least 12 characters" in page.text


def test_admin_deactivates_user_and_ends_their_session(
    client: TestClient, app_runtime: Runtime
) -> None:
    nina = TestClient(client.app, base_url="http://testserver")
    login(nina, "nina")
    assert nina.get("/api/me").status_code == 200
    login(client, "ada")
    response = client.post(
        "/admin/users/nina/deactivate", data=_form(client), follow_redirects=False
    )
    assert response.headers["location"] == "/admin/users?done=deactivated"
    assert "The user was deactivated." in client.get(response.headers["location"]).text
    assert nina.get("/api/me").status_code == 401
    assert ("ada", "user.deactivate") in _actions(app_runtime)


def test_admin_cannot_deactivate_last_admin(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "ada")
    page = client.post("/admin/users/ada/deactivate", data=_form(client))
    assert page.status_code == 409
    assert client.get("/api/me").status_code == 200


def test_admin_unlocks_locked_user(client: TestClient, app_runtime: Runtime) -> None:
    rita = TestClient(client.app, base_url="http://testserver")
    for _ in range(app_runtime.settings.login_max_failures):
        login(rita, "rita", "guess guess guess")
    assert "locked" in login(rita, "rita").text
    login(client, "ada")
    assert "Locked until" in client.get("/admin/users").text
    client.post("/admin/users/rita/unlock", data=_form(client))
    assert login(rita, "rita").status_code == 303
    assert ("ada", "user.unlock") in _actions(app_runtime)


def test_admin_creates_and_revokes_token_in_ui(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "ada")
    page = client.post(
        "/admin/users/otto/tokens", data=_form(client, label="router", expires_days="30")
    )
    token = re.search(r'<code class="secret-value">(lods_[^<]+)</code>', page.text)
    assert token is not None
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    assert client.get("/api/me", headers=headers).json()["username"] == "otto"
    with app_runtime.sessions() as db:
        row = db.scalars(select(ApiToken)).one()
        assert row.label == "router" and row.expires_at is not None
    client.post(f"/admin/tokens/{row.id}/revoke", data=_form(client))
    assert client.get("/api/me", headers=headers).status_code == 401


def test_api_user_lifecycle(client: TestClient, app_runtime: Runtime) -> None:
    headers = {"Authorization": f"Bearer {bearer_token(app_runtime, 'ada')}"}
    created = client.post(
        "/api/users", json={"username": "kim", "roles": ["auditor"]}, headers=headers
    )
    assert created.status_code == 201
    body = created.json()
    assert body["username"] == "kim" and body["roles"] == ["auditor"]
    assert len(body["generated_password"]) >= 16
    listed = client.get("/api/users", headers=headers).json()
    assert "kim" in [u["username"] for u in listed]
    assert not any("hash" in key for u in listed for key in u)
    conflict = client.post(
        "/api/users", json={"username": "kim", "roles": ["auditor"]}, headers=headers
    )
    assert conflict.status_code == 409
    bad_role = client.post("/api/users", json={"username": "x", "roles": ["god"]}, headers=headers)
    assert bad_role.status_code == 422
    gone = client.post("/api/users/kim/deactivate", headers=headers)
    assert gone.status_code == 200 and gone.json()["is_active"] is False
    assert client.post("/api/users/ghost/unlock", headers=headers).status_code == 404


def test_api_token_created_once_and_revoked(client: TestClient, app_runtime: Runtime) -> None:
    headers = {"Authorization": f"Bearer {bearer_token(app_runtime, 'ada')}"}
    created = client.post(
        "/api/users/rita/tokens", json={"label": "script", "expires_days": 7}, headers=headers
    )
    assert created.status_code == 201
    token, token_id = created.json()["token"], created.json()["id"]
    with app_runtime.sessions() as db:
        assert db.get(ApiToken, token_id).token_hash == token_digest(token)  # type: ignore[union-attr]
    listed = client.get("/api/tokens", params={"username": "rita"}, headers=headers).json()
    assert [t["id"] for t in listed] == [token_id]
    assert "token" not in listed[0]
    assert client.delete(f"/api/tokens/{token_id}", headers=headers).status_code == 204
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.delete("/api/tokens/9999", headers=headers).status_code == 404
    with app_runtime.sessions() as db:
        assert service.list_api_tokens(db, username="rita") == []
