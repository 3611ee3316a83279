"""Falls: Morse Fall Scale entries, the bed-exit setting a nurse may override, the falls
solution's policy applied to room-sensor events, and what happened (fall incidents).

**Fall risk.** `assess_morse` scores the six Morse items (STANDARDS.md §2, answer keys in
`MORSE_ITEMS`), 0–125, and sets the level by the cut-offs of the site's falls solution
(its manifest option `morse_cutoffs`; 25/45 when none is deployed). The cut-offs used
are stored with the entry.

**The policy** is a `python`-runtime solution package with input kind `sensor-events`
(the reference one is `reference_solutions/falls/`), deployed per site like any other
solution. For each sensor event `apply_policy` loads the deployment's package — its
installed files are hash-verified on every load; a mismatch takes the solutions
service's integrity-failure path (deployment suspended, admins alerted) — and calls its
entry function with a `RunContext` whose `payload` holds the event and the bed's patient
facts (no name or identifier): fall-risk total and level, the nurse's bed-exit setting,
whether a bed-exit alert is open. The function answers `{"action": "alarm" |
"bed_exit_alert" | "clear" | "ignore", "reason": ...}` and the platform acts:

- `alarm` (fall_detected / person_on_floor): an urgent "fall.alarm" for the bed that
  repeats every `repeat_seconds` (120) and escalates to all staff on the ward after
  `escalate_after` (1) notification until someone acknowledges it;
- `bed_exit_alert` (bed_exit / sitting_on_edge): a "fall.bed_exit" warning;
- `clear` (back_in_bed): the bed's open, unacknowledged bed-exit alert is resolved by
  the system ("back in bed") — never a fall alarm;
- `ignore`: nothing but the stored reason.

No active falls deployment at the site: the event is stored as "ignored:no falls
solution deployed". A shadow deployment's decision is stored ("shadow:<action>") and
nothing is raised. When the solution cannot decide (integrity failure, an error in its
code, an answer that makes no sense) a fall event still raises the fall alarm
("alarm:fail-safe"): a person on the floor is never left unseen because software broke.

**Incidents.** `resolve_fall_alarm` closes a fall alarm with its outcome (fall with an
injury grade, near fall, false alarm) and keeps one `FallIncident` per alarm, false
alarms included, so the alarm's positive predictive value can be computed;
`record_incident` enters a fall no alarm announced. Every change is audited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.alerts import live
from lods.alerts import service as alerts
from lods.alerts.models import Alert, AlertState
from lods.audit.service import record
from lods.config import Settings
from lods.db import utcnow
from lods.falls.models import INJURY_GRADES, OUTCOMES, FallIncident, FallRiskAssessment
from lods.imaging.models import Patient
from lods.sensors.models import SensorEvent
from lods.sites.models import Bed, Department
from lods.sites.service import BED_KINDS
from lods.solutions import service as solutions
from lods.solutions.manifest import Manifest, PythonRuntimeSpec
from lods.solutions.models import Deployment, DeploymentMode, DeploymentState, SolutionVersion
from lods.solutions.runtimes.base import RunContext, RuntimeErrorBase
from lods.solutions.runtimes.python import PythonRuntime
from lods.vitals.models import BedStay, Encounter, EncounterState

log = logging.getLogger(__name__)

#: The input kind of a falls solution.
SENSOR_INPUT = "sensor-events"
FALL_KINDS = ("fall_detected", "person_on_floor")
BED_EXIT_KINDS = ("bed_exit", "sitting_on_edge")
#: What the policy may answer to each event kind.
ALLOWED_ACTIONS: dict[str, frozenset[str]] = {
    **{k: frozenset({"alarm", "ignore"}) for k in FALL_KINDS},
    **{k: frozenset({"bed_exit_alert", "ignore"}) for k in BED_EXIT_KINDS},
    "back_in_bed": frozenset({"clear", "ignore"}),
}
FALL_ALARM = "fall.alarm"
BED_EXIT_ALERT = "fall.bed_exit"
WARD_AUDIENCE = ("nurse", "physician")
DEFAULT_REPEAT_SECONDS = 120
DEFAULT_ESCALATE_AFTER = 1
#: A bed-exit alert resolved with this outcome: attended, nothing happened (no incident).
ATTENDED = "attended"
MAX_NOTE_CHARS = 4000

#: Morse Fall Scale (STANDARDS.md §2): item → answer key → points.
MORSE_ITEMS: dict[str, dict[str, int]] = {
    "history_of_falling": {"no": 0, "yes": 25},
    "secondary_diagnosis": {"no": 0, "yes": 15},
    "ambulatory_aid": {
        "none": 0,
        "bed_rest": 0,
        "nurse_assist": 0,
        "crutches": 15,
        "cane": 15,
        "walker": 15,
        "furniture": 30,
    },
    "iv_therapy": {"no": 0, "yes": 20},
    "gait": {"normal": 0, "bed_rest": 0, "wheelchair": 0, "weak": 10, "impaired": 20},
    "mental_status": {"oriented": 0, "forgets_limitations": 15, "overestimates": 15},
}
MORSE_MAX = sum(max(answers.values()) for answers in MORSE_ITEMS.values())
#: Cut-offs when no falls solution is deployed (0–24 low, 25–44 moderate, ≥45 high).
DEFAULT_CUTOFFS: dict[str, int] = {"moderate": 25, "high": 45}
_EVENT_WORDS = {
    "fall_detected": "Fall detected",
    "person_on_floor": "Person on the floor",
    "bed_exit": "Out of bed",
    "sitting_on_edge": "Sitting on the edge of the bed",
}
_OUTCOME_WORDS = {
    "fall": "Fall confirmed",
    "near_fall": "Near fall",
    "false_alarm": "False alarm",
    ATTENDED: "Attended, no fall",
}


class FallsError(Exception):
    """A falls operation that cannot be done as asked (the message says why)."""


class FallsNotFound(FallsError):
    pass


# --- Morse Fall Scale ----------------------------------------------------------------------


def morse_total(items: Mapping[str, str]) -> int:
    """The Morse total (0–125) of the six answers; FallsError naming each bad answer."""
    problems: list[str] = []
    unknown = sorted(set(items) - set(MORSE_ITEMS))
    if unknown:
        problems.append(f"unknown item(s) {', '.join(unknown)}; items: {', '.join(MORSE_ITEMS)}")
    total = 0
    for item, answers in MORSE_ITEMS.items():
        answer = items.get(item)
        if answer is None:
            problems.append(f"{item} is required ({' / '.join(answers)})")
        elif answer not in answers:
            problems.append(f"{item}: {answer!r} is not one of {' / '.join(answers)}")
        else:
            total += answers[answer]
    if problems:
        raise FallsError("; ".join(problems))
    return total


def check_cutoffs(cutoffs: Mapping[str, Any]) -> dict[str, int]:
    """`{"moderate": m, "high": h}` with 0 < m < h ≤ 125, or FallsError."""
    try:
        moderate, high = int(cutoffs["moderate"]), int(cutoffs["high"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FallsError("Morse cut-offs need whole numbers 'moderate' and 'high'") from exc
    if not 0 < moderate < high <= MORSE_MAX:
        raise FallsError(f"Morse cut-offs must satisfy 0 < moderate < high ≤ {MORSE_MAX}")
    return {"moderate": moderate, "high": high}


def risk_level(total: int, cutoffs: Mapping[str, int]) -> str:
    """low / moderate / high: total at or above the cut-off of a level reaches it."""
    if total >= cutoffs["high"]:
        return "high"
    if total >= cutoffs["moderate"]:
        return "moderate"
    return "low"


# --- the site's falls solution ---------------------------------------------------------------


def falls_deployment(db: Session, *, site_id: int) -> Deployment | None:
    """The falls solution in force at the site: the newest active pilot/live deployment of
    a `python` sensor-events solution, else the newest shadow one, else None."""
    found = [
        d
        for d in solutions.active_deployments(db, site_id=site_id, input_kind=SENSOR_INPUT)
        if d.version.runtime_kind == "python"
    ]
    acting = [d for d in found if d.mode != DeploymentMode.SHADOW.value]
    pool = acting or found
    return pool[-1] if pool else None


def _options(manifest: Manifest) -> dict[str, Any]:
    spec = manifest.runtime
    return dict(spec.options) if isinstance(spec, PythonRuntimeSpec) else {}


def cutoffs_for_site(db: Session, *, site_id: int) -> dict[str, int]:
    """The Morse cut-offs of the site's falls solution (its `morse_cutoffs` option), or the
    defaults when none is deployed or it names none."""
    deployment = falls_deployment(db, site_id=site_id)
    if deployment is None:
        return dict(DEFAULT_CUTOFFS)
    options = _options(solutions.manifest_of(deployment.version))
    given = options.get("morse_cutoffs")
    if not isinstance(given, Mapping):
        return dict(DEFAULT_CUTOFFS)
    try:
        return check_cutoffs(given)
    except FallsError:
        log.warning("deployment %d: invalid morse_cutoffs %r; using defaults", deployment.id, given)
        return dict(DEFAULT_CUTOFFS)


def _encounter(db: Session, encounter_id: int) -> Encounter:
    encounter = db.get(Encounter, encounter_id)
    if encounter is None:
        raise FallsNotFound(f"no encounter {encounter_id}")
    return encounter


def _patient_ref(db: Session, patient_fk: int | None) -> str | None:
    if patient_fk is None:
        return None
    patient = db.get(Patient, patient_fk)
    return patient.patient_id if patient else None


def assess_morse(
    db: Session,
    *,
    encounter_id: int,
    items: dict[str, str],
    actor: str,
    source: str = "",
    now: datetime | None = None,
) -> FallRiskAssessment:
    """Store a Morse Fall Scale entry for the patient of an active encounter; audited.

    `items` maps each of the six items to an answer key (`MORSE_ITEMS`). The level uses
    the cut-offs of the site's falls solution, stored with the entry.
    """
    encounter = _encounter(db, encounter_id)
    if encounter.state != EncounterState.ACTIVE.value:
        raise FallsError(f"encounter {encounter_id} is {encounter.state}; assess an active stay")
    total = morse_total(items)
    cutoffs = cutoffs_for_site(db, site_id=encounter.site_id)
    level = risk_level(total, cutoffs)
    assessment = FallRiskAssessment(
        patient_fk=encounter.patient_fk,
        encounter_fk=encounter.id,
        items={k: items[k] for k in MORSE_ITEMS},
        total=total,
        level=level,
        cutoffs=cutoffs,
        assessed_by=actor,
        assessed_at=now or utcnow(),
    )
    db.add(assessment)
    db.flush()
    record(
        db,
        actor=actor,
        action="falls.morse",
        object_ref=f"encounter:{encounter.id}",
        patient_id=_patient_ref(db, encounter.patient_fk),
        source=source,
        detail={"assessment": assessment.id, "total": total, "level": level, "cutoffs": cutoffs},
    )
    if encounter.ward_fk is not None:
        live.publish_after_commit(
            db, encounter.ward_fk, {"type": "risk", "bed_id": encounter.bed_fk}
        )
    return assessment


def current_risk(db: Session, *, encounter_fks: Collection[int]) -> dict[int, FallRiskAssessment]:
    """The latest Morse entry of each encounter that has one (one query)."""
    if not encounter_fks:
        return {}
    latest: dict[int, FallRiskAssessment] = {}
    rows = db.scalars(
        select(FallRiskAssessment)
        .where(FallRiskAssessment.encounter_fk.in_(list(encounter_fks)))
        .order_by(FallRiskAssessment.assessed_at, FallRiskAssessment.id)
    )
    for row in rows:
        assert row.encounter_fk is not None
        latest[row.encounter_fk] = row
    return latest


def set_bed_exit_alerts(
    db: Session,
    *,
    encounter_id: int,
    on: bool | None,
    actor: str,
    source: str = "",
    now: datetime | None = None,
) -> Encounter:
    """A nurse turns bed-exit alerts on (True) or off (False) for this patient, whatever
    the fall risk, or back to following the risk (None); who and when are kept; audited."""
    encounter = _encounter(db, encounter_id)
    if encounter.state != EncounterState.ACTIVE.value:
        raise FallsError(f"encounter {encounter_id} is {encounter.state}")
    before = encounter.bed_exit_alerts
    encounter.bed_exit_alerts = on
    encounter.bed_exit_set_by = actor
    encounter.bed_exit_set_at = now or utcnow()
    db.flush()
    record(
        db,
        actor=actor,
        action="falls.bed_exit_setting",
        object_ref=f"encounter:{encounter.id}",
        patient_id=_patient_ref(db, encounter.patient_fk),
        source=source,
        detail={"before": before, "after": on},
    )
    if encounter.ward_fk is not None:
        live.publish_after_commit(
            db, encounter.ward_fk, {"type": "risk", "bed_id": encounter.bed_fk}
        )
    return encounter


# --- running the policy ----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    details: dict[str, Any]


class PolicyFailure(Exception):
    """The falls solution could not decide (the message says why)."""


def _verified(
    db: Session, settings: Settings, version: SolutionVersion, *, now: datetime
) -> tuple[Path, Manifest]:
    """The version's installed folder and manifest, its files re-verified now."""
    try:
        package = solutions.verify_version(settings, version)
    except solutions.IntegrityFailure as exc:
        solutions.record_integrity_failure(
            db, version_id=version.id, problems=exc.problems, now=now
        )
        raise PolicyFailure(f"{version.label} failed its integrity check") from exc
    return package.folder, package.manifest


