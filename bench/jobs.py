#!/usr/bin/env python3
"""Job-queue benchmark: the overhead of Lods' durable job queue, measured with trivial
jobs on SQLite and on PostgreSQL. Prints figures; it is not a test.

    .venv/bin/python bench/jobs.py [--jobs 1000] [--workers 2] [--quick] [--no-postgres]

Each database starts fresh and migrated: a new SQLite file in bench/out/jobs/, and a
scratch PostgreSQL database lods_bench_<random> (dropped at the end; skipped with a
message when PostgreSQL cannot be reached). On each, three phases of N jobs:

(a) enqueue: N jobs, each in its own short transaction, as the router queues them;
(b) claim + complete: one in-process loop takes the next job (`claim_next`) and completes
    it (`complete`), each in its own short transaction as a worker does, no handler between;
(c) executor: the real `EmbeddedExecutor` with W spawned worker processes and a handler that
    returns at once; the time from the start of enqueueing a batch of N jobs (one
    transaction) to the last job's `finished_at`. The workers are started and warmed up
    (each has run a job) before the clock starts, so process start-up is not counted.

Every job must end succeeded, claimed once (attempts = 1), with the result its handler
(or the loop) returned; runs that fail a check are reported with the problem.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import Session

from lods.config import Settings
from lods.db import utcnow
from lods.jobs import service
from lods.jobs.executor import EmbeddedExecutor
from lods.jobs.models import Job
from lods.jobs.worker import JobContext, JobOutcome, owner_id
from lods.migrations import upgrade
from lods.runtime import Runtime

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "jobs"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "bench-secret-key-not-for-production"

#: Job kinds: the claim loop's (no handler: the executor never takes them), the
#: executor's, and the warm-up jobs that show each worker process is up.
LOOP_KIND, EXEC_KIND, WARMUP_KIND = "bench-loop", "bench", "bench-warmup"


# --- the handler registry the worker processes import ----------------------------------------


def trivial(ctx: JobContext) -> JobOutcome:
    """Do nothing; say which process ran the job."""
    return JobOutcome(result={"pid": os.getpid()})


HANDLERS = {EXEC_KIND: trivial, WARMUP_KIND: trivial}
#: Spawned workers import this module by name: HERE is put on their PYTHONPATH.
HANDLERS_PATH = f"{Path(__file__).stem}:HANDLERS"


# --- PostgreSQL scratch databases (pipeline.py uses these too) ------------------------------


def postgres_problem(admin_url: str) -> str | None:
    """Return why PostgreSQL at `admin_url` cannot be used, or None when it can."""
    try:
        engine = create_engine(admin_url, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return None


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """Yield the URL of a new, empty database lods_bench_<random>; drop it afterwards."""
    name = f"lods_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            print(f"scratch database {name} dropped", flush=True)
    finally:
        admin.dispose()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so `finally` blocks stop processes and drop databases."""
    raise KeyboardInterrupt


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Figures:
    backend: str
    jobs: int
    enqueue_s: float = math.nan
    loop_s: float = math.nan
    batch_enqueue_s: float = math.nan
    executor_s: float = math.nan
    ready_s: float = math.nan
    split: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _enqueue(db: Session, kind: str, n: int) -> None:
    service.enqueue(
        db,
        kind=kind,
        version_id=None,
        deployment_id=None,
        inputs={"n": n},
        max_attempts=1,
        timeout_seconds=60,
    )


def enqueue_each(rt: Runtime, kind: str, n: int) -> float:
    """Enqueue n jobs, one transaction each; return the seconds it took."""
    start = time.perf_counter()
    for i in range(n):
        with rt.sessions() as db, db.begin():
            _enqueue(db, kind, i)
    return time.perf_counter() - start


def claim_complete_loop(rt: Runtime, kind: str, lease: float) -> tuple[float, int]:
    """Claim and complete jobs of `kind` until none is left; return (seconds, completed)."""
    completed = 0
    start = time.perf_counter()
    while True:
        with rt.sessions() as db, db.begin():
            job = service.claim_next(
                db, owner=owner_id("bench", completed + 1), lease_seconds=lease, kinds=(kind,)
            )
        if job is None:
            break
        with rt.sessions() as db, db.begin():
            result = {"pid": os.getpid()}
            if service.complete(db, job.id, owner=job.lease_owner, result=result):
                completed += 1
    return time.perf_counter() - start, completed


