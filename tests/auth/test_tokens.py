"""Bearer tokens for machine clients: stored hashed, revocable, expiring."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.auth import service
from lods.auth.deps import token_digest
from lods.auth.models import ApiToken
from lods.db import utcnow
from lods.runtime import Runtime
from support import bearer_token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_bearer_token_authenticates_as_its_user(client: TestClient, app_runtime: Runtime) -> None:
    token = bearer_token(app_runtime, "rita")
    assert token.startswith("lods_") and len(token) > 40
    me = client.get("/api/me", headers=_auth(token))
    assert me.status_code == 200
    assert me.json() == {
        "username": "rita",
        "full_name": "Rita",
        "roles": ["radiologist"],
        "via": "token",
        "language": None,
    }


def test_token_is_stored_only_as_hash(app_runtime: Runtime) -> None:
    token = bearer_token(app_runtime, "rita")
    with app_runtime.sessions() as db:
        row = db.scalars(select(ApiToken)).one()
        events = db.scalars(select(AuditEvent.detail)).all()
    assert row.token_hash == token_digest(token)
    assert token not in row.token_hash
    assert not any(token in detail for detail in events)


def test_token_records_last_use(client: TestClient, app_runtime: Runtime) -> None:
    token = bearer_token(app_runtime, "rita")
    client.get("/api/me", headers=_auth(token))
    with app_runtime.sessions() as db:
        assert db.scalars(select(ApiToken)).one().last_used_at is not None


def test_revoked_token_is_refused(client: TestClient, app_runtime: Runtime) -> None:
    token = bearer_token(app_runtime, "rita")
    with app_runtime.sessions() as db, db.begin():
        row = db.scalars(select(ApiToken)).one()
        service.revoke_api_token(db, token_id=row.id, actor="test")
    response = client.get("/api/me", headers=_auth(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_token_is_refused(client: TestClient, app_runtime: Runtime) -> None:
    with app_runtime.sessions() as db, db.begin():
        token = service.create_api_token(db, username="rita", actor="test", expires_days=1)
    assert client.get("/api/me", headers=_auth(token)).status_code == 200
    with app_runtime.sessions() as db, db.begin():
        db.scalars(select(ApiToken)).one().expires_at = utcnow() - timedelta(seconds=1)
    assert client.get("/api/me", headers=_auth(token)).status_code == 401


def test_token_of_deactivated_user_is_refused(client: TestClient, app_runtime: Runtime) -> None:
    token = bearer_token(app_runtime, "rita")
    with app_runtime.sessions() as db, db.begin():
        service.deactivate_user(db, username="rita", actor="test")
    assert client.get("/api/me", headers=_auth(token)).status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer garbage",
        "Bearer lods_" + "A" * 43,
        "Bearer ",
        "Basic cml0YTpwYXNzd29yZA==",
        "lods_x",
    ],
)
def test_garbage_authorization_is_refused(client: TestClient, header: str) -> None:
    assert client.get("/api/me", headers={"Authorization": header}).status_code == 401


def test_bad_bearer_does_not_fall_back_to_session(client: TestClient) -> None:
    from support import login

    login(client, "rita")
    assert client.get("/api/me").status_code == 200
    assert client.get("/api/me", headers=_auth("garbage")).status_code == 401


def test_token_expiry_must_be_positive(app_runtime: Runtime) -> None:
    with app_runtime.sessions() as db, db.begin(), pytest.raises(service.InvalidUserInput):
        service.create_api_token(db, username="rita", actor="test", expires_days=0)


def test_token_for_unknown_user_is_refused(app_runtime: Runtime) -> None:
    with app_runtime.sessions() as db, db.begin(), pytest.raises(service.UserNotFound):
        service.create_api_token(db, username="ghost", actor="test")
