"""Per-patient scoring options a clinician sets, always with author and reason.

Keys:

- `spo2_scale`: 1 or 2. Scale 2 is only for patients with a clinician-documented target
  SpO2 of 88–92 % (hypercapnic respiratory failure), so its reason must cite that target.
- `pregnant`: true/false — pregnancy is outside NEWS2's intended use.
- `threshold:<parameter>`: `{"bands": [...]}` replacing that parameter's bands for this
  patient (see `lods.vitals.ews`); only for parameters the score table marks adjustable.

Setting a key again replaces the option in force (the old row is kept, revoked). Every
change is audited with the patient's identifier. Who may set options (nurses and
physicians) is checked by the API layer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.db import utcnow
from lods.imaging.models import Patient
from lods.vitals import ews
from lods.vitals.models import PatientOption

FLAG_KEYS = frozenset({"pregnant"})
MIN_REASON_CHARS = 5
#: A reason for SpO2 scale 2 must cite the documented 88–92 % target.
_TARGET_88_92 = re.compile(r"88\s*(?:%\s*)?(?:-|–|—|to)\s*92")


class OptionError(ValueError):
    """The option cannot be set or revoked as asked."""


class OptionNotFound(OptionError):
    pass


def _check_value(key: str, value: Any, reason: str) -> Any:
    if key == "spo2_scale":
        if isinstance(value, bool) or value not in (1, 2, "1", "2"):
            raise OptionError("spo2_scale is 1 or 2")
        value = int(value)
        if value == 2 and not _TARGET_88_92.search(reason):
            raise OptionError(
                "SpO2 scale 2 is only for a clinician-documented target SpO2 of 88–92 %: "
                "the reason must cite that target"
            )
        return value
    if key in FLAG_KEYS:
        if not isinstance(value, bool):
            raise OptionError(f"{key} is true or false")
        return value
    if key.startswith(ews.THRESHOLD_PREFIX):
        parameter = key.removeprefix(ews.THRESHOLD_PREFIX)
        if not re.fullmatch(r"[a-z0-9_]{1,40}", parameter):
            raise OptionError(f"{key!r} does not name a score parameter")
        problems = ews.override_problems(value)
        if problems:
            raise OptionError("; ".join(problems))
        return {"bands": value["bands"]}
    raise OptionError(f"unknown option {key!r}: use spo2_scale, pregnant or threshold:<parameter>")


def _patient(db: Session, patient_fk: int) -> Patient:
    patient = db.get(Patient, patient_fk)
    if patient is None:
        raise OptionNotFound(f"no patient {patient_fk}")
    return patient


def _in_force(db: Session, patient_fk: int, key: str) -> list[PatientOption]:
    return list(
        db.scalars(
            select(PatientOption).where(
                PatientOption.patient_fk == patient_fk,
                PatientOption.key == key,
                PatientOption.revoked_at.is_(None),
            )
        )
    )


def set_option(
    db: Session,
    *,
    patient_fk: int,
    key: str,
    value: Any,
    reason: str,
    actor: str,
    source: str = "",
    now: datetime | None = None,
) -> PatientOption:
    """Put option `key` = `value` in force for the patient (replacing the one in force)."""
    reason = (reason or "").strip()
    if len(reason) < MIN_REASON_CHARS:
        raise OptionError("say why (a reason is required for every scoring option)")
    key = key.strip()
    value = _check_value(key, value, reason)
    patient = _patient(db, patient_fk)
    now = now or utcnow()
    replaced = []
    for old in _in_force(db, patient_fk, key):
        old.revoked_at, old.revoked_by = now, actor
        replaced.append(old.id)
    option = PatientOption(
        patient_fk=patient_fk, key=key, value=value, reason=reason, set_by=actor, set_at=now
    )
    db.add(option)
    db.flush()
    record(
        db,
        actor=actor,
        action="vitals.option.set",
        patient_id=patient.patient_id,
        object_ref=f"patient_option:{option.id}",
        source=source,
        detail={"key": key, "value": value, "reason": reason, "replaced": replaced},
    )
    return option


def revoke_option(
    db: Session, *, option_id: int, actor: str, source: str = "", now: datetime | None = None
) -> PatientOption:
    """Take an option out of force (the row stays, marked revoked)."""
    option = db.get(PatientOption, option_id)
    if option is None:
        raise OptionNotFound(f"no scoring option {option_id}")
    if option.revoked_at is not None:
        raise OptionError(f"option {option_id} was already revoked")
    patient = _patient(db, option.patient_fk)
    option.revoked_at, option.revoked_by = now or utcnow(), actor
    db.flush()
    record(
        db,
        actor=actor,
        action="vitals.option.revoke",
        patient_id=patient.patient_id,
        object_ref=f"patient_option:{option.id}",
        source=source,
        detail={"key": option.key},
    )
    return option


def _value_in_force(option: PatientOption) -> Any:
    if option.key.startswith(ews.THRESHOLD_PREFIX) and isinstance(option.value, dict):
        # The score keeps who adjusted the threshold and why.
        return {
            **option.value,
            "set_by": option.set_by,
            "set_at": option.set_at.isoformat(),
            "reason": option.reason,
            "option_id": option.id,
        }
    return option.value


def options_in_force_many(
    db: Session, *, patient_fks: Collection[int]
) -> dict[int, dict[str, Any]]:
    """`options_in_force` for several patients in one query (patients without: {})."""
    out: dict[int, dict[str, Any]] = {fk: {} for fk in patient_fks}
    if not out:
        return out
    rows = db.scalars(_in_force_statement(), {"patients": list(out)})
    for option in rows:
        out[option.patient_fk][option.key] = _value_in_force(option)
    return out


@functools.cache
def _in_force_statement() -> Any:
    """Options in force of the patients (`patients`, expanding), oldest first; built once
    (scoring reads them for every intake batch)."""
    return (
        select(PatientOption)
        .where(
            PatientOption.patient_fk.in_(bindparam("patients", expanding=True)),
            PatientOption.revoked_at.is_(None),
        )
        .order_by(PatientOption.set_at, PatientOption.id)
    )


def options_in_force(db: Session, *, patient_fk: int) -> dict[str, Any]:
    """{key: value} of the patient's options in force; adjusted thresholds carry
    `set_by`, `set_at`, `reason` and `option_id` beside their bands."""
    return options_in_force_many(db, patient_fks=[patient_fk])[patient_fk]


def list_options(db: Session, *, patient_fk: int) -> list[PatientOption]:
    """Every option ever set for the patient, newest first (revoked ones included)."""
    return list(
        db.scalars(
            select(PatientOption)
            .where(PatientOption.patient_fk == patient_fk)
            .order_by(PatientOption.set_at.desc(), PatientOption.id.desc())
        )
    )