def decide(
    db: Session,
    *,
    settings: Settings,
    deployment: Deployment,
    payload: dict[str, Any],
    now: datetime,
) -> Decision:
    """Ask the deployment's solution what to do with one event; PolicyFailure if it cannot."""
    version = deployment.version
    folder, manifest = _verified(db, settings, version, now=now)
    ctx = RunContext(
        job_id=0,
        package_dir=folder,
        manifest=manifest,
        study_uid="",
        images=(),
        deadline=time.monotonic() + manifest.limits.timeout_seconds,
        payload=payload,
    )
    try:
        result = PythonRuntime().run(ctx)
    except RuntimeErrorBase as exc:
        raise PolicyFailure(f"{version.label}: {exc}") from exc
    details = dict(result.details)
    action = details.get("action")
    kind = payload["event"]["kind"]
    if action not in ALLOWED_ACTIONS.get(kind, frozenset()):
        raise PolicyFailure(f"{version.label} answered {action!r} to a {kind} event")
    reason = str(details.get("reason") or "")
    return Decision(action=str(action), reason=reason, details=details)


def _policy_payload(
    db: Session, *, event: SensorEvent, bed: Bed | None, encounter: Encounter | None
) -> dict[str, Any]:
    """What the solution sees: the event and the bed's facts, no patient identity."""
    patient: dict[str, Any] | None = None
    if encounter is not None:
        risk = current_risk(db, encounter_fks=[encounter.id]).get(encounter.id)
        patient = {
            "admitted": True,
            "morse_total": risk.total if risk else None,
            "morse_level": risk.level if risk else None,
            "bed_exit_alerts": encounter.bed_exit_alerts,
        }
    open_exit = bed is not None and _open_bed_exit_alert(db, bed.id) is not None
    return {
        "event": {
            "kind": event.kind,
            "confidence": event.confidence,
            "time": event.occurred_at.isoformat(),
            "device_id": event.device_id,
            "room": event.room,
        },
        "bed_known": bed is not None,
        "patient": patient,
        "in_bed": _in_bed(db, bed, before_event=event.id),
        "open_bed_exit_alert": open_exit,
    }


