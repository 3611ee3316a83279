"""The monitor simulator against Lods' real MLLP listener (lods.vitals.mllp) on loopback:
it admits three patients (ADT^A01), sends their vital signs (ORU^R01), every message is
answered AA, and the encounters, observations (invalid ones marked) and NEWS2 scores are
in the database."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from lods.runtime import Runtime
from lods.sim.cli import app
from lods.sim.monitors import MonitorConfig, run_monitors
from lods.sites.service import add_bed, add_department, create_site
from lods.vitals.mllp import Hl7Listener
from lods.vitals.models import (
    EarlyWarningScore,
    Encounter,
    Hl7Message,
    VitalObservation,
)
from support_solutions import install_approve_deploy

NEWS2_PACKAGE = Path(__file__).resolve().parents[2] / "reference_solutions" / "news2" / "package"


def test_simulated_monitors_are_stored_and_scored(app_runtime: Runtime) -> None:
    rt = app_runtime
    with rt.sessions() as db, db.begin():
        site = create_site(db, code="north", name="North Hospital", actor="test")
        ward = add_department(
            db, site_id=site.id, code="W7", name="Ward 7", kind="ward", actor="test"
        )
        for code in ("1", "2", "3"):
            add_bed(db, ward_id=ward.id, code=code, room="701", actor="test")
    install_approve_deploy(rt, NEWS2_PACKAGE, site="north")
    listener = Hl7Listener(rt)
    listener.start()
    try:
        summary = run_monitors(
            MonitorConfig(
                host="127.0.0.1",
                port=listener.port,
                site="north",
                ward="W7",
                beds=["1", "2", "3"],
                rooms={"1": "701", "2": "701", "3": "701"},
                speed=0,
                count=12,
                admit=True,
                connections=2,
                deteriorating=1,
                seed=7,
                invalid_rate=0.1,  # enough invalid readings to see them stored as such
            )
        )
    finally:
        listener.stop()

    assert summary.errors == [] and summary.unanswered == 0
    assert (summary.admitted, summary.sent) == (3, 12)
    assert summary.acks == Counter({"AA": 15})
    assert summary.invalid_readings > 0
    with rt.sessions() as db:
        encounters = db.scalars(select(Encounter)).all()
        assert len(encounters) == 3
        assert all(e.state == "active" and e.bed_fk is not None for e in encounters)
        assert len({e.bed_fk for e in encounters}) == 3
        assert db.scalar(select(func.count()).select_from(Hl7Message)) == 15
        validity = Counter(db.scalars(select(VitalObservation.valid)))
        assert validity[False] == summary.invalid_readings
        assert validity[True] == summary.readings - summary.invalid_readings
        sources = set(db.scalars(select(VitalObservation.source)))
        assert sources == {"hl7"}
        scores = db.scalars(select(EarlyWarningScore)).all()
        assert len(scores) == 12  # one per set
        assert any(s.complete and s.band is not None for s in scores)


def test_the_command_line_runs_the_same_simulator(app_runtime: Runtime) -> None:
    rt = app_runtime
    with rt.sessions() as db, db.begin():
        site = create_site(db, code="north", name="North Hospital", actor="test")
        ward = add_department(
            db, site_id=site.id, code="W7", name="Ward 7", kind="ward", actor="test"
        )
        for code in ("01", "02"):
            add_bed(db, ward_id=ward.id, code=code, actor="test")
    listener = Hl7Listener(rt)
    listener.start()
    try:
        args = ["monitors", "--port", str(listener.port), "--beds", "01-02", "--admit"]
        result = CliRunner().invoke(app, [*args, "--speed", "0", "--count", "4", "-v"])
    finally:
        listener.stop()
    assert result.exit_code == 0, result.output
    assert "bed 01: admitted" in result.output
    assert "ACK AA 6, AE 0, AR 0; no answer 0" in result.output
    with rt.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Hl7Message)) == 6

    refused = CliRunner().invoke(app, ["monitors", "--port", "1", "--count", "1", "--speed", "0"])
    assert refused.exit_code == 1
    assert "cannot reach the MLLP listener" in refused.output
