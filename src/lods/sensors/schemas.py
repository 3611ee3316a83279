"""The shape of one room-sensor event, as it arrives over MQTT or the HTTP webhook.

An event is a small fact — what happened (`kind`), where (site, ward, room, bed), when
(`time`, ISO-8601 with a zone), how sure the sensor is (`confidence`, 0..1) and which
device said so (`device_id`) — identified by `event_id`, so a redelivery is recognised.
Events only: a field that could carry an image or video (`image`, `snapshot`, `video`,
...) is refused, whatever it holds, and so is any other field that is not a short plain
value. `parse_event` returns a `SensorEventIn` or raises `EventRejected` whose `reasons`
say, in words an integrator can act on, what is wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lods.sensors.models import EVENT_KINDS

#: The fields of an event; all but `site` are required.
REQUIRED = ("event_id", "kind", "ward", "room", "bed", "time", "confidence", "device_id")
OPTIONAL = ("site",)
#: Field names that could carry pictures or video: refused whatever they hold.
_MEDIA = re.compile(
    r"image|img|video|snapshot|photo|picture|frame|jpe?g|png|clip|thumbnail|media|stream"
    r"|camera_data|pixels",
    re.IGNORECASE,
)
#: Extra (vendor) fields are kept only as short plain values.
MAX_EXTRA_FIELDS = 20
MAX_EXTRA_CHARS = 200
_ID = re.compile(r"^[\x21-\x7e]{1,100}$")
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class EventRejected(ValueError):
    """The event cannot be accepted; `reasons` lists every problem."""

    def __init__(self, reasons: list[str], *, event_id: str | None = None) -> None:
        self.reasons = reasons
        self.event_id = event_id
        super().__init__("; ".join(reasons))


@dataclass(frozen=True)
class SensorEventIn:
    """A validated event: location codes as sent, time as an aware UTC datetime."""

    event_id: str
    kind: str
    ward: str
    room: str
    bed: str
    occurred_at: datetime
    confidence: float
    device_id: str
    site: str | None = None
    #: Extra short plain fields a vendor added (kept with the stored event).
    extra: dict[str, Any] = field(default_factory=dict)

    def as_payload(self) -> dict[str, Any]:
        """The event as stored in `SensorEvent.payload` (JSON-safe)."""
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "site": self.site,
            "ward": self.ward,
            "room": self.room,
            "bed": self.bed,
            "time": self.occurred_at.isoformat(),
            "confidence": self.confidence,
            "device_id": self.device_id,
            **({"extra": self.extra} if self.extra else {}),
        }


def parse_time(value: Any) -> datetime:
    """An ISO-8601 timestamp with a zone (`Z` or an offset) as aware UTC; ValueError else."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("time must be an ISO-8601 timestamp string with a zone")
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"time {value!r} is not an ISO-8601 timestamp") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"time {value!r} has no zone; add Z or an offset such as +01:00")
    return parsed.astimezone(UTC)


def _code(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # bed 12 and room 3 are often sent as numbers
    if not isinstance(value, str) or not _CODE.fullmatch(value.strip()):
        return None
    return value.strip()


def parse_event(data: Any) -> SensorEventIn:
    """Validate one event (a JSON object); raise `EventRejected` listing every problem."""
    if not isinstance(data, dict):
        raise EventRejected(["an event must be a JSON object"])
    raw_id = data.get("event_id")
    event_id = raw_id.strip() if isinstance(raw_id, str) else None
    reasons: list[str] = []
    media = sorted(k for k in data if isinstance(k, str) and _MEDIA.search(k))
    if media:
        reasons.append(
            f"sensor events carry no images or video: field(s) {', '.join(media)} refused"
        )
    for key in REQUIRED:
        if data.get(key) is None:
            reasons.append(f"{key} is required")
    if event_id is not None and not _ID.fullmatch(event_id):
        reasons.append("event_id must be 1 to 100 printable characters without spaces")
        event_id = None
    elif raw_id is not None and event_id is None:
        reasons.append("event_id must be a string")
    kind = data.get("kind")
    if kind is not None and kind not in EVENT_KINDS:
        reasons.append(f"kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
    codes: dict[str, str | None] = {}
    for key in ("site", "ward", "room", "bed"):
        if data.get(key) is None:
            codes[key] = None
            continue
        codes[key] = _code(data, key)
        if codes[key] is None:
            reasons.append(f"{key} must be a code of 1 to 32 letters, digits, '.', '_' or '-'")
    occurred_at = None
    if data.get("time") is not None:
        try:
            occurred_at = parse_time(data["time"])
        except ValueError as exc:
            reasons.append(str(exc))
    confidence = data.get("confidence")
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not math.isfinite(confidence)
        or not 0 <= confidence <= 1
    ):
        reasons.append("confidence must be a number from 0 to 1")
        confidence = None
    device_id = data.get("device_id")
    if device_id is not None and (
        not isinstance(device_id, str) or not 1 <= len(device_id.strip()) <= 100
    ):
        reasons.append("device_id must be a string of 1 to 100 characters")
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in REQUIRED or key in OPTIONAL or (isinstance(key, str) and _MEDIA.search(key)):
            continue
        plain = value is None or isinstance(value, bool | int | float)
        if isinstance(value, str) and len(value) <= MAX_EXTRA_CHARS:
            plain = True
        if not plain or len(str(key)) > 64:
            reasons.append(
                f"field {key!r} is not part of a sensor event and not a short plain value"
            )
        else:
            extra[str(key)] = value
    if len(extra) > MAX_EXTRA_FIELDS:
        reasons.append(f"at most {MAX_EXTRA_FIELDS} extra fields")
    if reasons:
        raise EventRejected(reasons, event_id=event_id)
    assert event_id is not None and occurred_at is not None and isinstance(device_id, str)
    return SensorEventIn(
        event_id=event_id,
        kind=str(kind),
        site=codes["site"],
        ward=str(codes["ward"]),
        room=str(codes["room"]),
        bed=str(codes["bed"]),
        occurred_at=occurred_at,
        confidence=float(confidence),  # type: ignore[arg-type]
        device_id=device_id.strip(),
        extra=extra,
    )