def _states(reader: Engine, kind: str) -> Counter[str]:
    with Session(reader) as db:
        rows = db.execute(
            select(Job.state, func.count()).where(Job.kind == kind).group_by(Job.state)
        )
        return Counter({str(state): int(n) for state, n in rows})


def wait_until_settled(reader: Engine, kind: str, *, timeout: float) -> Counter[str]:
    """Wait until no job of `kind` is queued or running; return the count of each state."""
    deadline = time.monotonic() + timeout
    while True:
        states = _states(reader, kind)
        if not states["queued"] and not states["running"]:
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kind} jobs not done after {timeout:.0f} s: {dict(states)}")
        time.sleep(0.05)


def check(reader: Engine, kind: str, n: int) -> tuple[list[str], list[int]]:
    """Return the problems with the jobs of `kind` and how many each process ran."""
    with Session(reader) as db:
        rows = db.execute(select(Job.state, Job.attempts, Job.result).where(Job.kind == kind)).all()
    problems = []
    if len(rows) != n:
        problems.append(f"{len(rows)} {kind} jobs instead of {n}")
    states = Counter(str(r.state) for r in rows)
    if states["succeeded"] != len(rows):
        problems.append(f"{kind} states {dict(states)}")
    again = sum(1 for r in rows if r.attempts != 1)
    if again:
        problems.append(f"{again} {kind} jobs claimed more than once")
    pids = Counter((r.result or {}).get("pid") for r in rows)
    if None in pids:
        problems.append(f"{pids.pop(None)} {kind} jobs without their handler's result")
    return problems, sorted(pids.values(), reverse=True)


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send this process's (and so its children's) stderr to `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def warm_up(rt: Runtime, reader: Engine, workers: int, *, timeout: float = 60.0) -> None:
    """Run warm-up jobs until every worker process has run one."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while len(pids) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(pids)} of {workers} workers ran a job in {timeout} s")
        with rt.sessions() as db, db.begin():
            for i in range(2 * workers):
                _enqueue(db, WARMUP_KIND, i)
        wait_until_settled(reader, WARMUP_KIND, timeout=max(1.0, deadline - time.monotonic()))
        with Session(reader) as db:
            results = db.scalars(select(Job.result).where(Job.kind == WARMUP_KIND))
            pids = {r["pid"] for r in results if r and "pid" in r}


def run_executor(
    settings: Settings, rt: Runtime, reader: Engine, n: int, log_path: Path
) -> tuple[float, float, float]:
    """Return (seconds to warm-up, seconds to enqueue the batch, enqueue-to-last-finish)."""
    executor = EmbeddedExecutor(settings, HANDLERS_PATH, owner_prefix="bench")
    with stderr_to(log_path):
        began = time.perf_counter()
        executor.start()
        try:
            warm_up(rt, reader, settings.workers)
            ready = time.perf_counter() - began
            started: datetime = utcnow()
            t0 = time.perf_counter()
            with rt.sessions() as db, db.begin():
                for i in range(n):
                    _enqueue(db, EXEC_KIND, i)
            batch = time.perf_counter() - t0
            wait_until_settled(reader, EXEC_KIND, timeout=60 + n * 0.1)
        finally:
            executor.stop()
    with Session(reader) as db:
        last = db.scalar(select(func.max(Job.finished_at)).where(Job.kind == EXEC_KIND))
    return ready, batch, (last - started).total_seconds() if last else math.nan


def bench_backend(backend: str, url: str, folder: Path, args: argparse.Namespace) -> Figures:
    """Run the three phases on a migrated database at `url`; return the figures."""
    figures = Figures(backend, args.jobs)
    settings = Settings(
        data_dir=folder / "data", database_url=url, workers=args.workers, secret_key=SECRET
    )
    print(f"{backend}: migrating ...", flush=True)
    upgrade(url)
    rt = Runtime.open(settings, migrate=False)
    reader = create_engine(url)
    try:
        print(f"{backend}: (a) enqueue {args.jobs} jobs, one transaction each ...", flush=True)
        figures.enqueue_s = enqueue_each(rt, LOOP_KIND, args.jobs)
        print(f"{backend}: (b) claim + complete in one loop ...", flush=True)
        figures.loop_s, completed = claim_complete_loop(rt, LOOP_KIND, settings.job_lease_seconds)
        problems, _ = check(reader, LOOP_KIND, args.jobs)
        if completed != args.jobs:
            problems.append(f"the loop completed {completed} of {args.jobs}")
        figures.problems += problems
        log = folder.parent / f"{folder.name}-workers.log"
        print(f"{backend}: (c) executor, {args.workers} worker processes ...", flush=True)
        figures.ready_s, figures.batch_enqueue_s, figures.executor_s = run_executor(
            settings, rt, reader, args.jobs, log
        )
        problems, figures.split = check(reader, EXEC_KIND, args.jobs)
        figures.problems += problems
    finally:
        reader.dispose()
        rt.close()
    return figures


# --- report ---------------------------------------------------------------------------------


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds and not math.isnan(seconds) else "-"


def report(results: list[Figures], args: argparse.Namespace) -> None:
    n = args.jobs
    print()
    print(f"{'':<11} {'(a) enqueue/s':>14} {'(b) claim+':>11} {'':>7} {'(c) executor':>13}")
    print(
        f"{'backend':<11} {'1 tx each':>14} {'complete/s':>11} {'ms/job':>7} {'jobs/s':>13} "
        f"{'batch enq/s':>12}  check"
    )
    for f in results:
        per_job = 1000 * f.loop_s / n if not math.isnan(f.loop_s) else math.nan
        check_text = "; ".join(f.problems) or (
            f"{n}/{n} succeeded, each claimed once; split " + "/".join(str(c) for c in f.split)
        )
        print(
            f"{f.backend:<11} {_rate(n, f.enqueue_s):>14} {_rate(n, f.loop_s):>11} "
            f"{per_job:>7.2f} {_rate(n, f.executor_s):>13} {_rate(n, f.batch_enqueue_s):>12}  "
            f"{check_text}"
        )
    print()
    for f in results:
        print(
            f"{f.backend}: (a) {f.enqueue_s:.2f} s, (b) {f.loop_s:.2f} s, (c) {f.executor_s:.2f} s "
            f"from the batch's first enqueue to its last finished_at (batch committed after "
            f"{f.batch_enqueue_s:.2f} s); workers ready {f.ready_s:.1f} s after start"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per phase (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smaller run: 200 jobs")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("LODS_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="an existing database to connect to for creating the scratch database "
        f"(default $LODS_TEST_POSTGRES_URL or {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = 200
    if args.jobs < 1 or args.workers < 1:
        parser.error("jobs and workers are at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, interrupt)
    # Spawned worker processes import HANDLERS_PATH's module from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
    )
    probe = Settings(data_dir=OUT, secret_key=SECRET)
    print(
        f"Job queue benchmark: {args.jobs} trivial jobs per phase; executor with "
        f"{args.workers} worker processes (spawn), idle poll {probe.job_poll_seconds} s, "
        f"lease {probe.job_lease_seconds} s"
    )
    print(
        "SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE (as Lods runs it); "
        "PostgreSQL: claim with FOR UPDATE SKIP LOCKED"
    )
    print(f"machine: {os.cpu_count()} CPUs, load average before {load_average()}")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    results: list[Figures] = []
    try:
        sqlite_file = OUT / "sqlite" / "lods.sqlite3"
        sqlite_file.parent.mkdir()
        results.append(bench_backend("SQLite", f"sqlite:///{sqlite_file}", OUT / "sqlite", args))
        problem = "skipped (--no-postgres)" if args.no_postgres else None
        problem = problem or postgres_problem(args.postgres_url)
        if problem:
            print(f"PostgreSQL: skipped: {problem}", flush=True)
        else:
            with scratch_postgres(args.postgres_url) as url:
                results.append(bench_backend("PostgreSQL", url, OUT / "postgres", args))
    except KeyboardInterrupt:
        print("\ninterrupted; workers stopped and scratch databases dropped", file=sys.stderr)
        return 130
    report(results, args)
    print(f"load average after: {load_average()}")
    print(f"outputs: {OUT} (SQLite database, worker logs)")
    return 0 if not any(f.problems for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
