"""The simulated vendor appliance: receive a study, run an ONNX model, send back a TID 1500 SR.

Behaviour, as a real appliance's: a pynetdicom storage SCP (plus C-ECHO) accepts the common
image storage SOP classes in any transfer syntax and keeps each instance in a working
folder, grouped by Study Instance UID. When a study has been quiet for `quiet_seconds`,
the model runs on each image (pre-processing and box finding from
`lods.solutions.runtimes.imageprep`, the same as Lods' own `onnx` runtime), and one
Comprehensive 3D SR is built with `lods.findings.sr.build_measurement_report`: per finding
class a study-level group with the highest score, and a planar ROI group (box and peak
score) per heatmap region on its image. The SR goes back by C-STORE to the return node,
called with the appliance's own AE title, retried a few times.

Misbehaviour for tests (`fail_mode`): "no-answer" receives but never answers,
"reject-association" rejects every association (calling AE not recognised), "slow" waits
`slow_seconds` more before answering.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from lods.findings.sr import ParsedFinding, build_measurement_report
from lods.solutions.manifest import (
    MANIFEST_NAME,
    OnnxPostprocess,
    OnnxPreprocess,
    OnnxRuntimeSpec,
    parse_manifest,
)
from lods.solutions.runtimes.base import Box, CodeRef, RuntimeErrorBase
from lods.solutions.runtimes.imageprep import heatmap_boxes, load_frames, prepare, to_unit_range

log = logging.getLogger("lods.vendor_sim")

FailMode = Literal["none", "no-answer", "reject-association", "slow"]
FAIL_MODES: tuple[str, ...] = ("none", "no-answer", "reject-association", "slow")
MANUFACTURER = "Lods Vendor Simulator"
#: The only calling AE title let in under fail mode "reject-association" (nobody uses it).
_NOBODY = "SIM-NOBODY-ALLOWED"[:16]
_STORAGE_SYNTAXES = [ts for ts in AllTransferSyntaxes if not ts.startswith("1.2.840.10008.1.2.7.")]
_POLL_SECONDS = 0.05


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One model result: a class's score on an image frame, with a box when it has one."""

    code: CodeRef
    label: str
    score: float
    sop_instance_uid: str
    frame: int
    box: Box | None = None


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-values)), dtype=np.float32)


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return _sigmoid(values)
    if activation == "softmax":
        shifted = np.exp(values - values.max())
        return np.asarray(shifted / shifted.sum(), dtype=np.float32)
    return values.astype(np.float32)


