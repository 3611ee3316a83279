"""Translations for the web UI: flat JSON catalogs per language, and language choice.

A message id is a flat dotted key such as `login.title`; catalogs live in
`web/locales/<lang>.json` and must hold the same keys. The language of a request is the
user's own setting, else the `lods_lang` cookie, else the browser's Accept-Language,
else the installation's default.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

LOCALES_DIR = Path(__file__).parent / "locales"
SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "da")
FALLBACK_LANGUAGE = "en"
LANG_COOKIE = "lods_lang"

log = logging.getLogger(__name__)


@cache
def catalog(lang: str) -> dict[str, str]:
    """Return the message catalog of `lang` (empty for a language without a file)."""
    path = LOCALES_DIR / f"{lang}.json"
    if lang not in SUPPORTED_LANGUAGES or not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path} must be a flat JSON object of strings")
    return data


def translate(lang: str, key: str, **kwargs: Any) -> str:
    """Return the message `key` in `lang`, formatted with `kwargs`.

    Falls back to English, then to the key itself (logged), so a missing translation
    never breaks a page.
    """
    text = catalog(lang).get(key)
    if text is None:
        text = catalog(FALLBACK_LANGUAGE).get(key)
        if text is None:
            log.warning("missing message id %r", key)
            text = key
    if not kwargs:
        return text
    try:
        return text.format(**kwargs)
    except (KeyError, IndexError, ValueError):
        log.warning("message %r in %r does not fit arguments %r", key, lang, sorted(kwargs))
        return text


def normalise(lang: str | None) -> str | None:
    """Return the supported language `lang` names (`da-DK` → `da`), or None."""
    if not lang:
        return None
    base = lang.strip().lower().replace("_", "-").split("-")[0]
    return base if base in SUPPORTED_LANGUAGES else None


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0


def from_accept_language(header: str | None) -> str | None:
    """Return the supported language the browser prefers most (by q-value), or None."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")):
        tag, *params = item.split(";")
        lang = normalise(tag)
        quality = _quality(params)
        if lang is not None and quality > 0:
            # Higher q first; among equals, the order the browser listed them.
            ranked.append((-quality, position, lang))
    return min(ranked)[2] if ranked else None


def choose_language(
    *,
    user_language: str | None,
    cookie: str | None,
    accept_language: str | None,
    default: str,
) -> str:
    """Return the language to answer in: user setting, cookie, browser, then default."""
    return (
        normalise(user_language)
        or normalise(cookie)
        or from_accept_language(accept_language)
        or normalise(default)
        or FALLBACK_LANGUAGE
    )
