"""Fall figures per ward: does the falls solution help here?

Bed-exit alarms alone did not reduce falls in the one large randomised trial, so each
ward measures its own (STANDARDS.md §2). `ward_fall_figures` works out, for a ward and a
time window [start, end):

- **bed-days**: the occupied time of the ward's beds from ADT (`BedStay` rows overlapping
  the window, clipped to it; a stay still open counts up to `now`), in days of 86,400 s;
- **sensor alarms per bed-day**: fall alarms and bed-exit alerts raised on the ward in
  the window, over the bed-days;
- **PPV of fall alarms**: of the fall alarms raised in the window and resolved with an
  outcome, the share whose outcome was a confirmed fall;
- **response time**: seconds from a fall alarm being raised to someone acknowledging it
  (median and 90th percentile, linear interpolation between the nearest ranks, as
  numpy's default); bed-exit alerts cleared by the system ("back in bed") are not
  responses and are left out of the bed-exit figure;
- **falls per 1,000 bed-days before and after** the falls solution was put to use at
  the ward's site: confirmed falls (`FallIncident` outcome "fall", from alarms and
  entered by hand) over bed-days, the window split at the deployment date — the
  `created_at` of the site's first falls deployment that is not in shadow mode (a
  newer version replacing it does not move the date).

Every ratio comes with its numerator and denominator so a reader can check it; a ratio
whose denominator is 0 is None. Counts only — no patient data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lods.alerts.models import Alert, AlertState
from lods.db import utcnow
from lods.falls.models import FallIncident
from lods.sites.models import Department
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.vitals.models import BedStay

FALL_ALARM = "fall.alarm"
BED_EXIT_ALERT = "fall.bed_exit"
SENSOR_INPUT = "sensor-events"
SECONDS_PER_DAY = 86_400


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return numerator * scale / denominator if denominator else None


def bed_seconds(
    db: Session, *, ward_id: int, start: datetime, end: datetime, now: datetime
) -> float:
    """Occupied bed time of the ward within [start, end), in seconds (open stays up to now)."""
    if end <= start:
        return 0.0
    stays = db.execute(
        select(BedStay.started_at, BedStay.ended_at).where(
            BedStay.ward_fk == ward_id,
            BedStay.started_at < end,
            or_(BedStay.ended_at.is_(None), BedStay.ended_at > start),
        )
    )
    total = 0.0
    for started, ended in stays:
        stop = min(ended or now, end)
        begin = max(started, start)
        if stop > begin:
            total += (stop - begin).total_seconds()
    return total


def falls_deployment_date(db: Session, *, site_id: int) -> tuple[datetime, int] | None:
    """When falls monitoring began at the site: (created_at, deployment id) of the first
    deployment of a sensor-events solution that is not in shadow mode."""
    row = db.execute(
        select(Deployment.created_at, Deployment.id)
        .join(SolutionVersion, SolutionVersion.id == Deployment.version_fk)
        .where(
            Deployment.site_fk == site_id,
            SolutionVersion.input_kind == SENSOR_INPUT,
            Deployment.mode != DeploymentMode.SHADOW.value,
        )
        .order_by(Deployment.created_at, Deployment.id)
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def _falls(db: Session, *, ward_id: int, start: datetime, end: datetime) -> int:
    if end <= start:
        return 0
    return len(
        db.scalars(
            select(FallIncident.id).where(
                FallIncident.ward_fk == ward_id,
                FallIncident.outcome == "fall",
                FallIncident.occurred_at >= start,
                FallIncident.occurred_at < end,
            )
        ).all()
    )


def _period(
    db: Session, *, ward_id: int, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    seconds = bed_seconds(db, ward_id=ward_id, start=start, end=end, now=now)
    falls = _falls(db, ward_id=ward_id, start=start, end=end)
    days = seconds / SECONDS_PER_DAY
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "falls": falls,
        "bed_days": round(days, 4),
        "per_1000_bed_days": _ratio(falls, days, 1000),
    }


def _response(alerts: Sequence[Alert]) -> dict[str, Any]:
    seconds = [
        (a.acknowledged_at - a.raised_at).total_seconds()
        for a in alerts
        if a.acknowledged_at is not None and a.acknowledged_by not in (None, "system")
    ]
    return {
        "count": len(seconds),
        "median_seconds": percentile(seconds, 50),
        "p90_seconds": percentile(seconds, 90),
    }


def ward_fall_figures(
    db: Session, *, ward_id: int, start: datetime, end: datetime, now: datetime | None = None
) -> dict[str, Any]:
    """The ward's fall figures for [start, end) (see the module docstring); counts only."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end need a zone")
    if end <= start:
        raise ValueError("end must be after start")
    ward = db.get(Department, ward_id)
    if ward is None:
        raise LookupError(f"no ward {ward_id}")
    now = now or utcnow()
    seconds = bed_seconds(db, ward_id=ward_id, start=start, end=end, now=now)
    bed_days = seconds / SECONDS_PER_DAY
    raised = list(
        db.scalars(
            select(Alert).where(
                Alert.ward_fk == ward_id,
                Alert.kind.in_([FALL_ALARM, BED_EXIT_ALERT]),
                Alert.raised_at >= start,
                Alert.raised_at < end,
            )
        )
    )
    fall_alarms = [a for a in raised if a.kind == FALL_ALARM]
    bed_exits = [a for a in raised if a.kind == BED_EXIT_ALERT]
    judged = [
        a for a in fall_alarms if a.state == AlertState.RESOLVED.value and a.outcome is not None
    ]
    outcomes = {
        k: sum(1 for a in judged if a.outcome == k) for k in ("fall", "near_fall", "false_alarm")
    }
    deployed = falls_deployment_date(db, site_id=ward.site_id)
    # No falls solution yet: the whole window is "before".
    split = end if deployed is None else min(max(deployed[0], start), end)
    return {
        "ward_id": ward.id,
        "ward": ward.code,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "bed_days": round(bed_days, 4),
        "alarms": {
            "fall_alarms": len(fall_alarms),
            "bed_exit_alerts": len(bed_exits),
            "total": len(raised),
            "per_bed_day": _ratio(len(raised), bed_days),
        },
        "ppv": {
            "fall_alarms_with_outcome": len(judged),
            "falls": outcomes["fall"],
            "near_falls": outcomes["near_fall"],
            "false_alarms": outcomes["false_alarm"],
            "value": _ratio(outcomes["fall"], len(judged)),
        },
        "response": {
            "fall_alarms": _response(fall_alarms),
            "bed_exit_alerts": _response(bed_exits),
        },
        "falls_per_1000_bed_days": {
            "deployment_id": deployed[1] if deployed else None,
            "deployed_at": deployed[0].isoformat() if deployed else None,
            "before": _period(db, ward_id=ward_id, start=start, end=split, now=now),
            "after": _period(db, ward_id=ward_id, start=split, end=end, now=now),
        },
    }
