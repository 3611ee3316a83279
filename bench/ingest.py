#!/usr/bin/env python3
"""Ingest benchmark: one DCMTK `storescu` association of N 2048² CR images into Lods,
Orthanc and DCMTK `storescp` (writing files, and receive-only), interleaved over
repetitions, with medians and ratios. Prints figures; it is not a test.

    .venv/bin/python bench/ingest.py [--count 250] [--reps 3] [--pdu 131072]

Images are generated once and cached in bench/out/ (git-ignored). Every receiver runs
on loopback with a fresh storage folder on the same disk as the repository, in the same
environment (TCP_NODELAY=1), with the same maximum PDU; the page cache is flushed
(`sync`) between runs so one receiver's unwritten files do not slow the next one down.
The time of a run is from storescu's association request to its last C-STORE response,
read from its verbose log as it happens, so scanning the input files is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from lods.synth.xray import BODY_PARTS, make_study, synthetic_patient

OUT = Path(__file__).resolve().parent / "out"
CALLING_AE = "BENCH"
BASES = 10  # fully rendered images; the others are copies with their own noise and UIDs
GENERATOR_VERSION = 1
MB = 1_000_000


def _env() -> dict[str, str]:
    """Return the environment every process of the benchmark runs in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LODS_")}
    env["TCP_NODELAY"] = "1"  # DCMTK (storescu, storescp, Orthanc) leaves Nagle on otherwise
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    folder: Path
    count: int
    total_bytes: int
    size: int


def _base_images(size: int, seed: int) -> list[Dataset]:
    return [
        make_study(
            seed * 1_000 + k,
            body_part=BODY_PARTS[k % len(BODY_PARTS)],
            modality="CR",
            patient=synthetic_patient(k + 1, seed=seed),
            views=1,
            size=size,
        )[0]
        for k in range(BASES)
    ]


