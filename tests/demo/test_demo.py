"""The demo: its region, its studies over real DICOM, and `python -m lods demo` end to end."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from lods.auth.models import Role, User
from lods.auth.service import LoginFailed, authenticate
from lods.demo import MARKER, DemoError, demo_settings, reset_data_dir
from lods.demo.region import HOSPITALS, create_accounts, create_hospitals
from lods.demo.sender import SendError, plan_studies, send_planned, send_study
from lods.imaging.models import Instance, Study
from lods.runtime import Runtime
from lods.sites.models import Bed, Department, DicomNode, Site
from support import LiveServer, free_port, make_settings

SMALL = 512  # image size for tests; the demo itself sends 1024² to 2048²


# --- region ---------------------------------------------------------------------------------


def test_create_hospitals_adds_sites_departments_and_nodes(sqlite_runtime: Runtime) -> None:
    with sqlite_runtime.sessions() as db, db.begin():
        added = create_hospitals(db)
    assert [h.code for h in added] == [h.code for h in HOSPITALS]
    with sqlite_runtime.sessions() as db:
        sites = {s.code: s for s in db.scalars(select(Site))}
        assert set(sites) == {h.code for h in HOSPITALS}
        kinds = {(d.site_id, d.kind) for d in db.scalars(select(Department))}
        wanted = ("radiology", "emergency", "screening", "ward")
        assert kinds == {(s.id, k) for s in sites.values() for k in wanted}
        beds = db.scalars(select(Bed)).all()
        assert len(beds) == 12 * len(HOSPITALS)
        assert {(b.code, b.room) for b in beds} >= {("1", "R1"), ("2", "R1"), ("12", "R6")}
        nodes = {n.ae_title: n for n in db.scalars(select(DicomNode))}
        for h in HOSPITALS:
            assert nodes[h.modality_ae].kind == "modality"
            assert nodes[h.modality_ae].site_id == sites[h.code].id
            assert nodes[h.pacs_ae].kind == "pacs"
            assert nodes[h.pacs_ae].host == h.pacs_host
            assert nodes[h.mammo_ae].kind == "modality"
            assert nodes[h.mammo_ae].site_id == sites[h.code].id


def test_create_hospitals_adds_nothing_when_run_again(sqlite_runtime: Runtime) -> None:
    with sqlite_runtime.sessions() as db, db.begin():
        create_hospitals(db)
    with sqlite_runtime.sessions() as db, db.begin():
        assert create_hospitals(db) == []
    with sqlite_runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(DicomNode)) == 3 * len(HOSPITALS)


def test_create_accounts_gives_every_role_a_working_password(sqlite_runtime: Runtime) -> None:
    with sqlite_runtime.sessions() as db, db.begin():
        accounts = create_accounts(db)
    # Every role a person holds; the integration role is for machines (the demo's sensor
    # hub gets an API token, not a login, when it needs one).
    assert {a.role for a in accounts} == set(Role) - {Role.INTEGRATION}
    assert len({a.password for a in accounts}) == len(accounts)
    with sqlite_runtime.sessions() as db, db.begin():
        for a in accounts:
            user = authenticate(
                db,
                username=a.username,
                password=a.password,
                settings=sqlite_runtime.settings,
                source="test",
            )
            assert user.role_set == {a.role}


def test_create_accounts_replaces_passwords_when_run_again(sqlite_runtime: Runtime) -> None:
    with sqlite_runtime.sessions() as db, db.begin():
        first = {a.username: a.password for a in create_accounts(db)}
    with sqlite_runtime.sessions() as db, db.begin():
        second = {a.username: a.password for a in create_accounts(db)}
        assert db.scalar(select(func.count()).select_from(User)) == len(first)
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)
    with sqlite_runtime.sessions() as db, db.begin(), pytest.raises(LoginFailed):
        authenticate(
            db,
            username="admin",
            password=first["admin"],
            settings=sqlite_runtime.settings,
            source="test",
        )


# --- data dir and settings -------------------------------------------------------------------


def test_reset_data_dir_removes_an_earlier_demo(tmp_path: Path) -> None:
    data = tmp_path / "lods-data"
    (data / "blobs" / "ab").mkdir(parents=True)
    (data / "lods.sqlite3").write_bytes(b"x")
    (data / MARKER).write_text("demo")
    reset_data_dir(data)
    assert not data.exists()


def test_reset_data_dir_refuses_data_the_demo_did_not_create(tmp_path: Path) -> None:
    data = tmp_path / "lods-data"
    (data / "blobs").mkdir(parents=True)
    (data / "lods.sqlite3").write_bytes(b"production")
    with pytest.raises(DemoError, match="did not create"):
        reset_data_dir(data)
    assert (data / "lods.sqlite3").read_bytes() == b"production"


def test_reset_data_dir_refuses_a_dir_with_foreign_files(tmp_path: Path) -> None:
    data = tmp_path / "somewhere"
    data.mkdir()
    (data / MARKER).write_text("demo")
    (data / "thesis.docx").write_bytes(b"precious")
    with pytest.raises(DemoError, match="does not look like"):
        reset_data_dir(data)
    assert (data / "thesis.docx").exists()


def test_demo_settings_use_5_second_quiet_period_unless_env_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = make_settings(tmp_path, "postgresql+psycopg://elsewhere/db", stable_seconds=60.0)
    monkeypatch.delenv("LODS_STABLE_SECONDS", raising=False)
    settings = demo_settings(base)
    assert settings.stable_seconds == 5.0
    assert settings.resolved_database_url.startswith("sqlite:///")
    monkeypatch.setenv("LODS_STABLE_SECONDS", "60")
    assert demo_settings(base).stable_seconds == 60.0


# --- sending over DICOM ----------------------------------------------------------------------


def test_plan_studies_spreads_over_hospitals_and_body_parts() -> None:
    planned = plan_studies(HOSPITALS, count=6, seed=3, now=datetime(2025, 3, 4, 12), size=SMALL)
    assert [p.hospital for p in planned] == list(HOSPITALS) * 2
    assert len({p.datasets[0].BodyPartExamined for p in planned}) == 5
    for p in planned:
        assert 1 <= len(p.datasets) <= 3
        assert {ds.Modality for ds in p.datasets} == {p.hospital.modality}
        assert {ds.InstitutionName for ds in p.datasets} == {p.hospital.name}
        assert p.datasets[0].StudyDate == "20250304"


@pytest.fixture
def region_server(live_server: LiveServer) -> LiveServer:
    """The live server with the demo hospitals registered in its database."""
    rt = Runtime.open(make_settings(live_server.data_dir, live_server.database_url), migrate=False)
    with rt.sessions() as db, db.begin():
        create_hospitals(db)
    rt.close()
    time.sleep(2.5)  # the SCP re-reads its known AE titles at most every two seconds
    return live_server


def test_send_planned_stores_every_study_at_its_hospital(region_server: LiveServer) -> None:
    planned = plan_studies(HOSPITALS, count=3, seed=5, now=datetime(2025, 3, 4, 9), size=SMALL)
    results = send_planned(
        planned, host="127.0.0.1", port=region_server.dicom_port, called_ae=region_server.ae_title
    )
    assert [r.failed for r in results] == [[], [], []]
    engine = create_engine(region_server.database_url)
    with engine.connect() as conn:
        for study in planned:
            row = conn.execute(
                select(Site.code, Study.num_instances)
                .join(Study, Study.site_id == Site.id)
                .where(Study.study_uid == study.study_uid)
            ).one()
            assert tuple(row) == (study.hospital.code, len(study.datasets))
        stored = conn.scalar(select(func.count()).select_from(Instance))
    engine.dispose()
    assert stored == sum(len(p.datasets) for p in planned)


def test_send_study_fails_when_the_calling_ae_is_unknown(live_server: LiveServer) -> None:
    study = plan_studies(HOSPITALS, count=1, seed=1, now=datetime(2025, 1, 1), size=SMALL)[0]
    with pytest.raises(SendError, match="did not accept"):
        send_study(
            study.datasets,
            host="127.0.0.1",
            port=live_server.dicom_port,
            called_ae=live_server.ae_title,
            calling_ae="NOT_A_NODE",
        )


# --- `python -m lods demo` -------------------------------------------------------------------


def _lines(stream: IO[str], out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """`python -m lods demo` on free ports with its data dir in tmp; stopped afterwards."""
    data_dir, http_port = tmp_path / "demo-data", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LODS_")}
    env.update(
        LODS_DATA_DIR=str(data_dir),
        LODS_HTTP_PORT=str(http_port),
        LODS_DICOM_PORT=str(free_port()),
        LODS_HL7_PORT=str(free_port()),
        # Its own MQTT topics (and broker session) on the machine's Mosquitto.
        LODS_MQTT_TOPIC_PREFIX=f"lods-test/{uuid.uuid4().hex}",
        PYTHONUNBUFFERED="1",
        TCP_NODELAY="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lods", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc, data_dir, http_port
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_until(proc: subprocess.Popen[str], marker: str, *, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if marker in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} from `lods demo`:\n" + "".join(seen)[-4000:])


def _login(base_url: str, username: str, password: str) -> int:
    with httpx.Client(base_url=base_url) as web:
        web.get("/login")
        csrf = web.cookies.get("lods_csrf")
        form = {"username": username, "password": password, "csrf_token": csrf, "next": "/"}
        return web.post("/login", data=form).status_code


def test_lods_demo_serves_and_receives_its_studies_over_dicom(
    demo_process: tuple[subprocess.Popen[str], Path, int],
) -> None:
    proc, data_dir, http_port = demo_process
    output = _read_until(proc, "Press Ctrl-C", timeout=300)
    assert f"http://127.0.0.1:{http_port}/" in output
    sent = re.search(r"Sent (\d+) studies over DICOM: (\d+) images stored", output)
    assert sent is not None, output
    studies, images = int(sent.group(1)), int(sent.group(2))
    assert 6 <= studies <= 9 and studies <= images <= 3 * studies
    screened = re.search(r"Sent (\d+) screening exams over DICOM: (\d+) images stored", output)
    assert screened is not None, output
    exams, mammograms = int(screened.group(1)), int(screened.group(2))
    assert exams >= 3 and mammograms == 4 * exams
    assert "refused" not in output
    assert "Lods Fracture AI (demonstration) 1.1.0 live at HAVNBY, SKOVLUND, AABAKKE" in output
    assert f"http://127.0.0.1:{http_port}/wards" in output
    assert "(via DICOM)" in output

    engine = create_engine(f"sqlite:///{data_dir / 'lods.sqlite3'}")
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM studies")) == studies + exams
        assert conn.scalar(text("SELECT count(*) FROM instances")) == images + mammograms
    # Every study gets its AI answer: fractures in-process, screening in-process at two
    # hospitals and through the simulated vendor appliance at the third.
    deadline = time.monotonic() + 180
    done: list[Any] = []
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = list(
                conn.execute(
                    text(
                        "SELECT v.solution_id, v.runtime_kind, r.outcome FROM study_results r "
                        "JOIN solution_versions v ON v.id = r.version_fk"
                    )
                )
            )
        if len(done) >= studies + exams:
            break
        time.sleep(1)
    assert len(done) == studies + exams, done
    kinds = {(row[0], row[1]) for row in done}
    assert ("org.lods.reference.fracture", "onnx") in kinds
    # every other demo study has a fracture: the fracture AI flags some, not all
    fracture_outcomes = {row[2] for row in done if row[0] == "org.lods.reference.fracture"}
    assert "negative" in fracture_outcomes, fracture_outcomes
    assert fracture_outcomes & {"positive", "uncertain"}, fracture_outcomes
    assert ("org.lods.reference.screening", "onnx") in kinds
    assert any(kind == "dicom_node" for _, kind in kinds)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM sites WHERE code = 'HAVNBY'")) == 1
        channels = conn.scalars(text("SELECT DISTINCT channel FROM instances")).all()
    assert channels == ["dicom"]  # through the DICOM port, not straight into the database
    # The geriatric ward is fed by the simulated monitors: admitted over ADT, scored by NEWS2.
    deadline = time.monotonic() + 120
    scored = admitted = 0
    while time.monotonic() < deadline and not (admitted == 12 and scored):
        with engine.connect() as conn:
            admitted = conn.scalar(text("SELECT count(*) FROM encounters WHERE state = 'active'"))
            scored = conn.scalar(text("SELECT count(*) FROM ews_scores WHERE total IS NOT NULL"))
        time.sleep(1)
    assert admitted == 12 and scored, (admitted, scored)
    engine.dispose()

    password = re.search(r"^\s+admin\s+admin\s+(\S+)$", output, re.MULTILINE)
    assert password is not None, output
    base = f"http://127.0.0.1:{http_port}"
    assert _login(base, "admin", password.group(1)) == 303  # logged in, sent on to "/"
    assert _login(base, "admin", "not-the-password") == 401

    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert (data_dir / MARKER).exists()
