"""`lods audit ...`: verify, purge and export the audit trail from a shell.

Verification and export read without holding the database's write lock, so they can
run beside a live server. What they did is itself audited (actor `cli:<os user>`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TextIO

import typer

from lods.audit import service
from lods.audit.models import AuditEvent
from lods.audit.schemas import ExportFormat, export_lines, parse_timestamp
from lods.auth.cli import cli_actor
from lods.config import get_settings
from lods.runtime import Runtime

app = typer.Typer(help="The audit trail: verify, purge, export.", no_args_is_help=True)


@contextmanager
def _runtime() -> Iterator[Runtime]:
    runtime = Runtime.open(get_settings())
    try:
        yield runtime
    finally:
        runtime.close()


def _verify(runtime: Runtime) -> tuple[int, list[service.ChainProblem]]:
    with service.unlocked_reader(runtime.engine) as reader:
        return service.verify(reader)


def _report(count: int, problems: list[service.ChainProblem]) -> None:
    if not problems:
        typer.echo(f"OK: {count} events, the hash chain is intact")
        return
    for p in problems:
        typer.echo(f"{p.seq if p.seq is not None else '-'}\t{p.kind}\t{p.message}")
    typer.echo(f"FAILED: {len(problems)} problem(s) in {count} events", err=True)


@app.command("verify")
def verify() -> None:
    """Check the hash chain: print OK, or each problem (seq, kind, message) and exit 1."""
    with _runtime() as runtime:
        count, problems = _verify(runtime)
        with runtime.sessions() as db, db.begin():
            service.record(
                db,
                actor=cli_actor(),
                action="audit.verify",
                detail={"events": count, "problems": len(problems)},
            )
    _report(count, problems)
    if problems:
        raise typer.Exit(code=1)


@app.command("purge")
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say how many events would go")
    ] = False,
) -> None:
    """Delete events older than the retention period (LODS_AUDIT_RETENTION_DAYS, >= 183).

    Refuses when the chain has problems: evidence is not deleted before it is looked at.
    """
    with _runtime() as runtime:
        days = runtime.settings.audit_retention_days
        count, problems = _verify(runtime)
        if problems:
            _report(count, problems)
            typer.echo("refusing to purge a trail whose chain is broken", err=True)
            raise typer.Exit(code=1)
        with runtime.sessions() as db, db.begin():
            if dry_run:
                plan = service.plan_purge(db, retention_days=days)
                typer.echo(f"would purge {plan.count} events before {plan.cutoff.isoformat()}")
                return
            removed = service.purge(db, actor=cli_actor(), retention_days=days)
    typer.echo(f"purged {removed} events older than {days} days")


def _write(runtime: Runtime, filters: service.EventFilter, fmt: ExportFormat, out: TextIO) -> int:
    """Write the export to `out` and return the number of events in it."""
    written = 0

    def counted(events: Iterator[AuditEvent]) -> Iterator[AuditEvent]:
        nonlocal written
        for ev in events:
            written += 1
            yield ev

    with service.unlocked_reader(runtime.engine) as reader:
        for line in export_lines(counted(service.iter_events(reader, filters=filters)), fmt=fmt):
            out.write(line)
    return written


@app.command("export")
def export(
    since: Annotated[
        str | None, typer.Option(help="From this time (ISO 8601; UTC if no offset)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time; a date alone: through that day")
    ] = None,
    patient: Annotated[str | None, typer.Option(help="Only events about this patient ID")] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout")] = None,
) -> None:
    """Export events in chain order, with their hashes, as JSON Lines or CSV."""
    try:
        filters = service.EventFilter(
            patient_id=patient,
            since=parse_timestamp(since) if since else None,
            until=parse_timestamp(until, end_of_day=True) if until else None,
        )
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {exc}") from exc
    with _runtime() as runtime:
        with runtime.sessions() as db, db.begin():
            detail = {"filters": filters.described(), "format": fmt, "to": str(out or "stdout")}
            service.record(db, actor=cli_actor(), action="audit.export", detail=detail)
        if out is None:
            count = _write(runtime, filters, fmt, sys.stdout)
        else:
            with out.open("w", encoding="utf-8", newline="") as fh:
                count = _write(runtime, filters, fmt, fh)
    typer.echo(f"exported {count} events", err=True)
