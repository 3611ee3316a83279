"""Web pages: login and logout, language choice, the home page, user administration."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from lods.auth import service
from lods.auth.csrf import CsrfProtected, rotate_csrf_token
from lods.auth.deps import (
    AUDITORS,
    CLINICAL_IMAGING_READERS,
    SESSION_COOKIE,
    AdminUser,
    CurrentUser,
    SessionDep,
    SettingsDep,
    client_source,
)
from lods.auth.models import Role
from lods.config import Settings
from lods.db import utcnow
from lods.web.i18n import LANG_COOKIE, normalise
from lods.web.templating import render

router = APIRouter(include_in_schema=False)

LANG_COOKIE_MAX_AGE = 60 * 60 * 24 * 365
ADMIN_NOTICES = frozenset({"created", "deactivated", "unlocked", "revoked"})


def safe_next(target: str | None, default: str = "/") -> str:
    """Return `target` if it is a path on this site, else `default` (no open redirects)."""
    if not target or any(ch in target for ch in "\\\r\n\t\x00"):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    return target


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- login, logout, language ---------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", lang: str | None = None) -> HTMLResponse:
    """Return the login form; `lang` switches the language before anyone is logged in."""
    chosen = normalise(lang)
    if chosen:
        request.state.language = chosen
    response = render(request, "login.html", {"next": safe_next(next)})
    if chosen:
        _set_language_cookie(response, chosen, request)
    return response


def _login_failed_page(request: Request, reason: str, username: str, next: str) -> HTMLResponse:
    message = {"locked": "login.error.locked", "inactive": "login.error.inactive"}.get(
        reason, "login.error.invalid"
    )
    context = {"next": safe_next(next), "error": message, "username": username}
    return render(request, "login.html", context, status_code=401)


def _set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_hours * 3600),
        path="/",
        secure=settings.cookie_secure,
        httponly=True,
        samesite="lax",
    )


@router.post("/login", response_model=None)
def login(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    _csrf: CsrfProtected,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Log in and redirect to `next`; on failure answer 401 with the form and a message.

    A failed attempt returns normally (no exception), so its audit event and the failure
    count are committed with the request's transaction.
    """
    source = client_source(request)
    try:
        user = service.authenticate(
            db, username=username, password=password, settings=settings, source=source
        )
    except service.LoginFailed as exc:
        return _login_failed_page(request, exc.reason, username, next)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        service.end_session(db, token=old, actor=user.username, source=source)
    response = _redirect(safe_next(next))
    _set_session_cookie(
        response, service.start_session(db, user=user, settings=settings, source=source), settings
    )
    rotate_csrf_token(request, response, secure=settings.cookie_secure)
    return response


@router.post("/logout")
def logout(
    request: Request, db: SessionDep, settings: SettingsDep, user: CurrentUser, _csrf: CsrfProtected
) -> RedirectResponse:
    """End the browser's session and go to the login page."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        service.end_session(db, token=token, actor=user.username, source=user.source)
    response = _redirect("/login")
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=settings.cookie_secure, httponly=True, samesite="lax"
    )
    return response


def _set_language_cookie(response: Response, lang: str, request: Request) -> None:
    settings: Settings = request.app.state.runtime.settings
    response.set_cookie(
        LANG_COOKIE,
        lang,
        max_age=LANG_COOKIE_MAX_AGE,
        path="/",
        secure=settings.cookie_secure,
        httponly=True,
        samesite="lax",
    )


@router.post("/language")
def set_language(
    request: Request,
    db: SessionDep,
    user: CurrentUser,
    _csrf: CsrfProtected,
    language: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> RedirectResponse:
    """Store the user's UI language (on the account and in a cookie) and go back."""
    lang = normalise(language)
    response = _redirect(safe_next(next))
    if lang is None:
        return response
    service.set_language(
        db, user_id=user.user_id, language=lang, actor=user.username, source=user.source
    )
    _set_language_cookie(response, lang, request)
    return response


# --- home ----------------------------------------------------------------------------------


@router.get("/", response_model=None)
def home(request: Request, user: CurrentUser) -> Response:
    """Send each role to its main page; roles without one see a plain home page."""
    if user.has_any(CLINICAL_IMAGING_READERS):
        return _redirect("/studies")
    if user.has_any(AUDITORS):
        return _redirect("/audit")
    return render(request, "home.html")


