"""The auth service on both database backends: users, passwords, lockout, sessions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.models import AuditEvent
from lods.audit.service import verify
from lods.auth import service
from lods.auth.models import Role, User, UserSession
from lods.runtime import Runtime

PW = "a perfectly long password"


@pytest.fixture
def db(runtime: Runtime) -> Iterator[Session]:
    with runtime.sessions() as session, session.begin():
        yield session


def _actions(db: Session) -> list[str]:
    return list(db.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_create_user_hashes_password_and_audits(db: Session) -> None:
    user = service.create_user(
        db, username=" Rita ", roles=["radiologist", Role.ADMIN], password=PW, actor="test"
    )
    assert user.username == "rita"
    assert user.role_set == {Role.RADIOLOGIST, Role.ADMIN}
    assert user.password_hash is not None and user.password_hash.startswith("$argon2id$")
    assert PW not in user.password_hash
    assert _actions(db) == ["user.create"]


@pytest.mark.parametrize(
    ("username", "roles", "password"),
    [
        ("", ["nurse"], PW),
        ("-dash", ["nurse"], PW),
        ("with space", ["nurse"], PW),
        ("x" * 65, ["nurse"], PW),
        ("ok", [], PW),
        ("ok", ["surgeon"], PW),
        ("ok", ["nurse"], "short"),
    ],
)
def test_create_user_rejects_bad_input(
    db: Session, username: str, roles: list[str], password: str
) -> None:
    with pytest.raises(service.InvalidUserInput):
        service.create_user(db, username=username, roles=roles, password=password, actor="t")
    assert _actions(db) == []


def test_create_user_rejects_duplicate_name(db: Session) -> None:
    service.create_user(db, username="nina", roles=["nurse"], password=PW, actor="t")
    with pytest.raises(service.UserExists):
        service.create_user(db, username="NINA", roles=["nurse"], password=PW, actor="t")


def test_authenticate_is_case_insensitive_on_name(db: Session, runtime: Runtime) -> None:
    service.create_user(db, username="nina", roles=["nurse"], password=PW, actor="t")
    user = service.authenticate(
        db, username="Nina", password=PW, settings=runtime.settings, source="x"
    )
    assert user.username == "nina" and user.last_login_at is not None


def test_lockout_counts_and_audits_on_backend(db: Session, runtime: Runtime) -> None:
    settings = runtime.settings
    service.create_user(db, username="nina", roles=["nurse"], password=PW, actor="t")
    reasons = []
    for _ in range(settings.login_max_failures + 1):
        with pytest.raises(service.LoginFailed) as failed:
            service.authenticate(
                db, username="nina", password="wrong one", settings=settings, source="x"
            )
        reasons.append(failed.value.reason)
    assert reasons == ["invalid"] * (settings.login_max_failures - 1) + ["locked", "locked"]
    with pytest.raises(service.LoginFailed) as failed:
        service.authenticate(db, username="nina", password=PW, settings=settings, source="x")
    assert failed.value.reason == "locked"
    assert _actions(db).count("auth.lockout") == 1
    service.unlock_user(db, username="nina", actor="admin")
    service.authenticate(db, username="nina", password=PW, settings=settings, source="x")
    assert _actions(db)[-2:] == ["user.unlock", "auth.login"]
    count, problems = verify(db)
    assert problems == [] and count == len(_actions(db))


def test_login_rehashes_password_when_parameters_change(db: Session, runtime: Runtime) -> None:
    current = service.password_hasher
    older = PasswordHasher(time_cost=current.time_cost + 1, memory_cost=64, parallelism=1)
    user = service.create_user(db, username="nina", roles=["nurse"], password=PW, actor="t")
    user.password_hash = older.hash(PW)
    assert current.check_needs_rehash(user.password_hash)
    service.authenticate(db, username="nina", password=PW, settings=runtime.settings, source="x")
    assert not current.check_needs_rehash(user.password_hash)
    assert current.verify(user.password_hash, PW)


def test_set_password_ends_sessions(db: Session, runtime: Runtime) -> None:
    user = service.create_user(db, username="nina", roles=["nurse"], password=PW, actor="t")
    service.start_session(db, user=user, settings=runtime.settings, source="x")
    service.set_password(db, username="nina", password="another long password", actor="t")
    sessions = db.scalars(select(UserSession)).all()
    assert [s.revoked_at is not None for s in sessions] == [True]
    with pytest.raises(service.LoginFailed):
        service.authenticate(
            db, username="nina", password=PW, settings=runtime.settings, source="x"
        )


def test_last_active_admin_cannot_be_deactivated(db: Session) -> None:
    service.create_user(db, username="ada", roles=["admin"], password=PW, actor="t")
    with pytest.raises(service.LastAdmin):
        service.deactivate_user(db, username="ada", actor="t")
    service.create_user(db, username="bob", roles=["admin"], password=PW, actor="t")
    assert service.deactivate_user(db, username="ada", actor="t").is_active is False


def test_deactivate_ends_sessions(db: Session, runtime: Runtime) -> None:
    user = service.create_user(db, username="nina", roles=["nurse"], password=PW, actor="t")
    service.start_session(db, user=user, settings=runtime.settings, source="x")
    service.deactivate_user(db, username="nina", actor="t")
    assert db.scalars(select(UserSession)).one().revoked_at is not None
    assert db.scalars(select(User)).one().is_active is False
