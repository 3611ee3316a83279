"""Helpers the tests share: the cast of users, logging in, tokens, settings, a real server.

Fixtures live in `conftest.py`; plain helpers live here so any test module can
`from support import ...` (a `conftest` module name is shared by every folder's conftest).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from lods.auth.models import Role
from lods.config import Settings
from lods.db import Base
from lods.runtime import Runtime

POSTGRES_URL = os.environ.get("LODS_TEST_POSTGRES_URL")
PASSWORD = "correct horse battery staple"

#: The cast: one user per role, named so tests read like stories.
CAST = {
    "rita": Role.RADIOLOGIST,
    "peter": Role.PHYSICIAN,
    "nina": Role.NURSE,
    "otto": Role.AI_OWNER,
    "ada": Role.ADMIN,
    "aud": Role.AUDITOR,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(
        f'"{t.name}"' for t in Base.metadata.sorted_tables if t.name != "alembic_version"
    )
    with engine.begin() as conn:
        # TRUNCATE does not fire the audit trail's row triggers; this is a test reset.
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(
            text(
                "INSERT INTO audit_head (id, seq, hash, anchor_seq, anchor_hash) "
                "VALUES (1, 0, :h, 0, :h)"
            ),
            {"h": "0" * 64},
        )
    engine.dispose()


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "secret_key": "test-secret-key-not-for-production",
        "stable_seconds": 1.0,
        "dicom_port": free_port(),
        "http_port": free_port(),
        "hl7_port": free_port(),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def add_cast(rt: Runtime) -> None:
    from lods.auth.service import create_user

    with rt.sessions() as db, db.begin():
        for name, role in CAST.items():
            create_user(
                db,
                username=name,
                roles=[role],
                password=PASSWORD,
                full_name=name.capitalize(),
                actor="test",
            )


def login(client: TestClient, username: str, password: str = PASSWORD) -> httpx.Response:
    """Log `username` in through the real login form (with its CSRF token)."""
    page = client.get("/login")
    csrf = client.cookies.get("lods_csrf")
    assert page.status_code == 200 and csrf
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf, "next": "/"},
        follow_redirects=False,
    )


def bearer_token(rt: Runtime, username: str) -> str:
    from lods.auth.service import create_api_token

    with rt.sessions() as db, db.begin():
        return create_api_token(db, username=username, label="test", actor="test")


def auth(rt: Runtime, username: str) -> dict[str, str]:
    """Request headers carrying a fresh bearer token of `username`."""
    return {"Authorization": f"Bearer {bearer_token(rt, username)}"}


def csrf(client: TestClient) -> str:
    """The double-submit CSRF token the client got with its last page."""
    return client.cookies.get("lods_csrf") or ""


@dataclass
class LiveServer:
    """`lods serve` in a child process on free loopback ports, with its own data dir."""

    data_dir: Path
    database_url: str
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    hl7_port: int = field(default_factory=free_port)
    ae_title: str = "LODS"
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "LODS_DATA_DIR": str(self.data_dir),
                "LODS_DATABASE_URL": self.database_url,
                "LODS_HTTP_PORT": str(self.http_port),
                "LODS_DICOM_PORT": str(self.dicom_port),
                "LODS_HL7_PORT": str(self.hl7_port),
                "LODS_DICOM_AE_TITLE": self.ae_title,
                "LODS_STABLE_SECONDS": "1",
                "LODS_SECRET_KEY": "test-secret-key-not-for-production",
                "TCP_NODELAY": "1",
                # Tests that need AI jobs run ask for workers in extra_env.
                "LODS_WORKERS": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lods", *args],
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.http_port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lods", "serve"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lods serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                        return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("lods serve did not come up within 60 s")

    def kill(self) -> None:
        """Kill -9: no clean shutdown, as in a crash or power cut of the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
