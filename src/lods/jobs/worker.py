"""Running claimed jobs: one job at a time per worker process.

`execute` runs a handler in a thread while the calling thread renews the job's lease
(every lease/3 seconds, each renewal its own short transaction) and watches the job's
time-out. A handler cannot be interrupted (native inference holds no Python
checkpoints), so on time-out the failure is recorded and `execute` returns "timeout":
the worker process then exits and the executor starts a fresh one.

`worker_main` is the loop of one embedded worker process; a Celery task would instead
call `claim_and_execute` with the job id it was given. Both use the same `execute`.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from lods.config import Settings
from lods.jobs import service
from lods.jobs.errors import JobCancelled
from lods.jobs.service import ClaimedJob
from lods.runtime import Runtime

log = logging.getLogger(__name__)

#: What `execute` returns: the job succeeded, was re-queued, failed, ...
SUCCEEDED = "succeeded"
REQUEUED = "queued"
FAILED = "failed"
#: ... was no longer ours (cancelled, or re-queued after the lease was lost), ...
LOST = "lost"
#: ... or ran past its time-out: the caller's process should exit.
TIMEOUT = "timeout"

#: Exit status of a worker process that gave up on a timed-out job.
TIMEOUT_EXIT_CODE = 3


@dataclass(frozen=True)
class JobOutcome:
    """What a handler returns: details for the job's `result`, and the output writer.

    `write` runs in the transaction that marks the job succeeded, and only if it still
    was ours, so output is stored exactly once; it deletes earlier rows of the job first.
    """

    result: dict[str, Any] = field(default_factory=dict)
    write: Callable[[Session], None] | None = None


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: the job, the process's runtime, its deadline and a heartbeat.

    `heartbeat()` is cheap (the lease is renewed by the worker); it raises `JobCancelled`
    once the job was cancelled or lost, so long handlers should call it between steps.
    """

    job: ClaimedJob
    runtime: Runtime
    #: `time.monotonic()` value by which the handler must be done.
    deadline: float
    heartbeat: Callable[[], None]

    def remaining(self) -> float:
        """Return the seconds left before the job's time-out (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


Handler = Callable[[JobContext], JobOutcome]


class StopSignal(Protocol):
    """A `threading.Event` or `multiprocessing.Event`: what `worker_main` waits on."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def load_handlers(path: str) -> dict[str, Handler]:
    """Import a handler registry given as "package.module:attribute" (a dict kind -> handler)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"handlers path {path!r} is not 'module:attribute'")
    registry = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(registry, Mapping):
        raise TypeError(f"{path} is not a mapping of job kind to handler")
    handlers: dict[str, Handler] = {}
    for kind, handler in registry.items():
        if not isinstance(kind, str) or not callable(handler):
            raise TypeError(f"{path}: {kind!r} does not map a kind to a callable")
        handlers[kind] = handler
    return handlers


class _Run:
    """The handler's thread and what it ended with."""

    def __init__(self, handler: Handler, ctx: JobContext) -> None:
        self.outcome: JobOutcome | None = None
        self.error: BaseException | None = None
        self._handler = handler
        self._ctx = ctx
        self.thread = threading.Thread(
            target=self._main, name=f"lods-job-{ctx.job.id}", daemon=True
        )

    def _main(self) -> None:
        try:
            outcome = self._handler(self._ctx)
            if not isinstance(outcome, JobOutcome):
                raise TypeError(f"handler returned {type(outcome).__name__}, not JobOutcome")
            self.outcome = outcome
        except BaseException as exc:
            self.error = exc


