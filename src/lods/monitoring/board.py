"""The ward board's read model: one tile per bed with its patient, early-warning score,
trend, latest vital signs, open alarms and fall-risk settings — read in a handful of
queries for the whole ward, whatever its number of beds.

`ward_board` answers plain JSON values (times as ISO 8601 text in UTC), so the same dict
is the `/api/wards/{id}/board` answer and the page's first paint. `board_fingerprint` is
a short text without patient data that changes whenever the board would: the live
stream polls it to notice changes made by other processes (job workers, the CLI, another
server), whose events never reach this process's hub.

Scores and observations are read straight from their tables here (a read model, not the
scoring service): the latest score per encounter and the latest value per parameter
come from the `(patient, time)` indexes, so the cost follows the number of beds and not
the length of anyone's stay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, func, or_, select
from sqlalchemy.orm import Session

from lods.alerts.models import Alert
from lods.alerts.service import OPEN_STATES, SEVERITIES
from lods.falls.models import FallRiskAssessment
from lods.imaging.models import Patient
from lods.sites.models import Bed, Department, Site
from lods.sites.service import BED_KINDS, list_beds
from lods.vitals.models import (
    EarlyWarningScore,
    Encounter,
    EncounterState,
    PatientOption,
    VitalObservation,
)

#: Latest values per parameter come from this recent window (monitors send every minute),
#: plus the observations the latest score used (nurse-charted items are rarer).
VITALS_WINDOW = timedelta(hours=1)
#: The sparkline covers this long, one point (the worst total) per bucket.
TREND_WINDOW = timedelta(hours=24)
TREND_BUCKET_SECONDS = 30 * 60
#: Tile colour by band key (NEWS2's bands; another table's unknown bands show neutral).
#: A total of 0 shows no colour: a calm board should look calm.
BAND_COLOURS = {"low": "green", "low_medium": "amber", "medium": "orange", "high": "red"}
#: The parameters a tile shows, in reading order.
PARAMETERS = (
    "resp_rate",
    "spo2",
    "oxygen",
    "bp_sys",
    "bp_dia",
    "heart_rate",
    "pulse_rate",
    "consciousness",
    "temperature",
)
_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(reversed(SEVERITIES))}


class WardNotFound(LookupError):
    """No ward (a department of kind ward, icu or emergency) with that id."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def age_on(birth_date: date | None, today: date) -> int | None:
    """Whole years between `birth_date` and `today`, or None when unknown."""
    if birth_date is None:
        return None
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - int(before_birthday)


def band_colour(band: str | None, total: int | None) -> str:
    """The tile's colour key: none (no total, or 0), green, amber, orange, red, neutral."""
    if band is None or total is None or total == 0:
        return "none"
    return BAND_COLOURS.get(band, "neutral")


def get_ward(db: Session, *, ward_id: int) -> tuple[Department, Site]:
    """The ward and its hospital, or raise WardNotFound."""
    row = db.execute(
        select(Department, Site)
        .join(Site, Site.id == Department.site_id)
        .where(Department.id == ward_id, Department.kind.in_(sorted(BED_KINDS)))
    ).first()
    if row is None:
        raise WardNotFound(f"no ward {ward_id}")
    return row[0], row[1]


