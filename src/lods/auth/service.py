"""Users, password login with lockout, browser sessions and API tokens.

Functions take the caller's session and never commit; the caller owns the transaction.
Secrets (session cookies, API tokens) are random and stored only as SHA-256 digests;
passwords are stored as argon2id hashes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import timedelta
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.deps import token_digest
from lods.auth.models import ApiToken, Role, User, UserSession
from lods.config import Settings
from lods.db import utcnow

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
TOKEN_PREFIX = "lods_"  # noqa: S105 - a prefix, not a secret
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

#: argon2id with the library's RFC 9106 defaults. Looked up at call time, so a deployment
#: (or a test suite) may swap in other parameters; stored hashes are upgraded at login.
password_hasher = PasswordHasher()


@lru_cache(maxsize=4)
def _dummy_hash_for(_parameters: tuple[object, ...]) -> str:
    return password_hasher.hash(secrets.token_urlsafe(16))


def _dummy_hash() -> str:
    """Return a throwaway hash made with the current parameters.

    Login verifies against it for unknown user names, so they take as long as known ones.
    """
    h = password_hasher
    return _dummy_hash_for((h.time_cost, h.memory_cost, h.parallelism, h.hash_len, h.type))


class AuthError(Exception):
    """Base of the errors this module raises."""


class InvalidUserInput(AuthError, ValueError):
    """A user name, role list or password that is not acceptable."""


class UserExists(AuthError):
    """A user with this name already exists."""


class UserNotFound(AuthError):
    """No user with this name."""


class TokenNotFound(AuthError):
    """No API token with this id."""


class LastAdmin(AuthError):
    """The change would leave no active administrator."""


class LoginFailed(AuthError):
    """Login refused; `reason` is `invalid`, `locked` or `inactive`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- users ------------------------------------------------------------------------------


def normalise_username(username: str) -> str:
    """Return the canonical (stripped, lower-case) form of a user name."""
    return username.strip().lower()


def _checked_roles(roles: Iterable[Role | str]) -> list[Role]:
    try:
        checked = sorted({Role(r) for r in roles})
    except ValueError as exc:
        raise InvalidUserInput(f"unknown role: {exc}") from exc
    if not checked:
        raise InvalidUserInput("a user needs at least one role")
    return checked


