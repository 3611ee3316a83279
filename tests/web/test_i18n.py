"""Danish and English: catalogs agree, templates only use known ids, language choice."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.auth.models import Role, User
from lods.auth.views import ADMIN_NOTICES
from lods.runtime import Runtime
from lods.web.i18n import (
    LOCALES_DIR,
    SUPPORTED_LANGUAGES,
    catalog,
    choose_language,
    from_accept_language,
    translate,
)
from lods.web.templating import TEMPLATES_DIR
from support import login

#: `t('some.id')` or `t("some.id", x=1)`: a literal message id.
T_CALL = re.compile(r"""\bt\(\s*(['"])([^'"]+)\1\s*[,)]""")
#: `t('role.' ~ role)`: an id built from a literal prefix.
T_PREFIX = re.compile(r"""\bt\(\s*(['"])([^'"]+)\1\s*~""")


def _raw(lang: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((LOCALES_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    return data


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogs_have_the_same_keys() -> None:
    english = set(_raw("en"))
    for lang in SUPPORTED_LANGUAGES:
        assert set(_raw(lang)) == english, lang


def test_catalog_files_are_sorted_and_non_empty() -> None:
    for lang in SUPPORTED_LANGUAGES:
        keys = list(_raw(lang))
        assert keys == sorted(keys), f"{lang}.json keys are not sorted"
        assert all(value.strip() for value in _raw(lang).values()), lang


def test_translations_use_the_same_placeholders() -> None:
    english = _raw("en")
    for lang in SUPPORTED_LANGUAGES:
        for key, text in _raw(lang).items():
            assert _placeholders(text) == _placeholders(english[key]), (lang, key)


def _template_ids(pattern: re.Pattern[str]) -> set[tuple[str, str]]:
    found = set()
    for path in TEMPLATES_DIR.rglob("*.html"):
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found.add((str(path.relative_to(TEMPLATES_DIR)), match.group(2)))
    return found


def test_every_message_id_in_templates_exists() -> None:
    ids = _template_ids(T_CALL)
    assert ("login.html", "login.username") in ids  # the scan itself works
    english = _raw("en")
    missing = sorted((where, key) for where, key in ids if key not in english)
    assert missing == []


def test_every_message_id_prefix_in_templates_has_messages() -> None:
    prefixes = _template_ids(T_PREFIX)
    assert ("base.html", "language.") in prefixes  # the scan itself works
    english = _raw("en")
    empty = sorted(
        (where, prefix)
        for where, prefix in prefixes
        if not any(key.startswith(prefix) for key in english)
    )
    assert empty == []


def test_dynamic_message_ids_exist() -> None:
    english = _raw("en")
    dynamic = (
        [f"role.{role}" for role in Role]
        + [f"language.{lang}" for lang in SUPPORTED_LANGUAGES]
        + [f"admin.users.notice.{done}" for done in ADMIN_NOTICES]
        + [f"admin.users.error.{e}" for e in ("exists", "not_found", "last_admin", "invalid")]
        + [f"login.error.{e}" for e in ("invalid", "locked", "inactive")]
        + [f"admin.users.secret.{kind}" for kind in ("password", "token")]
    )
    assert [key for key in dynamic if key not in english] == []


def test_danish_is_real_danish() -> None:
    assert translate("da", "login.title") == "Log ind"
    assert translate("da", "login.username") == "Brugernavn"
    assert translate("da", "login.password") == "Adgangskode"
    assert translate("da", "nav.logout") == "Log ud"
    assert translate("da", "nav.studies") == "Undersøgelser"


def test_translate_formats_and_falls_back() -> None:
    assert translate("da", "home.welcome", name="Nina") == "Velkommen, Nina"
    assert translate("xx", "login.title") == "Log in"
    assert translate("da", "no.such.key") == "no.such.key"
    assert translate("en", "home.welcome") == "Welcome, {name}"
    assert catalog("xx") == {}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("da", "da"),
        ("da-DK,da;q=0.9,en-US;q=0.8,en;q=0.7", "da"),
        ("en-GB,en;q=0.9,da;q=0.8", "en"),
        ("en;q=0.5, da;q=0.9", "da"),
        ("fr-FR, de;q=0.9, da;q=0.2", "da"),
        ("da;q=0, en;q=0.1", "en"),
        ("fr, de", None),
        ("da;q=bogus", None),
        ("", None),
        (None, None),
    ],
)
def test_accept_language_with_q_values(header: str | None, expected: str | None) -> None:
    assert from_accept_language(header) == expected


def test_language_precedence() -> None:
    choose = choose_language
    assert choose(user_language="da", cookie="en", accept_language="en", default="en") == "da"
    assert choose(user_language=None, cookie="da", accept_language="en", default="en") == "da"
    assert choose(user_language=None, cookie=None, accept_language="da", default="en") == "da"
    assert choose(user_language=None, cookie="zz", accept_language="fr", default="da") == "da"
    assert choose(user_language=None, cookie=None, accept_language=None, default="zz") == "en"


def test_login_page_in_danish_by_accept_language(client: TestClient) -> None:
    page = client.get("/login", headers={"Accept-Language": "da-DK,da;q=0.9,en;q=0.8"})
    assert '<html lang="da">' in page.text
    assert "Brugernavn" in page.text and "Adgangskode" in page.text
    english = client.get("/login", headers={"Accept-Language": "en-GB"})
    assert "Username" in english.text and "Brugernavn" not in english.text


def test_login_page_language_link_sets_cookie(client: TestClient) -> None:
    page = client.get("/login", params={"lang": "da"}, headers={"Accept-Language": "en"})
    assert "Brugernavn" in page.text
    assert client.cookies["lods_lang"] == "da"
    assert "Brugernavn" in client.get("/login", headers={"Accept-Language": "en"}).text


def test_language_switch_persists_on_the_account(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "nina")
    response = client.post(
        "/language",
        data={"language": "da", "next": "/", "csrf_token": client.cookies["lods_csrf"]},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert client.cookies["lods_lang"] == "da"
    with app_runtime.sessions() as db:
        assert db.scalar(select(User.language).where(User.username == "nina")) == "da"
    # Another browser, preferring English and with no cookie, still gets Danish after login.
    other = TestClient(client.app, base_url="http://testserver")
    login(other, "nina")
    home = other.get("/", headers={"Accept-Language": "en"})
    assert "Der er endnu ingen moduler til din rolle." in home.text
    assert other.get("/api/me").json()["language"] == "da"


def test_language_switch_ignores_unknown_language(client: TestClient, app_runtime: Runtime) -> None:
    login(client, "nina")
    client.post(
        "/language",
        data={"language": "klingon", "csrf_token": client.cookies["lods_csrf"]},
        follow_redirects=False,
    )
    with app_runtime.sessions() as db:
        assert db.scalar(select(User.language).where(User.username == "nina")) is None


def test_locale_files_are_the_supported_languages() -> None:
    files = {p.stem for p in Path(LOCALES_DIR).glob("*.json")}
    assert files == set(SUPPORTED_LANGUAGES)
