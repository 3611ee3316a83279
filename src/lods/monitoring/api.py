"""JSON API of the ward board under /api/wards: the list of wards, one ward's board (the
read model the board's script re-fetches on every live event), and the actions taken
from a tile — acknowledge and resolve an alarm.

Nurses and physicians read boards and act on them; administrators see the list of wards
(counts, no patient data). Reading a board is audited once per user and ward every
`READ_AUDIT_WINDOW` (the script re-fetches on every event; one audit event per fetch
would bury the trail, none would hide who watched). Changes are audited by the services.
Entering a Morse assessment, the bed-exit setting, a fall alarm's outcome and incident
reports also have their own JSON routes in `lods.falls.api`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lods.alerts import service as alerts
from lods.alerts.models import Alert
from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.db import utcnow
from lods.falls import service as falls
from lods.monitoring.board import WardNotFound, board_fingerprint, get_ward, ward_board
from lods.sites.models import Bed, Department, Site
from lods.sites.service import BED_KINDS
from lods.vitals import service as vitals
from lods.vitals.models import Encounter, EncounterState

router = APIRouter(prefix="/api/wards", tags=["ward board"])

#: Who reads a ward's board (patient data) and acts on its alarms.
BOARD_ROLES = frozenset({Role.NURSE, Role.PHYSICIAN})
#: Who sees the list of wards and may follow a board's event stream (no patient data).
WARD_LIST_ROLES = frozenset({Role.NURSE, Role.PHYSICIAN, Role.ADMIN})
BoardUser = Annotated[Principal, Depends(role_dependency(*BOARD_ROLES))]
WardListUser = Annotated[Principal, Depends(role_dependency(*WARD_LIST_ROLES))]

#: Alert kinds resolved with a fall outcome (and an incident kept) by `lods.falls`.
FALL_KINDS = frozenset({falls.FALL_ALARM, falls.BED_EXIT_ALERT})
MAX_RESOLUTION_CHARS = 4000
#: A user's reads of one board are audited at most once in this many seconds.
READ_AUDIT_WINDOW = 10 * 60
#: A board read is handed out again for this long while nothing on it changed.
BOARD_CACHE_SECONDS = 3.0
T = TypeVar("T")


class _ReadAudit:
    """When each (user, ward) board read was last audited in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int], float] = {}

    def due(self, username: str, ward_id: int) -> bool:
        """Whether this read must be audited (and, if so, remember it as done)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get((username, ward_id))
            if last is not None and now - last < READ_AUDIT_WINDOW:
                return False
            self._last[(username, ward_id)] = now
            if len(self._last) > 10_000:  # forget the oldest half, never grow without bound
                for key, _ in sorted(self._last.items(), key=lambda kv: kv[1])[:5_000]:
                    del self._last[key]
            return True


class _BoardCache:
    """The last board read per ward, handed out again while the ward's fingerprint is
    unchanged and it is younger than `BOARD_CACHE_SECONDS`: the station screen, the
    desktops and the phones of one ward re-read the board on the same events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boards: dict[int, tuple[float, str, dict[str, Any]]] = {}

    def board(self, db: Session, ward_id: int) -> dict[str, Any]:
        fingerprint = board_fingerprint(db, ward_id=ward_id)
        with self._lock:
            cached = self._boards.get(ward_id)
        if (
            cached is not None
            and cached[1] == fingerprint
            and time.monotonic() - cached[0] < BOARD_CACHE_SECONDS
        ):
            return cached[2]
        board = ward_board(db, ward_id=ward_id, now=utcnow())
        with self._lock:
            self._boards[ward_id] = (time.monotonic(), fingerprint, board)
        return board


_STATE_LOCK = threading.Lock()


def _per_app(request: Request, name: str, make: Callable[[], T]) -> T:
    """One `make()` per app (so each app — and each test's app — starts afresh)."""
    state = request.app.state
    with _STATE_LOCK:
        found: T | None = getattr(state, name, None)
        if found is None:
            found = make()
            setattr(state, name, found)
    return found


