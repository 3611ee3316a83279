"""Executors: what runs queued jobs. `lods serve` starts the embedded one.

`EmbeddedExecutor` starts `settings.workers` worker processes (the "spawn" method, so
each gets a clean interpreter: ONNX inference runs in parallel without sharing a GIL or
inheriting the server's threads and sockets). Each runs `lods.jobs.worker.worker_main`.
A supervisor thread in the parent restarts worker processes that died (killed, crashed,
or exited after a job time-out) and regularly re-queues jobs whose lease expired.

Plugging in Celery needs no change to the job table or the services: the dispatcher
(the router, or a periodic task reading due queued jobs) sends job ids, and a task

    @app.task(bind=True, acks_late=True)
    def run_job(self, job_id: int) -> str | None:
        return claim_and_execute(runtime, job_id, HANDLERS, owner=f"celery:{self.request.id}")

claims by the same compare-and-set and runs the same `execute` (a duplicate delivery finds
nothing to claim; a "timeout" result means the Celery worker process should be recycled).
A Celery beat task calls `reap_expired` in place of the supervisor. A `CeleryExecutor`
then only has to satisfy the `Executor` protocol below (`start`/`stop` its dispatcher).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from typing import Protocol

from sqlalchemy.exc import DBAPIError

from lods.config import Settings
from lods.jobs import service
from lods.jobs.worker import TIMEOUT_EXIT_CODE, load_handlers, worker_main
from lods.runtime import Runtime

log = logging.getLogger(__name__)

#: How often the supervisor looks at its processes.
SUPERVISE_SECONDS = 0.25
#: Longest wait before restarting a worker that keeps dying right after it started.
MAX_RESTART_DELAY = 30.0
#: A worker that lived at least this long resets its restart delay.
HEALTHY_SECONDS = 10.0


class Executor(Protocol):
    """Something that runs queued jobs until stopped."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


class _Slot:
    """One worker position: its current process and restart pacing."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: SpawnProcess | None = None
        self.started_at = 0.0
        self.restart_delay = 0.0
        self.restart_at = 0.0


class EmbeddedExecutor:
    """A pool of worker processes started by `lods serve`, supervised from this process."""

    def __init__(
        self,
        settings: Settings,
        handlers_path: str,
        *,
        workers: int | None = None,
        owner_prefix: str | None = None,
        reap_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.handlers_path = handlers_path
        self.workers = settings.workers if workers is None else workers
        if self.workers < 0:
            raise ValueError("the number of workers cannot be negative")
        self.owner_prefix = owner_prefix if owner_prefix is not None else socket.gethostname()
        lease = settings.job_lease_seconds
        self.reap_seconds = reap_seconds if reap_seconds is not None else min(lease / 2, 5.0)
        #: How many worker processes were started to replace one that ended.
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._stop_event = self._context.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._slots = [_Slot(i) for i in range(self.workers)]
        self._supervisor: threading.Thread | None = None
        self._runtime: Runtime | None = None

    @property
    def running(self) -> bool:
        """Whether `start` was called and `stop` not yet."""
        return self._supervisor is not None

    def start(self) -> None:
        """Start the worker processes and the supervisor (no-op when already running)."""
        if self._supervisor is not None:
            return
        # Fail here, in the parent, rather than in a restart loop of broken children.
        load_handlers(self.handlers_path)
        self._runtime = Runtime.open(self.settings, migrate=False)
        self._stop_event.clear()
        self._halt.clear()
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._supervisor = threading.Thread(
            target=self._supervise, name="lods-job-supervisor", daemon=True
        )
        self._supervisor.start()
        log.info("job executor started %d worker process(es)", self.workers)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask workers to finish their current job, wait up to `timeout`, then terminate."""
        if self._supervisor is None:
            return
        deadline = time.monotonic() + timeout
        self._halt.set()
        self._stop_event.set()
        self._supervisor.join(timeout)
        self._supervisor = None
        with self._lock:
            processes = [slot.process for slot in self._slots if slot.process is not None]
            for slot in self._slots:
                slot.process = None
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                log.warning("job worker %s did not stop in time; terminating it", process.pid)
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
            if not process.is_alive():
                process.close()
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
        log.info("job executor stopped")

    def pids(self) -> list[int]:
        """Return the process ids of the live worker processes."""
        with self._lock:
            return [
                slot.process.pid
                for slot in self._slots
                if slot.process is not None
                and slot.process.pid is not None
                and slot.process.is_alive()
            ]

    def reap_once(self) -> list[int]:
        """Re-queue (or fail) running jobs whose lease expired, in one short transaction."""
        if self._runtime is None:
            return []
        with self._runtime.sessions() as db, db.begin():
            reaped = service.reap_expired(
                db,
                backoff_seconds=self.settings.job_backoff_seconds,
                backoff_max_seconds=self.settings.job_backoff_max_seconds,
            )
        if reaped:
            log.warning("jobs whose worker stopped renewing its lease: %s", reaped)
        return reaped

    # --- internals ------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        process = self._context.Process(
            target=worker_main,
            args=(
                self.settings,
                self.handlers_path,
                self.owner_prefix,
                self._stop_event,
                os.getpid(),
            ),
            name=f"lods-worker-{slot.index}",
            daemon=True,
        )
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()

    def _check_workers(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._halt.is_set():
                return
            for slot in self._slots:
                process = slot.process
                if process is not None and process.is_alive():
                    continue
                if process is not None:
                    process.join(0)
                    lived = now - slot.started_at
                    log.warning(
                        "job worker %s exited with %s after %.1f s; restarting it",
                        process.pid,
                        process.exitcode,
                        lived,
                    )
                    process.close()
                    slot.process = None
                    # A worker that dies at once again and again is restarted ever slower;
                    # one that left a timed-out job behind did what it should.
                    if lived >= HEALTHY_SECONDS or process.exitcode == TIMEOUT_EXIT_CODE:
                        slot.restart_delay = 0.0
                    else:
                        slot.restart_delay = min(
                            MAX_RESTART_DELAY, max(0.5, slot.restart_delay * 2)
                        )
                    slot.restart_at = now + slot.restart_delay
                if now >= slot.restart_at:
                    self._spawn(slot)
                    self.restarts += 1

    def _supervise(self) -> None:
        next_reap = time.monotonic() + self.reap_seconds
        while not self._halt.wait(SUPERVISE_SECONDS):
            try:
                self._check_workers()
            except Exception:
                log.exception("job supervisor: restarting a worker failed")
            if time.monotonic() >= next_reap:
                try:
                    self.reap_once()
                except DBAPIError:
                    log.warning("job supervisor: reaping expired leases failed", exc_info=True)
                except Exception:
                    log.exception("job supervisor: reaping expired leases failed unexpectedly")
                next_reap = time.monotonic() + self.reap_seconds