def _write_images(folder: Path, *, count: int, size: int, seed: int) -> None:
    """Write `count` CR images: rendered bases, each copy with its own noise and UIDs."""
    folder.mkdir(parents=True)
    bases = _base_images(size, seed)
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = bases[i % BASES]
        ds = base.copy()
        ds.file_meta = FileMetaDataset(base.file_meta)
        pixels = np.frombuffer(base.PixelData, dtype="<u2").reshape(size, size)
        noise = rng.integers(0, 8, size=(size, size), dtype=np.uint16)
        ds.PixelData = np.minimum(pixels + noise, 4095).astype("<u2").tobytes()
        tag = ["lods-bench", str(seed), str(i)]
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[*tag, "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*tag, "series"])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[*tag, "instance"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.AccessionNumber = f"BENCH{i:05d}", f"B{seed:03d}{i:06d}"
        ds.save_as(folder / f"cr-{i:05d}.dcm", enforce_file_format=True)


def generate_images(*, count: int, size: int, seed: int) -> ImageSet:
    """Return the cached image set, generating it first if it is missing or different."""
    folder = OUT / f"cr-{size}-n{count}-s{seed}"
    manifest = folder.with_suffix(".json")
    wanted = {"count": count, "size": size, "seed": seed, "version": GENERATOR_VERSION}
    if not manifest.exists() or json.loads(manifest.read_text()) != wanted:
        print(f"generating {count} CR images of {size}×{size} in {folder} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        _write_images(folder, count=count, size=size, seed=seed)
        manifest.write_text(json.dumps(wanted))
    total = sum(p.stat().st_size for p in folder.iterdir())
    return ImageSet(folder=folder, count=count, total_bytes=total, size=size)


# --- the receivers ----------------------------------------------------------------------------


def _echo(port: int, called_ae: str, env: dict[str, str]) -> bool:
    cmd = ["echoscu", "-aet", CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port)]
    return subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Receiver:
    """A DICOM receiver under test: how to start it in a fresh folder and count what it holds."""

    name = ""
    called_ae = ""

    def __init__(self, *, pdu: int, env: dict[str, str]) -> None:
        self.pdu, self.env = pdu, env
        self.folder = Path()
        self.dicom_port = self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def process_env(self) -> dict[str, str]:
        return self.env

    def prepare(self) -> None:
        """Create what the receiver needs in its folder before it starts."""

    def ready(self) -> bool:
        return _echo(self.dicom_port, self.called_ae, self.env)

    def stored(self, *, acknowledged: int) -> int:
        """Return how many images the receiver holds, by its own account."""
        raise NotImplementedError

    def start(self, folder: Path) -> None:
        self.folder, self.dicom_port, self.http_port = folder, free_port(), free_port()
        folder.mkdir(parents=True)
        self.prepare()
        with (folder / "receiver.log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.process_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the receiver
            )
        deadline = time.monotonic() + 120
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (folder / "receiver.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} did not start:\n{log_tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Lods(Receiver):
    """`lods serve` on SQLite in a fresh data dir, with the sender registered as a node."""

    name, called_ae = "Lods", "LODS"

    def process_env(self) -> dict[str, str]:
        return self.env | {
            "LODS_DATA_DIR": str(self.folder / "data"),
            "LODS_HTTP_PORT": str(self.http_port),
            "LODS_DICOM_PORT": str(self.dicom_port),
            "LODS_DICOM_AE_TITLE": self.called_ae,
            "LODS_DICOM_MAX_PDU": str(self.pdu),
        }

    def prepare(self) -> None:
        # Register the sender as an administrator would, before the server starts.
        for args in (
            ("site", "add", "BENCH", "Benchmark sender"),
            ("site", "node", "add", CALLING_AE, "--site", "BENCH"),
        ):
            cmd = [sys.executable, "-m", "lods", *args]
            subprocess.run(cmd, env=self.process_env(), check=True, capture_output=True)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lods", "serve"]

    def ready(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.http_port}/healthz") and super().ready()

    def stored(self, *, acknowledged: int) -> int:
        query = "SELECT count(*) FROM instances WHERE superseded_at IS NULL AND channel = 'dicom'"
        db = sqlite3.connect(self.folder / "data" / "lods.sqlite3")
        try:
            return int(db.execute(query).fetchone()[0])
        finally:
            db.close()


class Orthanc(Receiver):
    """Debian's Orthanc: SQLite index, fsync per file, no plugins, loopback only."""

    name, called_ae = "Orthanc", "ORTHANC"

    def prepare(self) -> None:
        config = {
            "Name": "lods-bench",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "StorageCompression": False,
            "SyncStorageArea": True,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.called_ae,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "MaximumPduLength": self.pdu,
            "SaveJobs": False,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(self.folder / "orthanc.json")]

    def ready(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.http_port}/system") and super().ready()

    def stored(self, *, acknowledged: int) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(json.load(response)["CountInstances"])


class StorescpWrite(Receiver):
    """DCMTK storescp writing each image to a file (no fsync)."""

    name, called_ae = "storescp", "STORESCP"

    def command(self) -> list[str]:
        (self.folder / "files").mkdir()
        out = ["--output-directory", str(self.folder / "files")]
        return [
            "storescp",
            "--aetitle",
            self.called_ae,
            "--max-pdu",
            str(self.pdu),
            *out,
            str(self.dicom_port),
        ]

    def stored(self, *, acknowledged: int) -> int:
        return sum(1 for p in (self.folder / "files").rglob("*") if p.is_file())


class StorescpIgnore(Receiver):
    """DCMTK storescp --ignore: receives and acknowledges, keeps nothing (protocol ceiling)."""

    name, called_ae = "storescp --ignore", "STORESCP"

    def command(self) -> list[str]:
        return [
            "storescp",
            "--aetitle",
            self.called_ae,
            "--max-pdu",
            str(self.pdu),
            "--ignore",
            str(self.dicom_port),
        ]

    def stored(self, *, acknowledged: int) -> int:
        return acknowledged  # it keeps nothing: what it acknowledged is what it received


# --- sending and measuring ----------------------------------------------------------------------


@dataclass
class Run:
    receiver: str
    rep: int
    seconds: float
    associations: int
    acknowledged: int
    stored: int
    pdv: str = "?"  # the largest PDV the receiver accepted, as storescu reports it
    problems: list[str] = field(default_factory=list)


def send(images: ImageSet, *, port: int, called_ae: str, env: dict[str, str]) -> Run:
    """Return the timing of sending the image set over one storescu association."""
    cmd = [
        "storescu",
        "-v",
        "-R",
        "-aet",
        CALLING_AE,
        "-aec",
        called_ae,
        "+sd",
        "127.0.0.1",
        str(port),
        str(images.folder),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    requested, responses, associations, problems, pdv = 0.0, [], 0, [], "?"
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            now, line = time.monotonic(), raw.decode(errors="replace").strip()
            if line.startswith("I: Requesting Association"):
                associations, requested = associations + 1, requested or now
            elif line.startswith("I: Association Accepted (Max Send PDV:"):
                pdv = line.rsplit(" ", 1)[-1].rstrip(")")
            elif line.startswith("I: Received Store Response (Success)"):
                responses.append(now)
            elif line.startswith(("E:", "F:", "W:")):
                problems.append(line)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = (responses[-1] - requested) if responses and requested else float("nan")
    return Run("", 0, seconds, associations, len(responses), 0, pdv, problems)


def run_once(receiver: Receiver, images: ImageSet, *, rep: int, work: Path) -> Run:
    """Return one measured run: fresh receiver, one association, its own count checked."""
    folder = work / f"{rep}-{type(receiver).__name__}"
    try:
        receiver.start(folder)
        run = send(images, port=receiver.dicom_port, called_ae=receiver.called_ae, env=receiver.env)
        run.stored = receiver.stored(acknowledged=run.acknowledged)
    finally:
        receiver.stop()
        shutil.rmtree(folder, ignore_errors=True)
        os.sync()  # the next receiver should not pay for this one's unwritten files
    run.receiver, run.rep = receiver.name, rep
    if run.associations != 1:
        run.problems.append(f"{run.associations} associations instead of one")
    if not run.acknowledged == run.stored == images.count:
        run.problems.append(
            f"{images.count} sent, {run.acknowledged} acknowledged, {run.stored} stored"
        )
    return run


# --- report -----------------------------------------------------------------------------------


def _rates(run: Run, images: ImageSet) -> tuple[float, float]:
    return images.count / run.seconds, images.total_bytes / MB / run.seconds


def _medians(runs: list[Run], images: ImageSet) -> dict[str, tuple[float, float]]:
    names = list(dict.fromkeys(r.receiver for r in runs))
    medians = {}
    for name in names:
        good = [_rates(r, images) for r in runs if r.receiver == name and not r.problems]
        if good:
            medians[name] = (
                statistics.median(g[0] for g in good),
                statistics.median(g[1] for g in good),
            )
    return medians


def report(runs: list[Run], images: ImageSet) -> None:
    """Print every run, the medians per receiver and the ratios that matter."""
    print(f"\n{'rep':>3}  {'receiver':<18} {'images/s':>9} {'MB/s':>8} {'seconds':>8}  check")
    for r in runs:
        ips, mbs = _rates(r, images)
        check = "; ".join(r.problems) or f"{r.stored}/{images.count} stored, 1 association"
        check += f", max PDV {r.pdv}"
        print(
            f"{r.rep + 1:>3}  {r.receiver:<18} {ips:>9.1f} {mbs:>8.0f} {r.seconds:>8.2f}  {check}"
        )
    medians = _medians(runs, images)
    print(f"\nmedians over {len({r.rep for r in runs})} repetitions (runs with problems left out):")
    for name, (ips, mbs) in medians.items():
        print(f"     {name:<18} {ips:>9.1f} {mbs:>8.0f}")
    lods = medians.get("Lods")
    if lods is None:
        print("\nno valid Lods run: no ratios")
        return
    print()
    for peer in ("Orthanc", "storescp", "storescp --ignore"):
        if peer in medians:
            print(f"Lods / {peer:<18} {lods[0] / medians[peer][0]:5.2f}×")
    if "Orthanc" in medians:
        ratio = lods[0] / medians["Orthanc"][0]
        verdict = "yes" if ratio >= 1.5 else "NO"
        print(f"Lods ≥ 1.5× Orthanc: {verdict} ({ratio:.2f}×)")


# --- main -------------------------------------------------------------------------------------


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=250, help="images per run (default 250)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--size", type=int, default=2048, help="rows = columns (default 2048)")
    parser.add_argument(
        "--pdu",
        type=int,
        default=131072,
        help="max PDU of every receiver, 4096..131072 (default 131072, DCMTK's max)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="receivers to run, by class: Lods Orthanc StorescpWrite StorescpIgnore",
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.reps < 1 or not 4096 <= args.pdu <= 131072:
        parser.error("count and reps are at least 1; pdu is 4096..131072")
    return args


def _header(images: ImageSet, args: argparse.Namespace) -> None:
    each = images.total_bytes / images.count / MB
    print(
        f"Ingest benchmark: {images.count} CR images {images.size}×{images.size}, 16 bits "
        f"allocated ({each:.2f} MB each, {images.total_bytes / MB:.0f} MB per run), "
        f"{args.reps} repetitions, receivers interleaved"
    )
    print("sender: DCMTK storescu, one association per run (checked), calling AE BENCH")
    print(
        f"environment: TCP_NODELAY=1 for every process; max PDU {args.pdu} bytes for every "
        "receiver (Lods LODS_DICOM_MAX_PDU, Orthanc MaximumPduLength, storescp --max-pdu)"
    )
    print(
        "durability: Lods fsyncs each file and commits its index row before the response; "
        "Orthanc fsyncs (SyncStorageArea) and indexes in SQLite; storescp writes without fsync"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average before "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; MB = 10^6 bytes"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    missing = [t for t in ("storescu", "storescp", "echoscu") if shutil.which(t) is None]
    if missing or not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        print(f"missing tools: {missing or ['Orthanc']}; run `make system-deps`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    images = generate_images(count=args.count, size=args.size, seed=args.seed)
    env = _env()
    kinds = [Lods, Orthanc, StorescpWrite, StorescpIgnore]
    if args.only:
        kinds = [k for k in kinds if k.__name__ in args.only]
    _header(images, args)
    work = OUT / f"run-{os.getpid()}"
    runs: list[Run] = []
    try:
        for rep in range(args.reps):
            for kind in kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]:
                print(f"rep {rep + 1}: {kind.name} ...", flush=True)
                runs.append(run_once(kind(pdu=args.pdu, env=env), images, rep=rep, work=work))
    except KeyboardInterrupt:
        print("\ninterrupted; receivers stopped and their folders removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, images)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if runs and not any(r.problems for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
