"""Entry point of an early-warning score package (`python` runtime): `score.py:run`.

Loads the score table named by the manifest's runtime option `table` (NEWS2 in this
package; any Lods score table works, see `lods.vitals.ews`), checks the file against
its SHA-256 in the manifest the first time, and scores `ctx.payload`:

    {"readings": [{"parameter", "value", "value_text", "observed_at", "id"}, ...],
     "options": {patient options in force}, "now": ISO time,
     "previous_band": band of the encounter's previous complete score or null}

`{"batch": [{"readings", "options", "previous_band"}, ...], "now": ...}` scores several
patients in one call and answers `details["batch"]`: `{"evaluation", "trigger"}` per
patient, or `{"error": ...}` for a patient whose readings could not be scored, with the
table's bands and triggers once beside it.

It returns one finding per scored part (its points, coded with the table's codes), the
total as the study-level score, and in `details` the whole evaluation plus the trigger
(if the band rose from `previous_band` into a band that raises an alert), the risk bands
in order and the trigger rules. With `{"describe": true}` it only says which vital-sign
parameters the table reads and how fresh they must be (`details["needs"]`), so the
platform fetches just those. It writes nothing anywhere.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime
from typing import Any

from lods.solutions.runtimes.base import (
    CodeRef,
    FindingResult,
    PermanentRuntimeError,
    RunContext,
    RunResult,
)
from lods.vitals import ews

_tables: dict[tuple[str, str], ews.ScoreTable] = {}
_lock = threading.Lock()


def _table(ctx: RunContext) -> ews.ScoreTable:
    name = str(ctx.manifest.runtime.options.get("table", "news2.yaml"))
    listed = ctx.manifest.files.get(name)
    if listed is None:
        raise PermanentRuntimeError(f"the score table {name} is not listed in the manifest")
    path = (ctx.package_dir / name).resolve()
    key = (str(path), listed)
    with _lock:
        table = _tables.get(key)
        if table is None:
            content = path.read_bytes()
            if hashlib.sha256(content).hexdigest() != listed:
                raise PermanentRuntimeError(f"the score table {name} does not match its SHA-256")
            try:
                table = ews.parse_table(content)
            except ews.TableError as exc:
                raise PermanentRuntimeError(f"{name}: {exc}") from exc
            _tables[key] = table
    return table


def _code(code: ews.Code | None, fallback: str, meaning: str) -> CodeRef:
    if code is None:
        return CodeRef("99LODS", fallback, meaning)
    return CodeRef(code.scheme, code.value, code.meaning)


def _needs(table: ews.ScoreTable) -> list[dict[str, Any]]:
    return [
        {"key": p.key, "sources": p.source_keys, "freshness_minutes": p.freshness_minutes}
        for p in table.parameters
    ]


def _table_facts(table: ews.ScoreTable) -> dict[str, Any]:
    return {
        "band_order": [b.key for b in table.risk_bands],
        "band_labels": {b.key: b.label for b in table.risk_bands},
        "triggers": [t.model_dump() for t in table.triggers],
    }


def _evaluate(
    table: ews.ScoreTable, item: dict[str, Any], now: datetime | None
) -> tuple[ews.Evaluation, dict[str, Any]]:
    evaluation = ews.evaluate(table, item.get("readings") or [], item.get("options") or {}, now=now)
    trigger = ews.band_rise(table, item.get("previous_band"), evaluation.band)
    return evaluation, {
        "evaluation": evaluation.as_dict(),
        "trigger": trigger.model_dump() if trigger else None,
    }


def _score(table: ews.ScoreTable, item: dict[str, Any], now: datetime | None) -> RunResult:
    evaluation, details = _evaluate(table, item, now)
    findings = [
        FindingResult(
            code=_code(part.code, f"{table.name}.{key}", part.label),
            score=float(part.points),
            label=part.label,
        )
        for key, part in evaluation.parts.items()
        if part.points is not None
    ]
    if evaluation.total is not None:
        findings.insert(
            0,
            FindingResult(
                code=_code(table.total_code, f"{table.name}.total", f"{table.name} total"),
                score=float(evaluation.total),
                label=f"{table.name} total",
            ),
        )
    return RunResult(
        findings=findings,
        study_score=float(evaluation.total) if evaluation.total is not None else None,
        details={**details, **_table_facts(table)},
    )


def _batch(table: ews.ScoreTable, items: list[dict[str, Any]], now: datetime | None) -> RunResult:
    """Several patients in one call; one patient's failure does not cost the others."""
    out: list[dict[str, Any]] = []
    for item in items:
        try:
            out.append(_evaluate(table, item, now)[1])
        except Exception as exc:
            out.append({"error": f"{type(exc).__name__}: {exc}"})
    return RunResult(details={"batch": out, **_table_facts(table)})


def run(ctx: RunContext) -> RunResult:
    """Score the payload's readings with the package's table (or describe what it reads)."""
    table = _table(ctx)
    payload: dict[str, Any] = ctx.payload
    if payload.get("describe"):
        return RunResult(details={"needs": _needs(table)})
    now = payload.get("now")
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    if "batch" in payload:
        return _batch(table, list(payload["batch"]), now)
    return _score(table, payload, now)
