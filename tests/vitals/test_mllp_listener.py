"""The MLLP listener over real loopback sockets: messages split across reads, several in one
write, garbage, a missing end block, a connection closed mid-message, unsupported types
(AR), unknown beds and patients (AE), duplicates, oversize messages — and it still answers
afterwards. Every ACK comes after the commit, so the database is checked right after it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select
from vitals_support import (
    Ward,
    ack_fields,
    admit_patient,
    adt,
    frame,
    make_ward,
    mllp_send,
    oru,
    read_ack,
)

from lods.runtime import Runtime
from lods.vitals import hl7in
from lods.vitals.mllp import Hl7Listener
from lods.vitals.models import Encounter, Hl7Message, VitalObservation

HOST = "127.0.0.1"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
VALUES = {"spo2": 96, "heart_rate": 82, "resp_rate": 17, "temperature": 37.1}


@pytest.fixture
def ward(sqlite_runtime: Runtime) -> Ward:
    with sqlite_runtime.sessions() as db, db.begin():
        ward = make_ward(db, beds=("1", "2", "3"))
        admit_patient(db, ward, "1", "P1", at=T0 - timedelta(days=1))
        admit_patient(db, ward, "2", "P2", at=T0 - timedelta(days=1))
        return ward


def start_listener(rt: Runtime, **settings: object) -> Hl7Listener:
    # Scoring in the intake transaction: these tests are about framing and answers; the
    # scorer process has its own tests (test_scorer.py) and runs in every `lods serve`.
    settings = {"hl7_scoring": "inline", **settings}
    rt = replace(rt, settings=rt.settings.model_copy(update=settings))
    listener = Hl7Listener(rt)
    listener.start()
    return listener


@pytest.fixture
def listener(sqlite_runtime: Runtime, ward: Ward) -> Iterator[Hl7Listener]:
    listener = start_listener(sqlite_runtime)
    yield listener
    listener.stop()


def connect(listener: Hl7Listener, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((HOST, listener.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(listener: Hl7Listener, message: str | bytes) -> tuple[str, str, str]:
    return ack_fields(mllp_send(HOST, listener.port, message))


def stored(rt: Runtime, control_id: str) -> tuple[list[str], int]:
    """(ack codes of the kept messages with this MSH-10, observations stored from them)."""
    with rt.sessions() as db, db.begin():
        codes = list(
            db.scalars(select(Hl7Message.ack_code).where(Hl7Message.control_id == control_id))
        )
        count = db.scalar(
            select(func.count())
            .select_from(VitalObservation)
            .join(Hl7Message, Hl7Message.id == VitalObservation.message_fk)
            .where(Hl7Message.control_id == control_id)
        )
        return codes, int(count or 0)


def nothing_arrives(sock: socket.socket, seconds: float = 0.3) -> bool:
    sock.settimeout(seconds)
    try:
        sock.recv(1)
        return False
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)


def test_an_oru_is_stored_before_it_is_acknowledged(
    listener: Hl7Listener, sqlite_runtime: Runtime, ward: Ward
) -> None:
    values = {**VALUES, "consciousness": "A", "oxygen": "air"}
    code, control_id, text = send(listener, oru("ok-1", "P1", "W7", "1", values, T0))
    assert (code, control_id) == ("AA", "ok-1") and "6 vital signs" in text
    with sqlite_runtime.sessions() as db, db.begin():
        rows = list(db.scalars(select(VitalObservation).order_by(VitalObservation.id)))
        encounter = db.scalar(select(Encounter).where(Encounter.bed_fk == ward.beds["1"]))
        assert encounter is not None
        got = {r.parameter: (r.value, r.value_text) for r in rows}
        assert got == {
            "spo2": (96, None),
            "heart_rate": (82, None),
            "resp_rate": (17, None),
            "temperature": (37.1, None),
            "consciousness": (None, "A"),
            "oxygen": (None, "air"),
        }
        assert {(r.encounter_fk, r.bed_fk, r.source, r.observed_at) for r in rows} == {
            (encounter.id, ward.beds["1"], "hl7", T0)
        }


def test_a_message_split_across_reads_is_answered_once_complete(listener: Hl7Listener) -> None:
    data = frame(oru("split-1", "P1", "W7", "1", VALUES, T0))
    body, end_block = data[:-2], data[-2:]
    with connect(listener) as sock:
        for n in range(0, len(body), 7):
            sock.sendall(body[n : n + 7])
        sock.sendall(end_block[:1])  # the end block itself split in two
        assert nothing_arrives(sock, 0.2)
        sock.sendall(end_block[1:])
        assert ack_fields(read_ack(sock))[:2] == ("AA", "split-1")


def test_several_messages_in_one_write_are_answered_in_order(listener: Hl7Listener) -> None:
    ids = [f"multi-{n}" for n in range(5)]
    data = b"".join(frame(oru(i, "P1", "W7", "1", VALUES, T0)) for i in ids)
    with connect(listener) as sock:
        sock.sendall(data)
        buffer = bytearray()
        answers = [ack_fields(read_ack(sock, buffer)) for _ in ids]
    assert [(a[0], a[1]) for a in answers] == [("AA", i) for i in ids]


def test_garbage_before_a_start_block_is_skipped(listener: Hl7Listener) -> None:
    with connect(listener) as sock:
        sock.sendall(
            b"\x00\xff garbage \r\n\x1c\r" + frame(oru("g-1", "P1", "W7", "1", VALUES, T0))
        )
        assert ack_fields(read_ack(sock))[:2] == ("AA", "g-1")


def test_a_missing_end_block_holds_the_answer_until_it_arrives(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    data = frame(oru("end-1", "P1", "W7", "1", VALUES, T0))
    with connect(listener) as sock:
        sock.sendall(data[:-2])
        assert nothing_arrives(sock)
        assert stored(sqlite_runtime, "end-1") == ([], 0)
        sock.sendall(data[-2:])
        assert ack_fields(read_ack(sock))[:2] == ("AA", "end-1")


def test_a_connection_closed_mid_message_drops_it_unanswered(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    data = frame(oru("cut-1", "P1", "W7", "1", VALUES, T0))
    with connect(listener) as sock:
        sock.sendall(data[: len(data) // 2])
    # The sender sends it again on a new connection: stored once.
    assert send(listener, data[1:-2])[:2] == ("AA", "cut-1")
    assert stored(sqlite_runtime, "cut-1") == (["AA"], 4)


def test_an_unsupported_message_type_is_rejected_and_kept(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    message = "MSH|^~\\&|LAB|north|LODS|north|20261129100000||ORM^O01^ORM_O01|orm-1|P|2.6\r"
    code, control_id, text = send(listener, message)
    assert (code, control_id) == ("AR", "orm-1") and "not supported" in text
    assert stored(sqlite_runtime, "orm-1") == (["AR"], 0)


def test_an_unreadable_message_is_rejected_with_an_empty_msa_2(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    assert send(listener, b"\xff\xfe this is not HL7")[:2] == ("AR", "")
    with sqlite_runtime.sessions() as db, db.begin():
        kept = db.scalar(select(Hl7Message).where(Hl7Message.ack_code == "AR"))
        assert kept is not None and kept.control_id.startswith("!")


def test_an_unknown_bed_is_an_application_error(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    code, control_id, text = send(listener, oru("nobed-1", "P1", "W7", "99", VALUES, T0))
    assert (code, control_id) == ("AE", "nobed-1") and "unknown location" in text
    assert send(listener, oru("noward-1", "P1", "W99", "1", VALUES, T0))[0] == "AE"
    assert stored(sqlite_runtime, "nobed-1") == (["AE"], 0)


def test_a_patient_not_admitted_to_the_bed_is_an_application_error(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    code, _, text = send(listener, oru("who-1", "P2", "W7", "1", VALUES, T0))
    assert code == "AE" and "not admitted" in text
    assert send(listener, oru("empty-1", "P9", "W7", "3", VALUES, T0))[0] == "AE"
    assert stored(sqlite_runtime, "who-1") == (["AE"], 0)
    # A monitor that does not know the patient: the readings go to whoever lies there.
    assert send(listener, oru("anon-1", "", "W7", "2", VALUES, T0))[0] == "AA"


def test_a_repeated_control_id_is_answered_alike_and_stored_once(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    message = oru("dup-1", "P1", "W7", "1", VALUES, T0)
    first = send(listener, message)
    again = send(listener, message)
    assert first[0] == again[0] == "AA" and "duplicate" in again[2]
    # Twice in one write, so in one batch; and a refused one repeats its refusal.
    refused = oru("dup-2", "P1", "W7", "99", VALUES, T0)
    with connect(listener) as sock:
        sock.sendall(frame(message) + frame(refused) + frame(refused))
        buffer = bytearray()
        answers = [ack_fields(read_ack(sock, buffer)) for _ in range(3)]
    assert [a[0] for a in answers] == ["AA", "AE", "AE"]
    assert stored(sqlite_runtime, "dup-1") == (["AA"], 4)
    assert stored(sqlite_runtime, "dup-2") == (["AE"], 0)


def test_an_admit_and_readings_in_one_write_are_handled_in_order(
    listener: Hl7Listener, sqlite_runtime: Runtime
) -> None:
    with connect(listener) as sock:
        sock.sendall(
            frame(adt("A01", "adt-1", "P3", "W7", "3", at=T0))
            + frame(oru("after-adt-1", "P3", "W7", "3", VALUES, T0))
        )
        buffer = bytearray()
        answers = [ack_fields(read_ack(sock, buffer)) for _ in range(2)]
    assert [a[:2] for a in answers] == [("AA", "adt-1"), ("AA", "after-adt-1")]
    assert stored(sqlite_runtime, "after-adt-1") == (["AA"], 4)


def test_invalid_readings_are_kept_invalid(listener: Hl7Listener, sqlite_runtime: Runtime) -> None:
    values = {"spo2": None, "heart_rate": 8388607, "resp_rate": 300, "temperature": 36.9}
    message = oru("bad-values-1", "P1", "W7", "1", values, T0, status={"spo2": "X"})
    code, _, text = send(listener, message)
    assert code == "AA" and "(3 invalid)" in text
    with sqlite_runtime.sessions() as db, db.begin():
        rows = db.scalars(select(VitalObservation).order_by(VitalObservation.id))
        got = {r.parameter: (r.valid, r.invalid_reason is not None) for r in rows}
    assert got == {
        "spo2": (False, True),
        "heart_rate": (False, True),
        "resp_rate": (False, True),
        "temperature": (True, False),
    }


def test_an_oversize_message_is_rejected_and_the_connection_resyncs(
    sqlite_runtime: Runtime, ward: Ward
) -> None:
    listener = start_listener(sqlite_runtime, hl7_max_message_bytes=4096)
    try:
        big = oru("big-1", "P1", "W7", "1", VALUES, T0) + "NTE|1||" + "x" * 20_000 + "\r"
        with connect(listener) as sock:
            sock.sendall(frame(big) + frame(oru("small-1", "P1", "W7", "1", VALUES, T0)))
            buffer = bytearray()
            first, second = ack_fields(read_ack(sock, buffer)), ack_fields(read_ack(sock, buffer))
        assert first[:2] == ("AR", "big-1") and "exceeds" in first[2]
        assert second[:2] == ("AA", "small-1")
        assert stored(sqlite_runtime, "big-1") == (["AR"], 0)
    finally:
        listener.stop()


def test_the_listener_survives_all_of_it_on_one_connection(listener: Hl7Listener) -> None:
    bad = [
        b"\x0b\x1c\r",  # an empty block
        b"\x0bMSH\x1c\r",
        b"\x0b" + bytes(range(256)) + b"\x1c\r",
        frame("MSH|^~\\&|X|Y|LODS|north|20261129||QRY^Q01|q-1|P|2.6"),
        frame(oru("wrongbed", "P1", "W7", "77", VALUES, T0)),
    ]
    with connect(listener) as sock:
        sock.sendall(b"".join(bad) + frame(oru("alive-1", "P1", "W7", "1", VALUES, T0)))
        buffer = bytearray()
        answers = [ack_fields(read_ack(sock, buffer)) for _ in range(len(bad) + 1)]
    assert [a[0] for a in answers] == ["AR", "AR", "AR", "AR", "AE", "AA"]
    assert answers[-1][1] == "alive-1"
    assert send(listener, oru("alive-2", "P2", "W7", "2", VALUES, T0))[0] == "AA"


def test_many_connections_at_once(listener: Hl7Listener, sqlite_runtime: Runtime) -> None:
    per_connection, connections = 25, 6
    results: dict[int, list[str]] = {}

    def stream(n: int) -> None:
        with connect(listener) as sock:
            buffer = bytearray()
            codes = []
            for k in range(per_connection):
                sock.sendall(frame(oru(f"c{n}-{k}", "P1", "W7", "1", VALUES, T0)))
                codes.append(ack_fields(read_ack(sock, buffer))[0])
            results[n] = codes

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results[n] == ["AA"] * per_connection for n in range(connections))
    with sqlite_runtime.sessions() as db, db.begin():
        count = db.scalar(select(func.count()).select_from(VitalObservation))
    assert count == per_connection * connections * len(VALUES)


def test_python_hl7s_own_mllp_client(listener: Hl7Listener, sqlite_runtime: Runtime) -> None:
    with MLLPClient(HOST, listener.port) as client:
        reply = client.send_message(oru("client-1", "P1", "W7", "1", VALUES, T0))
    ack = hl7in.decode(reply.strip(b"\x0b\x1c\r"))
    assert hl7in.ack_code(ack)[:2] == ("AA", "client-1")
    assert stored(sqlite_runtime, "client-1") == (["AA"], 4)


def test_port_zero_picks_a_free_port(sqlite_runtime: Runtime, ward: Ward) -> None:
    listener = start_listener(sqlite_runtime, hl7_port=0)
    try:
        assert listener.port > 0
        assert send(listener, oru("zero-1", "P1", "W7", "1", VALUES, T0))[0] == "AA"
    finally:
        listener.stop()


def test_an_oru_is_stored_on_either_database(runtime: Runtime) -> None:
    """The bulk insert path on SQLite and on PostgreSQL (positional and named parameters)."""
    with runtime.sessions() as db, db.begin():
        ward = make_ward(db, beds=("1",))
        admit_patient(db, ward, "1", "P1", at=T0 - timedelta(days=1))
    listener = start_listener(runtime, hl7_port=0)
    try:
        assert send(listener, oru("db-1", "P1", "W7", "1", VALUES, T0))[0] == "AA"
        # Garbage with NUL bytes is still kept (PostgreSQL refuses NUL in text).
        assert send(listener, b"MSH|^~\\&|X\x00|Y|LODS\x00")[0] == "AR"
    finally:
        listener.stop()
    with runtime.sessions() as db, db.begin():
        rows = list(db.scalars(select(VitalObservation).order_by(VitalObservation.id)))
    assert [(r.parameter, r.value, r.observed_at, r.valid) for r in rows] == [
        (p, float(v), T0, True) for p, v in VALUES.items()
    ]
    with runtime.sessions() as db, db.begin():
        assert sorted(db.scalars(select(Hl7Message.ack_code))) == ["AA", "AR"]