def ward_board(db: Session, *, ward_id: int, now: datetime) -> dict[str, Any]:
    """The whole board of a ward at `now`: ward, beds by room and code with their tiles,
    and the ward's alerts that concern no bed. Raises WardNotFound."""
    ward, site = get_ward(db, ward_id=ward_id)
    beds = list_beds(db, ward_id=ward.id)
    occupants = _occupants(db, [b.id for b in beds])
    encounters = [enc for enc, _patient in occupants.values()]
    patient_fks = sorted({enc.patient_fk for enc in encounters})
    scores = _latest_scores(db, [e.id for e in encounters])
    trends = _trends(db, patient_fks, since=now - TREND_WINDOW)
    vitals = _latest_vitals(
        db, patient_fks, [pair[0] for pair in scores.values()], since=now - VITALS_WINDOW
    )
    risks = _risks(db, [e.id for e in encounters])
    options = _options(db, patient_fks)
    by_bed, ward_level = _alerts(db, ward.id)

    tiles = []
    for bed in beds:
        found = occupants.get(bed.id)
        enc, patient = found if found else (None, None)
        latest, complete = scores.get(enc.id, (None, None)) if enc else (None, None)
        tile: dict[str, Any] = {
            "id": bed.id,
            "code": bed.code,
            "room": bed.room,
            "occupant": _occupant(enc, patient, now) if enc and patient else None,
            "score": _score(latest, complete, now) if latest else None,
            "trend": _trend(trends.get(enc.patient_fk, []), complete) if enc else [],
            "vitals": vitals.get(enc.patient_fk, {}) if enc else {},
            "alerts": [_alert(a) for a in by_bed.get(bed.id, [])],
            "risk": _risk(risks.get(enc.id)) if enc else None,
            "bed_exit": _bed_exit(enc) if enc else None,
            "options": [_option(o) for o in options.get(enc.patient_fk, [])] if enc else [],
        }
        tile["attention"] = _attention(tile)
        tiles.append(tile)
    ward_alerts = [_alert(a) for a in ward_level]
    open_alerts = [a for t in tiles for a in t["alerts"]] + ward_alerts
    return {
        "ward": {
            "id": ward.id,
            "code": ward.code,
            "name": ward.name,
            "kind": ward.kind,
            "site": {"id": site.id, "code": site.code, "name": site.name},
        },
        "now": _iso(now),
        "beds": tiles,
        "ward_alerts": ward_alerts,
        "counts": {
            "beds": len(tiles),
            "occupied": sum(1 for t in tiles if t["occupant"]),
            "alerts": len(open_alerts),
            "urgent": sum(1 for a in open_alerts if a["severity"] == "urgent"),
            "unacknowledged": sum(1 for a in open_alerts if a["state"] in ("raised", "notified")),
        },
    }


# --- the queries ---------------------------------------------------------------------------


def _occupants(db: Session, bed_ids: list[int]) -> dict[int, tuple[Encounter, Patient]]:
    """The active encounter (and its patient) in each bed; the latest admission wins if
    ADT ever left two in one bed."""
    if not bed_ids:
        return {}
    rows = db.execute(
        select(Encounter, Patient)
        .join(Patient, Patient.id == Encounter.patient_fk)
        .where(Encounter.bed_fk.in_(bed_ids), Encounter.state == EncounterState.ACTIVE.value)
        .order_by(Encounter.admitted_at, Encounter.id)
    )
    found: dict[int, tuple[Encounter, Patient]] = {}
    for enc, patient in rows:
        assert enc.bed_fk is not None
        found[enc.bed_fk] = (enc, patient)
    return found


def _latest_scores(
    db: Session, encounter_ids: list[int]
) -> dict[int, tuple[EarlyWarningScore, EarlyWarningScore | None]]:
    """Per encounter, its newest score and its newest complete one (the same row when the
    newest is complete): one index probe each."""
    if not encounter_ids:
        return {}
    score = EarlyWarningScore

    def newest(*where: ColumnElement[bool]) -> Any:
        return (
            select(score.id)
            .where(score.patient_fk == Encounter.patient_fk, score.encounter_fk == Encounter.id)
            .where(*where)
            .order_by(score.computed_at.desc(), score.id.desc())
            .limit(1)
            .correlate(Encounter)
            .scalar_subquery()
        )

    pairs = db.execute(
        select(Encounter.id, newest(), newest(score.complete.is_(True))).where(
            Encounter.id.in_(encounter_ids)
        )
    ).all()
    wanted = {i for _, *ids in pairs for i in ids if i is not None}
    rows = (
        {s.id: s for s in db.scalars(select(score).where(score.id.in_(wanted)))} if wanted else {}
    )
    return {
        enc_id: (rows[latest], rows.get(complete) if complete is not None else None)
        for enc_id, latest, complete in pairs
        if latest is not None
    }


