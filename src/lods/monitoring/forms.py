"""Form handling of the ward pages: the choices the forms offer, reading what was
entered (numbers with a decimal comma, a local time in the browser's zone), and going
back to the page a form came from — with a notice, or with why it was refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from lods.alerts import service as alerts
from lods.falls import service as falls
from lods.monitoring.board import WardNotFound
from lods.vitals import options as scoring_options
from lods.vitals import service as vitals

#: What a page may say was done (`?done=`).
NOTICES = frozenset(
    {
        "acknowledged",
        "resolved",
        "morse",
        "bed_exit",
        "option_set",
        "option_revoked",
        "vitals",
        "incident",
    }
)
BED_EXIT_SETTINGS = {"auto": None, "on": True, "off": False}
#: Scoring options a clinician sets from the bed page (thresholds: through the API).
OPTION_KEYS = ("spo2_scale", "pregnant")
#: The manual-entry form: coded items first (monitors do not send them), then numbers.
CODED_CHOICES = {"consciousness": ("A", "C", "V", "P", "U"), "oxygen": ("air", "oxygen")}
NUMERIC_FIELDS = ("resp_rate", "spo2", "bp_sys", "bp_dia", "pulse_rate", "temperature")
ERROR_KEYS: tuple[tuple[type[Exception], str], ...] = (
    (WardNotFound, "not_found"),
    (alerts.AlertNotFound, "not_found"),
    (falls.FallsNotFound, "not_found"),
    (vitals.NotFoundError, "not_found"),
    (scoring_options.OptionNotFound, "not_found"),
    (alerts.IllegalAlertTransition, "conflict"),
)
#: What a refused form step raises: the page says why instead of failing.
REFUSED = (
    WardNotFound,
    alerts.AlertError,
    falls.FallsError,
    vitals.VitalsError,
    scoring_options.OptionError,
    ValueError,
)


def notice_context(done: str | None, error: str | None, reason: str | None) -> dict[str, Any]:
    """The page's notice (`?done=`) or error (`?error=`, `?reason=`) to show, if known."""
    return {
        "notice": f"ward.notice.{done}" if done in NOTICES else None,
        "error": f"ward.error.{error}" if error in ("not_found", "conflict", "invalid") else None,
        "reason": (reason or "")[:300],
    }


def back_to(ward_id: int, back: str, **query: str) -> RedirectResponse:
    """Return to the page the form was on (only pages of this ward: no open redirect)."""
    kind, _, bed = back.partition(":")
    if kind == "phone":
        path = f"/wards/{ward_id}/phone"
    elif kind == "bed" and bed.isdigit():
        path = f"/wards/{ward_id}/beds/{bed}"
    elif kind == "station":
        path, query = f"/wards/{ward_id}", {"layout": "station", **query}
    else:
        path = f"/wards/{ward_id}"
    return RedirectResponse(f"{path}?{urlencode(query)}" if query else path, status_code=303)


def refused(db: Session, ward_id: int, back: str, exc: Exception) -> RedirectResponse:
    """Undo whatever the refused step began, and say why on the page it came from."""
    db.rollback()
    key = next((k for cls, k in ERROR_KEYS if isinstance(exc, cls)), "invalid")
    return back_to(ward_id, back, error=key, reason=str(exc)[:300])


def local_time(value: str, tz_offset: str, *, default: datetime) -> datetime:
    """A `datetime-local` form value in the browser's zone (`tz_offset`: minutes behind
    UTC, as JavaScript's getTimezoneOffset; absent: UTC) as aware UTC."""
    if not value.strip():
        return default
    try:
        naive = datetime.fromisoformat(value.strip())
        offset = int(tz_offset) if tz_offset.strip() else 0
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a date and time") from exc
    if naive.tzinfo is not None:
        return naive.astimezone(UTC)
    return (naive + timedelta(minutes=offset)).replace(tzinfo=UTC)


def entered_values(fields: dict[str, str]) -> dict[str, float | str]:
    """The filled-in fields as values to record (coded items checked against their
    choices, numbers with a decimal comma accepted); ValueError when none or bad."""
    values: dict[str, float | str] = {}
    for parameter, choices in CODED_CHOICES.items():
        chosen = fields.get(parameter, "").strip()
        if chosen:
            if chosen not in choices:
                raise ValueError(f"{parameter}: choose one of {', '.join(choices)}")
            values[parameter] = chosen
    for parameter in NUMERIC_FIELDS:
        text = fields.get(parameter, "").strip().replace(",", ".")
        if text:
            try:
                values[parameter] = float(text)
            except ValueError as exc:
                raise ValueError(f"{parameter}: {text!r} is not a number") from exc
    if not values:
        raise ValueError("enter at least one observation")
    return values
