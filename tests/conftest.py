"""Shared fixtures: a fresh database on SQLite (and PostgreSQL when configured), an app,
a small named cast of users, and a real `lods serve` process on loopback ports."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from lods.app import create_app
from lods.config import Settings, get_settings
from lods.migrations import upgrade
from lods.runtime import Runtime
from support import (
    POSTGRES_URL,
    LiveServer,
    add_cast,
    make_settings,
    reset_postgres,
)

# --- databases -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A scratch PostgreSQL database for this test session, migrated once, dropped after."""
    if not POSTGRES_URL:
        pytest.skip("LODS_TEST_POSTGRES_URL is not set")
    name = f"lods_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh, migrated database: every test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "lods.sqlite3"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite database, for tests that are not about the database backend."""
    path = tmp_path / "lods.sqlite3"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "data", db_url)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.open(settings, migrate=False)
    yield rt
    rt.close()


@pytest.fixture
def sqlite_runtime(tmp_path: Path, sqlite_url: str) -> Iterator[Runtime]:
    rt = Runtime.open(make_settings(tmp_path / "data", sqlite_url), migrate=False)
    yield rt
    rt.close()


@pytest.fixture
def cli_runtime(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Runtime]:
    """An installation the CLI finds through LODS_* variables, and a runtime on it."""
    monkeypatch.setenv("LODS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LODS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("LODS_SECRET_KEY", "test-secret-key-not-for-production")
    get_settings.cache_clear()
    runtime = Runtime.open(get_settings(), migrate=False)
    yield runtime
    runtime.close()
    get_settings.cache_clear()


# --- the cast and the app -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2id parameters in-process: every test that builds the cast hashes six
    passwords, and the production parameters (64 MiB, 3 passes) cost ~0.25 s each on a
    busy machine. Subprocesses (`lods serve`, the CLI) keep the production parameters."""
    from argon2 import PasswordHasher

    from lods.auth import service

    monkeypatch.setattr(
        service, "password_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    )


@pytest.fixture
def app_runtime(sqlite_runtime: Runtime) -> Runtime:
    """A SQLite-backed runtime with the cast of users in it."""
    add_cast(sqlite_runtime)
    return sqlite_runtime


@pytest.fixture
def client(app_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(app_runtime), base_url="http://testserver") as c:
        yield c


# --- a real server process ------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A running server on SQLite with the cast of users and a test site for AE `MODALITY`."""
    data_dir = tmp_path / "live"
    server = LiveServer(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'lods.sqlite3'}")
    data_dir.mkdir(parents=True)
    rt = Runtime.open(
        make_settings(data_dir, server.database_url, dicom_port=server.dicom_port),
    )
    add_cast(rt)
    from lods.sites.service import add_dicom_node, create_site

    with rt.sessions() as db, db.begin():
        site = create_site(db, code="TEST", name="Test Hospital", actor="test")
        add_dicom_node(db, site_id=site.id, ae_title="MODALITY", kind="modality", actor="test")
        add_dicom_node(db, site_id=site.id, ae_title="STORESCU", kind="modality", actor="test")
    rt.close()
    server.start()
    yield server
    server.stop()