def _renew(runtime: Runtime, job: ClaimedJob, lease_seconds: float) -> bool | None:
    """Renew the lease in its own transaction; None when the database could not say."""
    try:
        with runtime.sessions() as db, db.begin():
            return service.heartbeat(db, job.id, owner=job.lease_owner, lease_seconds=lease_seconds)
    except DBAPIError:
        log.warning("job %s: lease renewal failed; trying again", job.id, exc_info=True)
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _record_failure(
    runtime: Runtime,
    job: ClaimedJob,
    *,
    error: str,
    transient: bool,
    error_kind: str | None,
    backoff_seconds: float,
    backoff_max_seconds: float,
) -> str:
    try:
        with runtime.sessions() as db, db.begin():
            state = service.fail(
                db,
                job.id,
                owner=job.lease_owner,
                error=error,
                transient=transient,
                error_kind=error_kind,
                backoff_seconds=backoff_seconds,
                backoff_max_seconds=backoff_max_seconds,
            )
    except DBAPIError:
        log.exception("job %s: could not record its failure; its lease will expire", job.id)
        return LOST
    return state or LOST


def execute(
    runtime: Runtime,
    job: ClaimedJob,
    handler: Handler,
    *,
    lease_seconds: float | None = None,
    backoff_seconds: float | None = None,
    backoff_max_seconds: float | None = None,
) -> str:
    """Run a claimed job to its end and record it; return what became of it.

    Returns "succeeded", "queued" (retry later), "failed", "lost" (cancelled or no longer
    ours: nothing was stored) or "timeout" (the handler is still running; the caller's
    process should exit). Lease and back-off default to the runtime's settings.
    """
    settings = runtime.settings
    lease = lease_seconds if lease_seconds is not None else settings.job_lease_seconds
    backoff = backoff_seconds if backoff_seconds is not None else settings.job_backoff_seconds
    backoff_max = (
        backoff_max_seconds if backoff_max_seconds is not None else settings.job_backoff_max_seconds
    )
    lost = threading.Event()

    def check_still_ours() -> None:
        if lost.is_set():
            raise JobCancelled(f"job {job.id} was cancelled or is no longer ours")

    started = time.monotonic()
    deadline = started + job.timeout_seconds
    ctx = JobContext(job=job, runtime=runtime, deadline=deadline, heartbeat=check_still_ours)
    run = _Run(handler, ctx)
    log.info("job %s (%s) attempt %s started by %s", job.id, job.kind, job.attempt, job.lease_owner)
    run.thread.start()

    interval = lease / 3
    next_beat = started + interval
    while True:
        run.thread.join(max(0.0, min(next_beat, deadline) - time.monotonic()))
        if not run.thread.is_alive():
            break
        now = time.monotonic()
        if now >= deadline:
            return _timed_out(runtime, job, lost.is_set(), backoff, backoff_max)
        if now >= next_beat:
            if not lost.is_set() and _renew(runtime, job, lease) is False:
                log.warning("job %s: cancelled or lease lost; results will not be kept", job.id)
                lost.set()
            next_beat = now + interval

    if lost.is_set():
        return LOST
    if run.error is not None:
        return _handler_failed(runtime, job, run.error, backoff, backoff_max)
    if run.outcome is None:  # pragma: no cover - _Run sets one of outcome and error
        raise RuntimeError(f"job {job.id}: handler ended without outcome or error")
    try:
        with runtime.sessions() as db, db.begin():
            kept = service.complete(
                db,
                job.id,
                owner=job.lease_owner,
                result=run.outcome.result,
                write=run.outcome.write,
            )
    except Exception as exc:
        log.exception("job %s: storing its output failed", job.id)
        return _handler_failed(runtime, job, exc, backoff, backoff_max)
    if not kept:
        log.warning("job %s finished but was no longer ours; output discarded", job.id)
        return LOST
    log.info("job %s succeeded in %.2f s", job.id, time.monotonic() - started)
    return SUCCEEDED


def _timed_out(
    runtime: Runtime, job: ClaimedJob, lost: bool, backoff: float, backoff_max: float
) -> str:
    log.error("job %s ran past its %g s time-out", job.id, job.timeout_seconds)
    if not lost:
        _record_failure(
            runtime,
            job,
            error=f"timed out after {job.timeout_seconds:g} s",
            transient=True,
            error_kind="timeout",
            backoff_seconds=backoff,
            backoff_max_seconds=backoff_max,
        )
    return TIMEOUT