def _in_bed(db: Session, bed: Bed | None, *, before_event: int | None) -> bool | None:
    """Whether the bed's sensors last said someone is in it (None: nothing said yet)."""
    if bed is None:
        return None
    query = select(SensorEvent.kind).where(SensorEvent.bed_fk == bed.id)
    if before_event is not None:
        query = query.where(SensorEvent.id != before_event)
    last = db.scalar(query.order_by(SensorEvent.occurred_at.desc(), SensorEvent.id.desc()))
    if last is None:
        return None
    return last == "back_in_bed"


def _open_bed_exit_alert(db: Session, bed_id: int) -> Alert | None:
    """The bed's bed-exit alert that nobody has acknowledged yet, if any."""
    return db.scalars(
        select(Alert).where(
            Alert.kind == BED_EXIT_ALERT,
            Alert.subject == f"bed-exit:{bed_id}",
            Alert.state.in_([AlertState.RAISED.value, AlertState.NOTIFIED.value]),
        )
    ).first()


def _where(event: SensorEvent, bed: Bed | None) -> str:
    room = event.room or (bed.room if bed else "")
    parts = [f"room {room}"] if room else []
    parts.append(f"bed {bed.code}" if bed else "bed unknown")
    return ", ".join(parts)


def _raise(
    db: Session,
    *,
    event: SensorEvent,
    ward: Department,
    bed: Bed | None,
    encounter: Encounter | None,
    decision: Decision,
    settings: Settings,
    now: datetime,
    fail_safe: bool = False,
) -> Alert:
    facts: dict[str, Any] = {
        "event_kind": event.kind,
        "confidence": event.confidence,
        "room": event.room,
        "bed": bed.code if bed else None,
        "event_id": event.event_id,
        "reason": decision.reason,
    }
    title = f"{_EVENT_WORDS.get(event.kind, event.kind)} – {_where(event, bed)}"
    repeat: int | None = None
    escalate: int | None = None
    if decision.action == "alarm":
        if fail_safe:
            facts["fail_safe"] = True
        kind, severity = FALL_ALARM, "urgent"
        subject = f"fall:{bed.id}" if bed else f"fall:ward:{ward.id}:room:{event.room}"
        repeat = _positive(decision.details.get("repeat_seconds")) or DEFAULT_REPEAT_SECONDS
        escalate = _positive(decision.details.get("escalate_after")) or DEFAULT_ESCALATE_AFTER
    else:
        assert bed is not None
        kind, severity, subject = BED_EXIT_ALERT, "warning", f"bed-exit:{bed.id}"
    return alerts.raise_alert(
        db,
        kind=kind,
        subject=subject,
        title=title,
        detail=decision.reason,
        severity=severity,
        audience=WARD_AUDIENCE,
        site_id=ward.site_id,
        ward_id=ward.id,
        bed_id=bed.id if bed else None,
        patient_id=encounter.patient_fk if encounter else None,
        facts=facts,
        notify=True,
        repeat_seconds=repeat,
        escalate_after=escalate,
        webhook=settings.notify_webhook_url,
        now=now,
    )


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _solution_error_alert(db: Session, deployment: Deployment, problem: str, now: datetime) -> None:
    alerts.raise_alert(
        db,
        kind="falls.solution_error",
        subject=f"deployment:{deployment.id}",
        title=f"{deployment.version.label} could not decide on a sensor event",
        detail=problem,
        severity="urgent",
        audience=("admin", "ai_owner"),
        site_id=deployment.site_fk,
        now=now,
    )


