"""The one typed settings object: `LODS_*` environment variables over an optional TOML file."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: The EU AI Act asks deployers to keep logs of AI use for at least six months.
MIN_AUDIT_RETENTION_DAYS = 183


def _toml_file() -> Path | None:
    path = os.environ.get("LODS_CONFIG_FILE")
    return Path(path) if path else None


class Settings(BaseSettings):
    """Every knob of a Lods installation, read from `LODS_*` variables or a TOML file."""

    model_config = SettingsConfigDict(env_prefix="LODS_", extra="ignore")

    data_dir: Path = Field(Path("./lods-data"), description="Blob store, quarantine, secrets")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data dir")
    host: str = "127.0.0.1"
    http_port: int = 8000
    dicom_port: int = 11112
    dicom_ae_title: str = "LODS"
    dicom_max_pdu: int = Field(
        1_048_576, description="Largest P-DATA PDU we accept; large PDUs make intake faster"
    )
    dicom_accept_unknown_ae: bool = Field(
        False, description="Accept unknown calling AE titles into the 'unassigned' site"
    )
    stable_seconds: float = Field(60.0, description="Quiet period before a study counts as stable")
    dicomweb_cors_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (e.g. an OHIF viewer's) allowed to call /dicom-web and /api "
        "from a browser with a bearer token; empty: no cross-origin access",
    )
    public_url: str | None = Field(
        None,
        description="Base URL clients reach Lods at (e.g. https://lods.example.org); "
        "used in DICOMweb RetrieveURL/BulkDataURI; default: from each request",
    )
    stow_max_bytes: int = Field(
        4 * 1024**3, description="Largest STOW-RS request body accepted (bytes); larger gets 413"
    )
    secret_key: str | None = Field(None, description="Signing key; generated in data dir if unset")
    session_hours: float = 12.0
    cookie_secure: bool = False
    login_max_failures: int = 5
    login_lockout_minutes: float = 15.0
    audit_retention_days: int = MIN_AUDIT_RETENTION_DAYS
    default_language: str = "en"
    workers: int = Field(
        2, ge=0, le=64, description="Job worker processes `lods serve` starts (0: none)"
    )
    job_lease_seconds: float = Field(
        30.0, gt=0, description="A running job whose worker stops renewing this long is re-queued"
    )
    job_poll_seconds: float = Field(
        0.25, gt=0, description="How often an idle worker looks for jobs"
    )
    job_backoff_seconds: float = Field(
        5.0, ge=0, description="First retry delay of a transient failure; doubles per attempt"
    )
    job_backoff_max_seconds: float = Field(300.0, ge=0, description="Longest retry delay")
    # Results out (exports/): the outbox sender of `lods serve`.
    export_poll_seconds: float = Field(
        2.0, gt=0, description="How often the outbox sender looks for due sends"
    )
    export_backoff_seconds: float = Field(
        10.0, ge=0, description="First retry delay of a transient send failure; doubles per attempt"
    )
    export_backoff_max_seconds: float = Field(
        900.0, ge=0, description="Longest delay between two attempts of one send"
    )
    export_max_attempts: int = Field(
        100,
        ge=0,
        description="Attempts before a send that keeps failing transiently is marked failed "
        "(0: retry for ever); failed sends are shown to admins and can be retried",
    )
    export_lease_seconds: float = Field(
        300.0,
        gt=0,
        description="A send in progress whose sender died is retried after this; "
        "longer than the longest send",
    )
    export_timeout_seconds: float = Field(
        30.0, gt=0, description="Network time-out of one send (connect, association, response)"
    )
    export_ae_title: str | None = Field(
        None, description="Calling AE title of DICOM exports; default: LODS_DICOM_AE_TITLE"
    )
    fhir_push_url: str | None = Field(
        None,
        description="FHIR R4 base URL signed reports are pushed to (a transaction Bundle); "
        "unset: none pushed",
    )
    hl7_oru_target: str | None = Field(
        None,
        description="host:port of an MLLP receiver (the EHR's interface engine) signed "
        "reports are sent to as HL7 v2 ORU^R01; unset: none sent",
    )
    # Patient monitoring (vitals/, sensors/, alerts/).
    hl7_port: int = Field(
        2575, ge=0, le=65535, description="MLLP listener for HL7 v2 vitals and ADT (0: none)"
    )
    hl7_max_message_bytes: int = Field(
        1_048_576, ge=1024, description="Largest HL7 message the listener accepts"
    )
    hl7_scoring: Literal["process", "inline"] = Field(
        "process",
        description="Where the MLLP listener scores new readings before it ACKs: 'process' "
        "(a scorer process beside the listener, for throughput) or 'inline' (in the intake "
        "transaction)",
    )
    mqtt_host: str | None = Field(
        None, description="MQTT broker of the room sensors, e.g. 127.0.0.1; unset: no MQTT"
    )
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_topic_prefix: str = Field(
        "lods/sensors", description="Sensors publish to <prefix>/<site>/<ward>/<room>/<bed>"
    )
    notify_webhook_url: str | None = Field(
        None,
        description="URL of the hospital's nurse-call / phone system; every alert "
        "notification, repeat and escalation is POSTed there as JSON; unset: none sent",
    )
    alert_tick_seconds: float = Field(
        5.0, gt=0, description="How often repeats, escalations and overdue checks run"
    )

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title_is_valid(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 16:
            raise ValueError("an AE title is 1 to 16 characters")
        return value

    @field_validator("export_ae_title")
    @classmethod
    def _export_ae_title_is_valid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return cls._ae_title_is_valid(value)

    @field_validator("audit_retention_days")
    @classmethod
    def _retention_at_least_six_months(cls, value: int) -> int:
        if value < MIN_AUDIT_RETENTION_DAYS:
            raise ValueError(
                f"audit retention must be at least {MIN_AUDIT_RETENTION_DAYS} days (6 months)"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_file()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # Derived locations -------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        """Return the database URL, SQLite inside the data dir unless one is set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lods.sqlite3').resolve()}"

    @property
    def export_calling_ae(self) -> str:
        """Return the calling AE title DICOM exports use."""
        return self.export_ae_title or self.dicom_ae_title

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def solutions_dir(self) -> Path:
        """Installed solution packages: `<id>/<version>/`, written once, never changed."""
        return self.data_dir / "solutions"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def ensure_dirs(self) -> None:
        """Create the data folders this installation writes to."""
        for path in (
            self.data_dir,
            self.blob_dir,
            self.quarantine_dir,
            self.tmp_dir,
            self.solutions_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)

    def signing_key(self) -> str:
        """Return the secret key, creating a private one in the data dir on first use."""
        if self.secret_key:
            return self.secret_key
        self.ensure_dirs()
        path = self.data_dir / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (tests build their own `Settings` instead)."""
    return Settings()


def settings_from(**overrides: Any) -> Settings:
    """Build settings with explicit overrides on top of the environment."""
    return Settings(**overrides)
