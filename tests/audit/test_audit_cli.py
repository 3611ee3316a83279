"""`lods audit verify|purge|export` against an installation configured by LODS_* variables."""

from __future__ import annotations

import csv
import getpass
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from lods.audit import service
from lods.audit.models import AuditEvent
from lods.cli import app as cli
from lods.config import get_settings
from lods.db import utcnow
from lods.runtime import Runtime


@pytest.fixture
def rt(cli_runtime: Runtime) -> Runtime:
    return cli_runtime


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["audit", *args])
    return result.exit_code, result.stdout, result.stderr


def append(rt: Runtime, n: int, *, patient: str = "0101") -> None:
    with rt.sessions() as db, db.begin():
        for i in range(n):
            service.record(
                db, actor="rita", action="study.view", patient_id=patient, detail={"i": i}
            )


def append_at(rt: Runtime, monkeypatch: pytest.MonkeyPatch, *, days_ago: int, n: int) -> None:
    moment = utcnow() - timedelta(days=days_ago)
    with monkeypatch.context() as patch:
        patch.setattr(service, "utcnow", lambda: moment)
        append(rt, n)


def last_event(rt: Runtime) -> AuditEvent:
    with rt.sessions() as db:
        return db.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()


def test_verify_prints_ok_with_the_count_and_exits_0(rt: Runtime) -> None:
    append(rt, 7)
    code, out, _err = run("verify")
    assert code == 0
    assert out.startswith("OK: 7 events")
    ev = last_event(rt)
    assert (ev.action, ev.actor) == ("audit.verify", f"cli:{getpass.getuser()}")


def test_verify_prints_each_problem_and_exits_1(rt: Runtime) -> None:
    append(rt, 6)
    with rt.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
        conn.exec_driver_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
        conn.exec_driver_sql("DELETE FROM audit_events WHERE seq = 5")
    code, out, err = run("verify")
    assert code == 1
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(seq, kind) for seq, kind, _msg in lines] == [("2", "edited"), ("5", "deleted")]
    assert "FAILED: 2 problem(s)" in err


def test_purge_keeps_events_within_retention(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_at(rt, monkeypatch, days_ago=200, n=4)
    append(rt, 2)
    monkeypatch.setenv("LODS_AUDIT_RETENTION_DAYS", "365")
    get_settings.cache_clear()
    assert run("purge")[:2] == (0, "purged 0 events older than 365 days\n")
    monkeypatch.setenv("LODS_AUDIT_RETENTION_DAYS", "183")
    get_settings.cache_clear()
    code, out, _ = run("purge", "--dry-run")
    assert (code, out.split()[:3]) == (0, ["would", "purge", "4"])
    code, out, _ = run("purge")
    assert (code, out) == (0, "purged 4 events older than 183 days\n")
    with rt.sessions() as db:
        assert service.verify(db)[1] == []
        assert db.scalar(select(func.min(AuditEvent.seq))) == 5


def test_purge_refuses_a_broken_chain(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_at(rt, monkeypatch, days_ago=400, n=3)
    with rt.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        conn.exec_driver_sql("UPDATE audit_events SET patient_id = 'X' WHERE seq = 1")
    code, _out, err = run("purge")
    assert code == 1 and "refusing" in err
    with rt.sessions() as db:
        assert db.scalar(select(func.count()).select_from(AuditEvent)) == 3


def test_export_jsonl_to_a_file_is_itself_audited(rt: Runtime, tmp_path: Path) -> None:
    append(rt, 3, patient="0101")
    append(rt, 2, patient="0202")
    target = tmp_path / "trail.jsonl"
    code, _out, err = run("export", "--patient", "0202", "--out", str(target))
    assert code == 0 and "exported 2 events" in err
    events = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["seq"] for e in events] == [4, 5]
    assert all(e["patient_id"] == "0202" for e in events)
    assert last_event(rt).action == "audit.export"


def test_export_csv_to_stdout_with_a_time_window(rt: Runtime) -> None:
    append(rt, 3)
    today = utcnow().date().isoformat()
    code, out, _err = run("export", "--format", "csv", "--since", today, "--until", today)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    # The export's own event is written before the export reads.
    assert [r["action"] for r in rows] == ["study.view"] * 3 + ["audit.export"]
    code, out, _err = run("export", "--format", "csv", "--until", "2000-01-01")
    assert code == 0 and list(csv.DictReader(io.StringIO(out))) == []


def test_export_rejects_an_unreadable_time(rt: Runtime) -> None:
    code, _out, err = run("export", "--since", "last tuesday")
    assert code == 2 and "ISO 8601" in err
