"""Request dependencies: the database session, the logged-in principal, role checks.

Route signatures read like sentences: `def view(db: SessionDep, user: CurrentUser)`, or
`dependencies=[require_roles(Role.ADMIN)]`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.auth.models import ApiToken, Role, User, UserSession
from lods.config import Settings
from lods.db import utcnow
from lods.runtime import Runtime

SESSION_COOKIE = "lods_session"
CSRF_COOKIE = "lods_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


class NotAuthenticated(Exception):
    """No valid session or bearer token: the app answers 401 (API) or redirects to login."""


class Forbidden(Exception):
    """Logged in, but without a role this route needs: the app answers 403."""

    def __init__(self, needed: frozenset[Role]) -> None:
        super().__init__("requires one of: " + ", ".join(sorted(needed)))
        self.needed = needed


@dataclass(frozen=True)
class Principal:
    """Who is making this request, and how they proved it."""

    user_id: int
    username: str
    full_name: str
    roles: frozenset[Role]
    via: str  # "session" or "token"
    session_id: int | None
    source: str  # client address, for the audit trail
    language: str | None = None

    def has_any(self, roles: frozenset[Role]) -> bool:
        return bool(self.roles & roles)


def token_digest(token: str) -> str:
    """Return the SHA-256 hex digest under which a session or API token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def client_source(request: Request) -> str:
    return request.client.host if request.client else ""


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings_dep(request: Request) -> Settings:
    return get_runtime(request).settings


def get_db(request: Request) -> Iterator[Session]:
    """Yield a session in a transaction that commits when the route returns normally.

    Used with `scope="function"`: the commit happens before the response is sent, so a
    client never sees an answer whose audit event or change is not yet durable, and no
    database lock is held while the response streams out.
    """
    with get_runtime(request).sessions() as session, session.begin():
        yield session


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


def _principal(user: User, *, via: str, session_id: int | None, source: str) -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        full_name=user.full_name,
        roles=user.role_set,
        via=via,
        session_id=session_id,
        source=source,
        language=user.language,
    )


def resolve_principal(request: Request, db: Session) -> Principal | None:
    """Return who the request is from (bearer token first, then session cookie), or None."""
    now = utcnow()
    source = client_source(request)
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token.strip())))
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if not row.user.is_active:
            return None
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
        return _principal(row.user, via="token", session_id=None, source=source)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    sess = db.scalar(select(UserSession).where(UserSession.token_hash == token_digest(cookie)))
    if sess is None or sess.revoked_at is not None or sess.expires_at <= now:
        return None
    if not sess.user.is_active:
        return None
    if now - sess.last_seen_at > timedelta(minutes=1):
        sess.last_seen_at = now
    return _principal(sess.user, via="session", session_id=sess.id, source=source)


def get_current_user(request: Request) -> Principal:
    """Return the logged-in principal, resolved in a short transaction of its own.

    Kept apart from the route's session so that the route's transaction (and, on SQLite,
    its write lock) starts only when the route first touches the database: a long read
    such as verifying the audit trail can then run without blocking DICOM intake.
    """
    with get_runtime(request).sessions() as db, db.begin():
        principal = resolve_principal(request, db)
    if principal is None:
        raise NotAuthenticated()
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]


def role_dependency(*roles: Role) -> Callable[..., Principal]:
    """Like `require_roles`, but the bare function, for `Annotated[Principal, Depends(...)]`."""
    needed = frozenset(roles)

    def check(user: CurrentUser) -> Principal:
        if not user.has_any(needed):
            raise Forbidden(needed)
        return user

    return check


def require_roles(*roles: Role) -> Any:
    """Return a dependency that lets the request through only for users with one of `roles`."""
    return Depends(role_dependency(*roles))


# Who may do what. Routes name these sets rather than listing roles inline.
CLINICAL_IMAGING_READERS = frozenset({Role.RADIOLOGIST, Role.PHYSICIAN, Role.AI_OWNER, Role.ADMIN})
IMAGING_WRITERS = frozenset({Role.RADIOLOGIST, Role.ADMIN})
ADMINS = frozenset({Role.ADMIN})
AUDITORS = frozenset({Role.AUDITOR})

ImagingReader = Annotated[Principal, Depends(role_dependency(*CLINICAL_IMAGING_READERS))]
ImagingWriter = Annotated[Principal, Depends(role_dependency(*IMAGING_WRITERS))]
AdminUser = Annotated[Principal, Depends(role_dependency(*ADMINS))]
AuditorUser = Annotated[Principal, Depends(role_dependency(*AUDITORS))]
