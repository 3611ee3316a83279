"""Settings come from LODS_* variables over an optional TOML file, with safe defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lods.config import Settings


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LODS_DATA_DIR", "LODS_DATABASE_URL", "LODS_HTTP_PORT", "LODS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.data_dir == Path("./lods-data")
    assert s.host == "127.0.0.1"
    assert (s.http_port, s.dicom_port, s.dicom_ae_title) == (8000, 11112, "LODS")
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_database_url.endswith("lods-data/lods.sqlite3")
    assert s.audit_retention_days >= 183
    assert s.dicom_accept_unknown_ae is False


def test_environment_overrides_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "lods.toml"
    toml.write_text('dicom_ae_title = "FROMFILE"\nhttp_port = 9000\nstable_seconds = 30\n')
    monkeypatch.setenv("LODS_CONFIG_FILE", str(toml))
    monkeypatch.setenv("LODS_HTTP_PORT", "9100")
    s = Settings()
    assert s.dicom_ae_title == "FROMFILE"
    assert s.http_port == 9100
    assert s.stable_seconds == 30


def test_audit_retention_below_six_months_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 183 days"):
        Settings(audit_retention_days=30)


def test_ae_title_longer_than_16_characters_is_refused() -> None:
    with pytest.raises(ValidationError, match="1 to 16"):
        Settings(dicom_ae_title="A" * 17)


def test_signing_key_is_created_once_and_kept_private(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data", secret_key=None)
    key = s.signing_key()
    assert len(key) >= 32
    assert s.signing_key() == key
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o077 == 0
