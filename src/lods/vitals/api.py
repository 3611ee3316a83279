"""JSON API for early-warning scoring: a patient's scoring options and an encounter's scores.

- `GET /api/patients/{patient_fk}/score-options` — every option ever set (newest first,
  revoked ones marked) and the ones in force.
- `POST /api/patients/{patient_fk}/score-options` — set `{key, value, reason}` (SpO2
  scale, pregnancy, an adjusted threshold); replaces the option in force for that key.
- `DELETE /api/patients/{patient_fk}/score-options/{option_id}` — revoke one.
- `GET /api/encounters/{encounter_id}/scores` — the encounter's scores, newest first
  (shadow output left out).

Nurses and physicians only (the people who set and act on the score); every read and
change is audited with the patient's identifier.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.imaging.models import Patient
from lods.solutions.models import Deployment, DeploymentMode
from lods.vitals import options as service
from lods.vitals.models import EarlyWarningScore, Encounter, PatientOption
from lods.vitals.scoring import not_scored_reason

router = APIRouter(tags=["early-warning scores"])

#: Who sets scoring options and reads scores here.
SCORE_CLINICIANS = frozenset({Role.NURSE, Role.PHYSICIAN})
ScoreClinician = Annotated[Principal, Depends(role_dependency(*SCORE_CLINICIANS))]
MAX_REASON_CHARS = 2000


class OptionIn(BaseModel):
    key: str = Field(max_length=64, examples=["spo2_scale"])
    value: Any = Field(examples=[2])
    reason: str = Field(
        max_length=MAX_REASON_CHARS,
        examples=["Documented target SpO2 88–92 % (COPD with hypercapnic failure)"],
    )


class OptionOut(BaseModel):
    id: int
    key: str
    value: Any
    reason: str
    set_by: str
    set_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    in_force: bool

    @classmethod
    def of(cls, option: PatientOption) -> OptionOut:
        return cls(
            id=option.id,
            key=option.key,
            value=option.value,
            reason=option.reason,
            set_by=option.set_by,
            set_at=option.set_at,
            revoked_at=option.revoked_at,
            revoked_by=option.revoked_by,
            in_force=option.revoked_at is None,
        )


class OptionsOut(BaseModel):
    patient_fk: int
    in_force: dict[str, Any]
    options: list[OptionOut]


class ScoreOut(BaseModel):
    id: int
    score_name: str
    computed_at: datetime
    observed_at: datetime
    complete: bool
    total: int | None
    band: str | None
    missing: list[str]
    parts: dict[str, Any]
    options: dict[str, Any]
    next_due_minutes: int | None
    not_scored: str | None
    version_id: int
    fhir: str

    @classmethod
    def of(cls, score: EarlyWarningScore) -> ScoreOut:
        return cls(
            id=score.id,
            score_name=score.score_name,
            computed_at=score.computed_at,
            observed_at=score.observed_at,
            complete=score.complete,
            total=score.total,
            band=score.band,
            missing=list(score.missing or []),
            parts=dict(score.parts or {}),
            options=dict(score.options or {}),
            next_due_minutes=score.next_due_minutes,
            not_scored=not_scored_reason(score),
            version_id=score.version_fk,
            fhir=f"/fhir/Observation/ews-{score.id}",
        )


def _patient(db: Session, patient_fk: int) -> Patient:
    patient = db.get(Patient, patient_fk)
    if patient is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no patient {patient_fk}")
    return patient


def _options_out(db: Session, patient_fk: int) -> OptionsOut:
    return OptionsOut(
        patient_fk=patient_fk,
        in_force=service.options_in_force(db, patient_fk=patient_fk),
        options=[OptionOut.of(o) for o in service.list_options(db, patient_fk=patient_fk)],
    )


@router.get("/api/patients/{patient_fk}/score-options", response_model=OptionsOut)
def list_score_options(patient_fk: int, db: SessionDep, user: ScoreClinician) -> OptionsOut:
    """The patient's scoring options: those in force and every earlier one."""
    patient = _patient(db, patient_fk)
    out = _options_out(db, patient_fk)
    record(
        db,
        actor=user.username,
        action="vitals.option.list",
        patient_id=patient.patient_id,
        object_ref=f"patient:{patient_fk}",
        source=user.source,
    )
    return out


@router.post(
    "/api/patients/{patient_fk}/score-options",
    response_model=OptionOut,
    status_code=status.HTTP_201_CREATED,
)
def set_score_option(
    patient_fk: int, body: OptionIn, db: SessionDep, user: ScoreClinician, _csrf: CsrfProtected
) -> OptionOut:
    """Put an option in force (with the reason); it replaces the one in force for the key."""
    _patient(db, patient_fk)
    try:
        option = service.set_option(
            db,
            patient_fk=patient_fk,
            key=body.key,
            value=body.value,
            reason=body.reason,
            actor=user.username,
            source=user.source,
        )
    except service.OptionError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return OptionOut.of(option)


@router.delete("/api/patients/{patient_fk}/score-options/{option_id}", response_model=OptionOut)
def revoke_score_option(
    patient_fk: int, option_id: int, db: SessionDep, user: ScoreClinician, _csrf: CsrfProtected
) -> OptionOut:
    """Take an option out of force (it stays in the history, marked revoked)."""
    option = db.get(PatientOption, option_id)
    if option is None or option.patient_fk != patient_fk:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no scoring option {option_id}")
    try:
        option = service.revoke_option(
            db, option_id=option_id, actor=user.username, source=user.source
        )
    except service.OptionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return OptionOut.of(option)


@router.get("/api/encounters/{encounter_id}/scores", response_model=list[ScoreOut])
def encounter_scores(
    encounter_id: int,
    db: SessionDep,
    user: ScoreClinician,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ScoreOut]:
    """The encounter's early-warning scores, newest first (shadow output left out)."""
    encounter = db.get(Encounter, encounter_id)
    if encounter is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no encounter {encounter_id}")
    patient = _patient(db, encounter.patient_fk)
    rows = db.scalars(
        select(EarlyWarningScore)
        .join(Deployment, Deployment.id == EarlyWarningScore.deployment_fk)
        .where(
            EarlyWarningScore.encounter_fk == encounter_id,
            Deployment.mode != DeploymentMode.SHADOW.value,
        )
        .order_by(EarlyWarningScore.computed_at.desc(), EarlyWarningScore.id.desc())
        .limit(limit)
    ).all()
    record(
        db,
        actor=user.username,
        action="vitals.scores.read",
        patient_id=patient.patient_id,
        object_ref=f"encounter:{encounter_id}",
        source=user.source,
        detail={"count": len(rows)},
    )
    return [ScoreOut.of(s) for s in rows]