def _epoch_bucket(db: Session, column: Any, seconds: int) -> ColumnElement[Any]:
    """`column` (a timestamp) as a whole number of `seconds`-long buckets since 1970."""
    if db.get_bind().dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer) // seconds
    return func.floor(func.extract("epoch", column) / seconds)


def _trends(
    db: Session, patient_fks: list[int], *, since: datetime
) -> dict[int, list[tuple[datetime, int]]]:
    """Per patient, (time, worst total) of each half hour with a complete score since
    `since`, oldest first — the database does the grouping."""
    if not patient_fks:
        return {}
    score = EarlyWarningScore
    bucket = _epoch_bucket(db, score.computed_at, TREND_BUCKET_SECONDS)
    rows = db.execute(
        select(score.patient_fk, func.max(score.computed_at), func.max(score.total))
        .where(
            score.patient_fk.in_(patient_fks),
            score.computed_at >= since,
            score.complete.is_(True),
            score.total.is_not(None),
        )
        .group_by(score.patient_fk, bucket)
    )
    found: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    for patient_fk, at, total in rows:
        if total is not None:  # excluded by the query; this tells the type checker
            found[patient_fk].append((at, int(total)))
    for points in found.values():
        points.sort()
    return found


def _latest_vitals(
    db: Session,
    patient_fks: list[int],
    scores: Iterable[EarlyWarningScore],
    *,
    since: datetime,
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per patient and parameter, the newest reading: of the last `VITALS_WINDOW`, or one
    the latest score used (a nurse's 6-hourly consciousness check is older)."""
    if not patient_fks:
        return {}
    obs = VitalObservation
    used = sorted(
        {
            int(part["observation"])
            for s in scores
            for part in (s.parts or {}).values()
            if isinstance(part, dict) and isinstance(part.get("observation"), int)
        }
    )
    rank = (
        func.row_number()
        .over(
            partition_by=(obs.patient_fk, obs.parameter),
            order_by=(obs.observed_at.desc(), obs.id.desc()),
        )
        .label("rank")
    )
    recent = (
        select(obs.id, rank)
        .where(obs.patient_fk.in_(patient_fks), obs.observed_at >= since)
        .subquery()
    )
    newest = select(recent.c.id).where(recent.c.rank == 1)
    wanted = obs.id.in_(newest) if not used else or_(obs.id.in_(newest), obs.id.in_(used))
    found: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    chosen: dict[tuple[int, str], tuple[datetime, int]] = {}
    for row in db.scalars(select(obs).where(wanted)):
        key = (row.patient_fk, row.parameter)
        if key in chosen and chosen[key] >= (row.observed_at, row.id):
            continue
        chosen[key] = (row.observed_at, row.id)
        found[row.patient_fk][row.parameter] = {
            "value": row.value,
            "text": row.value_text,
            "unit": row.unit,
            "at": _iso(row.observed_at),
            "valid": row.valid,
            "source": row.source,
        }
    return found


def _risks(db: Session, encounter_ids: list[int]) -> dict[int, FallRiskAssessment]:
    """The newest Morse assessment of each encounter."""
    if not encounter_ids:
        return {}
    risk = FallRiskAssessment
    newest = (
        select(func.max(risk.id))
        .where(risk.encounter_fk.in_(encounter_ids))
        .group_by(risk.encounter_fk)
    )
    rows = db.scalars(select(risk).where(risk.id.in_(newest)))
    return {r.encounter_fk: r for r in rows if r.encounter_fk is not None}


def _options(db: Session, patient_fks: list[int]) -> dict[int, list[PatientOption]]:
    """The scoring options in force per patient (a later setting of a key wins)."""
    if not patient_fks:
        return {}
    rows = db.scalars(
        select(PatientOption)
        .where(PatientOption.patient_fk.in_(patient_fks), PatientOption.revoked_at.is_(None))
        .order_by(PatientOption.set_at, PatientOption.id)
    )
    latest: dict[tuple[int, str], PatientOption] = {}
    for option in rows:
        latest[(option.patient_fk, option.key)] = option
    found: dict[int, list[PatientOption]] = defaultdict(list)
    for (patient_fk, _key), option in sorted(latest.items()):
        found[patient_fk].append(option)
    return found


def _alerts(db: Session, ward_id: int) -> tuple[dict[int, list[Alert]], list[Alert]]:
    """The ward's open alerts by bed (most severe, then oldest first), and those of no bed."""
    rows = list(
        db.scalars(select(Alert).where(Alert.ward_fk == ward_id, Alert.state.in_(OPEN_STATES)))
    )
    rows.sort(key=lambda a: (_SEVERITY_RANK.get(a.severity, 9), a.raised_at, a.id))
    by_bed: dict[int, list[Alert]] = defaultdict(list)
    ward_level = []
    for alert in rows:
        if alert.bed_fk is None:
            ward_level.append(alert)
        else:
            by_bed[alert.bed_fk].append(alert)
    return by_bed, ward_level


# --- the tile's parts ----------------------------------------------------------------------


def _occupant(enc: Encounter, patient: Patient, now: datetime) -> dict[str, Any]:
    return {
        "encounter_id": enc.id,
        "patient_fk": patient.id,
        "patient_id": patient.patient_id,
        "name": patient.name,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
        "age": age_on(patient.birth_date, now.date()),
        "sex": patient.sex,
        "visit_number": enc.visit_number,
        "admitted_at": _iso(enc.admitted_at),
    }


def _score(
    latest: EarlyWarningScore, complete: EarlyWarningScore | None, now: datetime
) -> dict[str, Any]:
    """The tile's score: the newest evaluation (complete, or what it misses) and the
    total, band and due time of the newest complete set — a set that lost a reading
    claims no new total, but the patient keeps the band the nurses are acting on, and
    the next set is due by that band's monitoring frequency (as the overdue reminder)."""
    due_at = (
        complete.observed_at + timedelta(minutes=complete.next_due_minutes)
        if complete is not None and complete.next_due_minutes is not None
        else None
    )
    overdue = due_at is not None and now > due_at
    return {
        "id": latest.id,
        "name": latest.score_name,
        "complete": latest.complete,
        "missing": [] if latest.complete else list(latest.missing or []),
        "computed_at": _iso(latest.computed_at),
        "total": complete.total if complete else None,
        "band": complete.band if complete else None,
        "colour": band_colour(complete.band, complete.total) if complete else "none",
        "scored_at": _iso(complete.computed_at) if complete else None,
        "observed_at": _iso(complete.observed_at) if complete else None,
        "next_due_minutes": complete.next_due_minutes if complete else None,
        "due_at": _iso(due_at),
        "overdue": overdue,
        "overdue_minutes": int((now - due_at).total_seconds() // 60) if overdue and due_at else 0,
        "options": dict(latest.options or {}),
    }


def _trend(
    points: Sequence[tuple[datetime, int]], latest: EarlyWarningScore | None
) -> list[dict[str, Any]]:
    """The sparkline's points, ending on the latest complete score itself."""
    out = [{"at": _iso(at), "total": total} for at, total in points]
    if latest is not None and latest.complete and latest.total is not None:
        last = {"at": _iso(latest.computed_at), "total": latest.total}
        if out and out[-1]["at"] == last["at"]:
            out[-1] = last
        else:
            out.append(last)
    return out


def _alert(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "state": alert.state,
        "title": alert.title,
        "detail": alert.detail,
        "bed_id": alert.bed_fk,
        "raised_at": _iso(alert.raised_at),
        "last_raised_at": _iso(alert.last_raised_at),
        "occurrences": alert.occurrences,
        "notifications": alert.notifications,
        "escalation_level": alert.escalation_level,
        "acknowledged_at": _iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "facts": dict(alert.facts or {}),
    }


def _risk(risk: FallRiskAssessment | None) -> dict[str, Any] | None:
    if risk is None:
        return None
    return {
        "id": risk.id,
        "total": risk.total,
        "level": risk.level,
        "assessed_at": _iso(risk.assessed_at),
        "assessed_by": risk.assessed_by,
    }


def _bed_exit(enc: Encounter) -> str:
    """ "auto" (follows the fall risk), "on" or "off" (a nurse's choice)."""
    if enc.bed_exit_alerts is None:
        return "auto"
    return "on" if enc.bed_exit_alerts else "off"


def _option(option: PatientOption) -> dict[str, Any]:
    return {
        "id": option.id,
        "key": option.key,
        "value": option.value,
        "reason": option.reason,
        "set_by": option.set_by,
        "set_at": _iso(option.set_at),
    }


def _attention(tile: dict[str, Any]) -> int:
    """How much a tile asks for attention (0 calm … 5 an unacknowledged urgent alarm),
    for the phone's ordering and the station's emphasis."""
    level = 0
    score = tile["score"]
    if score:
        level = {"amber": 2, "orange": 2, "red": 3}.get(score["colour"], 0)
        if score["overdue"]:
            level = max(level, 1)
    for alert in tile["alerts"]:
        open_ = alert["state"] in ("raised", "notified")
        if alert["severity"] == "urgent":
            level = max(level, 5 if open_ else 4)
        elif open_:
            level = max(level, 4 if alert["severity"] == "warning" else 1)
    return level


# --- the fingerprint -----------------------------------------------------------------------


def board_fingerprint(db: Session, *, ward_id: int) -> str:
    """A short text, without patient data, that changes whenever the board of `ward_id`
    would: beds, occupancy, alerts and their steps, scores, readings, risk and options.

    One statement of index probes (per active encounter, the newest score, reading and
    assessment), cheap enough for every open stream to run every few seconds.
    """
    enc = Encounter
    active = (enc.ward_fk == ward_id) & (enc.state == EncounterState.ACTIVE.value)

    def newest(column: Any, *where: Any, order: Any) -> Any:
        inner = select(column).where(*where).order_by(order.desc()).limit(1).correlate(enc)
        return select(func.max(inner.scalar_subquery())).where(active).scalar_subquery()

    score, obs, risk = EarlyWarningScore, VitalObservation, FallRiskAssessment
    beds = (Bed.ward_id == ward_id) & Bed.is_active.is_(True)
    open_alerts = (Alert.ward_fk == ward_id) & Alert.state.in_(OPEN_STATES)
    options = PatientOption.patient_fk.in_(select(enc.patient_fk).where(active))
    parts = [
        select(func.count()).where(beds),
        select(func.max(Bed.id)).where(beds),
        select(func.count()).select_from(enc).where(active),
        select(func.max(enc.id)).where(active),
        select(func.max(enc.updated_at)).where(active),
        select(func.max(enc.bed_exit_set_at)).where(active),
        select(func.count()).select_from(Alert).where(open_alerts),
        select(func.max(Alert.id)).where(open_alerts),
        select(func.sum(Alert.occurrences)).where(open_alerts),
        select(func.sum(Alert.notifications)).where(open_alerts),
        select(func.max(Alert.acknowledged_at)).where(open_alerts),
        select(func.max(Alert.resolved_at)).where(Alert.ward_fk == ward_id),
        select(func.count()).select_from(PatientOption).where(options),
        select(func.max(PatientOption.revoked_at)).where(options),
    ]
    columns = [p.scalar_subquery() for p in parts] + [
        newest(score.id, score.patient_fk == enc.patient_fk, order=score.computed_at),
        newest(obs.id, obs.patient_fk == enc.patient_fk, order=obs.observed_at),
        newest(risk.id, risk.patient_fk == enc.patient_fk, order=risk.assessed_at),
    ]
    values = db.execute(select(*columns)).one()
    return "|".join("" if v is None else str(v) for v in values)