# --- user administration ----------------------------------------------------------------------


def _users_page(
    request: Request, db: Session, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    page: dict[str, Any] = {
        "users": service.list_users(db),
        "tokens": service.list_api_tokens(db),
        "roles": list(Role),
        "now": utcnow(),
    }
    page.update(context)
    return render(request, "auth/users.html", page, status_code=status_code)


def _admin_error(exc: service.AuthError) -> tuple[str, int, dict[str, Any]]:
    if isinstance(exc, service.UserExists):
        return "admin.users.error.exists", 409, {}
    if isinstance(exc, service.UserNotFound | service.TokenNotFound):
        return "admin.users.error.not_found", 404, {}
    if isinstance(exc, service.LastAdmin):
        return "admin.users.error.last_admin", 409, {}
    return "admin.users.error.invalid", 422, {"reason": str(exc)}


def _error_page(request: Request, db: Session, exc: service.AuthError) -> HTMLResponse:
    # Service functions raise before they change anything, so the page shows the truth.
    key, code, kwargs = _admin_error(exc)
    return _users_page(request, db, status_code=code, error=key, error_args=kwargs)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(
    request: Request, db: SessionDep, _admin: AdminUser, done: str | None = None
) -> HTMLResponse:
    """Return the user administration page."""
    notice = f"admin.users.notice.{done}" if done in ADMIN_NOTICES else None
    return _users_page(request, db, notice=notice)


@router.post("/admin/users", response_model=None)
def create_user(
    request: Request,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    username: Annotated[str, Form(max_length=64)],
    roles: Annotated[list[str], Form()],
    full_name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Create an account; a generated password is shown on the answer page, once."""
    chosen = password or service.generate_password()
    try:
        user = service.create_user(
            db,
            username=username,
            roles=roles,
            password=chosen,
            full_name=full_name,
            actor=admin.username,
            source=admin.source,
        )
    except service.AuthError as exc:
        return _error_page(request, db, exc)
    if password:
        return _redirect("/admin/users?done=created")
    secret = {"kind": "password", "username": user.username, "value": chosen}
    return _users_page(request, db, notice="admin.users.notice.created", secret=secret)


@router.post("/admin/users/{username}/deactivate", response_model=None)
def deactivate_user(
    request: Request, username: str, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> Response:
    """Deactivate an account and end its sessions."""
    try:
        service.deactivate_user(db, username=username, actor=admin.username, source=admin.source)
    except service.AuthError as exc:
        return _error_page(request, db, exc)
    return _redirect("/admin/users?done=deactivated")


@router.post("/admin/users/{username}/unlock", response_model=None)
def unlock_user(
    request: Request, username: str, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> Response:
    """Clear an account's lockout."""
    try:
        service.unlock_user(db, username=username, actor=admin.username, source=admin.source)
    except service.AuthError as exc:
        return _error_page(request, db, exc)
    return _redirect("/admin/users?done=unlocked")


@router.post("/admin/users/{username}/tokens", response_model=None)
def create_token(
    request: Request,
    username: str,
    db: SessionDep,
    admin: AdminUser,
    _csrf: CsrfProtected,
    label: Annotated[str, Form(max_length=100)] = "",
    expires_days: Annotated[str, Form()] = "",
) -> Response:
    """Create an API token for an account; the token is shown on the answer page, once."""
    try:
        days = int(expires_days) if expires_days.strip() else None
    except ValueError:
        return _error_page(request, db, service.InvalidUserInput("expires_days"))
    try:
        token = service.create_api_token(
            db,
            username=username,
            label=label,
            expires_days=days,
            actor=admin.username,
            source=admin.source,
        )
    except service.AuthError as exc:
        return _error_page(request, db, exc)
    secret = {"kind": "token", "username": service.normalise_username(username), "value": token}
    return _users_page(request, db, secret=secret)


@router.post("/admin/tokens/{token_id}/revoke", response_model=None)
def revoke_token(
    request: Request, token_id: int, db: SessionDep, admin: AdminUser, _csrf: CsrfProtected
) -> Response:
    """Revoke an API token."""
    try:
        service.revoke_api_token(db, token_id=token_id, actor=admin.username, source=admin.source)
    except service.AuthError as exc:
        return _error_page(request, db, exc)
    return _redirect("/admin/users?done=revoked")
