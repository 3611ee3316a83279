"""Solution jobs in real worker processes: a worker killed mid-job, the kill switch, and
a tampered model refused at load."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from lods.alerts.models import Alert
from lods.findings.models import Finding, StudyResult
from lods.jobs import service as jobs
from lods.jobs.executor import EmbeddedExecutor
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions import service
from lods.solutions.execute import HANDLERS_PATH
from lods.solutions.models import Deployment, SolutionVersion
from support import add_cast, make_settings
from support_solutions import install_approve_deploy, python_package

#: Signals that it started, then waits for the gate file (heartbeating) and finds one spot.
GATED_ENGINE = """
import pathlib, time
from lods.solutions.runtimes.base import CodeRef, FindingResult, RunResult

def run(ctx):
    options = ctx.manifest.runtime.options
    pathlib.Path(options["started"]).joinpath(str(ctx.job_id)).touch()
    gate = pathlib.Path(options["gate"])
    while not gate.exists():
        ctx.heartbeat()
        time.sleep(0.05)
    spot = CodeRef("99LODS", "SPOT1", "Bright spot")
    return RunResult(findings=[FindingResult(code=spot, score=0.9)])
"""


@pytest.fixture
def rt(tmp_path: Path, sqlite_url: str) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path / "data",
        sqlite_url,
        workers=1,
        job_lease_seconds=1.5,
        job_backoff_seconds=0,
        job_poll_seconds=0.05,
    )
    runtime = Runtime.open(settings, migrate=False)
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        create_site(db, code="HAV", name="Havnby", actor="test")
    yield runtime
    runtime.close()


@pytest.fixture
def executor(rt: Runtime) -> Iterator[EmbeddedExecutor]:
    pool = EmbeddedExecutor(rt.settings, HANDLERS_PATH, workers=1)
    yield pool
    pool.stop()


def _wait(check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _gated(rt: Runtime, tmp_path: Path, **kw: Any) -> tuple[int, int, Path, Path]:
    started, gate = tmp_path / "started", tmp_path / "gate"
    started.mkdir()
    package = python_package(
        tmp_path / "pkg",
        source=GATED_ENGINE,
        options={"started": str(started), "gate": str(gate)},
        **kw,
    )
    version_id, deployment_id = install_approve_deploy(rt, package, site="HAV")
    return version_id, deployment_id, started, gate


def _enqueue(rt: Runtime, version_id: int, deployment_id: int, n: int = 1) -> list[int]:
    with rt.sessions() as db, db.begin():
        return [
            jobs.enqueue(
                db,
                version_id=version_id,
                deployment_id=deployment_id,
                inputs={},
                max_attempts=3,
                timeout_seconds=60,
            )
            for _ in range(n)
        ]


def _job(rt: Runtime, job_id: int) -> Job:
    with rt.sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None
        return job


def _findings(rt: Runtime, job_id: int) -> int:
    with rt.sessions() as db:
        return int(
            db.scalar(select(func.count()).select_from(Finding).where(Finding.job_fk == job_id))
            or 0
        )


def test_worker_killed_mid_job_reruns_and_findings_exist_once(
    rt: Runtime, executor: EmbeddedExecutor, tmp_path: Path
) -> None:
    version_id, deployment_id, started, gate = _gated(rt, tmp_path)
    (job_id,) = _enqueue(rt, version_id, deployment_id)
    executor.start()
    _wait(lambda: (started / str(job_id)).exists())
    (pid,) = executor.pids()
    os.kill(pid, signal.SIGKILL)
    gate.touch()
    job = _wait(lambda: (j := _job(rt, job_id)).state == "succeeded" and j)
    assert job.attempts == 2 and job.error_kind == "lost"
    assert _findings(rt, job_id) == 1
    assert executor.restarts >= 1


def test_suspended_deployment_runs_none_of_its_queued_jobs(
    rt: Runtime, executor: EmbeddedExecutor, tmp_path: Path
) -> None:
    version_id, deployment_id, started, gate = _gated(rt, tmp_path)
    gate.touch()
    queued = _enqueue(rt, version_id, deployment_id, n=3)
    with rt.sessions() as db, db.begin():
        service.suspend(db, deployment_id=deployment_id, actor="otto", reason="kill switch drill")
    other_version, other_deployment = install_approve_deploy(
        rt, python_package(tmp_path / "other", solution_id="org.test.other"), site="HAV"
    )
    (later,) = _enqueue(rt, other_version, other_deployment)
    executor.start()
    _wait(lambda: _job(rt, later).state == "succeeded")
    assert [_job(rt, j).state for j in queued] == ["cancelled"] * 3
    assert not any((started / str(j)).exists() for j in queued)
    assert sum(_findings(rt, j) for j in queued) == 0


def test_results_of_a_job_running_when_suspended_are_not_stored(
    rt: Runtime, executor: EmbeddedExecutor, tmp_path: Path
) -> None:
    version_id, deployment_id, started, gate = _gated(rt, tmp_path)
    (job_id,) = _enqueue(rt, version_id, deployment_id)
    executor.start()
    _wait(lambda: (started / str(job_id)).exists())
    with rt.sessions() as db, db.begin():
        service.suspend(db, deployment_id=deployment_id, actor="otto", reason="wrong answers")
    other_version, other_deployment = install_approve_deploy(
        rt, python_package(tmp_path / "other", solution_id="org.test.other"), site="HAV"
    )
    (later,) = _enqueue(rt, other_version, other_deployment)
    gate.touch()
    # One worker: once the later job is done, the suspended one has finished its run.
    _wait(lambda: _job(rt, later).state == "succeeded")
    assert _job(rt, job_id).state == "cancelled"
    with rt.sessions() as db:
        assert db.scalars(select(StudyResult).where(StudyResult.job_fk == job_id)).first() is None
    assert _findings(rt, job_id) == 0


def test_tampered_model_is_refused_at_load_and_suspends(
    rt: Runtime, executor: EmbeddedExecutor, tmp_path: Path
) -> None:
    version_id, deployment_id, _, gate = _gated(rt, tmp_path)
    gate.touch()
    with rt.sessions() as db:
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        engine = service.package_dir(rt.settings, version) / "engine.py"
    engine.chmod(0o644)
    engine.write_bytes(engine.read_bytes().replace(b"0.9", b"0.1"))
    (job_id,) = _enqueue(rt, version_id, deployment_id)
    executor.start()
    job = _wait(lambda: (j := _job(rt, job_id)).state in ("failed", "cancelled") and j)
    assert job.state == "failed" and job.attempts == 1
    assert "engine.py does not match its SHA-256" in (job.last_error or "")
    with rt.sessions() as db:
        assert db.get(Deployment, deployment_id).state == "suspended"  # type: ignore[union-attr]
        assert (
            db.scalars(select(Alert).where(Alert.kind == "solution.integrity")).one().state
            == "raised"
        )
    assert _findings(rt, job_id) == 0
