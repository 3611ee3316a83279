"""The worker's `execute` in-process, and the embedded executor with real worker processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from jobs_test_handlers import HANDLERS, HANDLERS_PATH, RELEASE, writes

from lods.jobs import service, worker
from lods.jobs.executor import EmbeddedExecutor, Executor
from lods.jobs.models import Job
from lods.jobs.service import ClaimedJob
from lods.runtime import Runtime
from support import make_settings

T = TypeVar("T")
#: Generous: these tests start real processes on a busy two-core machine.
DEADLINE = 30.0


def wait_for(predicate: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def add_job(runtime: Runtime, kind: str, **fields: Any) -> int:
    values: dict[str, Any] = {
        "version_id": None,
        "deployment_id": None,
        "inputs": {},
        "max_attempts": 3,
        "timeout_seconds": 20.0,
    }
    values.update(fields)
    with runtime.sessions() as db, db.begin():
        return service.enqueue(db, kind=kind, **values)


def load(runtime: Runtime, job_id: int) -> Job:
    with runtime.sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None
        db.expunge(job)
        return job


def in_state(runtime: Runtime, job_id: int, *states: str) -> Job | None:
    job = load(runtime, job_id)
    return job if job.state in states else None


def write_count(runtime: Runtime, job_id: int) -> int:
    with runtime.sessions() as db:
        return writes(db, job_id)


# --- execute, in this process ----------------------------------------------------------------


@pytest.fixture
def fast_runtime(tmp_path: Path, sqlite_url: str) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path / "data",
        sqlite_url,
        job_lease_seconds=0.3,
        job_backoff_seconds=0,
        job_backoff_max_seconds=0,
    )
    runtime = Runtime.open(settings, migrate=False)
    yield runtime
    runtime.close()


def claim_one(runtime: Runtime, owner: str = "test:1:1") -> ClaimedJob:
    with runtime.sessions() as db, db.begin():
        job = service.claim_next(db, owner=owner, lease_seconds=runtime.settings.job_lease_seconds)
    assert job is not None
    return job


def test_execute_succeeds_and_writes_once(fast_runtime: Runtime) -> None:
    job_id = add_job(fast_runtime, "ok", inputs={"a": 1})
    job = claim_one(fast_runtime)
    assert worker.execute(fast_runtime, job, HANDLERS["ok"]) == worker.SUCCEEDED
    row = load(fast_runtime, job_id)
    assert row.state == "succeeded" and row.result["echo"] == {"a": 1}
    assert write_count(fast_runtime, job_id) == 1


def test_execute_classifies_handler_errors(fast_runtime: Runtime) -> None:
    transient = add_job(fast_runtime, "always_transient", max_attempts=2)
    job = claim_one(fast_runtime)
    assert worker.execute(fast_runtime, job, HANDLERS["always_transient"]) == worker.REQUEUED
    row = load(fast_runtime, transient)
    assert row.error_kind == "transient" and "upstream unavailable" in (row.last_error or "")

    wrong = add_job(fast_runtime, "wrong_result", max_attempts=3, priority=1)
    job = claim_one(fast_runtime)
    assert job.id == wrong
    assert worker.execute(fast_runtime, job, HANDLERS["wrong_result"]) == worker.FAILED
    row = load(fast_runtime, wrong)
    assert row.error_kind == "permanent" and "TypeError" in (row.last_error or "")


def test_a_failing_writer_fails_the_job_and_stores_nothing(fast_runtime: Runtime) -> None:
    job_id = add_job(fast_runtime, "bad_writer", max_attempts=3)
    job = claim_one(fast_runtime)
    assert worker.execute(fast_runtime, job, HANDLERS["bad_writer"]) == worker.FAILED
    row = load(fast_runtime, job_id)
    assert row.state == "failed" and row.result == {} and row.error_kind == "permanent"
    assert "findings table rejected the row" in (row.last_error or "")
    assert write_count(fast_runtime, job_id) == 0


def test_execute_notices_cancellation_and_stores_nothing(fast_runtime: Runtime) -> None:
    job_id = add_job(fast_runtime, "cancel_myself")
    job = claim_one(fast_runtime)
    assert worker.execute(fast_runtime, job, HANDLERS["cancel_myself"]) == worker.LOST
    row = load(fast_runtime, job_id)
    assert row.state == "cancelled" and row.result == {}
    assert write_count(fast_runtime, job_id) == 0


def test_execute_renews_the_lease_and_gives_up_after_the_time_out(fast_runtime: Runtime) -> None:
    RELEASE.clear()
    job_id = add_job(fast_runtime, "block", timeout_seconds=1.0, max_attempts=2)
    job = claim_one(fast_runtime)
    try:
        assert worker.execute(fast_runtime, job, HANDLERS["block"]) == worker.TIMEOUT
    finally:
        RELEASE.set()
    row = load(fast_runtime, job_id)
    # The 0.3 s lease was renewed for the whole second: the job was never reaped.
    assert row.state == "queued" and row.error_kind == "timeout"
    assert row.last_error == "timed out after 1 s" and row.attempts == 1


def test_claim_and_execute_is_the_celery_path(fast_runtime: Runtime) -> None:
    job_id = add_job(fast_runtime, "ok")
    unknown = add_job(fast_runtime, "no-such-kind")
    assert worker.claim_and_execute(fast_runtime, job_id, HANDLERS, owner="celery:1:1") == (
        worker.SUCCEEDED
    )
    # A duplicate delivery of the same id finds nothing to claim.
    assert worker.claim_and_execute(fast_runtime, job_id, HANDLERS, owner="celery:1:2") is None
    assert write_count(fast_runtime, job_id) == 1
    assert worker.claim_and_execute(fast_runtime, unknown, HANDLERS, owner="celery:1:3") == (
        worker.FAILED
    )
    assert "no handler" in (load(fast_runtime, unknown).last_error or "")


def test_load_handlers_checks_its_path() -> None:
    assert worker.load_handlers(HANDLERS_PATH)["ok"] is HANDLERS["ok"]
    with pytest.raises(ValueError):
        worker.load_handlers("jobs_test_handlers")
    with pytest.raises(TypeError):
        worker.load_handlers("jobs_test_handlers:HANDLERS_PATH")
    assert worker.owner_id("host", 7) == f"host:{os.getpid()}:7"
    assert len(worker.owner_id("h" * 300, 1)) == service.MAX_OWNER_CHARS


# --- the embedded executor, with real processes ----------------------------------------------


@pytest.fixture
def pool(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[EmbeddedExecutor, Runtime]]:
    """Two worker processes on a SQLite file, with a short lease and no back-off."""
    settings = make_settings(
        tmp_path / "data",
        sqlite_url,
        workers=2,
        job_lease_seconds=1.5,
        job_poll_seconds=0.05,
        job_backoff_seconds=0,
        job_backoff_max_seconds=0,
    )
    runtime = Runtime.open(settings, migrate=False)
    executor = EmbeddedExecutor(settings, HANDLERS_PATH)
    executor.start()
    yield executor, runtime
    executor.stop(timeout=10)
    runtime.close()


def test_all_jobs_succeed_with_two_workers(pool: tuple[EmbeddedExecutor, Runtime]) -> None:
    executor, runtime = pool
    as_protocol: Executor = executor  # the embedded executor is an `Executor`
    assert as_protocol.start is not None
    assert len(executor.pids()) == 2
    job_ids = [add_job(runtime, "ok", inputs={"n": n}) for n in range(8)]
    for job_id in job_ids:
        wait_for(partial(in_state, runtime, job_id, "succeeded"), f"job {job_id}")
    for n, job_id in enumerate(job_ids):
        row = load(runtime, job_id)
        assert row.result["echo"] == {"n": n} and row.attempts == 1
        assert row.result["pid"] in executor.pids()
        assert write_count(runtime, job_id) == 1
    assert executor.restarts == 0


def test_a_killed_worker_is_replaced_and_its_job_rerun_once(
    pool: tuple[EmbeddedExecutor, Runtime], tmp_path: Path
) -> None:
    executor, runtime = pool
    flag = tmp_path / "go"
    job_id = add_job(runtime, "sleep_then_ok", inputs={"flag": str(flag)})
    running = wait_for(lambda: in_state(runtime, job_id, "running"), "the job to start")
    owner = running.lease_owner or ""
    victim = int(owner.split(":")[-2])
    assert victim in executor.pids()

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: executor.restarts >= 1 and victim not in executor.pids(), "a new worker")
    wait_for(lambda: len(executor.pids()) == 2, "two workers again")
    flag.touch()

    row = wait_for(lambda: in_state(runtime, job_id, "succeeded"), "the re-run to succeed")
    assert row.attempts == 2 and row.lease_owner != owner
    assert row.error_kind == "lost" and row.last_error == service.LOST_ERROR
    assert write_count(runtime, job_id) == 1


def test_a_transient_failure_ends_failed_after_max_attempts(
    pool: tuple[EmbeddedExecutor, Runtime],
) -> None:
    _, runtime = pool
    job_id = add_job(runtime, "always_transient", max_attempts=3)
    row = wait_for(lambda: in_state(runtime, job_id, "failed"), "the job to fail")
    assert row.attempts == 3 and row.error_kind == "transient"
    assert row.last_error == "TransientJobError: upstream unavailable (attempt 3)"
    assert write_count(runtime, job_id) == 0


def test_a_hanging_job_times_out_and_its_worker_is_replaced(
    pool: tuple[EmbeddedExecutor, Runtime],
) -> None:
    executor, runtime = pool
    job_id = add_job(runtime, "hang", timeout_seconds=1.0, max_attempts=1)
    running = wait_for(lambda: in_state(runtime, job_id, "running"), "the job to start")
    hung_pid = int((running.lease_owner or "").split(":")[-2])

    row = wait_for(lambda: in_state(runtime, job_id, "failed"), "the time-out")
    assert row.error_kind == "timeout" and row.last_error == "timed out after 1 s"
    wait_for(lambda: executor.restarts >= 1 and hung_pid not in executor.pids(), "replacement")
    wait_for(lambda: len(executor.pids()) == 2, "two workers again")

    # The pool still works.
    after = add_job(runtime, "ok")
    wait_for(lambda: in_state(runtime, after, "succeeded"), "a job after the time-out")


def test_stop_ends_every_worker_process(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path / "data", sqlite_url, workers=1, job_poll_seconds=0.05)
    executor = EmbeddedExecutor(settings, HANDLERS_PATH)
    with pytest.raises(ValueError):
        EmbeddedExecutor(settings, "no-colon").start()
    executor.start()
    pids = executor.pids()
    assert len(pids) == 1
    executor.stop(timeout=10)
    assert executor.pids() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