def read_audit(request: Request) -> _ReadAudit:
    """The app's record of audited board reads."""
    return _per_app(request, "ward_read_audit", _ReadAudit)


def board_cache(request: Request) -> _BoardCache:
    """The app's recently read boards."""
    return _per_app(request, "ward_board_cache", _BoardCache)


def audit_board(
    db: Session, user: Principal, board: dict[str, Any], *, action: str, via: str
) -> None:
    """One audit event for a view of the whole board: the ward and whose data it showed."""
    record(
        db,
        actor=user.username,
        action=action,
        object_ref=f"ward:{board['ward']['id']}",
        source=user.source,
        detail={
            "ward": board["ward"]["code"],
            "site": board["ward"]["site"]["code"],
            "via": via,
            "patients": sorted(t["occupant"]["patient_id"] for t in board["beds"] if t["occupant"]),
        },
    )


@contextmanager
def ward_errors() -> Iterator[None]:
    """Answer an unknown ward with 404 and a refused alarm step with its status."""
    try:
        yield
    except WardNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except (alerts.AlertNotFound, falls.FallsNotFound) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except alerts.IllegalAlertTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    except (alerts.AlertError, falls.FallsError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None


def ward_alert(db: Session, ward_id: int, alert_id: int) -> Alert:
    """The alert, if it belongs to this ward; raise AlertNotFound otherwise."""
    alert = db.get(Alert, alert_id)
    if alert is None or alert.ward_fk != ward_id:
        raise alerts.AlertNotFound(f"ward {ward_id} has no alert {alert_id}")
    return alert


def ward_bed(db: Session, ward_id: int, bed_id: int) -> Bed:
    """The bed, if it belongs to this ward; raise WardNotFound otherwise."""
    get_ward(db, ward_id=ward_id)
    bed = db.get(Bed, bed_id)
    if bed is None or bed.ward_id != ward_id or not bed.is_active:
        raise WardNotFound(f"ward {ward_id} has no bed {bed_id}")
    return bed


def occupant(db: Session, bed_id: int) -> Encounter:
    """The active encounter in the bed; raise WardNotFound when it is empty."""
    enc = vitals.occupant(db, bed_id=bed_id)
    if enc is None:
        raise WardNotFound(f"bed {bed_id} is empty")
    return enc


def resolve_alert(
    db: Session,
    user: Principal,
    alert: Alert,
    *,
    resolution: str = "",
    outcome: str | None = None,
    injury_grade: str | None = None,
) -> None:
    """Close an alarm from the board: fall alarms and bed-exit alerts with what happened
    (`lods.falls` keeps the incident), any other alert with a note of what was done."""
    if alert.kind in FALL_KINDS:
        falls.resolve_fall_alarm(
            db,
            alert_id=alert.id,
            actor=user.username,
            outcome=outcome or "",
            injury_grade=injury_grade or None,
            note=resolution,
            source=user.source,
        )
    else:
        alerts.resolve(
            db,
            alert_id=alert.id,
            actor=user.username,
            resolution=resolution,
            source=user.source,
        )


def ward_list(db: Session) -> list[dict[str, Any]]:
    """Every ward (ward, icu, emergency) with its hospital, active beds, occupied beds and
    open alarms — counts only."""
    beds = dict(
        db.execute(
            select(Bed.ward_id, func.count()).where(Bed.is_active.is_(True)).group_by(Bed.ward_id)
        ).all()
    )
    occupied = dict(
        db.execute(
            select(Encounter.ward_fk, func.count(func.distinct(Encounter.bed_fk)))
            .where(Encounter.state == EncounterState.ACTIVE.value, Encounter.bed_fk.is_not(None))
            .group_by(Encounter.ward_fk)
        ).all()
    )
    open_alerts = db.execute(
        select(Alert.ward_fk, Alert.severity, func.count())
        .where(Alert.ward_fk.is_not(None), Alert.state.in_(alerts.OPEN_STATES))
        .group_by(Alert.ward_fk, Alert.severity)
    ).all()
    counts: dict[int, dict[str, int]] = {}
    for ward_id, severity, n in open_alerts:
        if ward_id is not None:
            counts.setdefault(ward_id, {})[severity] = n
    rows = db.execute(
        select(Department, Site)
        .join(Site, Site.id == Department.site_id)
        .where(Department.kind.in_(sorted(BED_KINDS)))
        .order_by(Site.code, Department.code)
    ).all()
    return [
        {
            "id": ward.id,
            "code": ward.code,
            "name": ward.name,
            "kind": ward.kind,
            "site": {"id": site.id, "code": site.code, "name": site.name},
            "beds": beds.get(ward.id, 0),
            "occupied": occupied.get(ward.id, 0),
            "alerts": sum(counts.get(ward.id, {}).values()),
            "urgent": counts.get(ward.id, {}).get("urgent", 0),
        }
        for ward, site in rows
    ]


class ResolveIn(BaseModel):
    #: What was done (required for alerts other than fall alarms); a note for fall alarms.
    resolution: str = Field(default="", max_length=MAX_RESOLUTION_CHARS)
    #: Fall alarms and bed-exit alerts: fall, near_fall, false_alarm (bed exit: attended).
    outcome: str | None = Field(default=None, examples=["false_alarm"])
    #: A confirmed fall's injury grade: none, minor, moderate, severe, death.
    injury_grade: str | None = None


class AlertStateOut(BaseModel):
    id: int
    state: str
    outcome: str | None
    acknowledged_by: str | None
    resolved_by: str | None


def _state(alert: Alert) -> AlertStateOut:
    return AlertStateOut(
        id=alert.id,
        state=alert.state,
        outcome=alert.outcome,
        acknowledged_by=alert.acknowledged_by,
        resolved_by=alert.resolved_by,
    )


@router.get("")
def list_wards(db: SessionDep, _user: WardListUser) -> list[dict[str, Any]]:
    """Every ward with its number of beds, occupied beds and open alarms."""
    return ward_list(db)


@router.get("/{ward_id}/board")
def get_board(ward_id: int, request: Request, db: SessionDep, user: BoardUser) -> dict[str, Any]:
    """The ward's board: a tile per bed (patient, latest score and band, trend, missing and
    overdue observations, latest readings, open alarms, fall risk, bed-exit setting,
    scoring options) and the ward's alerts that concern no bed."""
    with ward_errors():
        board = board_cache(request).board(db, ward_id)
    if read_audit(request).due(user.username, ward_id):
        audit_board(db, user, board, action="ward.board.read", via="api")
    return board


@router.post("/{ward_id}/alerts/{alert_id}/acknowledge", response_model=AlertStateOut)
def acknowledge_alert(
    ward_id: int, alert_id: int, db: SessionDep, user: BoardUser, _csrf: CsrfProtected
) -> AlertStateOut:
    """Say that you have seen the alarm and are going: repeats and escalation stop."""
    with ward_errors():
        ward_alert(db, ward_id, alert_id)
        alert = alerts.acknowledge(db, alert_id=alert_id, actor=user.username, source=user.source)
    return _state(alert)


@router.post("/{ward_id}/alerts/{alert_id}/resolve", response_model=AlertStateOut)
def resolve_ward_alert(
    ward_id: int,
    alert_id: int,
    body: ResolveIn,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
) -> AlertStateOut:
    """Close the alarm: a fall alarm with its outcome (and injury grade for a confirmed
    fall), any other alert with what was done."""
    with ward_errors():
        alert = ward_alert(db, ward_id, alert_id)
        resolve_alert(
            db,
            user,
            alert,
            resolution=body.resolution,
            outcome=body.outcome,
            injury_grade=body.injury_grade,
        )
    return _state(alert)
