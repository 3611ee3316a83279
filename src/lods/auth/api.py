"""JSON API for the caller's identity, user administration and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from lods.auth import service
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import AdminUser, CurrentUser, SessionDep
from lods.auth.schemas import (
    MeOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserCreated,
    UserOut,
)

router = APIRouter(prefix="/api", tags=["auth"])


def _http_error(exc: service.AuthError) -> HTTPException:
    if isinstance(exc, service.UserNotFound | service.TokenNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"not found: {exc}")
    if isinstance(exc, service.UserExists):
        return HTTPException(status.HTTP_409_CONFLICT, detail=f"user exists: {exc}")
    if isinstance(exc, service.LastAdmin):
        return HTTPException(
            status.HTTP_409_CONFLICT, detail="refused: this is the last active administrator"
        )
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


@router.get("/me", response_model=MeOut)
def me(user: CurrentUser) -> MeOut:
    """Return who the caller is and which roles they hold."""
    return MeOut(
        username=user.username,
        full_name=user.full_name,
        roles=sorted(user.roles),
        via=user.via,
        language=user.language,
    )


@router.get("/users", response_model=list[UserOut])
def list_users(db: SessionDep, _admin: AdminUser) -> list[UserOut]:
    """Return every user account."""
    return [UserOut.of(u) for u in service.list_users(db)]


@router.post("/users", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
def create_user(
    body: UserCreate, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> UserCreated:
    """Return the new account (and its generated password, once, if none was given)."""
    password = body.password or service.generate_password()
    try:
        user = service.create_user(
            db,
            username=body.username,
            roles=body.roles,
            password=password,
            full_name=body.full_name,
            actor=admin.username,
            source=admin.source,
        )
    except service.AuthError as exc:
        raise _http_error(exc) from exc
    generated = None if body.password else password
    return UserCreated(**UserOut.of(user).model_dump(), generated_password=generated)


@router.post("/users/{username}/deactivate", response_model=UserOut)
def deactivate_user(
    username: str, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> UserOut:
    """Return the account after deactivating it and ending its sessions."""
    try:
        user = service.deactivate_user(
            db, username=username, actor=admin.username, source=admin.source
        )
    except service.AuthError as exc:
        raise _http_error(exc) from exc
    return UserOut.of(user)


@router.post("/users/{username}/unlock", response_model=UserOut)
def unlock_user(username: str, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected) -> UserOut:
    """Return the account after clearing its lockout and failed-login count."""
    try:
        user = service.unlock_user(db, username=username, actor=admin.username, source=admin.source)
    except service.AuthError as exc:
        raise _http_error(exc) from exc
    return UserOut.of(user)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(
    db: SessionDep, _admin: AdminUser, username: str | None = None, include_revoked: bool = False
) -> list[TokenOut]:
    """Return API tokens (never the tokens themselves), optionally of one user."""
    try:
        rows = service.list_api_tokens(db, username=username, include_revoked=include_revoked)
    except service.AuthError as exc:
        raise _http_error(exc) from exc
    return [TokenOut.of(r) for r in rows]


@router.post(
    "/users/{username}/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED
)
def create_token(
    username: str, body: TokenCreate, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> TokenCreated:
    """Return a new API token for `username`; the token is in this answer only."""
    try:
        row, token = service.issue_api_token(
            db,
            username=username,
            label=body.label,
            expires_days=body.expires_days,
            actor=admin.username,
            source=admin.source,
        )
    except service.AuthError as exc:
        raise _http_error(exc) from exc
    return TokenCreated(**TokenOut.of(row).model_dump(), token=token)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: int, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected) -> Response:
    """Revoke an API token; answers 204, also when it was already revoked."""
    try:
        service.revoke_api_token(db, token_id=token_id, actor=admin.username, source=admin.source)
    except service.AuthError as exc:
        raise _http_error(exc) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