def apply_policy(
    db: Session,
    *,
    event: SensorEvent,
    ward: Department,
    bed: Bed | None,
    encounter: Encounter | None,
    settings: Settings,
    now: datetime,
) -> str:
    """Decide on a just-stored event with the site's falls solution and act on it; set
    and return `event.outcome` (and `event.alert_fk` when an alert was raised or cleared)."""
    deployment = falls_deployment(db, site_id=ward.site_id)
    if deployment is None:
        event.outcome = "ignored:no falls solution deployed"
        return event.outcome
    shadow = deployment.mode == DeploymentMode.SHADOW.value
    payload = _policy_payload(db, event=event, bed=bed, encounter=encounter)
    try:
        decision = decide(db, settings=settings, deployment=deployment, payload=payload, now=now)
    except PolicyFailure as exc:
        log.error("falls policy failed on sensor event %s: %s", event.event_id, exc)
        if deployment.state == DeploymentState.ACTIVE.value:  # not an integrity failure
            _solution_error_alert(db, deployment, str(exc), now)
        if shadow:
            event.outcome = "shadow:error"
        elif event.kind in FALL_KINDS:
            decision = Decision("alarm", f"fail-safe: {exc}", {})
            alert = _raise(
                db,
                event=event,
                ward=ward,
                bed=bed,
                encounter=encounter,
                decision=decision,
                settings=settings,
                now=now,
                fail_safe=True,
            )
            event.alert_fk = alert.id
            event.outcome = "alarm:fail-safe"
        else:
            event.outcome = "error:falls solution failed"
        return event.outcome
    if shadow:
        event.outcome = f"shadow:{decision.action}"[:64]
        return event.outcome
    if decision.action == "ignore":
        event.outcome = f"ignored:{decision.reason or 'by policy'}"[:64]
    elif decision.action in ("alarm", "bed_exit_alert"):
        if decision.action == "bed_exit_alert" and bed is None:
            event.outcome = "ignored:unknown bed"
            return event.outcome
        alert = _raise(
            db,
            event=event,
            ward=ward,
            bed=bed,
            encounter=encounter,
            decision=decision,
            settings=settings,
            now=now,
        )
        event.alert_fk = alert.id
        event.outcome = decision.action
    else:  # clear
        open_alert = _open_bed_exit_alert(db, bed.id) if bed is not None else None
        if open_alert is None:
            event.outcome = "ignored:no open bed-exit alert"
        else:
            alerts.resolve_by_system(db, alert=open_alert, resolution="back in bed", now=now)
            event.alert_fk = open_alert.id
            event.outcome = "cleared"
    return event.outcome


