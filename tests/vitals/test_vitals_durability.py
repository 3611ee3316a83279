"""kill -9 of `lods serve` while monitors stream vital signs: every message that was
acknowledged is in the database with its observations (the ACK follows the commit)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from vitals_support import ack_fields, admit_patient, frame, make_ward, oru, read_ack

from lods.runtime import Runtime
from lods.vitals.models import Hl7Message, VitalObservation
from support import LiveServer, make_settings

CONNECTIONS = 4
BEDS = [str(n) for n in range(1, CONNECTIONS + 1)]
VALUES = {"spo2": 96, "heart_rate": 82, "resp_rate": 17, "temperature": 37.1}
#: Kill once this many messages were acknowledged (keeps the test to a few seconds).
KILL_AFTER = 300


def test_every_acknowledged_message_survives_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "live"
    server = LiveServer(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'lods.sqlite3'}")
    data_dir.mkdir(parents=True)
    rt = Runtime.open(make_settings(data_dir, server.database_url))
    at = datetime.now(UTC) - timedelta(hours=1)
    with rt.sessions() as db, db.begin():
        ward = make_ward(db, beds=BEDS)
        for bed in BEDS:
            admit_patient(db, ward, bed, f"P{bed}", at=at)
    rt.close()

    acked: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def stream(bed: str) -> None:
        try:
            with socket.create_connection(("127.0.0.1", server.hl7_port), timeout=10) as sock:
                buffer = bytearray()
                for n in range(100_000):
                    control_id = f"b{bed}-{n}"
                    sock.sendall(frame(oru(control_id, f"P{bed}", "W7", bed, VALUES)))
                    code, answered, _ = ack_fields(read_ack(sock, buffer))
                    assert (code, answered) == ("AA", control_id)
                    with lock:
                        acked.append(control_id)
                        if len(acked) >= KILL_AFTER:
                            enough.set()
        except (OSError, ConnectionError):
            return  # the server was killed

    server.start()
    try:
        threads = [threading.Thread(target=stream, args=(bed,)) for bed in BEDS]
        for t in threads:
            t.start()
        assert enough.wait(60), "the listener did not acknowledge enough messages"
        server.kill()
        deadline = time.monotonic() + 15
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads)
    finally:
        server.stop()

    rt = Runtime.open(make_settings(data_dir, server.database_url))
    try:
        with rt.sessions() as db, db.begin():
            kept = dict(
                db.execute(
                    select(Hl7Message.control_id, func.count(VitalObservation.id))
                    .outerjoin(VitalObservation, VitalObservation.message_fk == Hl7Message.id)
                    .group_by(Hl7Message.control_id)
                ).all()
            )
    finally:
        rt.close()
    assert len(acked) >= KILL_AFTER
    missing = [c for c in acked if c not in kept]
    assert not missing, f"{len(missing)} acknowledged messages were lost, e.g. {missing[:3]}"
    assert all(kept[c] == len(VALUES) for c in acked)
