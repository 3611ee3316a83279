"""`lods-vendor-sim`: run the simulated vendor AI appliance as its own process.

Example::

    lods-vendor-sim --ae-title VENDORAI --port 11113 --model bright.onnx \\
        --finding "SCT:125605004:Fracture of bone" --return 127.0.0.1:11112 --return-ae LODS

`--package DIR` runs a Lods solution package with an `onnx` runtime instead of a bare
model. `--fail-mode no-answer|reject-association|slow SECONDS` makes it misbehave for tests.
It logs to stderr and exits cleanly (status 0) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from lods.solutions.runtimes.base import CodeRef
from lods.vendor_sim.appliance import (
    FAIL_MODES,
    MANUFACTURER,
    ApplianceConfig,
    OnnxDetector,
    VendorAppliance,
)

log = logging.getLogger("lods.vendor_sim")
DEFAULT_FINDING = "SCT:125605004:Fracture of bone"


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _code(text: str) -> CodeRef:
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"expected SCHEME:VALUE:MEANING, got {text!r}")
    return CodeRef(parts[0].strip().upper(), parts[1].strip(), parts[2].strip())


def _ae_title(text: str) -> str:
    value = text.strip()
    if not value or len(value) > 16 or "\\" in value:
        raise argparse.ArgumentTypeError("an AE title is 1 to 16 characters, no backslash")
    return value


def _fail_mode(values: Sequence[str]) -> tuple[str, float]:
    """Parse `none`, `no-answer`, `reject-association`, `slow SECONDS` or `slow:SECONDS`."""
    words = [w for v in values for w in v.replace(":", " ").replace("=", " ").split()]
    if not words or words[0] not in FAIL_MODES:
        raise ValueError(f"--fail-mode is one of {', '.join(FAIL_MODES)}")
    mode, rest = words[0], words[1:]
    if mode != "slow":
        if rest:
            raise ValueError(f"--fail-mode {mode} takes no value")
        return mode, 0.0
    if len(rest) != 1:
        raise ValueError("--fail-mode slow needs the extra SECONDS to wait, e.g. 'slow 5'")
    try:
        seconds = float(rest[0])
    except ValueError as exc:
        raise ValueError(f"--fail-mode slow: {rest[0]!r} is not a number of seconds") from exc
    if seconds < 0:
        raise ValueError("--fail-mode slow: seconds must not be negative")
    return mode, seconds


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `lods-vendor-sim`."""
    parser = argparse.ArgumentParser(
        prog="lods-vendor-sim",
        description="A simulated vendor AI appliance: receives studies by C-STORE, runs an "
        "ONNX model and sends back a DICOM TID 1500 SR (not a medical device).",
    )
    node = parser.add_argument_group("DICOM node")
    node.add_argument("--ae-title", type=_ae_title, default="VENDORAI", help="own AE title")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on")
    node.add_argument("--port", type=int, default=11113, help="port to listen on")
    node.add_argument(
        "--return",
        dest="return_node",
        type=_host_port,
        required=True,
        metavar="HOST:PORT",
        help="DICOM node the SR is sent to",
    )
    node.add_argument("--return-ae", type=_ae_title, default="LODS", help="its (called) AE title")
    node.add_argument("--quiet-seconds", type=float, default=1.0, help="quiet time ending a study")
    node.add_argument("--send-attempts", type=int, default=3, help="tries to send each SR")
    node.add_argument("--network-timeout", type=float, default=10.0, help="seconds")
    node.add_argument("--keep-dir", type=Path, help="keep every received instance here")
    node.add_argument("--manufacturer", default=MANUFACTURER, help="manufacturer in the SR")
    node.add_argument("--device-uid", default="", help="device observer UID (default: derived)")
    model = parser.add_argument_group("model")
    which = model.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="an ONNX model file (one finding class)")
    which.add_argument("--package", type=Path, help="a Lods solution package with an onnx runtime")
    model.add_argument(
        "--finding",
        type=_code,
        default=_code(DEFAULT_FINDING),
        help="SCHEME:VALUE:MEANING of the model's finding (with --model)",
    )
    model.add_argument("--label", default="", help="the finding's label (with --model)")
    model.add_argument("--input-size", type=int, default=64, help="square model input side")
    model.add_argument("--threshold", type=float, default=0.5, help="heatmap threshold for boxes")
    model.add_argument("--window", choices=("header", "minmax"), default="header")
    model.add_argument("--scores-output", default="scores")
    model.add_argument("--heatmap-output", default="heatmap", help="'' for none")
    model.add_argument("--model-version", default="1.0")
    parser.add_argument(
        "--fail-mode",
        nargs="+",
        default=["none"],
        metavar="MODE",
        help="none | no-answer | reject-association | slow SECONDS",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return parser


def _detector(args: argparse.Namespace) -> OnnxDetector:
    if args.package is not None:
        return OnnxDetector.from_package(args.package)
    return OnnxDetector.from_model(
        args.model,
        finding=args.finding,
        label=args.label,
        input_size=args.input_size,
        threshold=args.threshold,
        window=args.window,
        scores_output=args.scores_output,
        heatmap_output=args.heatmap_output or None,
        version=args.model_version,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the appliance until SIGTERM or SIGINT; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mode, slow_seconds = _fail_mode(args.fail_mode)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s %(levelname)s lods-vendor-sim: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        detector = _detector(args)
    except (OSError, ValueError) as exc:
        log.error("cannot load the model: %s", exc)
        return 2
    host, port = args.return_node
    config = ApplianceConfig(
        detector=detector,
        return_host=host,
        return_port=port,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        return_ae=args.return_ae,
        quiet_seconds=args.quiet_seconds,
        fail_mode=mode,  # type: ignore[arg-type]
        slow_seconds=slow_seconds,
        send_attempts=max(1, args.send_attempts),
        network_timeout=args.network_timeout,
        keep_dir=args.keep_dir,
        manufacturer=args.manufacturer,
        device_uid=args.device_uid,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    appliance = VendorAppliance(config)
    try:
        appliance.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 2
    try:
        while not stop.wait(0.5):
            pass
    finally:
        appliance.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
