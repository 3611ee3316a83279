"""`lods synth xray|mammo`: labelled cases on disk, and sent to a DICOM node like a modality."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from lods.cli import app
from lods.imaging.models import Study


def _run(*args: str) -> Any:
    result = CliRunner().invoke(app, ["synth", *args])
    assert result.exit_code == 0, result.output
    return result


def test_synth_xray_writes_cases_and_labels(tmp_path: Path) -> None:
    result = _run("xray", "--count", "4", "--size", "256", "--seed", "3", "--out", str(tmp_path))
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["kind"] == "xray" and len(labels["cases"]) == 4
    assert sum(c["label"] for c in labels["cases"]) == 2
    first = labels["cases"][0]
    ds = pydicom.dcmread(tmp_path / first["files"][0])
    assert ds.StudyInstanceUID == first["study_uid"]
    assert (tmp_path / "labels.csv").read_text().startswith("case_id,study_uid,label")
    assert "wrote 4 cases (2 positive" in result.output


def test_synth_mammo_prevalence(tmp_path: Path) -> None:
    _run("mammo", "--count", "5", "--size", "256", "--prevalence", "0.4", "--out", str(tmp_path))
    cases = json.loads((tmp_path / "labels.json").read_text())["cases"]
    assert [len(c["files"]) for c in cases] == [4] * 5
    assert sum(c["label"] for c in cases) == 2


@pytest.mark.peers
def test_synth_sends_each_case_as_a_modality_would(tmp_path: Path, live_server: Any) -> None:
    target = f"127.0.0.1:{live_server.dicom_port}"
    out = tmp_path / "cases"
    _run(
        "xray",
        "--count",
        "3",
        "--size",
        "256",
        "--out",
        str(out),
        "--send",
        target,
        "--calling-ae",
        "MODALITY",
    )
    engine = create_engine(live_server.database_url)
    deadline = time.monotonic() + 20
    count = 0
    while time.monotonic() < deadline:
        with Session(engine) as db:
            count = int(db.scalar(select(func.count()).select_from(Study)) or 0)
        if count == 3:
            break
        time.sleep(0.2)
    engine.dispose()
    assert count == 3


def test_synth_send_refused_by_unknown_node_fails(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "synth",
            "xray",
            "--count",
            "1",
            "--size",
            "256",
            "--out",
            str(tmp_path),
            "--send",
            "127.0.0.1:1",
        ],
    )
    assert result.exit_code == 1
