"""`lods-vendor-sim`: one SR per study after a quiet period, misbehaviour on demand, clean exit."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from lods.findings.sr import parse_measurement_report
from lods.solutions.runtimes.base import CodeRef
from lods.solutions.toymodels import bright_spot_model
from lods.vendor_sim.appliance import ApplianceConfig, OnnxDetector, VendorAppliance
from lods.vendor_sim.cli import _fail_mode, build_parser

SIM_AE = "SIMAI"
RETURN_AE = "LODSTEST"
FRACTURE = CodeRef("SCT", "125605004", "Fracture of bone")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise AssertionError(f"lods-vendor-sim exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def image(study_uid: str, *, bright: bool) -> Dataset:
    """A 128x128 12-bit CR image; a bright square at rows 32-63, columns 64-95 when `bright`."""
    pixels = np.full((128, 128), 200, dtype=np.uint16)
    if bright:
        pixels[32:64, 64:96] = 4000
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Sim", "SIM1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240501", "101500", "", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CR"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def send(port: int, *datasets: Dataset) -> None:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=SIM_AE)
    assert assoc.is_established
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    assoc.release()


class Receiver:
    """The node the simulator answers to: keeps every data set with its arrival time."""

    def __init__(self) -> None:
        ae = AE(ae_title=RETURN_AE)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax)
        self.received: list[tuple[float, str, Dataset]] = []
        self.lock = threading.Lock()
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Any) -> int:
        with self.lock:
            calling = str(event.assoc.requestor.ae_title).strip()
            self.received.append((time.monotonic(), calling, event.dataset))
        return 0x0000

    def for_study(self, study_uid: str) -> list[tuple[float, str, Dataset]]:
        with self.lock:
            return [r for r in self.received if r[2].StudyInstanceUID == study_uid]

    def wait(self, study_uid: str, timeout: float = 10) -> list[tuple[float, str, Dataset]]:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if found := self.for_study(study_uid):
                return found
            time.sleep(0.02)
        raise AssertionError(f"no answer for study {study_uid}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    node = Receiver()
    yield node
    node.server.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bright_spot_model(tmp_path_factory.mktemp("model") / "bright.onnx")


def sim_command(*args: str) -> list[str]:
    script = shutil.which("lods-vendor-sim") or str(Path(sys.executable).parent / "lods-vendor-sim")
    if Path(script).exists():
        return [script, *args]
    return [sys.executable, "-m", "lods.vendor_sim.cli", *args]


def start_sim(model: Path, return_port: int, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        sim_command(
            "--ae-title", SIM_AE, "--port", str(port), "--model", str(model),
            "--return", f"127.0.0.1:{return_port}", "--return-ae", RETURN_AE, *extra,
        ),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    wait_listening(port, proc)
    return proc, port


def test_one_sr_per_study_after_the_quiet_period(model: Path, receiver: Receiver) -> None:
    proc, port = start_sim(model, receiver.port, "--quiet-seconds", "1.0")
    try:
        study_a, study_b = generate_uid(), generate_uid()
        a1, a2, b1 = (
            image(study_a, bright=True),
            image(study_a, bright=False),
            image(study_b, bright=False),
        )
        send(port, a1)
        send(port, b1)
        time.sleep(0.5)
        assert receiver.for_study(study_a) == []
        send(port, a2)
        last_sent = time.monotonic()

        arrived, calling, sr = receiver.wait(study_a)[0]
        assert arrived - last_sent >= 0.9
        assert calling == SIM_AE
        receiver.wait(study_b)
        time.sleep(0.6)
        assert len(receiver.for_study(study_a)) == 1
        assert len(receiver.for_study(study_b)) == 1

        report = parse_measurement_report(sr)
        evidence = {
            str(ref.ReferencedSOPInstanceUID)
            for item in sr.CurrentRequestedProcedureEvidenceSequence
            for series in item.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        }
        assert evidence == {str(a1.SOPInstanceUID), str(a2.SOPInstanceUID)}
        assert report.manufacturer == "Lods Vendor Simulator"
        assert report.algorithm_name == "bright" and report.device_name == SIM_AE
        assert report.verified is False
        boxed = [f for f in report.findings if f.box is not None]
        assert [f.sop_instance_uid for f in boxed] == [str(a1.SOPInstanceUID)]
        assert boxed[0].box is not None
        assert boxed[0].box.as_list() == pytest.approx([64, 32, 96, 64], abs=2)
        (overall,) = [f for f in report.findings if f.sop_instance_uid is None]
        assert overall.code == FRACTURE and overall.score is not None and overall.score > 0.9
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def test_sigterm_stops_the_process_cleanly(model: Path, receiver: Receiver) -> None:
    proc, _ = start_sim(model, receiver.port)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    log = err.decode(errors="replace")
    assert proc.returncode == 0, log
    assert "listening on 127.0.0.1" in log
    assert "SIGTERM" in log and "stopped" in log


def test_rejecting_appliance_refuses_every_association(model: Path, receiver: Receiver) -> None:
    detector = OnnxDetector.from_model(model, finding=FRACTURE)
    config = ApplianceConfig(
        detector=detector,
        return_host="127.0.0.1",
        return_port=receiver.port,
        ae_title=SIM_AE,
        port=0,
        fail_mode="reject-association",
    )
    with VendorAppliance(config) as appliance:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", appliance.port, ae_title=SIM_AE)
        assert assoc.is_rejected


def test_slow_appliance_answers_late_in_process(model: Path, receiver: Receiver) -> None:
    detector = OnnxDetector.from_model(model, finding=FRACTURE)
    config = ApplianceConfig(
        detector=detector,
        return_host="127.0.0.1",
        return_port=receiver.port,
        return_ae=RETURN_AE,
        ae_title=SIM_AE,
        port=0,
        quiet_seconds=0.2,
        fail_mode="slow",
        slow_seconds=0.8,
    )
    study = generate_uid()
    with VendorAppliance(config) as appliance:
        send(appliance.port, image(study, bright=True))
        sent = time.monotonic()
        arrived = receiver.wait(study)[0][0]
        assert arrived - sent >= 0.9
        until = time.monotonic() + 5
        while not appliance.answered and time.monotonic() < until:
            time.sleep(0.02)  # the sender notes the answer after its association is released
        assert len(appliance.answered) == 1


def test_package_detector_reads_a_solution_package(model: Path, tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    shutil.copy(model, package / "model.onnx")
    manifest = {
        "id": "toy.bright",
        "name": "Bright spot",
        "version": "2.0",
        "vendor": "Lods",
        "regulatory": {"status": "demonstration"},
        "intended_use": {
            "summary": "Finds bright squares in test images.",
            "input_kind": "dicom-study",
            "modalities": ["CR"],
        },
        "runtime": {
            "kind": "onnx",
            "model": "model.onnx",
            "classes": ["spot"],
            "preprocess": {"resize": [64, 64], "window": "minmax"},
            "postprocess": {"scores_output": "scores", "heatmap_output": "heatmap"},
        },
        "outputs": {
            "findings": [
                {
                    "key": "spot",
                    "code": {"scheme": "SCT", "value": "125605004", "meaning": "Fracture of bone"},
                    "label": "Spot",
                }
            ],
            "operating_points": {"sure": 0.8, "doubtful": 0.5},
        },
        "data_egress": {"kind": "none"},
        "files": {"model.onnx": hashlib.sha256((package / "model.onnx").read_bytes()).hexdigest()},
    }
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    path = tmp_path / "image.dcm"
    ds = image(generate_uid(), bright=True)
    ds.save_as(path, enforce_file_format=True)

    detector = OnnxDetector.from_package(package)
    found = detector.detect(path)

    assert (detector.name, detector.version) == ("Bright spot", "2.0")
    scores = [d for d in found if d.box is None]
    boxes = [d for d in found if d.box is not None]
    assert len(scores) == 1 and scores[0].score > 0.9 and scores[0].label == "Spot"
    assert len(boxes) == 1 and boxes[0].frame == 1
    assert boxes[0].box is not None
    assert boxes[0].box.as_list() == pytest.approx([64, 32, 96, 64], abs=2)


def test_fail_mode_option() -> None:
    assert _fail_mode(["none"]) == ("none", 0.0)
    assert _fail_mode(["slow", "5"]) == ("slow", 5.0)
    assert _fail_mode(["slow:2.5"]) == ("slow", 2.5)
    for bad in (["slow"], ["no-answer", "3"], ["explode"]):
        with pytest.raises(ValueError):
            _fail_mode(bad)
    args = build_parser().parse_args(
        ["--return", "127.0.0.1:104", "--model", "m.onnx", "--fail-mode", "slow", "3"]
    )
    assert args.return_node == ("127.0.0.1", 104) and args.fail_mode == ["slow", "3"]
