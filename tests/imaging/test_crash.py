"""kill -9 during a multi-study send: every acknowledged instance survives, intact."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from lods.imaging.models import Instance
from lods.imaging.store import BlobStore


def _acknowledged(log: str) -> list[Path]:
    """Return the files whose C-STORE got a success response, from `storescu -v` output."""
    acked: list[Path] = []
    current: Path | None = None
    for line in log.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def _write_studies(dicom: Any, directory: Path, *, studies: int, per_study: int) -> list[Path]:
    paths = []
    for s in range(studies):
        study_uid = generate_uid()
        series = [generate_uid(), generate_uid()]
        for i in range(per_study):
            ds = dicom.make_dataset(
                study_uid=study_uid,
                series_uid=series[i % 2],
                patient_id=f"CRASH-{s}",
                instance_number=i + 1,
                size=512,
                seed=s * 100 + i,
            )
            paths.append(dicom.save(ds, directory / f"{s:02d}-{i:03d}.dcm"))
    return paths


@pytest.mark.peers
def test_kill_9_during_a_send_loses_no_acknowledged_instance(
    live_server: Any, dicom: Any, files_dir: Path
) -> None:
    paths = _write_studies(dicom, files_dir, studies=4, per_study=20)
    log_path = files_dir.parent / "storescu.log"
    with log_path.open("w") as log:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aet", "STORESCU", "-aec", "LODS", "127.0.0.1",
             str(live_server.dicom_port), *map(str, paths)],
            stdout=log, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while len(_acknowledged(log_path.read_text())) < 8:
            assert sender.poll() is None, "storescu ended before the crash"
            assert time.monotonic() < deadline, "the server acknowledged too little"
            time.sleep(0.01)
        live_server.kill()
        sender.wait(timeout=60)
    acked = _acknowledged(log_path.read_text())
    assert 8 <= len(acked) < len(paths), "the crash did not happen in the middle of the send"

    live_server.start()
    store = BlobStore(live_server.data_dir / "blobs", live_server.data_dir / "tmp")
    engine = create_engine(live_server.database_url)
    with Session(engine) as db:
        rows = {row.sop_instance_uid: row for row in db.scalars(select(Instance))}
        for path in acked:
            sent = path.read_bytes()
            sop_uid = _sop_uid(sent)
            assert sop_uid in rows, f"acknowledged {path.name} is missing after the crash"
            stored = store.read(rows[sop_uid].sha256)
            assert hashlib.sha256(stored).hexdigest() == rows[sop_uid].sha256
            assert dicom.dataset_bytes(stored) == dicom.dataset_bytes(sent)
        # No row points at a missing or damaged file, acknowledged or not.
        for row in rows.values():
            assert hashlib.sha256(store.read(row.sha256)).hexdigest() == row.sha256
    engine.dispose()
    done = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "LODS", "127.0.0.1", str(live_server.dicom_port)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, "the restarted server does not answer"


def _sop_uid(part10: bytes) -> str:
    from io import BytesIO

    import pydicom

    return str(pydicom.dcmread(BytesIO(part10), stop_before_pixels=True).SOPInstanceUID)
