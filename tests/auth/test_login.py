"""Password login through the real form: success, failures, lockout, sessions, logout."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.auth.deps import token_digest
from lods.auth.models import User, UserSession
from lods.db import utcnow
from lods.runtime import Runtime
from support import PASSWORD, login


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(
            db.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def _user(rt: Runtime, name: str) -> User:
    with rt.sessions() as db:
        user = db.scalar(select(User).where(User.username == name))
        assert user is not None
        return user


def test_login_succeeds_with_right_password(client: TestClient, app_runtime: Runtime) -> None:
    response = login(client, "nina")
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert client.get("/api/me").json()["username"] == "nina"
    [event] = _events(app_runtime, "auth.login")
    assert event.actor == "nina" and event.outcome == "success"
    assert event.source == "testclient"


def test_login_fails_with_wrong_password(client: TestClient, app_runtime: Runtime) -> None:
    response = login(client, "nina", "not the password at all")
    assert response.status_code == 401
    assert "Wrong username or password" in response.text
    assert "lods_session" not in response.cookies
    assert client.get("/api/me").status_code == 401
    [event] = _events(app_runtime, "auth.login_failed")
    assert event.outcome == "failure"
    assert json.loads(event.detail) == {"reason": "wrong password"}
    assert _user(app_runtime, "nina").failed_logins == 1


def test_login_fails_same_way_for_unknown_user(client: TestClient, app_runtime: Runtime) -> None:
    unknown = login(client, "nobody", PASSWORD)
    wrong = login(client, "nina", "not the password at all")
    assert unknown.status_code == wrong.status_code == 401
    assert "Wrong username or password" in unknown.text
    reasons = [json.loads(e.detail)["reason"] for e in _events(app_runtime, "auth.login_failed")]
    assert reasons == ["unknown user", "wrong password"]


def test_login_locks_account_after_max_failures(client: TestClient, app_runtime: Runtime) -> None:
    limit = app_runtime.settings.login_max_failures
    for _ in range(limit - 1):
        assert "Wrong username" in login(client, "rita", "guess guess guess").text
    locking = login(client, "rita", "guess guess guess")
    assert locking.status_code == 401 and "locked" in locking.text
    assert _user(app_runtime, "rita").locked_until is not None
    # The right password is refused while the lock lasts.
    refused = login(client, "rita")
    assert refused.status_code == 401 and "locked" in refused.text
    assert client.get("/api/me").status_code == 401
    [lockout] = _events(app_runtime, "auth.lockout")
    assert lockout.actor == "rita" and json.loads(lockout.detail)["failed_logins"] == limit
    reasons = [json.loads(e.detail)["reason"] for e in _events(app_runtime, "auth.login_failed")]
    assert reasons == ["wrong password"] * limit + ["locked"]
    assert _events(app_runtime, "auth.login") == []


def _expire_lock(rt: Runtime, name: str) -> None:
    with rt.sessions() as db, db.begin():
        user = db.scalar(select(User).where(User.username == name))
        assert user is not None and user.locked_until is not None
        user.locked_until = utcnow() - timedelta(seconds=1)


def test_login_allowed_again_after_lockout_expires(
    client: TestClient, app_runtime: Runtime
) -> None:
    for _ in range(app_runtime.settings.login_max_failures):
        login(client, "rita", "guess guess guess")
    _expire_lock(app_runtime, "rita")
    assert login(client, "rita").status_code == 303
    user = _user(app_runtime, "rita")
    assert user.failed_logins == 0 and user.locked_until is None


def test_failure_after_expired_lock_starts_a_fresh_count(
    client: TestClient, app_runtime: Runtime
) -> None:
    for _ in range(app_runtime.settings.login_max_failures):
        login(client, "rita", "guess guess guess")
    _expire_lock(app_runtime, "rita")
    again = login(client, "rita", "guess guess guess")
    assert "Wrong username" in again.text
    assert _user(app_runtime, "rita").failed_logins == 1


def test_successful_login_resets_failure_count(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "peter", "guess guess guess")
    login(client, "peter", "guess guess guess")
    assert _user(app_runtime, "peter").failed_logins == 2
    assert login(client, "peter").status_code == 303
    assert _user(app_runtime, "peter").failed_logins == 0


def test_login_refused_for_inactive_user(client: TestClient, app_runtime: Runtime) -> None:
    from lods.auth.service import deactivate_user

    with app_runtime.sessions() as db, db.begin():
        deactivate_user(db, username="nina", actor="test")
    response = login(client, "nina")
    assert response.status_code == 401
    assert "deactivated" in response.text
    assert client.get("/api/me").status_code == 401
    [event] = _events(app_runtime, "auth.login_failed")
    assert json.loads(event.detail) == {"reason": "inactive"}


def test_inactive_user_with_wrong_password_sees_generic_error(
    client: TestClient, app_runtime: Runtime
) -> None:
    from lods.auth.service import deactivate_user

    with app_runtime.sessions() as db, db.begin():
        deactivate_user(db, username="nina", actor="test")
    response = login(client, "nina", "guess guess guess")
    assert "Wrong username or password" in response.text


def test_session_cookie_is_httponly_lax_and_stored_hashed(
    client: TestClient, app_runtime: Runtime
) -> None:
    response = login(client, "nina")
    header = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("lods_session=")
    )
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "samesite=lax" in header.lower()
    assert "secure" not in attributes  # cookie_secure is off in tests
    max_age = int(header.lower().split("max-age=")[1].split(";")[0])
    assert max_age == int(app_runtime.settings.session_hours * 3600)
    token = client.cookies["lods_session"]
    with app_runtime.sessions() as db:
        stored = db.scalars(select(UserSession.token_hash)).all()
    assert stored == [token_digest(token)]
    assert token not in stored


def test_session_cookie_secure_when_configured(tmp_path: Path, sqlite_url: str) -> None:
    from lods.app import create_app
    from support import add_cast, make_settings

    rt = Runtime.open(make_settings(tmp_path / "d", sqlite_url, cookie_secure=True), migrate=False)
    add_cast(rt)
    try:
        with TestClient(create_app(rt), base_url="https://testserver") as c:
            response = login(c, "nina")
            header = next(
                h for h in response.headers.get_list("set-cookie") if h.startswith("lods_session=")
            )
            assert "secure" in [p.strip().lower() for p in header.split(";")]
    finally:
        rt.close()


def test_every_login_gets_a_new_session(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "nina")
    first = client.cookies["lods_session"]
    login(client, "nina")
    second = client.cookies["lods_session"]
    assert first != second
    with app_runtime.sessions() as db:
        old = db.scalar(select(UserSession).where(UserSession.token_hash == token_digest(first)))
    assert old is not None and old.revoked_at is not None


def test_planted_session_cookie_is_not_adopted(client: TestClient, app_runtime: Runtime) -> None:
    client.cookies.set("lods_session", "attacker-chosen-value", domain="testserver.local")
    login(client, "nina")
    assert client.cookies["lods_session"] != "attacker-chosen-value"
    assert client.get("/api/me").json()["username"] == "nina"


def test_logout_revokes_session(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "nina")
    token = client.cookies["lods_session"]
    response = client.post(
        "/logout", data={"csrf_token": client.cookies["lods_csrf"]}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/login"
    # Even replaying the old cookie does not get back in.
    client.cookies.set("lods_session", token)
    assert client.get("/api/me").status_code == 401
    [event] = _events(app_runtime, "auth.logout")
    assert event.actor == "nina"


def test_expired_session_is_refused(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "nina")
    with app_runtime.sessions() as db, db.begin():
        for sess in db.scalars(select(UserSession)):
            sess.expires_at = utcnow() - timedelta(seconds=1)
    assert client.get("/api/me").status_code == 401


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "http:/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/ok\r\nSet-Cookie: x=y",
    ],
)
def test_login_never_redirects_off_site(client: TestClient, target: str) -> None:
    page = client.get("/login", params={"next": target})
    assert page.status_code == 200
    csrf = client.cookies["lods_csrf"]
    response = client.post(
        "/login",
        data={"username": "nina", "password": PASSWORD, "csrf_token": csrf, "next": target},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_login_redirects_to_local_next(client: TestClient) -> None:
    client.get("/login")
    response = client.post(
        "/login",
        data={
            "username": "rita",
            "password": PASSWORD,
            "csrf_token": client.cookies["lods_csrf"],
            "next": "/studies?page=2",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/studies?page=2"


def test_login_page_carries_next_into_form(client: TestClient) -> None:
    page = client.get("/login", params={"next": "/admin/users"})
    assert 'name="next" value="/admin/users"' in page.text
