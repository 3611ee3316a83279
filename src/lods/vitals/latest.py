"""The newest valid reading per patient and parameter (`latest_vitals`), kept in the same
transaction as the readings, so that scoring after every message reads a few rows per
patient instead of searching the observations.

Two ways in, one rule: a valid reading replaces the held one when it is newer (same time:
the later row); a reading dated more than `FUTURE_TOLERANCE` after it was received (a
monitor with a wrong clock) never becomes the newest. The ORM path (nurses, FHIR, anything
that adds `VitalObservation` objects) is covered by a mapper event; the HL7 bulk path calls
`note_messages` with the ids of the messages whose readings it inserted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, event, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.orm import Mapper, Session

from lods.vitals.models import LatestVital, VitalObservation

#: How far after its receipt a reading may be dated and still count (clock drift).
FUTURE_TOLERANCE = timedelta(minutes=5)
LATEST: Table = LatestVital.__table__  # type: ignore[assignment]
OBSERVATIONS: Table = VitalObservation.__table__  # type: ignore[assignment]
_COLUMNS = ("patient_fk", "parameter", "observation_fk", "value", "value_text", "observed_at")
#: Rows per IN (...) look-up.
CHUNK = 500


def _upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT (patient, parameter) DO UPDATE when the new row is newer."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(LATEST)
    new = statement.excluded
    newer = or_(
        new.observed_at > LATEST.c.observed_at,
        and_(
            new.observed_at == LATEST.c.observed_at,
            new.observation_fk > LATEST.c.observation_fk,
        ),
    )
    return statement, {
        "index_elements": [LATEST.c.patient_fk, LATEST.c.parameter],
        "set_": {c: new[c] for c in ("observation_fk", "value", "value_text", "observed_at")},
        "where": newer,
    }


@functools.lru_cache(maxsize=4)
def _from_messages(dialect: str) -> Any:
    """The upsert of the newest valid reading per (patient, parameter) among the readings
    of messages `ids` dated up to `until`; built once per dialect. PostgreSQL takes one
    row per key (DISTINCT ON); SQLite applies the rows in time order, the newest last."""
    statement, conflict = _upsert(dialect)
    columns = [
        OBSERVATIONS.c.patient_fk,
        OBSERVATIONS.c.parameter,
        OBSERVATIONS.c.id,
        OBSERVATIONS.c.value,
        OBSERVATIONS.c.value_text,
        OBSERVATIONS.c.observed_at,
    ]
    rows = select(*columns).where(
        OBSERVATIONS.c.message_fk.in_(bindparam("ids", expanding=True)),
        OBSERVATIONS.c.valid.is_(True),
        OBSERVATIONS.c.observed_at <= bindparam("until"),
    )
    if dialect == "postgresql":
        rows = rows.ext(
            postgresql.distinct_on(OBSERVATIONS.c.patient_fk, OBSERVATIONS.c.parameter)
        ).order_by(
            OBSERVATIONS.c.patient_fk,
            OBSERVATIONS.c.parameter,
            OBSERVATIONS.c.observed_at.desc(),
            OBSERVATIONS.c.id.desc(),
        )
    else:
        rows = rows.order_by(OBSERVATIONS.c.observed_at, OBSERVATIONS.c.id)
    return statement.from_select(list(_COLUMNS), rows).on_conflict_do_update(**conflict)


def note_messages(conn: Connection, message_ids: Sequence[int], *, received_at: datetime) -> None:
    """Take the valid readings of these HL7 messages, received at `received_at`, into
    `latest_vitals` (one statement per chunk of messages)."""
    statement = _from_messages(conn.dialect.name)
    until = received_at + FUTURE_TOLERANCE
    for start in range(0, len(message_ids), CHUNK):
        conn.execute(statement, {"ids": list(message_ids[start : start + CHUNK]), "until": until})


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _note_one(conn: Connection, row: VitalObservation) -> None:
    received = row.received_at
    if not row.valid or row.id is None:
        return
    if received is not None and _aware(row.observed_at) > _aware(received) + FUTURE_TOLERANCE:
        return
    statement, conflict = _upsert(conn.dialect.name)
    conn.execute(
        statement.values(
            patient_fk=row.patient_fk,
            parameter=row.parameter,
            observation_fk=row.id,
            value=row.value,
            value_text=row.value_text,
            observed_at=row.observed_at,
        ).on_conflict_do_update(**conflict)
    )


@event.listens_for(VitalObservation, "after_insert")
def _after_insert(_mapper: Mapper[Any], conn: Connection, target: VitalObservation) -> None:
    _note_one(conn, target)


def newest(
    db: Session,
    patient_fks: Sequence[int],
    parameters: Sequence[str],
    *,
    since: datetime,
) -> list[Row[Any]]:
    """The held newest readings of these patients' `parameters` observed since `since`,
    as rows with `id` (the observation), `patient_fk`, `parameter`, `value`, `value_text`,
    `observed_at`."""
    out: list[Row[Any]] = []
    for start in range(0, len(patient_fks), CHUNK):
        query = select(
            LATEST.c.observation_fk.label("id"),
            LATEST.c.patient_fk,
            LATEST.c.parameter,
            LATEST.c.value,
            LATEST.c.value_text,
            LATEST.c.observed_at,
        ).where(
            LATEST.c.patient_fk.in_(list(patient_fks[start : start + CHUNK])),
            LATEST.c.parameter.in_(list(parameters)),
            LATEST.c.observed_at >= since,
        )
        out.extend(db.execute(query))
    return out