class OnnxDetector:
    """An ONNX model with its pre- and post-processing, run image by image on CPU."""

    def __init__(
        self,
        model_path: Path,
        *,
        preprocess: OnnxPreprocess,
        postprocess: OnnxPostprocess,
        findings: Sequence[tuple[CodeRef, str]],
        input_name: str | None = None,
        name: str = "",
        version: str = "1.0",
    ) -> None:
        if not findings:
            raise ValueError("a detector needs at least one finding class")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = [i.name for i in self.session.get_inputs()]
        if input_name is None and len(inputs) != 1:
            raise ValueError(f"the model has inputs {inputs}; name the one to feed")
        self.input_name = input_name or inputs[0]
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.findings = list(findings)
        self.name = name or model_path.stem
        self.version = version

    @classmethod
    def from_model(
        cls,
        model_path: Path,
        *,
        finding: CodeRef,
        label: str = "",
        input_size: int = 64,
        threshold: float = 0.5,
        window: Literal["header", "minmax"] = "header",
        scores_output: str = "scores",
        heatmap_output: str | None = "heatmap",
        version: str = "1.0",
    ) -> OnnxDetector:
        """A one-class detector for a bare model file (square input, boxes at `threshold`)."""
        return cls(
            model_path,
            preprocess=OnnxPreprocess(resize=(input_size, input_size), window=window),
            postprocess=OnnxPostprocess(
                scores_output=scores_output,
                heatmap_output=heatmap_output,
                heatmap_threshold=threshold,
                min_box_fraction=0.0,
            ),
            findings=[(finding, label or finding.meaning)],
            name=model_path.stem,
            version=version,
        )

    @classmethod
    def from_package(cls, package_dir: Path) -> OnnxDetector:
        """The detector a Lods solution package with an `onnx` runtime describes."""
        manifest = parse_manifest((package_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        spec = manifest.runtime
        if not isinstance(spec, OnnxRuntimeSpec):
            raise ValueError(f"package {manifest.id} does not have an onnx runtime")
        findings = []
        for key in spec.classes:
            output = manifest.outputs.finding(key)
            code = CodeRef(output.code.scheme, output.code.value, output.code.meaning)
            findings.append((code, output.label))
        return cls(
            package_dir / spec.model,
            preprocess=spec.preprocess,
            postprocess=spec.postprocess,
            findings=findings,
            input_name=spec.input_name,
            name=manifest.name,
            version=manifest.version,
        )

    def detect(self, path: Path) -> list[Detection]:
        """Run the model on the chosen frames of the image at `path`."""
        pre, post = self.preprocess, self.postprocess
        wanted = [post.scores_output] + ([post.heatmap_output] if post.heatmap_output else [])
        found: list[Detection] = []
        for frame in load_frames(path, pre.frames):
            ds = frame.dataset
            uid = str(ds.SOPInstanceUID)
            laterality = str(ds.get("ImageLaterality") or ds.get("Laterality") or "")
            image01 = to_unit_range(frame, pre.window, pre.invert_monochrome1)
            tensor, geometry = prepare(image01, pre, laterality=laterality)
            outputs = self.session.run(wanted, {self.input_name: tensor[np.newaxis]})
            scores = _activate(
                np.asarray(outputs[0], dtype=np.float32).reshape(-1), post.activation
            )
            if scores.size != len(self.findings):
                raise ValueError(
                    f"the model gives {scores.size} scores for {len(self.findings)} classes"
                )
            heatmaps = None
            if post.heatmap_output:
                heatmaps = _activate(
                    np.asarray(outputs[1], dtype=np.float32)[0], post.heatmap_activation
                )
            for index, (code, label) in enumerate(self.findings):
                score = float(scores[index])
                found.append(Detection(code, label, score, uid, frame.number))
                if heatmaps is None:
                    continue
                grid = heatmaps[index]
                for box, peak in heatmap_boxes(
                    grid,
                    threshold=post.heatmap_threshold,
                    min_fraction=post.min_box_fraction,
                    max_boxes=post.max_boxes,
                ):
                    placed = geometry.to_image(box, (int(grid.shape[0]), int(grid.shape[1])))
                    if placed.x1 > placed.x0 and placed.y1 > placed.y0:
                        found.append(Detection(code, label, peak, uid, frame.number, placed))
        return found


# --- the appliance --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplianceConfig:
    """How the appliance listens, what it runs and where it answers."""

    detector: OnnxDetector
    return_host: str
    return_port: int
    ae_title: str = "VENDORAI"
    host: str = "127.0.0.1"
    port: int = 11113
    return_ae: str = "LODS"
    quiet_seconds: float = 1.0
    fail_mode: FailMode = "none"
    slow_seconds: float = 0.0
    send_attempts: int = 3
    network_timeout: float = 10.0
    #: Keep every received instance here (default: a temporary folder, emptied as it goes).
    keep_dir: Path | None = None
    manufacturer: str = MANUFACTURER
    device_uid: str = ""


@dataclass
class _Study:
    files: dict[str, Path] = field(default_factory=dict)
    last: float = 0.0


class VendorAppliance:
    """The appliance: `start()` listens and answers in background threads, `stop()` ends it."""

    def __init__(self, config: ApplianceConfig) -> None:
        self.config = config
        self.device_uid = config.device_uid or str(
            generate_uid(entropy_srcs=["lods.vendor_sim", config.ae_title])
        )
        self._series_uid = str(generate_uid())
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadedAssociationServer | None = None
        self._worker: threading.Thread | None = None
        self._tmp: Path | None = None
        self._reports = 0
        #: SOP Instance UIDs of the SRs sent back (in order).
        self.answered: list[str] = []

    # lifecycle -----------------------------------------------------------------------------

    @property
    def work_dir(self) -> Path:
        if self.config.keep_dir is not None:
            return self.config.keep_dir
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="lods-vendor-sim-"))
        return self._tmp

    @property
    def port(self) -> int:
        """The port it listens on (useful when the config asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the appliance is not running")
        return int(self._server.server_address[1])

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.config.network_timeout
        ae.maximum_associations = 16
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, _STORAGE_SYNTAXES)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if self.config.fail_mode == "reject-association":
            ae.require_calling_aet = [_NOBODY]
        return ae

    def start(self) -> None:
        """Listen on the configured host and port; returns at once."""
        if self._server is not None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        address = (self.config.host, self.config.port)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self._server = self._make_ae().start_server(address, block=False, evt_handlers=handlers)
        self._stop.clear()
        self._worker = threading.Thread(target=self._loop, name="vendor-sim-worker", daemon=True)
        self._worker.start()
        log.info(
            "AE %s listening on %s:%d (fail mode %s); answers go to %s at %s:%d",
            self.config.ae_title,
            self.config.host,
            self.port,
            self.config.fail_mode,
            self.config.return_ae,
            self.config.return_host,
            self.config.return_port,
        )

    def stop(self) -> None:
        """Stop listening, abort open associations and drop studies not yet answered."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            for assoc in list(server.active_associations):
                assoc.abort()
            server.shutdown()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        log.info("AE %s stopped", self.config.ae_title)

    def __enter__(self) -> VendorAppliance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # receiving -----------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(ds.SOPInstanceUID)
            folder = self.work_dir / study_uid
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{sop_uid}.dcm"
            ds.save_as(path, enforce_file_format=True)
        except Exception:
            log.exception("could not keep a received instance")
            return 0xA700
        with self._lock:
            study = self._studies.setdefault(study_uid, _Study())
            study.files[sop_uid] = path
            study.last = time.monotonic()
        log.info(
            "received %s of study %s from %s",
            sop_uid,
            study_uid,
            event.assoc.requestor.ae_title,
        )
        return 0x0000

    def _quiet_studies(self) -> list[tuple[str, _Study]]:
        now = time.monotonic()
        with self._lock:
            ready = [
                uid for uid, s in self._studies.items() if now - s.last >= self.config.quiet_seconds
            ]
            return [(uid, self._studies.pop(uid)) for uid in ready]

    def _loop(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            for study_uid, study in self._quiet_studies():
                try:
                    self._answer(study_uid, study)
                except Exception:
                    log.exception("answering study %s failed", study_uid)
                finally:
                    if self.config.keep_dir is None:
                        for path in study.files.values():
                            path.unlink(missing_ok=True)

    # answering -----------------------------------------------------------------------------

    def analyse(self, study_uid: str, paths: Sequence[Path]) -> Dataset | None:
        """Run the model on the study's images and return the SR, or None when none was readable."""
        evidence: list[Dataset] = []
        detections: list[Detection] = []
        for path in sorted(paths):
            try:
                found = self.config.detector.detect(path)
            except (RuntimeErrorBase, ValueError) as exc:
                log.warning("study %s: cannot analyse %s: %s", study_uid, path.name, exc)
                continue
            evidence.append(pydicom.dcmread(path, stop_before_pixels=True))
            detections.extend(found)
        if not evidence:
            log.error("study %s: no image could be analysed; no answer", study_uid)
            return None
        detector = self.config.detector
        findings: list[ParsedFinding] = []
        for code, label in detector.findings:
            scores = [d.score for d in detections if d.code == code and d.box is None]
            findings.append(ParsedFinding(code=code, score=max(scores, default=0.0), label=label))
        for number, d in enumerate((d for d in detections if d.box is not None), start=1):
            findings.append(
                ParsedFinding(
                    code=d.code,
                    score=d.score,
                    sop_instance_uid=d.sop_instance_uid,
                    frame=d.frame,
                    box=d.box,
                    label=f"{d.label} region {number}",
                )
            )
        with self._lock:
            self._reports += 1
            number = self._reports
        return build_measurement_report(
            evidence,
            findings,
            manufacturer=self.config.manufacturer,
            algorithm_name=detector.name,
            algorithm_version=detector.version,
            device_uid=self.device_uid,
            device_name=self.config.ae_title,
            model_name=f"{self.config.manufacturer} ({detector.name})"[:64],
            series_uid=self._series_uid,
            instance_number=number,
        )

    def _answer(self, study_uid: str, study: _Study) -> None:
        mode = self.config.fail_mode
        log.info("study %s is quiet with %d instance(s)", study_uid, len(study.files))
        report = self.analyse(study_uid, list(study.files.values()))
        if report is None:
            return
        if mode == "no-answer":
            log.warning("fail mode no-answer: not answering study %s", study_uid)
            return
        if mode == "slow" and self._stop.wait(self.config.slow_seconds):
            return
        self._send(report)

    def _send(self, report: Dataset) -> bool:
        """Send `report` to the return node, retrying; return whether it was stored."""
        cfg = self.config
        where = f"{cfg.return_ae} at {cfg.return_host}:{cfg.return_port}"
        for attempt in range(1, cfg.send_attempts + 1):
            problem = self._send_once(report)
            if problem is None:
                self.answered.append(str(report.SOPInstanceUID))
                log.info(
                    "sent SR %s for study %s to %s",
                    report.SOPInstanceUID,
                    report.StudyInstanceUID,
                    where,
                )
                return True
            log.warning("sending SR to %s failed (attempt %d): %s", where, attempt, problem)
            if attempt < cfg.send_attempts and self._stop.wait(0.5 * 2 ** (attempt - 1)):
                break
        log.error("gave up sending SR %s to %s", report.SOPInstanceUID, where)
        return False

    def _send_once(self, report: Dataset) -> str | None:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = cfg.network_timeout
        ae.connection_timeout = cfg.network_timeout
        ae.add_requested_context(
            report.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        assoc = ae.associate(cfg.return_host, cfg.return_port, ae_title=cfg.return_ae)
        if not assoc.is_established:
            return "association rejected, aborted or not reachable"
        try:
            status = assoc.send_c_store(report)
        except (RuntimeError, ValueError) as exc:
            assoc.abort()
            return str(exc)
        assoc.release()
        if not status or "Status" not in status:
            return "no C-STORE response"
        if int(status.Status) not in (0x0000, 0xB000, 0xB006, 0xB007):
            return f"C-STORE status 0x{int(status.Status):04X}"
        return None
