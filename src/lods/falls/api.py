"""JSON API for falls: Morse entries, the bed-exit setting, fall-alarm outcomes, incident
reports (nurses and physicians), and the per-ward fall figures (also AI owners and
administrators). Every change and every read of a patient's fall risk is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field

from lods.alerts import service as alerts
from lods.alerts.models import Alert
from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.db import utcnow
from lods.falls import service
from lods.falls.models import FallIncident, FallRiskAssessment
from lods.imaging.models import Patient
from lods.monitoring.falls import ward_fall_figures
from lods.sensors.schemas import parse_time
from lods.sites.models import Department
from lods.vitals.models import Encounter

router = APIRouter(tags=["falls"])

#: Who enters fall-risk assessments, settings and incidents.
FALLS_CLINICIANS = frozenset({Role.NURSE, Role.PHYSICIAN})
#: Who reads the ward figures (counts, no patient data).
FIGURE_READERS = frozenset({Role.NURSE, Role.PHYSICIAN, Role.AI_OWNER, Role.ADMIN})
FallsClinician = Annotated[Principal, Depends(role_dependency(*FALLS_CLINICIANS))]
FigureReader = Annotated[Principal, Depends(role_dependency(*FIGURE_READERS))]
#: Default window of the figures: the last 365 days.
DEFAULT_DAYS = 365


class MorseIn(BaseModel):
    items: dict[str, str] = Field(
        examples=[
            {
                "history_of_falling": "yes",
                "secondary_diagnosis": "no",
                "ambulatory_aid": "walker",
                "iv_therapy": "yes",
                "gait": "weak",
                "mental_status": "oriented",
            }
        ]
    )


class RiskOut(BaseModel):
    id: int
    encounter_id: int | None
    items: dict[str, Any]
    total: int
    level: str
    cutoffs: dict[str, Any]
    assessed_by: str
    assessed_at: datetime

    @classmethod
    def of(cls, row: FallRiskAssessment) -> RiskOut:
        return cls(
            id=row.id,
            encounter_id=row.encounter_fk,
            items=row.items,
            total=row.total,
            level=row.level,
            cutoffs=row.cutoffs,
            assessed_by=row.assessed_by,
            assessed_at=row.assessed_at,
        )


class FallRiskOut(BaseModel):
    encounter_id: int
    latest: RiskOut | None
    bed_exit_alerts: bool | None
    bed_exit_set_by: str | None
    bed_exit_set_at: datetime | None

    @classmethod
    def of(cls, encounter: Encounter, latest: FallRiskAssessment | None) -> FallRiskOut:
        return cls(
            encounter_id=encounter.id,
            latest=RiskOut.of(latest) if latest else None,
            bed_exit_alerts=encounter.bed_exit_alerts,
            bed_exit_set_by=encounter.bed_exit_set_by,
            bed_exit_set_at=encounter.bed_exit_set_at,
        )


class BedExitIn(BaseModel):
    #: true: on; false: off; null: follow the fall risk.
    on: bool | None


class OutcomeIn(BaseModel):
    outcome: str = Field(examples=["fall"])
    injury_grade: str | None = Field(default=None, examples=["minor"])
    note: str = Field(default="", max_length=service.MAX_NOTE_CHARS)


class IncidentIn(BaseModel):
    bed_id: int | None = None
    occurred_at: str = Field(examples=["2026-11-29T03:40:00+01:00"])
    outcome: str = Field(examples=["fall"])
    injury_grade: str | None = None
    note: str = Field(default="", max_length=service.MAX_NOTE_CHARS)


class IncidentOut(BaseModel):
    id: int
    ward_id: int
    bed_id: int | None
    alert_id: int | None
    occurred_at: datetime
    source: str
    outcome: str
    injury_grade: str | None
    note: str
    recorded_by: str
    recorded_at: datetime

    @classmethod
    def of(cls, row: FallIncident) -> IncidentOut:
        return cls(
            id=row.id,
            ward_id=row.ward_fk,
            bed_id=row.bed_fk,
            alert_id=row.alert_fk,
            occurred_at=row.occurred_at,
            source=row.source,
            outcome=row.outcome,
            injury_grade=row.injury_grade,
            note=row.note,
            recorded_by=row.recorded_by,
            recorded_at=row.recorded_at,
        )


class ResolvedOut(BaseModel):
    alert_id: int
    state: str
    outcome: str | None
    incident: IncidentOut | None


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, service.FallsNotFound | alerts.AlertNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, alerts.IllegalAlertTransition):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


def _time(value: str, what: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{what}: {exc}") from exc


@router.post(
    "/api/encounters/{encounter_id}/morse",
    response_model=RiskOut,
    status_code=status.HTTP_201_CREATED,
)
def post_morse(
    encounter_id: int, body: MorseIn, db: SessionDep, user: FallsClinician, _csrf: CsrfProtected
) -> RiskOut:
    """Enter a Morse Fall Scale assessment (the six items' answer keys)."""
    try:
        row = service.assess_morse(
            db, encounter_id=encounter_id, items=body.items, actor=user.username, source=user.source
        )
    except service.FallsError as exc:
        raise _http(exc) from exc
    return RiskOut.of(row)


@router.get("/api/encounters/{encounter_id}/fall-risk", response_model=FallRiskOut)
def get_fall_risk(encounter_id: int, db: SessionDep, user: FallsClinician) -> FallRiskOut:
    """The latest Morse assessment of the stay and the nurse's bed-exit setting."""
    encounter = db.get(Encounter, encounter_id)
    if encounter is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no encounter {encounter_id}")
    latest = service.current_risk(db, encounter_fks=[encounter.id]).get(encounter.id)
    patient = db.get(Patient, encounter.patient_fk)
    record(
        db,
        actor=user.username,
        action="falls.risk_read",
        object_ref=f"encounter:{encounter.id}",
        patient_id=patient.patient_id if patient else None,
        source=user.source,
    )
    return FallRiskOut.of(encounter, latest)


@router.post("/api/encounters/{encounter_id}/bed-exit-alerts", response_model=FallRiskOut)
def post_bed_exit_alerts(
    encounter_id: int, body: BedExitIn, db: SessionDep, user: FallsClinician, _csrf: CsrfProtected
) -> FallRiskOut:
    """Turn bed-exit alerts on or off for this patient, or back to following the risk."""
    try:
        encounter = service.set_bed_exit_alerts(
            db, encounter_id=encounter_id, on=body.on, actor=user.username, source=user.source
        )
    except service.FallsError as exc:
        raise _http(exc) from exc
    latest = service.current_risk(db, encounter_fks=[encounter.id]).get(encounter.id)
    return FallRiskOut.of(encounter, latest)


@router.post("/api/alerts/{alert_id}/fall-outcome", response_model=ResolvedOut)
def post_fall_outcome(
    alert_id: int, body: OutcomeIn, db: SessionDep, user: FallsClinician, _csrf: CsrfProtected
) -> ResolvedOut:
    """Resolve a fall alarm (or bed-exit alert) with what happened."""
    try:
        incident = service.resolve_fall_alarm(
            db,
            alert_id=alert_id,
            actor=user.username,
            outcome=body.outcome,
            injury_grade=body.injury_grade,
            note=body.note,
            source=user.source,
        )
    except (service.FallsError, alerts.AlertError) as exc:
        raise _http(exc) from exc
    row = db.get(Alert, alert_id)
    assert row is not None
    return ResolvedOut(
        alert_id=row.id,
        state=row.state,
        outcome=row.outcome,
        incident=IncidentOut.of(incident) if incident else None,
    )


@router.post(
    "/api/wards/{ward_id}/incidents",
    response_model=IncidentOut,
    status_code=status.HTTP_201_CREATED,
)
def post_incident(
    ward_id: int, body: IncidentIn, db: SessionDep, user: FallsClinician, _csrf: CsrfProtected
) -> IncidentOut:
    """Report a fall or near fall that no alarm announced."""
    occurred_at = _time(body.occurred_at, "occurred_at")
    try:
        row = service.record_incident(
            db,
            ward_id=ward_id,
            bed_id=body.bed_id,
            occurred_at=occurred_at,
            outcome=body.outcome,
            injury_grade=body.injury_grade,
            note=body.note,
            actor=user.username,
            source=user.source,
        )
    except service.FallsError as exc:
        raise _http(exc) from exc
    return IncidentOut.of(row)


def figure_window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """[start, end) from ISO dates or timestamps (a date alone means its midnight UTC; an
    end date is inclusive); defaults to the last `DEFAULT_DAYS` days up to tomorrow."""

    def parse(value: str, *, is_end: bool) -> datetime:
        value = value.strip()
        if len(value) == 10:
            try:
                day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from exc
            return day + timedelta(days=1) if is_end else day
        return parse_time(value)

    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    stop = parse(end, is_end=True) if end else today + timedelta(days=1)
    begin = parse(start, is_end=False) if start else stop - timedelta(days=DEFAULT_DAYS)
    if stop <= begin:
        raise ValueError("end must be after start")
    return begin, stop


@router.get("/api/wards/{ward_id}/fall-figures")
def get_fall_figures(
    ward_id: int,
    db: SessionDep,
    _user: FigureReader,
    start: Annotated[str | None, Query(max_length=40, examples=["2026-01-01"])] = None,
    end: Annotated[str | None, Query(max_length=40, examples=["2026-12-31"])] = None,
) -> dict[str, Any]:
    """Falls per 1,000 bed-days before/after the deployment, alarms per bed-day, PPV of
    fall alarms, response times — with the counts behind each figure."""
    try:
        begin, stop = figure_window(start, end)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    ward = db.get(Department, ward_id)
    if ward is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no ward {ward_id}")
    return ward_fall_figures(db, ward_id=ward_id, start=begin, end=stop)