# --- outcomes and incidents ------------------------------------------------------------------


def _check_outcome(outcome: str, injury_grade: str | None, *, allowed: Collection[str]) -> None:
    if outcome not in allowed:
        raise FallsError(f"outcome must be one of {', '.join(allowed)}")
    if outcome == "fall":
        if injury_grade not in INJURY_GRADES:
            raise FallsError(f"a confirmed fall needs an injury grade: {', '.join(INJURY_GRADES)}")
    elif injury_grade is not None:
        raise FallsError("an injury grade is given only for a confirmed fall")


def _check_note(note: str) -> str:
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise FallsError(f"the note is at most {MAX_NOTE_CHARS} characters")
    return note


def resolve_fall_alarm(
    db: Session,
    *,
    alert_id: int,
    actor: str,
    outcome: str,
    injury_grade: str | None = None,
    note: str = "",
    source: str = "",
    now: datetime | None = None,
) -> FallIncident | None:
    """Close a fall alarm (or bed-exit alert) with what happened; audited.

    Fall alarms: `outcome` fall (with `injury_grade`), near_fall or false_alarm; one
    `FallIncident` (source "alarm") is kept per alarm, false alarms included. Bed-exit
    alerts also take "attended" (nothing happened: no incident, returns None). An alarm
    nobody acknowledged yet is acknowledged by the same act.
    """
    now = now or utcnow()
    alert = db.get(Alert, alert_id)
    if alert is None or alert.kind not in (FALL_ALARM, BED_EXIT_ALERT):
        raise FallsNotFound(f"no fall alarm {alert_id}")
    allowed = (*OUTCOMES, ATTENDED) if alert.kind == BED_EXIT_ALERT else OUTCOMES
    _check_outcome(outcome, injury_grade, allowed=allowed)
    note = _check_note(note)
    if alert.state == AlertState.RESOLVED.value:
        raise alerts.IllegalAlertTransition(
            f"alert {alert.id} was already resolved by {alert.resolved_by}"
        )
    if alert.state in (AlertState.RAISED.value, AlertState.NOTIFIED.value):
        alerts.acknowledge(db, alert_id=alert.id, actor=actor, source=source, now=now)
    words = _OUTCOME_WORDS[outcome]
    if injury_grade is not None:
        words += f" (injury: {injury_grade})"
    resolution = f"{words}: {note}" if note else words
    alerts.resolve(
        db,
        alert_id=alert.id,
        actor=actor,
        resolution=resolution,
        outcome=outcome,
        source=source,
        now=now,
    )
    if outcome == ATTENDED:
        return None
    assert alert.ward_fk is not None
    raised_by = db.scalars(
        select(SensorEvent).where(SensorEvent.alert_fk == alert.id).order_by(SensorEvent.id)
    ).first()
    incident = FallIncident(
        ward_fk=alert.ward_fk,
        bed_fk=alert.bed_fk,
        patient_fk=alert.patient_fk,
        encounter_fk=raised_by.encounter_fk if raised_by else None,
        alert_fk=alert.id,
        occurred_at=raised_by.occurred_at if raised_by else alert.raised_at,
        source="alarm",
        outcome=outcome,
        injury_grade=injury_grade,
        note=note,
        recorded_by=actor,
        recorded_at=now,
    )
    return _store_incident(
        db,
        incident,
        actor=actor,
        source=source,
        detail={"alert": alert.id, "outcome": outcome, "injury_grade": injury_grade},
    )


