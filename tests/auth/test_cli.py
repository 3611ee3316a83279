"""`lods user ...` and `lods token ...` from a shell."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.auth import service
from lods.auth.models import ApiToken
from lods.cli import app as cli
from lods.config import get_settings
from lods.runtime import Runtime
from support import LiveServer

PW = "a perfectly long password"


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """An installation configured through LODS_* variables (no server running)."""
    server = LiveServer(data_dir=tmp_path / "data", database_url=sqlite_url)
    for key, value in server.env().items():
        if key.startswith("LODS_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield server
    get_settings.cache_clear()


def _runtime() -> Runtime:
    return Runtime.open(get_settings(), migrate=False)


def _run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_user_add_with_password_stdin_in_subprocess(env: LiveServer) -> None:
    done = env.cli(
        "user",
        "add",
        "rita",
        "--role",
        "radiologist",
        "--role",
        "admin",
        "--full-name",
        "Rita Rask",
        "--password-stdin",
        input=PW + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert PW not in done.stdout + done.stderr
    rt = _runtime()
    try:
        with rt.sessions() as db:
            user = service.authenticate(
                db, username="rita", password=PW, settings=rt.settings, source="t"
            )
            assert user.full_name == "Rita Rask"
            assert sorted(user.role_set) == ["admin", "radiologist"]
            event = db.scalars(select(AuditEvent).where(AuditEvent.action == "user.create")).one()
            assert event.actor == f"cli:{getpass.getuser()}"
    finally:
        rt.close()


def test_token_create_in_subprocess_prints_working_token(env: LiveServer) -> None:
    assert (
        env.cli(
            "user", "add", "otto", "--role", "ai_owner", "--password-stdin", input=PW
        ).returncode
        == 0
    )
    done = env.cli("token", "create", "otto", "--label", "router", "--expires-days", "30")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("lods_") and "\n" not in token
    rt = _runtime()
    try:
        with TestClient(create_app(rt)) as client:
            me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["username"] == "otto"
        with rt.sessions() as db:
            row = db.scalars(select(ApiToken)).one()
            assert row.label == "router" and row.expires_at is not None
            assert token not in row.token_hash
    finally:
        rt.close()


def test_user_add_without_password_prints_generated_one(env: LiveServer) -> None:
    code, out, _err = _run("user", "add", "nina", "--role", "nurse")
    assert code == 0
    password = out.strip().rsplit(": ", 1)[1]
    assert len(password) >= 16
    rt = _runtime()
    try:
        with rt.sessions() as db:
            service.authenticate(
                db, username="nina", password=password, settings=rt.settings, source="t"
            )
    finally:
        rt.close()


def test_user_add_refuses_unknown_role_and_duplicates(env: LiveServer) -> None:
    code, _out, _err = _run("user", "add", "x", "--role", "surgeon")
    assert code != 0
    assert _run("user", "add", "nina", "--role", "nurse", "--password-stdin", input=PW)[0] == 0
    code, _out, err = _run("user", "add", "nina", "--role", "nurse", "--password-stdin", input=PW)
    assert code == 1 and "already exists" in err
    code, _out, err = _run("user", "add", "kim", "--role", "nurse", "--password-stdin", input="")
    assert code == 1 and "no password" in err


def test_user_passwd_deactivate_unlock_and_list(env: LiveServer) -> None:
    _run("user", "add", "nina", "--role", "nurse", "--password-stdin", input=PW)
    _run("user", "add", "ada", "--role", "admin", "--password-stdin", input=PW)
    assert _run("user", "passwd", "nina", "--password-stdin", input="new long password")[0] == 0
    rt = _runtime()
    try:
        settings = rt.settings
        for _ in range(settings.login_max_failures):
            with rt.sessions() as db, db.begin(), pytest.raises(service.LoginFailed):
                service.authenticate(
                    db, username="nina", password="x", settings=settings, source="t"
                )
        assert "locked until" in _run("user", "list")[1]
        assert _run("user", "unlock", "nina")[0] == 0
        with rt.sessions() as db:
            service.authenticate(
                db, username="nina", password="new long password", settings=settings, source="t"
            )
        assert _run("user", "deactivate", "nina")[0] == 0
        code, _out, err = _run("user", "deactivate", "ada")
        assert code == 1 and "last active administrator" in err
        listing = _run("user", "list")[1]
        assert "nina" in listing and "inactive" in listing
        assert _run("user", "unlock", "ghost")[0] == 1
    finally:
        rt.close()


def test_token_list_and_revoke(env: LiveServer) -> None:
    _run("user", "add", "otto", "--role", "ai_owner", "--password-stdin", input=PW)
    token = _run("token", "create", "otto", "--label", "bench")[1].strip()
    listing = _run("token", "list")[1]
    assert "otto" in listing and "bench" in listing and token not in listing
    token_id = listing.split()[0]
    assert _run("token", "revoke", token_id)[0] == 0
    assert "bench" not in _run("token", "list")[1]
    assert "revoked" in _run("token", "list", "--all")[1]
    assert _run("token", "revoke", "424242")[0] == 1
    assert _run("token", "create", "ghost")[0] == 1
    rt = _runtime()
    try:
        with TestClient(create_app(rt)) as client:
            refused = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401
    finally:
        rt.close()


def test_live_server_accepts_cli_token(live_server: LiveServer) -> None:
    done = live_server.cli("token", "create", "rita")
    assert done.returncode == 0, done.stderr
    me = httpx.get(
        live_server.base_url + "/api/me",
        headers={"Authorization": f"Bearer {done.stdout.strip()}"},
    )
    assert me.status_code == 200 and me.json()["username"] == "rita"