def check_password(password: str) -> None:
    """Raise `InvalidUserInput` unless the password is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidUserInput(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidUserInput(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def generate_password() -> str:
    """Return a strong random password (about 120 bits) for a new or reset account."""
    return secrets.token_urlsafe(15)


def hash_password(password: str) -> str:
    """Return the argon2id hash of `password`."""
    return password_hasher.hash(password)


def get_user(db: Session, *, username: str) -> User | None:
    """Return the user called `username`, or None."""
    return db.scalar(select(User).where(User.username == normalise_username(username)))


def get_user_or_raise(db: Session, *, username: str) -> User:
    """Return the user called `username`; raise `UserNotFound` if there is none."""
    user = get_user(db, username=username)
    if user is None:
        raise UserNotFound(username)
    return user


def list_users(db: Session) -> list[User]:
    """Return every user, by name."""
    return list(db.scalars(select(User).order_by(User.username)))


def create_user(
    db: Session,
    *,
    username: str,
    roles: Iterable[Role | str],
    password: str,
    full_name: str = "",
    actor: str,
    source: str = "",
) -> User:
    """Return a new active user with the given roles and password (audited `user.create`)."""
    name = normalise_username(username)
    if not USERNAME_RE.match(name):
        raise InvalidUserInput(
            "a user name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    checked = _checked_roles(roles)
    check_password(password)
    if get_user(db, username=name) is not None:
        raise UserExists(name)
    user = User(
        username=name,
        full_name=full_name.strip()[:200],
        roles=",".join(checked),
        password_hash=hash_password(password),
        is_active=True,
        failed_logins=0,
    )
    db.add(user)
    db.flush()
    record(
        db,
        actor=actor,
        action="user.create",
        object_ref=f"user:{name}",
        source=source,
        detail={"roles": [str(r) for r in checked], "full_name": user.full_name},
    )
    return user


def _revoke_sessions(db: Session, *, user_id: int) -> int:
    result = db.execute(
        update(UserSession)
        .where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def set_password(
    db: Session, *, username: str, password: str, actor: str, source: str = ""
) -> User:
    """Return the user after setting a new password; ends their sessions and any lockout."""
    check_password(password)
    user = get_user_or_raise(db, username=username)
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    ended = _revoke_sessions(db, user_id=user.id)
    record(
        db,
        actor=actor,
        action="user.password",
        object_ref=f"user:{user.username}",
        source=source,
        detail={"sessions_ended": ended},
    )
    return user


def _active_admins(db: Session) -> list[User]:
    users = db.scalars(select(User).where(User.is_active.is_(True)))
    return [u for u in users if Role.ADMIN in u.role_set]


def deactivate_user(db: Session, *, username: str, actor: str, source: str = "") -> User:
    """Return the user after deactivating them and ending their sessions.

    Raises `LastAdmin` rather than leave the installation without an active administrator.
    """
    user = get_user_or_raise(db, username=username)
    if user.is_active and Role.ADMIN in user.role_set and len(_active_admins(db)) <= 1:
        raise LastAdmin(user.username)
    user.is_active = False
    ended = _revoke_sessions(db, user_id=user.id)
    record(
        db,
        actor=actor,
        action="user.deactivate",
        object_ref=f"user:{user.username}",
        source=source,
        detail={"sessions_ended": ended},
    )
    return user


def unlock_user(db: Session, *, username: str, actor: str, source: str = "") -> User:
    """Return the user after clearing their failed-login count and lockout."""
    user = get_user_or_raise(db, username=username)
    was_locked = user.locked_until is not None and user.locked_until > utcnow()
    user.failed_logins = 0
    user.locked_until = None
    record(
        db,
        actor=actor,
        action="user.unlock",
        object_ref=f"user:{user.username}",
        source=source,
        detail={"was_locked": was_locked},
    )
    return user


def set_language(db: Session, *, user_id: int, language: str, actor: str, source: str = "") -> User:
    """Return the user after storing their preferred UI language."""
    user = db.get(User, user_id)
    if user is None:
        raise UserNotFound(str(user_id))
    if user.language != language:
        user.language = language
        record(
            db,
            actor=actor,
            action="user.language",
            object_ref=f"user:{user.username}",
            source=source,
            detail={"language": language},
        )
    return user


# --- login ------------------------------------------------------------------------------


def _verify(password_hash: str, password: str) -> bool:
    try:
        return password_hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _refuse(db: Session, *, username: str, reason: str, source: str, public: str) -> LoginFailed:
    record(
        db,
        actor=username[:100],
        action="auth.login_failed",
        outcome="failure",
        object_ref=f"user:{username[:64]}",
        source=source,
        detail={"reason": reason},
    )
    return LoginFailed(public)


def _count_failure(db: Session, *, user: User, settings: Settings, source: str) -> LoginFailed:
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins < settings.login_max_failures:
        return _refuse(
            db, username=user.username, reason="wrong password", source=source, public="invalid"
        )
    user.locked_until = utcnow() + timedelta(minutes=settings.login_lockout_minutes)
    failure = _refuse(
        db, username=user.username, reason="wrong password", source=source, public="locked"
    )
    record(
        db,
        actor=user.username,
        action="auth.lockout",
        outcome="failure",
        object_ref=f"user:{user.username}",
        source=source,
        detail={
            "failed_logins": user.failed_logins,
            "locked_until": user.locked_until.isoformat(),
        },
    )
    return failure


def authenticate(
    db: Session, *, username: str, password: str, settings: Settings, source: str
) -> User:
    """Return the user whose name and password match; raise `LoginFailed` otherwise.

    The failure count, lockout and audit events are written before `LoginFailed` is
    raised: the caller must catch it and still commit, or the lockout never happens.
    An unknown user and a wrong password give the same reason (`invalid`) and take the
    same time; a locked account refuses even the right password until the lock ends.
    """
    name = normalise_username(username)
    user = get_user(db, username=name)
    if user is None or user.password_hash is None:
        _verify(_dummy_hash(), password)
        raise _refuse(db, username=name, reason="unknown user", source=source, public="invalid")
    now = utcnow()
    if user.locked_until is not None:
        if user.locked_until > now:
            raise _refuse(db, username=name, reason="locked", source=source, public="locked")
        # The lock has run out: the user gets a fresh set of attempts.
        user.locked_until = None
        user.failed_logins = 0
    if not _verify(user.password_hash, password):
        raise _count_failure(db, user=user, settings=settings, source=source)
    if not user.is_active:
        raise _refuse(db, username=name, reason="inactive", source=source, public="inactive")
    if password_hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.last_login_at = now
    record(db, actor=name, action="auth.login", object_ref=f"user:{name}", source=source)
    return user


# --- sessions ---------------------------------------------------------------------------


def start_session(db: Session, *, user: User, settings: Settings, source: str) -> str:
    """Return the cookie value of a new session for `user`; only its digest is stored."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    db.add(
        UserSession(
            token_hash=token_digest(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=settings.session_hours),
            source=source[:100],
        )
    )
    db.flush()
    return token


