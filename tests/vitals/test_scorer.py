"""The scorer process beside the MLLP listener (`LODS_HL7_SCORING=process`): an ACK still
comes after the score is stored, band rises still alert, a request left by a crash is
scored when the scorer starts, and a scorer killed mid-stream is started again without
an ACK lost or a score missing."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from ews_support import NORMAL
from sqlalchemy import func, select
from vitals_support import ack_fields, adt, frame, oru, read_ack

from lods.alerts.models import Alert
from lods.runtime import Runtime
from lods.sites.service import add_bed, add_department, create_site
from lods.vitals import mllp as mllp_module
from lods.vitals import scorer as scorer_module
from lods.vitals import scoring as scoring_module
from lods.vitals.hl7in import decode, read
from lods.vitals.hl7intake import Inbound, intake_hl7
from lods.vitals.mllp import Hl7Listener
from lods.vitals.models import EarlyWarningScore, Hl7Message, ScoreRequest, VitalObservation
from lods.vitals.scorer import Request, ScorerProcess, _rounds
from support_solutions import install_approve_deploy

NEWS2_PACKAGE = Path(__file__).resolve().parents[2] / "reference_solutions" / "news2" / "package"
HOST = "127.0.0.1"
BEDS = ("1", "2", "3", "4")
LOW = NORMAL  # every NEWS2 sub-score 0
HIGH = {**LOW, "resp_rate": 26, "spo2": 90, "heart_rate": 135, "consciousness": "C"}


@pytest.fixture
def ward(app_runtime: Runtime) -> Runtime:
    """Ward W7 of site north with four beds, NEWS2 live there, and a patient in each bed."""
    rt = app_runtime
    with rt.sessions() as db, db.begin():
        site = create_site(db, code="north", name="North Hospital", actor="test")
        ward = add_department(
            db, site_id=site.id, code="W7", name="Ward 7", kind="ward", actor="test"
        )
        for code in BEDS:
            add_bed(db, ward_id=ward.id, code=code, room="R1", actor="test")
    install_approve_deploy(rt, NEWS2_PACKAGE, site="north")
    admissions = [
        Inbound(read(adt("A01", f"adm-{bed}", f"P{bed}", "W7", bed, at=ts(0) - timedelta(days=1))))
        for bed in BEDS
    ]
    with rt.sessions() as db, db.begin():
        answers = intake_hl7(db, admissions, settings=rt.settings)
    assert {a.code for a in answers} == {"AA"}, answers
    return rt


def started(rt: Runtime, scoring: str) -> Hl7Listener:
    rt = replace(rt, settings=rt.settings.model_copy(update={"hl7_scoring": scoring}))
    listener = Hl7Listener(rt)
    listener.start()
    return listener


@pytest.fixture
def listener(ward: Runtime) -> Iterator[Hl7Listener]:
    listener = started(ward, "process")
    yield listener
    listener.stop()


def connect(listener: Hl7Listener) -> socket.socket:
    sock = socket.create_connection((HOST, listener.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, message: str, buffer: bytearray) -> tuple[str, str, str]:
    sock.sendall(frame(message))
    return ack_fields(read_ack(sock, buffer))


def send_sets(listener: Hl7Listener, prefix: str, bed: str, sets: int) -> None:
    """Send `sets` ORU of the patient in `bed`, one at a time; each ACK means scored."""
    rt = listener.runtime
    before = count(rt, EarlyWarningScore)
    with connect(listener) as sock:
        buffer = bytearray()
        for n in range(sets):
            message = oru(f"{prefix}-{n}", f"P{bed}", "W7", bed, LOW, ts(n), site="north")
            assert exchange(sock, message, buffer)[:2] == ("AA", f"{prefix}-{n}")
            assert count(rt, EarlyWarningScore) == before + n + 1


def count(rt: Runtime, model: type) -> int:
    with rt.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def ts(minutes: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30 - minutes)


def test_rounds_keep_a_patients_requests_apart() -> None:
    at = datetime(2026, 11, 29, tzinfo=UTC)
    requests = [Request(1, (1, 2), at), Request(2, (3,), at), Request(3, (2, 4), at)]
    assert [[r.id for r in round_] for round_ in _rounds(requests)] == [[1, 2], [3]]
    many = [Request(i, (i,), at) for i in range(40)]
    assert [len(r) for r in _rounds(many)] == [16, 16, 8]


@pytest.mark.parametrize("scoring", ["process", "inline"])
def test_the_ack_comes_after_the_score_is_stored(ward: Runtime, scoring: str) -> None:
    listener = started(ward, scoring)
    assert (listener.scorer is None) == (scoring == "inline")
    try:
        send_sets(listener, "s", "1", 3)
    finally:
        listener.stop()
    assert count(ward, ScoreRequest) == 0
    with ward.sessions() as db:
        score = db.scalars(select(EarlyWarningScore).order_by(EarlyWarningScore.id)).first()
        assert score is not None and score.complete and score.total == 0


def test_a_band_rise_scored_in_the_scorer_raises_the_alert(listener: Hl7Listener) -> None:
    rt = listener.runtime
    with connect(listener) as sock:
        buffer = bytearray()
        for n, values in enumerate((LOW, HIGH)):
            message = oru(f"r-{n}", "P2", "W7", "2", values, ts(n), site="north")
            assert exchange(sock, message, buffer)[0] == "AA"
    with rt.sessions() as db:
        alerts = db.scalars(select(Alert).where(Alert.kind == "ews.band")).all()
        assert len(alerts) == 1
        assert alerts[0].facts["band"] == "high" and alerts[0].facts["previous_band"] == "low"


def test_requests_left_by_a_crash_are_scored_when_the_scorer_starts(ward: Runtime) -> None:
    # As if the listener had committed a batch and died before its scores were stored.
    patients: list[int] = []
    message = read(decode(oru("left-1", "P3", "W7", "3", LOW, ts(0), site="north").encode()))
    now = datetime.now(UTC)
    with ward.sessions() as db, db.begin():
        answers = intake_hl7(
            db, [Inbound(message)], now=now, settings=ward.settings, score_later=patients
        )
        db.add(ScoreRequest(patient_fks=patients, requested_at=now))
    assert answers[0].code == "AA" and len(patients) == 1
    assert count(ward, EarlyWarningScore) == 0

    done: list[list[int]] = []
    scorer = ScorerProcess(ward.settings, lambda ids, events: done.append(ids))
    scorer.start()
    try:
        deadline = time.monotonic() + 60
        while count(ward, ScoreRequest) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        scorer.stop()
    assert count(ward, ScoreRequest) == 0
    with ward.sessions() as db:
        score = db.scalars(select(EarlyWarningScore)).one()
        assert score.patient_fk == patients[0] and score.complete


def test_a_killed_scorer_is_started_again_and_every_ack_means_scored(
    listener: Hl7Listener,
) -> None:
    rt = listener.runtime
    assert listener.scorer is not None
    sent = 0
    with connect(listener) as sock:
        buffer = bytearray()
        for n in range(12):
            if n == 5:
                process = listener.scorer._process
                assert process is not None
                os.kill(process.pid, signal.SIGKILL)
            bed = BEDS[n % len(BEDS)]
            message = oru(f"k-{n}", f"P{bed}", "W7", bed, LOW, ts(n), site="north")
            assert exchange(sock, message, buffer)[:2] == ("AA", f"k-{n}")
            sent += 1
            # Each ACK means this message's score is stored.
            assert count(rt, EarlyWarningScore) == sent
    assert listener.scorer.starts == 2
    assert count(rt, Hl7Message) == 4 + sent
    assert count(rt, ScoreRequest) == 0


class _Broken(ScorerProcess):
    """A scorer process that cannot start (its interpreter exits at once)."""

    def command(self, fd: int) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(3)"]


def test_a_scorer_that_keeps_dying_is_replaced_by_a_thread(
    ward: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scorer_module, "RESTART_DELAY", 0.05)
    monkeypatch.setattr(mllp_module, "ScorerProcess", _Broken)
    listener = started(ward, "process")
    try:
        send_sets(listener, "f", "4", 2)
        assert listener.scorer is not None and listener.scorer.in_thread
        assert listener.scorer.starts == scorer_module.FALLBACK_AFTER + 1
    finally:
        listener.stop()
    assert count(ward, ScoreRequest) == 0


def test_a_request_that_cannot_be_scored_is_answered_and_its_readings_kept(
    ward: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    patients: list[int] = []
    message = read(decode(oru("bad-1", "P1", "W7", "1", LOW, ts(0), site="north").encode()))
    now = datetime.now(UTC)
    with ward.sessions() as db, db.begin():
        intake_hl7(db, [Inbound(message)], now=now, settings=ward.settings, score_later=patients)
        request = ScoreRequest(patient_fks=patients, requested_at=now)
        db.add(request)
        db.flush()
        request_id = request.id

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a scoring bug")

    monkeypatch.setattr(scoring_module, "plan_scores", broken)
    monkeypatch.setattr(scoring_module, "score_after_intake", broken)
    ours, theirs = socket.socketpair()
    listener_end, scorer_end = Connection(ours.detach()), Connection(theirs.detach())
    scorer = scorer_module._Scorer(ward.settings, scorer_end, scorer_module._Collector())
    try:
        scorer.score([Request(request_id, tuple(patients), now)])
        assert listener_end.poll(30)
        assert listener_end.recv() == ("done", [request_id], [])
    finally:
        scorer.close()
        listener_end.close()
        scorer_end.close()
    assert count(ward, ScoreRequest) == 0
    assert count(ward, EarlyWarningScore) == 0
    assert count(ward, VitalObservation) == len(LOW)