def _store_incident(
    db: Session, incident: FallIncident, *, actor: str, source: str, detail: dict[str, Any]
) -> FallIncident:
    """Add the incident and audit it with its patient."""
    db.add(incident)
    db.flush()
    record(
        db,
        actor=actor,
        action="falls.incident",
        object_ref=f"fall_incident:{incident.id}",
        patient_id=_patient_ref(db, incident.patient_fk),
        source=source,
        detail=detail,
    )
    return incident


def occupant_at(db: Session, *, bed_id: int, at: datetime) -> Encounter | None:
    """The encounter that lay in the bed at `at` (from ADT bed stays), if any."""
    stay = db.scalars(
        select(BedStay)
        .where(
            BedStay.bed_fk == bed_id,
            BedStay.started_at <= at,
            (BedStay.ended_at.is_(None)) | (BedStay.ended_at > at),
        )
        .order_by(BedStay.started_at.desc(), BedStay.id.desc())
    ).first()
    return db.get(Encounter, stay.encounter_fk) if stay else None


def record_incident(
    db: Session,
    *,
    ward_id: int,
    bed_id: int | None,
    occurred_at: datetime,
    outcome: str,
    injury_grade: str | None,
    note: str,
    actor: str,
    source: str = "",
    now: datetime | None = None,
) -> FallIncident:
    """Enter a fall (or near fall) that no alarm announced; the patient is whoever lay in
    the bed then (ADT). Audited."""
    now = now or utcnow()
    ward = db.get(Department, ward_id)
    if ward is None or ward.kind not in BED_KINDS:
        raise FallsNotFound(f"no ward {ward_id}")
    _check_outcome(outcome, injury_grade, allowed=("fall", "near_fall"))
    note = _check_note(note)
    if occurred_at.tzinfo is None:
        raise FallsError("the time of the fall needs a zone")
    if occurred_at > now + timedelta(minutes=5):
        raise FallsError("the time of the fall lies in the future")
    encounter = None
    if bed_id is not None:
        bed = db.get(Bed, bed_id)
        if bed is None or bed.ward_id != ward.id:
            raise FallsNotFound(f"ward {ward.code} has no bed {bed_id}")
        encounter = occupant_at(db, bed_id=bed_id, at=occurred_at)
    incident = FallIncident(
        ward_fk=ward.id,
        bed_fk=bed_id,
        patient_fk=encounter.patient_fk if encounter else None,
        encounter_fk=encounter.id if encounter else None,
        alert_fk=None,
        occurred_at=occurred_at,
        source="manual",
        outcome=outcome,
        injury_grade=injury_grade,
        note=note,
        recorded_by=actor,
        recorded_at=now,
    )
    return _store_incident(
        db,
        incident,
        actor=actor,
        source=source,
        detail={
            "ward": ward.code,
            "bed": bed_id,
            "outcome": outcome,
            "injury_grade": injury_grade,
            "occurred_at": occurred_at.isoformat(),
        },
    )