def end_session(db: Session, *, token: str, actor: str, source: str = "") -> bool:
    """Return whether a live session with this cookie value was found and revoked."""
    sess = db.scalar(select(UserSession).where(UserSession.token_hash == token_digest(token)))
    if sess is None or sess.revoked_at is not None:
        return False
    sess.revoked_at = utcnow()
    record(
        db,
        actor=actor,
        action="auth.logout",
        object_ref=f"session:{sess.id}",
        source=source,
    )
    return True


# --- API tokens -------------------------------------------------------------------------


def issue_api_token(
    db: Session,
    *,
    username: str,
    label: str = "",
    actor: str,
    expires_days: int | None = None,
    source: str = "",
) -> tuple[ApiToken, str]:
    """Return the new token row and the token itself, which is shown once and not stored."""
    user = get_user_or_raise(db, username=username)
    if expires_days is not None and expires_days < 1:
        raise InvalidUserInput("a token expires after at least one day")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiToken(
        user_id=user.id,
        label=label.strip()[:100],
        token_hash=token_digest(token),
        created_at=now,
        expires_at=now + timedelta(days=expires_days) if expires_days else None,
    )
    db.add(row)
    db.flush()
    record(
        db,
        actor=actor,
        action="token.create",
        object_ref=f"api_token:{row.id}",
        source=source,
        detail={"user": user.username, "label": row.label, "expires_days": expires_days},
    )
    return row, token


def create_api_token(
    db: Session,
    *,
    username: str,
    label: str = "",
    actor: str,
    expires_days: int | None = None,
    source: str = "",
) -> str:
    """Return a new bearer token (`lods_...`) acting as `username`; only its hash is kept."""
    _row, token = issue_api_token(
        db, username=username, label=label, actor=actor, expires_days=expires_days, source=source
    )
    return token


def list_api_tokens(
    db: Session, *, username: str | None = None, include_revoked: bool = False
) -> list[ApiToken]:
    """Return API tokens, newest first, optionally of one user and including revoked ones."""
    query = select(ApiToken).order_by(ApiToken.id.desc())
    if username is not None:
        query = query.where(ApiToken.user_id == get_user_or_raise(db, username=username).id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return list(db.scalars(query))


def revoke_api_token(db: Session, *, token_id: int, actor: str, source: str = "") -> ApiToken:
    """Return the token after revoking it (a no-op for one already revoked)."""
    row = db.get(ApiToken, token_id)
    if row is None:
        raise TokenNotFound(str(token_id))
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record(
            db,
            actor=actor,
            action="token.revoke",
            object_ref=f"api_token:{row.id}",
            source=source,
            detail={"user": row.user.username, "label": row.label},
        )
    return row
