"""End to end through a real `lods serve`: storescu → stable → router → job in a worker
process → findings on the study; the vendor-appliance route through `lods-vendor-sim`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from lods.audit.models import AuditEvent
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import Study
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import add_dicom_node, create_site
from lods.solutions.packaging import build_package
from lods.solutions.toymodels import bright_spot_model
from support import LiveServer, add_cast, free_port, make_settings
from support_solutions import (
    SPOT_CODE,
    SQUARE,
    install_approve_deploy,
    manifest_dict,
    spot_package,
    write_dx_image,
)

pytestmark = pytest.mark.peers


def _storescu(port: int, paths: list[Path]) -> None:
    done = subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "LODS", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _wait_for(engine: Any, query: Callable[[Session], Any], *, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as db:
            value = query(db)
            if value:
                return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the pipeline")


def _server(tmp_path: Path, prepare: Callable[[Runtime], None], **env: str) -> Iterator[LiveServer]:
    data_dir = tmp_path / "live"
    server = LiveServer(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'lods.sqlite3'}",
        extra_env={"LODS_WORKERS": "1", "LODS_JOB_BACKOFF_SECONDS": "0", **env},
    )
    data_dir.mkdir(parents=True)
    rt = Runtime.open(make_settings(data_dir, server.database_url, dicom_port=server.dicom_port))
    add_cast(rt)
    with rt.sessions() as db, db.begin():
        site = create_site(db, code="HAV", name="Havnby Hospital", actor="test")
        add_dicom_node(db, site_id=site.id, ae_title="MODALITY", kind="modality", actor="test")
    prepare(rt)
    rt.close()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _study(tmp_path: Path, *, bright: tuple[bool, ...]) -> tuple[str, list[Path], list[str]]:
    study_uid = generate_uid()
    series_uid = generate_uid()
    paths, uids = [], []
    for i, is_bright in enumerate(bright):
        path = tmp_path / "send" / f"{i}.dcm"
        uids.append(
            write_dx_image(
                path,
                study_uid=study_uid,
                series_uid=series_uid,
                bright=is_bright,
                instance_number=i + 1,
            )
        )
        paths.append(path)
    return study_uid, paths, uids


def _results(engine: Any, study_uid: str) -> Callable[[Session], Any]:
    def query(db: Session) -> Any:
        study = db.scalars(select(Study).where(Study.study_uid == study_uid)).first()
        if study is None:
            return None
        return db.scalars(select(StudyResult).where(StudyResult.study_fk == study.id)).first()

    return query


def test_storescu_to_findings_with_a_tiny_onnx_model(tmp_path: Path) -> None:
    def prepare(rt: Runtime) -> None:
        install_approve_deploy(rt, spot_package(tmp_path / "pkg"), site="HAV", mode="live")

    for server in _server(tmp_path, prepare):
        study_uid, paths, uids = _study(tmp_path, bright=(True, False))
        _storescu(server.dicom_port, paths)
        engine = create_engine(server.database_url)
        result = _wait_for(engine, _results(engine, study_uid))
        with Session(engine) as db:
            findings = db.scalars(select(Finding).where(Finding.job_fk == result.job_fk)).all()
            job = db.get(Job, result.job_fk)
            audit = db.scalars(select(AuditEvent).where(AuditEvent.action == "ai.result")).all()
        engine.dispose()
        assert job is not None and job.state == "succeeded" and job.attempts == 1
        assert (result.outcome, result.text, result.status) == ("positive", "Spot", "preliminary")
        boxed = [f for f in findings if f.box_x0 is not None]
        assert boxed, findings
        top = max(boxed, key=lambda f: f.score)
        assert top.sop_instance_uid == uids[0] and top.certainty == "sure"
        assert (top.code_scheme, top.code_value) == (SPOT_CODE["scheme"], SPOT_CODE["value"])
        x0, y0, x1, y1 = SQUARE
        assert top.box_x0 < x1 and top.box_x1 > x0 and top.box_y0 < y1 and top.box_y1 > y0  # type: ignore[operator]
        assert all(f.status == "preliminary" for f in findings)
        assert all(f.sop_instance_uid != uids[1] or f.certainty == "none" for f in findings)
        assert len(audit) == 1 and audit[0].study_uid == study_uid


def _vendor_sim(
    tmp_path: Path, *, port: int, lods_port: int, ae: str, fail_mode: str = "none"
) -> subprocess.Popen[bytes]:
    model = bright_spot_model(tmp_path / "vendor-model.onnx", size=64, threshold=0.6)
    code = f"{SPOT_CODE['scheme']}:{SPOT_CODE['value']}:{SPOT_CODE['meaning']}"
    log = (tmp_path / "vendor.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lods.vendor_sim.cli",
            "--ae-title",
            ae,
            "--port",
            str(port),
            "--return",
            f"127.0.0.1:{lods_port}",
            "--return-ae",
            "LODS",
            "--model",
            str(model),
            "--finding",
            code,
            "--quiet-seconds",
            "0.5",
            "--fail-mode",
            fail_mode,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("lods-vendor-sim did not start: " + (tmp_path / "vendor.log").read_text())


def _vendor_package(
    folder: Path, *, port: int, ae: str, answer_timeout: float, attempts: int
) -> Path:
    runtime = {
        "kind": "dicom_node",
        "host": "127.0.0.1",
        "port": port,
        "ae_title": ae,
        "answer_timeout_seconds": answer_timeout,
        "network_timeout_seconds": 5,
    }
    manifest = manifest_dict(
        solution_id="com.vendor.spot",
        version="2.0",
        runtime=runtime,
        limits={"timeout_seconds": 60, "max_attempts": attempts},
        name="Vendor Spot",
    )
    return build_package(folder, manifest, {"README.txt": b"appliance integration\n"})


def test_dicom_node_round_trip_through_the_vendor_simulator(tmp_path: Path) -> None:
    vendor_port = free_port()

    def prepare(rt: Runtime) -> None:
        package = _vendor_package(
            tmp_path / "vpkg", port=vendor_port, ae="VENDORAI", answer_timeout=30, attempts=2
        )
        install_approve_deploy(rt, package, site="HAV", mode="live")

    for server in _server(tmp_path, prepare):
        sim = _vendor_sim(tmp_path, port=vendor_port, lods_port=server.dicom_port, ae="VENDORAI")
        try:
            study_uid, paths, uids = _study(tmp_path, bright=(True,))
            _storescu(server.dicom_port, paths)
            engine = create_engine(server.database_url)
            result = _wait_for(engine, _results(engine, study_uid))
            with Session(engine) as db:
                findings = db.scalars(select(Finding).where(Finding.job_fk == result.job_fk)).all()
                study = db.scalars(select(Study).where(Study.study_uid == study_uid)).one()
                num_instances = study.num_instances
                job = db.get(Job, result.job_fk)
            engine.dispose()
        finally:
            sim.terminate()
            sim.wait(10)
        assert job is not None and job.state == "succeeded"
        assert result.outcome == "positive"
        assert any(f.sop_instance_uid == uids[0] and f.box_x0 is not None for f in findings)
        assert num_instances == 1  # the vendor's SR went to the inbox, not into the study


def test_vendor_down_retries_then_fails_with_a_clear_reason(tmp_path: Path) -> None:
    closed_port = free_port()

    def prepare(rt: Runtime) -> None:
        package = _vendor_package(
            tmp_path / "vpkg", port=closed_port, ae="VENDORAI", answer_timeout=5, attempts=2
        )
        install_approve_deploy(rt, package, site="HAV", mode="live")

    for server in _server(tmp_path, prepare):
        _, paths, _ = _study(tmp_path, bright=(True,))
        _storescu(server.dicom_port, paths)
        engine = create_engine(server.database_url)

        def failed(db: Session) -> Any:
            return db.scalars(select(Job).where(Job.state == "failed")).first()

        job = _wait_for(engine, failed)
        engine.dispose()
        assert job.attempts == 2 and job.error_kind == "transient"
        assert "VENDORAI" in (job.last_error or "") and str(closed_port) in (job.last_error or "")