def _is_transient_db_error(exc: BaseException) -> bool:
    """Whether a database error may pass on retry (lock time-out, lost connection)."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _handler_failed(
    runtime: Runtime, job: ClaimedJob, exc: BaseException, backoff: float, backoff_max: float
) -> str:
    if isinstance(exc, JobCancelled):
        # Raised by a handler without our heartbeat noticing anything: treat as an error.
        log.warning("job %s raised JobCancelled while still ours", job.id)
    transient = getattr(exc, "transient", False) is True or _is_transient_db_error(exc)
    kind = getattr(exc, "error_kind", None)
    error_kind = kind if isinstance(kind, str) and kind else None
    if transient:
        log.warning("job %s failed (transient): %s", job.id, _describe(exc))
    elif hasattr(exc, "transient"):
        log.warning("job %s failed (permanent): %s", job.id, _describe(exc))
    else:
        log.error("job %s failed: %s", job.id, _describe(exc), exc_info=exc)
    return _record_failure(
        runtime,
        job,
        error=_describe(exc),
        transient=transient,
        error_kind=error_kind,
        backoff_seconds=backoff,
        backoff_max_seconds=backoff_max,
    )


def claim_and_execute(
    runtime: Runtime, job_id: int, handlers: Mapping[str, Handler], *, owner: str
) -> str | None:
    """Claim one job by id and run it (the Celery task's body); None if not claimable."""
    settings = runtime.settings
    with runtime.sessions() as db, db.begin():
        job = service.claim(db, job_id, owner=owner, lease_seconds=settings.job_lease_seconds)
    if job is None:
        return None
    handler = handlers.get(job.kind)
    if handler is None:
        return _record_failure(
            runtime,
            job,
            error=f"no handler for job kind {job.kind!r}",
            transient=False,
            error_kind="permanent",
            backoff_seconds=settings.job_backoff_seconds,
            backoff_max_seconds=settings.job_backoff_max_seconds,
        )
    return execute(runtime, job, handler)


def owner_id(prefix: str | None, number: int) -> str:
    """Return a lease owner id "<prefix>:<pid>:<number>" (prefix: the host name)."""
    suffix = f":{os.getpid()}:{number}"
    head = prefix if prefix is not None else socket.gethostname()
    return head[: service.MAX_OWNER_CHARS - len(suffix)] + suffix


def _configure_child_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        )


def worker_main(
    settings: Settings,
    handlers_path: str,
    owner_prefix: str | None,
    stop_event: StopSignal,
    parent_pid: int | None = None,
) -> None:
    """Claim and run jobs until `stop_event` is set (or the parent process is gone).

    The entry point of an embedded worker process: it opens its own runtime, imports the
    handler registry by path (so "spawn" processes can find it), and polls the queue every
    `job_poll_seconds` while idle. After a time-out it exits with `TIMEOUT_EXIT_CODE`.
    """
    _configure_child_logging()
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    handlers = load_handlers(handlers_path)
    runtime = Runtime.open(settings, migrate=False)
    poll = settings.job_poll_seconds
    claims = 0
    log.info("job worker %s started for kinds %s", os.getpid(), sorted(handlers))
    try:
        while not stop_event.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("job worker %s: parent process is gone; stopping", os.getpid())
                return
            owner = owner_id(owner_prefix, claims + 1)
            try:
                with runtime.sessions() as db, db.begin():
                    job = service.claim_next(
                        db,
                        owner=owner,
                        lease_seconds=settings.job_lease_seconds,
                        kinds=handlers.keys(),
                    )
            except DBAPIError:
                log.warning("job worker %s: claiming failed; retrying", os.getpid(), exc_info=True)
                stop_event.wait(poll)
                continue
            if job is None:
                stop_event.wait(poll)
                continue
            claims += 1
            try:
                status = execute(runtime, job, handlers[job.kind])
            except Exception:
                # A bug here must not kill the worker; the job's lease expires and is reaped.
                log.exception("job %s: worker error", job.id)
                continue
            if status == TIMEOUT:
                log.error("job worker %s: exiting to abandon timed-out job %s", os.getpid(), job.id)
                runtime.close()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(TIMEOUT_EXIT_CODE)
    finally:
        runtime.close()
