"""Job handlers for the executor tests, importable by spawned worker processes.

Spawned children get the parent's `sys.path`, which pytest extended with this folder,
so they import this module as "jobs_test_handlers:HANDLERS".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lods.audit.models import AuditEvent
from lods.audit.service import record
from lods.jobs.errors import TransientJobError
from lods.jobs.service import cancel
from lods.jobs.worker import Handler, JobContext, JobOutcome

HANDLERS_PATH = "jobs_test_handlers:HANDLERS"
#: The audit action each successful job's writer records: counted to prove exactly-once.
WRITE_ACTION = "test.job.write"
#: Set by tests to release the in-process "block" handler.
RELEASE = threading.Event()


def _writer(ctx: JobContext) -> Callable[[Session], None]:
    job = ctx.job

    def write(db: Session) -> None:
        record(
            db,
            actor="system",
            action=WRITE_ACTION,
            object_ref=f"job:{job.id}",
            detail={"attempt": job.attempt, "pid": os.getpid()},
        )

    return write


def writes(db: Session, job_id: int) -> int:
    """Return how many times a job's output was written."""
    return int(
        db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == WRITE_ACTION, AuditEvent.object_ref == f"job:{job_id}")
        )
        or 0
    )


def ok(ctx: JobContext) -> JobOutcome:
    return JobOutcome(result={"echo": ctx.job.inputs, "pid": os.getpid()}, write=_writer(ctx))


def sleep_then_ok(ctx: JobContext) -> JobOutcome:
    """Wait, heartbeating, until the file named in inputs["flag"] exists."""
    flag = Path(ctx.job.inputs["flag"])
    limit = time.monotonic() + float(ctx.job.inputs.get("max_seconds", 30))
    while not flag.exists() and time.monotonic() < limit:
        ctx.heartbeat()
        time.sleep(0.05)
    return ok(ctx)


def always_transient(ctx: JobContext) -> JobOutcome:
    raise TransientJobError(f"upstream unavailable (attempt {ctx.job.attempt})")


def hang(ctx: JobContext) -> JobOutcome:
    """Sleep past any reasonable time-out without heartbeating, like stuck native code."""
    time.sleep(float(ctx.job.inputs.get("seconds", 60)))
    return ok(ctx)


def block(ctx: JobContext) -> JobOutcome:
    """Wait (in-process tests only) until `RELEASE` is set."""
    RELEASE.wait(30)
    return ok(ctx)


def cancel_myself(ctx: JobContext) -> JobOutcome:
    """Cancel its own job, then heartbeat until the worker notices."""
    with ctx.runtime.sessions() as db, db.begin():
        cancel(db, job_ids=[ctx.job.id], reason="cancelled while running")
    while True:
        ctx.heartbeat()
        time.sleep(0.02)


def bad_writer(ctx: JobContext) -> JobOutcome:
    """Succeed, but with a writer that fails inside the completing transaction."""

    def write(db: Session) -> None:
        _writer(ctx)(db)
        raise RuntimeError("findings table rejected the row")

    return JobOutcome(result={"x": 1}, write=write)


def wrong_result(ctx: JobContext) -> JobOutcome:
    return {"not": "an outcome"}  # type: ignore[return-value]


HANDLERS: dict[str, Handler] = {
    "ok": ok,
    "sleep_then_ok": sleep_then_ok,
    "always_transient": always_transient,
    "hang": hang,
    "block": block,
    "cancel_myself": cancel_myself,
    "wrong_result": wrong_result,
    "bad_writer": bad_writer,
}
