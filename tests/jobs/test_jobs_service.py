"""The job queue's compare-and-set state changes, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lods.audit.models import AuditEvent
from lods.audit.service import record
from lods.jobs import service
from lods.jobs.models import Job
from lods.jobs.service import ClaimedJob
from lods.runtime import Runtime
from lods.sites.models import Site
from lods.solutions.models import Deployment, SolutionVersion

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 30.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@contextmanager
def tx(runtime: Runtime) -> Iterator[Session]:
    with runtime.sessions() as db, db.begin():
        yield db


def add_job(runtime: Runtime, *, now: datetime = T0, **fields: Any) -> int:
    values: dict[str, Any] = {
        "version_id": None,
        "deployment_id": None,
        "inputs": {"n": 1},
        "max_attempts": 3,
        "timeout_seconds": 60.0,
    }
    values.update(fields)
    with tx(runtime) as db:
        return service.enqueue(db, now=now, **values)


def load(runtime: Runtime, job_id: int) -> Job:
    with runtime.sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None
        db.expunge(job)
        return job


def claim_next(runtime: Runtime, owner: str, now: datetime = T0, **kw: Any) -> ClaimedJob | None:
    with tx(runtime) as db:
        return service.claim_next(db, owner=owner, lease_seconds=LEASE, now=now, **kw)


def claimed(runtime: Runtime, owner: str, now: datetime = T0) -> ClaimedJob:
    job = claim_next(runtime, owner, now)
    assert job is not None
    return job


def fail(runtime: Runtime, job: ClaimedJob, now: datetime, **kw: Any) -> str:
    values: dict[str, Any] = {
        "error": "boom",
        "transient": True,
        "backoff_seconds": 10.0,
        "backoff_max_seconds": 25.0,
    }
    values.update(kw)
    with tx(runtime) as db:
        return service.fail(db, job.id, owner=job.lease_owner, now=now, **values)


def audit_count(runtime: Runtime, action: str, ref: str | None = None) -> int:
    with runtime.sessions() as db:
        query = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
        if ref is not None:
            query = query.where(AuditEvent.object_ref == ref)
        return int(db.scalar(query) or 0)


def writer(job_id: int, calls: list[int]) -> Callable[[Session], None]:
    def write(db: Session) -> None:
        calls.append(job_id)
        record(db, actor="system", action="test.output", object_ref=f"job:{job_id}")

    return write


# --- enqueue and claim -----------------------------------------------------------------------


def test_claim_takes_a_lease_and_counts_the_attempt(runtime: Runtime) -> None:
    job_id = add_job(runtime, kind="solution", inputs={"sop_instance_uids": ["1.2.3"]})
    job = claimed(runtime, "host:1:1", at(1))
    assert job == ClaimedJob(
        id=job_id,
        kind="solution",
        version_id=None,
        deployment_id=None,
        study_id=None,
        inputs={"sop_instance_uids": ["1.2.3"]},
        attempt=1,
        max_attempts=3,
        timeout_seconds=60.0,
        lease_owner="host:1:1",
    )
    row = load(runtime, job_id)
    assert row.state == "running" and row.attempts == 1
    assert row.started_at == at(1) and row.heartbeat_at == at(1)
    assert row.lease_owner == "host:1:1" and row.lease_expires_at == at(1 + LEASE)
    assert claim_next(runtime, "host:2:1", at(1)) is None


def test_claim_next_orders_by_priority_then_age_and_honours_not_before(runtime: Runtime) -> None:
    late = add_job(runtime, now=at(100))
    low = add_job(runtime, priority=200)
    first = add_job(runtime, priority=50)
    second = add_job(runtime, priority=50)
    other_kind = add_job(runtime, kind="vitals", priority=1)
    kinds = {"solution"}
    assert claimed_ids(runtime, kinds, at(10)) == [first, second, low]
    assert claimed_ids(runtime, kinds, at(100)) == [late]
    assert claim_next(runtime, "w", at(100), kinds=set()) is None
    assert claimed_ids(runtime, None, at(100)) == [other_kind]


def claimed_ids(runtime: Runtime, kinds: set[str] | None, now: datetime) -> list[int]:
    ids: list[int] = []
    while (job := claim_next(runtime, f"w{len(ids)}", now, kinds=kinds)) is not None:
        ids.append(job.id)
    return ids


def test_two_claimers_of_one_job_exactly_one_wins(runtime: Runtime) -> None:
    job_id = add_job(runtime)
    barrier = threading.Barrier(2)
    results: dict[str, ClaimedJob | None] = {}

    def claimer(owner: str) -> None:
        with runtime.sessions() as db, db.begin():
            barrier.wait(timeout=10)
            results[owner] = service.claim(db, job_id, owner=owner, lease_seconds=LEASE, now=T0)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [owner for owner, job in results.items() if job is not None]
    assert len(results) == 2 and len(winners) == 1
    row = load(runtime, job_id)
    assert row.lease_owner == winners[0] and row.attempts == 1


def test_concurrent_claim_next_never_hands_out_a_job_twice(runtime: Runtime) -> None:
    job_ids = {add_job(runtime) for _ in range(8)}
    got: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (job := claim_next(runtime, f"w{n}")) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(job_ids)


def test_a_job_in_back_off_cannot_be_claimed_by_id_yet(runtime: Runtime) -> None:
    job_id = add_job(runtime, now=at(60))
    with tx(runtime) as db:
        assert service.claim(db, job_id, owner="w", lease_seconds=LEASE, now=T0) is None
        assert service.claim(db, job_id, owner="w", lease_seconds=LEASE, now=at(60)) is not None


def test_enqueue_rejects_nonsense(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="attempt"):
        add_job(runtime, max_attempts=0)
    with pytest.raises(ValueError, match="time-out"):
        add_job(runtime, timeout_seconds=0)


# --- heartbeat, complete, fail ---------------------------------------------------------------


def test_heartbeat_extends_the_lease_until_the_job_is_cancelled(runtime: Runtime) -> None:
    add_job(runtime)
    job = claimed(runtime, "w1")
    with tx(runtime) as db:
        assert service.heartbeat(db, job.id, owner="w1", lease_seconds=LEASE, now=at(20))
        assert not service.heartbeat(db, job.id, owner="intruder", lease_seconds=LEASE, now=at(20))
    row = load(runtime, job.id)
    assert row.heartbeat_at == at(20) and row.lease_expires_at == at(20 + LEASE)
    with tx(runtime) as db:
        cancelled = service.cancel(
            db, job_ids=[job.id], reason="kill switch", actor="ada", now=at(21)
        )
    assert cancelled == [job.id]
    with tx(runtime) as db:
        assert not service.heartbeat(db, job.id, owner="w1", lease_seconds=LEASE, now=at(22))
    row = load(runtime, job.id)
    assert row.state == "cancelled" and row.error_kind == "cancelled"
    assert row.last_error == "kill switch" and row.finished_at == at(21)
    assert row.heartbeat_at == at(20)
    assert audit_count(runtime, "job.cancel", f"job:{job.id}") == 1


def test_complete_writes_output_exactly_once(runtime: Runtime) -> None:
    add_job(runtime)
    job = claimed(runtime, "w1")
    calls: list[int] = []
    with tx(runtime) as db:
        assert service.complete(
            db,
            job.id,
            owner="w1",
            result={"score": 0.9},
            write=writer(job.id, calls),
            now=at(5),
        )
    with tx(runtime) as db:
        # A second completion (a duplicate delivery) changes nothing and writes nothing.
        assert not service.complete(
            db, job.id, owner="w1", result={}, write=writer(job.id, calls), now=at(6)
        )
    row = load(runtime, job.id)
    assert calls == [job.id]
    assert audit_count(runtime, "test.output", f"job:{job.id}") == 1
    assert row.state == "succeeded" and row.result == {"score": 0.9}
    assert row.finished_at == at(5) and row.lease_expires_at is None


def test_a_cancelled_job_never_stores_output(runtime: Runtime) -> None:
    add_job(runtime)
    job = claimed(runtime, "w1")
    with tx(runtime) as db:
        service.cancel(db, job_ids=[job.id], reason="no longer wanted", now=at(3))
    calls: list[int] = []
    with tx(runtime) as db:
        assert not service.complete(
            db, job.id, owner="w1", result={"x": 1}, write=writer(job.id, calls), now=at(5)
        )
        assert (
            service.fail(
                db,
                job.id,
                owner="w1",
                error="late",
                transient=True,
                backoff_seconds=0,
                backoff_max_seconds=0,
            )
            == ""
        )
    row = load(runtime, job.id)
    assert calls == [] and row.state == "cancelled" and row.result == {}
    assert audit_count(runtime, "test.output") == 0


def test_a_failing_writer_rolls_back_the_completion(runtime: Runtime) -> None:
    add_job(runtime)
    job = claimed(runtime, "w1")

    def broken(db: Session) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError), tx(runtime) as db:
        service.complete(db, job.id, owner="w1", result={}, write=broken)
    row = load(runtime, job.id)
    assert row.state == "running" and row.lease_owner == "w1"


def test_transient_failures_back_off_exponentially_capped_then_fail(runtime: Runtime) -> None:
    job_id = add_job(runtime, max_attempts=4)
    now = T0
    delays = []
    for attempt in range(1, 5):
        job = claimed(runtime, f"w{attempt}", now)
        assert job.attempt == attempt
        state = fail(runtime, job, now, error=f"peer down #{attempt}")
        row = load(runtime, job_id)
        assert row.last_error == f"peer down #{attempt}" and row.error_kind == "transient"
        if attempt < 4:
            assert state == "queued" and row.state == "queued"
            assert row.lease_owner is None and row.lease_expires_at is None
            delays.append((row.not_before - now).total_seconds())
            # Not claimable before the back-off ends.
            assert claim_next(runtime, "early", row.not_before - timedelta(seconds=1)) is None
            now = row.not_before
        else:
            assert state == "failed" and row.state == "failed"
            assert row.finished_at == now and row.attempts == 4
    assert delays == [10.0, 20.0, 25.0]


def test_a_permanent_failure_fails_at_once(runtime: Runtime) -> None:
    job_id = add_job(runtime, max_attempts=5)
    job = claimed(runtime, "w1")
    assert fail(runtime, job, at(2), error="bad input", transient=False) == "failed"
    row = load(runtime, job_id)
    assert row.state == "failed" and row.attempts == 1
    assert row.error_kind == "permanent" and row.last_error == "bad input"


def test_fail_keeps_a_given_error_kind_and_ignores_other_owners(runtime: Runtime) -> None:
    job_id = add_job(runtime, max_attempts=1)
    job = claimed(runtime, "w1")
    intruder = dataclasses.replace(job, lease_owner="w2")
    assert fail(runtime, intruder, at(1)) == ""
    assert fail(runtime, job, at(1), error_kind="timeout", error="timed out") == "failed"
    row = load(runtime, job_id)
    assert row.error_kind == "timeout" and row.state == "failed"


def test_backoff_delay_formula() -> None:
    delays = [
        service.backoff_delay(n, backoff_seconds=5, backoff_max_seconds=300) for n in range(1, 9)
    ]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]
    assert service.backoff_delay(10_000, backoff_seconds=5, backoff_max_seconds=300) == 300
    assert service.backoff_delay(3, backoff_seconds=0, backoff_max_seconds=300) == 0


# --- reaping, retry, cancel ------------------------------------------------------------------


def test_reap_expired_requeues_a_lost_job_then_fails_it(runtime: Runtime) -> None:
    job_id = add_job(runtime, max_attempts=2)
    claimed(runtime, "dead-worker")
    reap: dict[str, Any] = {"backoff_seconds": 4.0, "backoff_max_seconds": 60.0}
    with tx(runtime) as db:
        # The lease is still valid: nothing to reap.
        assert service.reap_expired(db, now=at(LEASE - 1), **reap) == []
    with tx(runtime) as db:
        assert service.reap_expired(db, now=at(LEASE + 1), **reap) == [job_id]
    row = load(runtime, job_id)
    assert row.state == "queued" and row.error_kind == "lost"
    assert row.last_error == service.LOST_ERROR and row.lease_owner is None
    assert row.not_before == at(LEASE + 1 + 4)

    claimed(runtime, "second-worker", at(100))
    with tx(runtime) as db:
        assert service.reap_expired(db, now=at(100 + LEASE + 1), **reap) == [job_id]
    row = load(runtime, job_id)
    assert row.state == "failed" and row.attempts == 2 and row.error_kind == "lost"


def test_a_reaped_job_cannot_be_completed_by_its_old_worker(runtime: Runtime) -> None:
    add_job(runtime)
    job = claimed(runtime, "slow")
    with tx(runtime) as db:
        service.reap_expired(db, now=at(LEASE + 1), backoff_seconds=0, backoff_max_seconds=0)
    calls: list[int] = []
    with tx(runtime) as db:
        assert not service.heartbeat(db, job.id, owner="slow", lease_seconds=LEASE, now=at(32))
        assert not service.complete(db, job.id, owner="slow", result={}, write=writer(1, calls))
    rerun = claimed(runtime, "fresh", at(LEASE + 2))
    assert rerun.id == job.id and rerun.attempt == 2
    with tx(runtime) as db:
        assert service.complete(db, job.id, owner="fresh", result={}, write=writer(1, calls))
    assert calls == [1]


def test_retry_puts_a_failed_job_back_with_fresh_attempts(runtime: Runtime) -> None:
    job_id = add_job(runtime, max_attempts=1)
    job = claimed(runtime, "w1")
    assert fail(runtime, job, at(1), transient=False) == "failed"
    with tx(runtime) as db:
        assert service.retry(db, job_id, actor="ada", now=at(50))
    row = load(runtime, job_id)
    assert row.state == "queued" and row.attempts == 0 and row.not_before == at(50)
    assert row.finished_at is None and row.last_error == "boom"
    assert audit_count(runtime, "job.retry", f"job:{job_id}") == 1
    with tx(runtime) as db:
        # Only failed jobs can be retried.
        assert not service.retry(db, job_id)
    assert claimed(runtime, "w2", at(50)).attempt == 1


def test_retry_refuses_succeeded_and_cancelled_jobs(runtime: Runtime) -> None:
    done = add_job(runtime)
    job = claimed(runtime, "w1")
    with tx(runtime) as db:
        service.complete(db, job.id, owner="w1", result={})
    gone = add_job(runtime)
    with tx(runtime) as db:
        service.cancel(db, job_ids=[gone], reason="test")
    with tx(runtime) as db:
        assert not service.retry(db, done) and not service.retry(db, gone)
        assert not service.retry(db, 999_999)


def make_deployment(db: Session, code: str) -> int:
    site = Site(code=code, name=f"Hospital {code}")
    version = SolutionVersion(
        solution_id=f"acme.{code.lower()}",
        version="1.0.0",
        name="Test solution",
        vendor="Acme",
        runtime_kind="onnx",
        input_kind="dicom",
        manifest_text="{}",
        manifest_sha256="0" * 64,
        files={},
        package_path=f"acme/{code}",
        installed_by="test",
    )
    db.add_all([site, version])
    db.flush()
    deployment = Deployment(
        version_fk=version.id,
        site_fk=site.id,
        mode="shadow",
        created_by="test",
        changed_by="test",
    )
    db.add(deployment)
    db.flush()
    return deployment.id


def test_cancel_by_deployment(runtime: Runtime) -> None:
    with tx(runtime) as db:
        dep_a, dep_b = make_deployment(db, "A"), make_deployment(db, "B")
    queued_a = add_job(runtime, deployment_id=dep_a, priority=2)
    running_a = add_job(runtime, deployment_id=dep_a, priority=1)
    done_a = add_job(runtime, deployment_id=dep_a, priority=0)
    other = add_job(runtime, deployment_id=dep_b, priority=3)
    done = claimed(runtime, "w0")
    assert done.id == done_a and done.deployment_id == dep_a
    with tx(runtime) as db:
        service.complete(db, done.id, owner="w0", result={})
    assert claimed(runtime, "w1").id == running_a

    with tx(runtime) as db:
        cancelled = service.cancel(
            db, deployment_id=dep_a, reason="deployment suspended", actor="otto", now=at(9)
        )
    assert cancelled == sorted([queued_a, running_a])
    states = {i: load(runtime, i).state for i in (queued_a, running_a, done_a, other)}
    assert states == {
        queued_a: "cancelled",
        running_a: "cancelled",
        done_a: "succeeded",
        other: "queued",
    }
    assert audit_count(runtime, "job.cancel", f"deployment:{dep_a}") == 1
    with tx(runtime) as db:
        assert service.cancel(db, deployment_id=dep_a, reason="again") == []
        with pytest.raises(ValueError):
            service.cancel(db, reason="everything")


# --- the job monitor -------------------------------------------------------------------------


def test_counts_and_list_jobs(runtime: Runtime) -> None:
    ids = [add_job(runtime) for _ in range(4)]
    job = claimed(runtime, "w1")
    with tx(runtime) as db:
        service.complete(db, job.id, owner="w1", result={})
        service.cancel(db, job_ids=[ids[3]], reason="test")
    claimed(runtime, "w2")
    with runtime.sessions() as db:
        assert service.counts(db) == {
            "queued": 1,
            "running": 1,
            "succeeded": 1,
            "failed": 0,
            "cancelled": 1,
        }
        assert [j.id for j in service.list_jobs(db)] == ids[::-1]
        assert [j.id for j in service.list_jobs(db, limit=2, offset=1)] == [ids[2], ids[1]]
        assert [j.id for j in service.list_jobs(db, states=["queued", "running"])] == [
            ids[2],
            ids[1],
        ]
        with pytest.raises(ValueError):
            service.list_jobs(db, states=["paused"])
        fresh = service.get_job(db, ids[0])
        assert fresh is not None and fresh.state == "succeeded"
