"""What the audit API returns, and the export formats (JSON Lines and CSV) of the trail."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lods.audit.models import AuditEvent
from lods.audit.service import ChainProblem, EventFilter, canonical_time

ExportFormat = Literal["jsonl", "csv"]


class AuditEventOut(BaseModel):
    """One audited act as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    occurred_at: datetime
    actor: str
    action: str
    outcome: str
    patient_id: str | None
    study_uid: str | None
    object_ref: str | None
    source: str
    detail: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, ev: AuditEvent) -> AuditEventOut:
        """Return the API form of a stored event (its JSON detail parsed)."""
        return cls(
            seq=ev.seq,
            occurred_at=ev.occurred_at,
            actor=ev.actor,
            action=ev.action,
            outcome=ev.outcome,
            patient_id=ev.patient_id,
            study_uid=ev.study_uid,
            object_ref=ev.object_ref,
            source=ev.source,
            detail=_parsed(ev.detail),
            hash=ev.hash,
        )


def _parsed(detail: str) -> dict[str, Any]:
    try:
        value = json.loads(detail)
    except ValueError:
        return {"raw": detail}
    return value if isinstance(value, dict) else {"value": value}


class EventQuery(BaseModel):
    """The filters of an audit search or export, as query parameters."""

    actor: str | None = Field(None, max_length=100)
    action: str | None = Field(None, max_length=64)
    outcome: str | None = Field(None, max_length=16)
    patient_id: str | None = Field(None, max_length=64)
    study_uid: str | None = Field(None, max_length=64)
    since: datetime | None = Field(None, description="From this time (inclusive); UTC if no offset")
    until: datetime | None = Field(
        None, description="Before this time (exclusive); UTC if no offset"
    )

    def to_filter(self) -> EventFilter:
        """Return the service filter, times made aware (UTC) and empty texts dropped."""
        return EventFilter(
            actor=self.actor or None,
            action=self.action or None,
            outcome=self.outcome or None,
            patient_id=self.patient_id or None,
            study_uid=self.study_uid or None,
            since=as_utc(self.since),
            until=as_utc(self.until),
        )


class AuditPage(BaseModel):
    """A page of events, newest first, and how many match the filter in all."""

    total: int
    limit: int
    offset: int
    events: list[AuditEventOut]


class ProblemOut(BaseModel):
    """One place where the trail disagrees with its hash chain."""

    seq: int | None
    kind: str
    message: str

    @classmethod
    def of(cls, problem: ChainProblem) -> ProblemOut:
        return cls(seq=problem.seq, kind=problem.kind, message=problem.message)


class VerifyOut(BaseModel):
    """The result of walking the whole chain."""

    ok: bool
    events: int
    problems: list[ProblemOut]


# --- export formats ------------------------------------------------------------------------

#: The columns of an export, in order; with them anyone can recompute the chain hashes.
EXPORT_FIELDS = (
    "seq",
    "occurred_at",
    "actor",
    "action",
    "outcome",
    "patient_id",
    "study_uid",
    "object_ref",
    "source",
    "detail",
    "prev_hash",
    "hash",
)
EXPORT_MEDIA_TYPES: dict[str, str] = {
    "jsonl": "application/x-ndjson; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
}


def event_record(ev: AuditEvent) -> dict[str, Any]:
    """Return exactly the fields an event's hash covers, and both hashes, as JSON values."""
    values = {name: getattr(ev, name) for name in EXPORT_FIELDS}
    values["occurred_at"] = canonical_time(ev.occurred_at)
    return values


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> str:
    # A spreadsheet runs a cell that starts like a formula, and patient ids come from
    # DICOM senders: such a cell gets a leading apostrophe (CSV only; JSON Lines is exact).
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def export_lines(events: Iterable[AuditEvent], *, fmt: ExportFormat) -> Iterator[str]:
    """Yield the events as JSON Lines, or as CSV after a header row, a line at a time."""
    if fmt == "jsonl":
        for ev in events:
            yield json.dumps(event_record(ev), ensure_ascii=False, separators=(",", ":")) + "\n"
        return
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r}: use jsonl or csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    for ev in events:
        values = event_record(ev)
        writer.writerow([_csv_cell(values[name]) for name in EXPORT_FIELDS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def parse_timestamp(text: str, *, end_of_day: bool = False) -> datetime:
    """Return the UTC time an ISO 8601 text names; a time without offset is taken as UTC.

    A date alone means the start of that day, or with `end_of_day` the start of the
    next, so `until=2025-03-31` takes in all of March 31st.
    """
    value = text.strip()
    if len(value) == 10 and end_of_day:
        return parse_timestamp(value) + timedelta(days=1)
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Return `value` as an aware UTC time; a naive one is taken to be UTC already."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
