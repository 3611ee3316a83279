"""The room-sensor webhook: `POST /api/sensors/events`, for sensor hubs that speak HTTP.

The body is one event or a JSON array of events (at most `MAX_EVENTS`), each shaped as
on MQTT plus its location (`site` optional, `ward`, `room`, `bed`):

    {"event_id": "hub7-000123", "kind": "bed_exit", "site": "NORTH", "ward": "MED3",
     "room": "R12", "bed": "B2", "time": "2026-11-29T10:15:02+01:00",
     "confidence": 0.91, "device_id": "ceiling-R12"}

Authentication: a bearer token of a user with the `integration` role (or `admin`).
The answer is 200 with one result per event, in order: `stored` (with the policy's
`outcome`), `duplicate` (already stored; nothing changed — retrying is always safe) or
`rejected` with its `reasons`. Each event is stored in a savepoint of its own, so one
bad event does not undo the others; the whole request commits before the answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, status
from pydantic import BaseModel

from lods.auth.deps import Principal, SessionDep, SettingsDep, role_dependency
from lods.auth.models import Role
from lods.sensors import service
from lods.sensors.schemas import EventRejected

router = APIRouter(prefix="/api/sensors", tags=["sensors"])

MAX_EVENTS = 500
SensorPoster = Annotated[Principal, Depends(role_dependency(Role.INTEGRATION, Role.ADMIN))]


class EventResult(BaseModel):
    index: int
    event_id: str | None
    status: str
    id: int | None = None
    outcome: str | None = None
    alert_id: int | None = None
    reasons: list[str] = []


class EventsOut(BaseModel):
    stored: int
    duplicate: int
    rejected: int
    results: list[EventResult]


@router.post("/events", response_model=EventsOut)
def post_events(
    data: Annotated[Any, Body(description="One event, or an array of events")],
    db: SessionDep,
    settings: SettingsDep,
    user: SensorPoster,
) -> EventsOut:
    """Store room-sensor events (one object or an array); idempotent by `event_id`."""
    if user.via != "token":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="sensor hubs post with an API token")
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > MAX_EVENTS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"send 1 to {MAX_EVENTS} events per request",
        )
    results: list[EventResult] = []
    for index, item in enumerate(items):
        given_id = item.get("event_id") if isinstance(item, dict) else None
        event_id = given_id if isinstance(given_id, str) else None
        try:
            with db.begin_nested():
                result = service.ingest(db, event=item, source="http", settings=settings)
        except EventRejected as exc:
            results.append(
                EventResult(index=index, event_id=event_id, status="rejected", reasons=exc.reasons)
            )
            continue
        row = result.event
        results.append(
            EventResult(
                index=index,
                event_id=row.event_id,
                status="duplicate" if result.duplicate else "stored",
                id=row.id,
                outcome=row.outcome,
                alert_id=row.alert_fk,
            )
        )
    counts = {s: sum(1 for r in results if r.status == s) for s in ("stored", "duplicate")}
    return EventsOut(
        stored=counts["stored"],
        duplicate=counts["duplicate"],
        rejected=len(results) - counts["stored"] - counts["duplicate"],
        results=results,
    )
