"""Server-rendered pages: one Jinja2 environment, and `render` that every view uses.

`render` gives each template the logged-in `user` (a `Principal` or None), the request
language `lang`, the translation function `t`, the CSRF token (`csrf_token`, and
`csrf_field`, a ready hidden input), and sets the CSRF cookie when the browser has none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from lods.auth.csrf import csrf_token_for, set_csrf_cookie_if_new
from lods.auth.deps import ADMINS, AUDITORS, CLINICAL_IMAGING_READERS, CSRF_FIELD, Principal
from lods.auth.models import Role
from lods.config import Settings
from lods.web.i18n import LANG_COOKIE, SUPPORTED_LANGUAGES, choose_language, translate

WEB_DIR = Path(__file__).parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

#: Areas of the UI and the roles that may enter them; templates ask `can(user, area)`.
AREAS: dict[str, frozenset[Role]] = {
    "imaging": CLINICAL_IMAGING_READERS,
    "audit": AUDITORS,
    "admin": ADMINS,
}


def can(user: Principal | None, area: str) -> bool:
    """Return whether `user` holds a role that opens `area` (see `AREAS`)."""
    return user is not None and user.has_any(AREAS[area])


def format_datetime(value: datetime | None, empty: str = "—") -> str:
    """Return a timestamp as `YYYY-MM-DD HH:MM UTC` (or `empty` for None)."""
    if value is None:
        return empty
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters["dt"] = format_datetime
templates.env.globals["languages"] = SUPPORTED_LANGUAGES
templates.env.globals["can"] = can

#: Headers on every rendered page: patient data is not cached, pages are not framed.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.runtime.settings
    return settings


def current_principal(request: Request) -> Principal | None:
    """Return the logged-in principal of this request, if a dependency resolved one."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


def request_language(request: Request) -> str:
    """Return the language for this request: user setting, cookie, browser, default."""
    principal = current_principal(request)
    return choose_language(
        user_language=principal.language if principal else None,
        cookie=request.cookies.get(LANG_COOKIE),
        accept_language=request.headers.get("accept-language"),
        default=_settings(request).default_language,
    )


def render(
    request: Request,
    template_name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """Return the rendered template as an HTML response with the shared page context."""
    lang = getattr(request.state, "language", None) or request_language(request)
    token = csrf_token_for(request)
    shared: dict[str, Any] = {
        "user": current_principal(request),
        "lang": lang,
        "t": partial(translate, lang),
        "csrf_token": token,
        "csrf_field": Markup('<input type="hidden" name="{}" value="{}">').format(
            CSRF_FIELD, token
        ),
        "current_path": request.url.path,
    }
    shared.update(context or {})
    response = templates.TemplateResponse(
        request, template_name, shared, status_code=status_code, headers=PAGE_HEADERS
    )
    set_csrf_cookie_if_new(request, response, secure=_settings(request).cookie_secure)
    return response
