"""CSRF protection by double submit: a random cookie that a form or header must echo.

The `lods_csrf` cookie is set on every HTML page that lacks it (see `web.templating`).
A state-changing request from a browser must send the same value in the form field
`csrf_token` or the header `X-CSRF-Token`; a third-party site can make the browser send
the cookie but cannot read it, so it cannot echo it. Requests that carry a bearer token
are exempt: a browser never adds an `Authorization` header on its own.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response

from lods.auth.deps import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_COOKIE_MAX_AGE = 60 * 60 * 24 * 30


def new_csrf_token() -> str:
    """Return a fresh random CSRF token."""
    return secrets.token_urlsafe(32)


def csrf_token_for(request: Request) -> str:
    """Return the CSRF token this response should use, creating one if the browser has none.

    A new token is remembered on `request.state` so every form on one page gets the same
    value and `set_csrf_cookie_if_new` can send it.
    """
    state_token: str | None = getattr(request.state, "csrf_token", None)
    if state_token:
        return state_token
    token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    request.state.csrf_token = token
    return token


def set_csrf_cookie(response: Response, token: str, *, secure: bool) -> None:
    """Attach the CSRF cookie; JavaScript (htmx) may read it, other sites may not send it."""
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=CSRF_COOKIE_MAX_AGE,
        path="/",
        secure=secure,
        httponly=False,
        samesite="strict",
    )


def set_csrf_cookie_if_new(request: Request, response: Response, *, secure: bool) -> None:
    """Send the cookie when the token for this request is not the one the browser holds."""
    token = csrf_token_for(request)
    if request.cookies.get(CSRF_COOKIE) != token:
        set_csrf_cookie(response, token, secure=secure)


def rotate_csrf_token(request: Request, response: Response, *, secure: bool) -> str:
    """Return a new token and set it as the cookie (done at login, against token fixation)."""
    token = new_csrf_token()
    request.state.csrf_token = token
    set_csrf_cookie(response, token, secure=secure)
    return token


def _uses_bearer_token(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


async def _submitted_token(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        # Starlette caches the parsed form, so the route's own Form() fields still work.
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def verify_csrf(request: Request) -> None:
    """Let safe methods and bearer-token requests through; otherwise require a match.

    Raises 403 when the cookie is missing or the submitted token differs from it.
    """
    if request.method in SAFE_METHODS or _uses_bearer_token(request):
        return
    cookie = request.cookies.get(CSRF_COOKIE)
    submitted = await _submitted_token(request)
    if not cookie or not submitted:
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")
    if not secrets.compare_digest(cookie.encode(), submitted.encode()):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")


#: Add `_csrf: CsrfProtected` to a state-changing route to require the CSRF token.
CsrfProtected = Annotated[None, Depends(verify_csrf)]
