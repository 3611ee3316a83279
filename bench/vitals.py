#!/usr/bin/env python3
"""Vitals ingest benchmark: HL7 v2 ORU^R01 over MLLP into a real `lods serve`, scored with
NEWS2, on SQLite and PostgreSQL. Prints figures; it is not a test.

    .venv/bin/python bench/vitals.py [--messages 20000] [--connections 8] [--windows 1,25]
        [--beds 200] [--probes 200] [--idle-probes 50] [--load-rate 500] [--quick]
        [--no-postgres]

A fresh `lods serve` (the tests' `LiveServer`, LODS_WORKERS=0: scoring runs in the intake
transaction, not in jobs) runs on SQLite in a fresh data dir under bench/out/vitals/,
and once more on a scratch PostgreSQL database when PostgreSQL can be reached. Before it
starts: an AI owner, a nurse with an API token, a site with two wards (LOAD with
`--beds` beds, PROBE with `--idle-probes` + `--probes` beds), and the NEWS2 reference
solution (reference_solutions/news2/package) installed, approved and deployed live at the
site. Every bed's synthetic patient is then admitted over MLLP (ADT^A01).

(1) Throughput, once per `--windows` value: N ORU^R01 (IHE PCD-01, built by the monitor
    simulator `lods.sim.monitors`: 7–8 monitor readings + ACVPU + air/oxygen, a complete
    NEWS2 set each) for the LOAD beds over C MLLP connections at once, each keeping up
    to `window` messages unanswered (1: send the next when the previous is acknowledged,
    as a monitor does; more: pipelined, as an interface engine may, which the listener
    allows). Connection i sends for beds i, i+C, ... so no patient has two sets in flight.
    Messages are built before the clock starts. Time: first send to last ACK; also the
    slowest 2-second stretch. Checks: every message ACKed AA, and the server's database
    grew by N hl7_messages, N ews_scores (one score per set) and the OBX count of
    vital_observations.
(2) Latency: a nurse's board stream `GET /wards/<PROBE>/events` (Server-Sent Events, bearer
    token) is read in a thread. Each PROBE patient had a low-band set; then, one at a time,
    a set that puts them in the high band is sent, and the time from just before sending
    it to the arrival of the board's `alert` event (kind ews.band) for that bed is
    measured: first `--idle-probes` with no other traffic, then `--probes` while C-1 other
    connections send `--load-rate` msg/s to the LOAD ward, open loop (each message when it
    is due, at most 50 unanswered per connection; the achieved rate is printed). p50 is
    the median, p99 the nearest rank.

Targets (the issue): ≥ 2,000 msg/s sustained with scores stored, and p99 ≤ 200 ms.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, select, text

from lods.auth.models import Role
from lods.auth.service import create_api_token, create_user
from lods.config import Settings
from lods.runtime import Runtime
from lods.sim.monitors import (
    BedModel,
    Reading,
    VitalSet,
    admitted_at,
    adt_a01,
    oru_r01,
    vital_set,
    ward_models,
)
from lods.sites.models import Bed
from lods.sites.service import add_bed, add_department, create_site

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' live server and solution helpers

from jobs import (  # noqa: E402
    DEFAULT_POSTGRES,
    interrupt,
    load_average,
    postgres_problem,
    scratch_postgres,
)

with warnings.catch_warnings():  # fastapi.testclient, imported by support, warns about httpx
    warnings.simplefilter("ignore")
    from support import LiveServer
    from support_solutions import install_approve_deploy

OUT = HERE / "out" / "vitals"
NEWS2_PACKAGE = ROOT / "reference_solutions" / "news2" / "package"
SITE, LOAD_WARD, PROBE_WARD = "BENCH", "LOAD", "PROBE"
#: What `LiveServer` gives `lods serve`; the preparing runtime must sign with the same key.
SECRET = "test-secret-key-not-for-production"
TARGET_RATE = 2000.0
TARGET_P99_MS = 200.0
#: Placeholders in prebuilt messages: the control id (MSH-10) and the observation time.
CID_TOKEN = "CIDTOKEN"
TS_AT = datetime(2000, 1, 1, tzinfo=UTC)
TS_TOKEN = "20000101000000+0000"
SB, EB = b"\x0b", b"\x1c\x0d"
PROBE_TIMEOUT = 5.0
MAX_MISSED = 10


def hl7_ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


# --- MLLP -----------------------------------------------------------------------------------


class Mllp:
    """A plain blocking MLLP connection (TCP_NODELAY): send framed messages, read ACKs."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, message: str) -> None:
        self.sock.sendall(SB + message.encode() + EB)

    def ack(self) -> tuple[str, str]:
        """(MSA-1, MSA-2) of the next ACK on the connection."""
        while EB not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(EB)
        for segment in frame.lstrip(SB).decode(errors="replace").split("\r"):
            if segment.startswith("MSA|"):
                parts = segment.split("|")
                return parts[1], parts[2] if len(parts) > 2 else ""
        return "?", ""

    def exchange(self, message: str) -> tuple[str, str]:
        self.send(message)
        return self.ack()

    def close(self) -> None:
        self.sock.close()


# --- messages -------------------------------------------------------------------------------


def templates(models: list[BedModel], variants: int) -> dict[str, list[str]]:
    """Per bed, `variants` complete sets (no faults, ACVPU and air/O2 in each) as ORU^R01
    with the control id and observation time as placeholders."""
    out: dict[str, list[str]] = {}
    for model in models:
        out[model.bed] = [
            oru_r01(
                site=SITE,
                ward=LOAD_WARD,
                model=model,
                vitals=vital_set(
                    model,
                    model.start + timedelta(minutes=37 * k),
                    faults=False,
                    chart_rate=1.0,
                ),
                observed_at=TS_AT,
                control_id=CID_TOKEN,
            )
            for k in range(variants)
        ]
    return out


def render(template: str, control_id: str, ts: str) -> str:
    return template.replace(CID_TOKEN, control_id, 1).replace(TS_TOKEN, ts)


def fixed_set(model: BedModel, values: dict[str, float | str], at: datetime) -> VitalSet:
    readings = tuple(Reading(k, v, "F" if isinstance(v, str) else "R") for k, v in values.items())
    return VitalSet(model.bed, at, 0.0, readings)


#: A set that scores 0 (low band), and one that scores 20 (high band) with NEWS2.
LOW = {
    "spo2": 98,
    "pulse_rate": 72,
    "resp_rate": 16,
    "bp_sys": 124,
    "bp_dia": 78,
    "temperature": 36.8,
    "consciousness": "A",
    "oxygen": "air",
}
HIGH = {
    "spo2": 90,
    "pulse_rate": 135,
    "resp_rate": 26,
    "bp_sys": 88,
    "bp_dia": 50,
    "temperature": 39.4,
    "consciousness": "C",
    "oxygen": "oxygen",
}


# --- the server -------------------------------------------------------------------------------


@dataclass
class Ward:
    id: int
    beds: dict[str, int]  # code → bed id
    models: list[BedModel]


@dataclass
class Setup:
    server: LiveServer
    token: str
    load: Ward
    probe: Ward


def prepare(settings: Settings, *, beds: int, probes: int) -> str:
    """Migrate; add users, the site, the two wards and their beds; install, approve and
    deploy NEWS2 live at the site. Return the nurse's API token."""
    rt = Runtime.open(settings)
    try:
        with rt.sessions() as db, db.begin():
            for name, role in (("otto", Role.AI_OWNER), ("nina", Role.NURSE)):
                create_user(
                    db,
                    username=name,
                    roles=[role],
                    password="benchmark passphrase, long enough",
                    full_name=name.capitalize(),
                    actor="bench",
                )
            site = create_site(db, code=SITE, name="Benchmark Hospital", actor="bench")
            for code, n in ((LOAD_WARD, beds), (PROBE_WARD, probes)):
                ward = add_department(
                    db, site_id=site.id, code=code, name=f"{code} ward", kind="ward", actor="bench"
                )
                for k in range(1, n + 1):
                    add_bed(
                        db, ward_id=ward.id, code=str(k), room=f"R{(k + 1) // 2}", actor="bench"
                    )
            token = create_api_token(db, username="nina", label="bench", actor="bench")
        install_approve_deploy(rt, NEWS2_PACKAGE, site=SITE, mode="live")
    finally:
        rt.close()
    return token


def _wards(reader: Engine, start: datetime) -> tuple[Ward, Ward]:
    found = []
    with reader.connect() as conn:
        for code in (LOAD_WARD, PROBE_WARD):
            ward_id = conn.execute(
                text("SELECT id FROM departments WHERE code = :c"), {"c": code}
            ).scalar_one()
            beds = {
                str(c): int(i)
                for c, i in conn.execute(select(Bed.code, Bed.id).where(Bed.ward_id == ward_id))
            }
            codes = sorted(beds, key=int)
            models = ward_models(
                site=SITE, ward=code, beds=codes, start=start, deteriorating=0, seed=len(code)
            )
            found.append(Ward(int(ward_id), beds, models))
    return found[0], found[1]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def live_server(folder: Path, database_url: str, args: argparse.Namespace) -> Iterator[Setup]:
    """Yield a started, prepared `lods serve`; stop it afterwards."""
    server = LiveServer(data_dir=folder / "data", database_url=database_url)
    settings = Settings(
        data_dir=server.data_dir,
        database_url=database_url,
        secret_key=SECRET,
        http_port=server.http_port,
        dicom_port=server.dicom_port,
        hl7_port=server.hl7_port,
    )
    token = prepare(settings, beds=args.beds, probes=args.probes + args.idle_probes)
    reader = create_engine(database_url)
    try:
        server.start()
        _wait_port(server.hl7_port)
        load, probe = _wards(reader, datetime.now(UTC))
        yield Setup(server, token, load, probe)
    finally:
        reader.dispose()
        server.stop()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live descendants
    (Linux /proc; NaN elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except OSError:
        return math.nan
    family, total, grew = {pid}, 0, True
    while grew:
        grew = False
        for p, (parent, _) in stats.items():
            if parent in family and p not in family:
                family.add(p)
                grew = True
    for p in family:
        total += stats.get(p, (0, 0))[1]
    return total / tick


def counts(reader: Engine) -> dict[str, int]:
    with reader.connect() as conn:
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("hl7_messages", "vital_observations", "ews_scores", "encounters")
        }


# --- phases -------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """One throughput run: N messages with `window` in flight per connection."""

    window: int
    messages: int = 0
    seconds: float = math.nan
    slowest: float = math.nan
    acks: Counter[str] = field(default_factory=Counter)
    grew: dict[str, int] = field(default_factory=dict)
    expected_obs: int = 0
    #: CPU seconds used during the run by `lods serve` (with its child processes) and by
    #: this benchmark's own sending threads.
    server_cpu: float = math.nan
    client_cpu: float = math.nan

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else math.nan


@dataclass
class Probes:
    """Band rises timed to the board's alert event, under `load` msg/s of background."""

    load: float
    latencies_ms: list[float] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    achieved: float = 0.0
    acks: Counter[str] = field(default_factory=Counter)


@dataclass
class Outcome:
    backend: str
    admitted: Counter[str] = field(default_factory=Counter)
    runs: list[Throughput] = field(default_factory=list)
    probes: list[Probes] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    log: Path | None = None


def admit_all(setup: Setup, connections: int) -> Counter[str]:
    """ADT^A01 for every bed of both wards, spread over `connections`."""
    jobs = [(w, m) for w in (setup.load, setup.probe) for m in w.models]
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(index: int) -> None:
        conn = Mllp(setup.server.hl7_port)
        try:
            for n, (ward, model) in enumerate(jobs[index::connections]):
                code_ward = LOAD_WARD if ward is setup.load else PROBE_WARD
                message = adt_a01(
                    site=SITE,
                    ward=code_ward,
                    model=model,
                    admitted_at=admitted_at(model),
                    control_id=f"ADT-{index}-{n}",
                    sent_at=datetime.now(UTC),
                )
                code, _ = conn.exchange(message)
                with lock:
                    codes[code] += 1
        finally:
            conn.close()

    _run_threads([threading.Thread(target=worker, args=(i,)) for i in range(connections)])
    return codes


def _run_threads(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        t.join()


def throughput(setup: Setup, run: Throughput, args: argparse.Namespace, tag: str) -> None:
    """Phase 1: N prebuilt ORU over C connections; time from first send to last ACK."""
    models = setup.load.models
    variants = templates(models, 8)
    base = datetime.now(UTC) - timedelta(seconds=args.messages // len(models) + 120)
    # Connection i sends for beds i, i+C, ... in turn: no two messages of one patient are
    # in flight at once (window ≤ beds per connection), so each set gets its own score.
    per_conn: list[list[str]] = [[] for _ in range(args.connections)]
    for i, queue in enumerate(per_conn):
        mine = models[i :: args.connections]
        share = args.messages // args.connections + (i < args.messages % args.connections)
        for j in range(share):
            model, rounds = mine[j % len(mine)], j // len(mine)
            template = variants[model.bed][rounds % len(variants[model.bed])]
            run.expected_obs += template.count("\rOBX|")
            stamp = hl7_ts(base + timedelta(seconds=rounds))
            queue.append(render(template, f"{tag}-{i}-{j:07d}", stamp))
    conns = [Mllp(setup.server.hl7_port) for _ in range(args.connections)]
    done_at: list[list[float]] = [[] for _ in conns]
    started: list[float] = [math.inf] * len(conns)
    acks: list[Counter[str]] = [Counter() for _ in conns]
    barrier = threading.Barrier(len(conns))

    def worker(i: int) -> None:
        conn, queue, out = conns[i], per_conn[i], done_at[i]
        barrier.wait()
        started[i] = time.monotonic()
        sent = 0
        for _ in range(len(queue)):
            while sent < len(queue) and sent - len(out) < run.window:
                conn.send(queue[sent])
                sent += 1
            code, _ = conn.ack()
            acks[i][code] += 1
            out.append(time.monotonic())

    try:
        _run_threads([threading.Thread(target=worker, args=(i,)) for i in range(len(conns))])
    finally:
        for c in conns:
            c.close()
    first = min(started)
    ends = sorted(t for out in done_at for t in out)
    run.messages = len(ends)
    run.seconds = ends[-1] - first if ends else math.nan
    for c in acks:
        run.acks.update(c)
    # The slowest 2-second stretch (after the first second), as messages/s.
    width, rates, t = 2.0, [], first + 1.0
    while ends and t + width <= ends[-1]:
        rates.append((bisect.bisect_left(ends, t + width) - bisect.bisect_left(ends, t)) / width)
        t += width
    run.slowest = min(rates) if rates else math.nan


class BoardStream:
    """The nurse's SSE stream of a ward, read in a thread; records when events arrive."""

    def __init__(self, base_url: str, ward_id: int, token: str) -> None:
        self.url = f"{base_url}/wards/{ward_id}/events"
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        self.arrivals: dict[int, float] = {}
        self.kinds: Counter[str] = Counter()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.error: str | None = None
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.connected.wait(15):
            self.error = self.error or "not connected within 15 s"

    def _dispatch(self, kind: str, data: str) -> None:
        now = time.monotonic()
        self.kinds[kind] += 1
        if kind != "alert":
            return
        try:
            payload: dict[str, Any] = json.loads(data)
        except ValueError:
            return
        if payload.get("kind") == "ews.band" and payload.get("bed_id") is not None:
            with self.cond:
                self.arrivals.setdefault(int(payload["bed_id"]), now)
                self.cond.notify_all()

    def _run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                if response.status_code != 200:
                    self.error = f"HTTP {response.status_code}"
                    self.connected.set()
                    return
                self.connected.set()
                kind, data = "message", []
                for line in response.iter_lines():
                    if self.stop.is_set():
                        return
                    if line == "":
                        if data:
                            self._dispatch(kind, "\n".join(data))
                        kind, data = "message", []
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.connected.set()

    def wait_for(self, bed_id: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while bed_id not in self.arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrivals[bed_id]


class Loader:
    """Background load: C-1 connections sending ORU for the LOAD ward at `rate` msg/s in
    all, open loop (each message is sent when it is due, not when the previous one was
    answered, so a slow answer does not lower the load), with at most `cap` unanswered
    messages per connection (then the sender waits: load the server could not take shows
    as a lower achieved rate)."""

    def __init__(self, setup: Setup, *, connections: int, rate: float, cap: int = 50) -> None:
        self.models = setup.load.models
        self.variants = templates(self.models, 4)
        self.conns = [Mllp(setup.server.hl7_port) for _ in range(connections)]
        self.each = rate / connections
        self.stop = threading.Event()
        self.sent = [0] * connections
        self.acks: list[Counter[str]] = [Counter() for _ in self.conns]
        self.slots = [threading.Semaphore(cap) for _ in self.conns]
        self.threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for i in range(len(self.conns)):
            for target in (self._send, self._read):
                thread = threading.Thread(target=target, args=(i,), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _send(self, i: int) -> None:
        conn, n, k = self.conns[i], len(self.conns), 0
        while not self.stop.is_set():
            wait = self.started + k / self.each - time.monotonic()
            if wait > 0:
                self.stop.wait(wait)
                continue
            if not self.slots[i].acquire(timeout=0.1):
                continue
            model = self.models[(k * n + i) % len(self.models)]
            template = self.variants[model.bed][(k // len(self.models)) % 4]
            conn.send(render(template, f"L{i}-{k:07d}", hl7_ts(datetime.now(UTC))))
            self.sent[i] += 1
            k += 1

    def _read(self, i: int) -> None:
        conn, answered = self.conns[i], 0
        while not (self.stop.is_set() and answered >= self.sent[i]):
            if answered >= self.sent[i]:
                time.sleep(0.001)
                continue
            code, _ = conn.ack()
            self.acks[i][code] += 1
            answered += 1
            self.slots[i].release()

    def finish(self) -> tuple[float, Counter[str]]:
        """Stop sending, wait for the answers; return the achieved rate and the ACK codes."""
        self.stop.set()
        elapsed = time.monotonic() - self.started
        for thread in self.threads:
            thread.join(timeout=60)
        for conn in self.conns:
            conn.close()
        codes: Counter[str] = Counter()
        for c in self.acks:
            codes.update(c)
        return sum(self.sent) / elapsed, codes


def prime(setup: Setup, conn: Mllp, outcome: Outcome) -> None:
    """Give every probe patient a low-band set (no alert: the band did not rise)."""
    before = datetime.now(UTC) - timedelta(minutes=5)
    for n, model in enumerate(setup.probe.models):
        message = oru_r01(
            site=SITE,
            ward=PROBE_WARD,
            model=model,
            vitals=fixed_set(model, LOW, before),
            observed_at=before,
            control_id=f"PRIME-{n}",
        )
        code, _ = conn.exchange(message)
        if code != "AA":
            outcome.problems.append(f"priming set for probe bed {model.bed}: {code}")


def probe_series(
    setup: Setup,
    conn: Mllp,
    stream: BoardStream,
    models: list[BedModel],
    series: Probes,
    outcome: Outcome,
    gap: float,
) -> None:
    """Move each patient of `models` to the high band, one at a time; time each alert."""
    missed = 0
    for model in models:
        bed_id = setup.probe.beds[model.bed]
        now = datetime.now(UTC)
        message = oru_r01(
            site=SITE,
            ward=PROBE_WARD,
            model=model,
            vitals=fixed_set(model, HIGH, now),
            observed_at=now,
            control_id=f"PROBE-{model.bed}",
        )
        t0 = time.monotonic()
        code, _ = conn.exchange(message)
        t_ack = time.monotonic()
        arrived = stream.wait_for(bed_id, PROBE_TIMEOUT)
        if code != "AA":
            outcome.problems.append(f"probe bed {model.bed}: ACK {code}")
        if arrived is None:
            outcome.problems.append(
                f"probe bed {model.bed}: no ews.band alert within {PROBE_TIMEOUT:g} s"
            )
            missed += 1
            if missed >= MAX_MISSED:
                outcome.problems.append(f"probes at {series.load:g} msg/s stopped: {missed} missed")
                return
            continue
        series.latencies_ms.append((arrived - t0) * 1000)
        series.ack_ms.append((t_ack - t0) * 1000)
        time.sleep(gap)


def latency(setup: Setup, outcome: Outcome, args: argparse.Namespace) -> None:
    """Phase 2: band rises on the PROBE ward, one at a time: first without other traffic,
    then under the background load."""
    conn = Mllp(setup.server.hl7_port)
    try:
        prime(setup, conn, outcome)
        stream = BoardStream(setup.server.base_url, setup.probe.id, setup.token)
        stream.start()
        if stream.error:
            outcome.problems.append(f"board stream: {stream.error}")
            return
        try:
            quiet, loaded = Probes(0.0), Probes(args.load_rate)
            outcome.probes += [quiet, loaded]
            idle_models = setup.probe.models[: args.idle_probes]
            print(f"{outcome.backend}: latency: {len(idle_models)} band rises, no other traffic")
            probe_series(setup, conn, stream, idle_models, quiet, outcome, args.probe_gap)
            loader = Loader(setup, connections=args.connections - 1, rate=args.load_rate)
            loader.start()
            time.sleep(1.0)  # let the load settle
            busy_models = setup.probe.models[args.idle_probes :]
            print(
                f"{outcome.backend}: latency: {len(busy_models)} band rises, background "
                f"{args.load_rate:g} msg/s on {args.connections - 1} connections ...",
                flush=True,
            )
            try:
                probe_series(setup, conn, stream, busy_models, loaded, outcome, args.probe_gap)
            finally:
                loaded.achieved, loaded.acks = loader.finish()
        finally:
            stream.stop.set()
    finally:
        conn.close()
    if set(loaded.acks) - {"AA"}:
        outcome.problems.append(f"background ACKs {dict(loaded.acks)}")
    if loaded.achieved < 0.9 * args.load_rate:
        outcome.problems.append(
            f"background load reached {loaded.achieved:.0f} of {args.load_rate:g} msg/s"
        )


def run_backend(backend: str, database_url: str, args: argparse.Namespace) -> Outcome:
    folder = OUT / backend.lower()
    folder.mkdir(parents=True)
    outcome = Outcome(backend)
    print(f"{backend}: preparing and starting lods serve ...", flush=True)
    with live_server(folder, database_url, args) as setup:
        outcome.log = setup.server.log_path
        reader = create_engine(database_url)
        try:
            patients = len(setup.load.models) + len(setup.probe.models)
            print(f"{backend}: admitting {patients} patients (ADT^A01) ...", flush=True)
            outcome.admitted = admit_all(setup, args.connections)
            if set(outcome.admitted) != {"AA"}:
                outcome.problems.append(f"admissions: {dict(outcome.admitted)}")
            for k, window in enumerate(args.windows):
                print(
                    f"{backend}: throughput: {args.messages} ORU^R01 over {args.connections} "
                    f"connections, window {window} ...",
                    flush=True,
                )
                run = Throughput(window)
                outcome.runs.append(run)
                before = counts(reader)
                pid = setup.server.proc.pid if setup.server.proc else 0
                server_before, client_before = process_cpu(pid), sum(os.times()[:2])
                throughput(setup, run, args, tag=f"T{k}")
                run.server_cpu = process_cpu(pid) - server_before
                run.client_cpu = sum(os.times()[:2]) - client_before
                after = counts(reader)
                run.grew = {t: after[t] - before[t] for t in after}
                if run.acks["AA"] != args.messages:
                    outcome.problems.append(f"window {window}: ACKs {dict(run.acks)}")
                expected = {
                    "hl7_messages": args.messages,
                    "ews_scores": args.messages,
                    "vital_observations": run.expected_obs,
                }
                for table, n in expected.items():
                    if run.grew[table] != n:
                        outcome.problems.append(
                            f"window {window}: {table} grew by {run.grew[table]}, expected {n}"
                        )
            latency(setup, outcome, args)
        finally:
            reader.dispose()
    return outcome


# --- report ---------------------------------------------------------------------------------


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    print("\nthroughput (messages ACKed after their observations and scores were committed):")
    print(
        f"{'backend':<11} {'window':>6} {'messages':>8} {'seconds':>8} {'msg/s':>7} "
        f"{'slowest 2 s':>11}  {'scores +':>8} {'obs +':>8}  {'server CPU µs/msg':>17} "
        f"{'client CPU µs/msg':>17}"
    )
    for o in outcomes:
        for r in o.runs:
            print(
                f"{o.backend:<11} {r.window:>6} {r.messages:>8} {r.seconds:>8.2f} "
                f"{r.rate:>7.0f} {r.slowest:>11.0f}  {r.grew.get('ews_scores', 0):>8} "
                f"{r.grew.get('vital_observations', 0):>8}  "
                f"{r.server_cpu / r.messages * 1e6:>17.0f} {r.client_cpu / r.messages * 1e6:>17.0f}"
            )
    print("\nband rise → alert on the board's event stream (ms, from just before sending):")
    print(
        f"{'backend':<11} {'background':>10} {'probes':>6} {'p50':>7} {'p99':>7} {'max':>7}  "
        f"{'ACK p50':>7} {'ACK p99':>7}  {'achieved msg/s':>14}"
    )
    for o in outcomes:
        for s in o.probes:
            lat, ack = s.latencies_ms, s.ack_ms
            achieved = f"{s.achieved:>14.0f}" if s.load else f"{'-':>14}"
            print(
                f"{o.backend:<11} {s.load:>10g} {len(lat):>6} {p50(lat):>7.1f} "
                f"{nearest_rank(lat, 0.99):>7.1f} {max(lat) if lat else math.nan:>7.1f}  "
                f"{p50(ack):>7.1f} {nearest_rank(ack, 0.99):>7.1f}  {achieved}"
            )
    print()
    for o in outcomes:
        best = max((r.rate for r in o.runs), default=math.nan)
        loaded = [s for s in o.probes if s.load]
        p99 = nearest_rank(loaded[0].latencies_ms, 0.99) if loaded else math.nan
        rate_ok = "met" if best >= TARGET_RATE else "NOT met"
        lat_ok = "met" if p99 <= TARGET_P99_MS else "NOT met"
        print(
            f"{o.backend}: throughput {best:.0f} msg/s (best window; target ≥ "
            f"{TARGET_RATE:,.0f}: {rate_ok}); alert p99 {p99:.1f} ms under "
            f"{args.load_rate:g} msg/s (target ≤ {TARGET_P99_MS:g} ms: {lat_ok})"
        )
        print(f"  checks: {'; '.join(o.problems[:8]) or 'all passed'}")


def _windows(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,25, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("windows are at least 1")
    return values


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per window")
    parser.add_argument("--connections", type=int, default=8, help="MLLP connections")
    parser.add_argument(
        "--windows",
        type=_windows,
        default=[1, 25],
        help="messages in flight per connection, one throughput run each (default 1,25)",
    )
    parser.add_argument("--beds", type=int, default=200, help="beds of the LOAD ward")
    parser.add_argument("--probes", type=int, default=200, help="band rises under load")
    parser.add_argument("--idle-probes", type=int, default=50, help="band rises without load")
    parser.add_argument("--load-rate", type=float, default=500.0, help="background msg/s")
    parser.add_argument(
        "--probe-gap", type=float, default=0.05, help="seconds between band rises (default 0.05)"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 50 + 20 probes")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("LODS_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="an existing database to connect to for creating the scratch database "
        f"(default $LODS_TEST_POSTGRES_URL or {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.probes, args.idle_probes = 2000, 50, 20
    if args.messages < 1 or args.connections < 2 or args.beds < 1:
        parser.error("messages and beds are at least 1; connections at least 2")
    if max(args.windows) > args.beds // args.connections:
        parser.error("a window is at most beds / connections (one set per patient in flight)")
    if args.probes < 1 or args.idle_probes < 0 or args.load_rate <= 0:
        parser.error("probes at least 1; idle-probes not negative; load-rate positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not (NEWS2_PACKAGE / "manifest.yaml").exists():
        print(f"the NEWS2 package is missing: {NEWS2_PACKAGE}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    windows = ", ".join(map(str, args.windows))
    print(
        f"Vitals ingest benchmark: {args.messages} ORU^R01 per run (IHE PCD-01, 9–10 OBX, a "
        f"complete NEWS2 set each) over {args.connections} MLLP connections, window(s) "
        f"{windows}; {args.beds} + {args.idle_probes + args.probes} admitted patients; band "
        f"rises timed to the board's SSE alert: {args.idle_probes} alone, {args.probes} under "
        f"{args.load_rate:g} msg/s background load"
    )
    print("server: lods serve (LODS_WORKERS=0; NEWS2 scored in the intake transaction)")
    print(f"machine: {os.cpu_count()} CPUs, load average before {load_average()}")
    outcomes: list[Outcome] = []
    try:
        outcomes.append(
            run_backend("SQLite", f"sqlite:///{OUT / 'sqlite' / 'data' / 'lods.sqlite3'}", args)
        )
        problem = "skipped (--no-postgres)" if args.no_postgres else None
        problem = problem or postgres_problem(args.postgres_url)
        if problem:
            print(f"PostgreSQL: skipped: {problem}", flush=True)
        else:
            with scratch_postgres(args.postgres_url) as url:
                outcomes.append(run_backend("PostgreSQL", url, args))
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and scratch databases dropped", file=sys.stderr)
        return 130
    report(outcomes, args)
    print(f"load average after: {load_average()}")
    for o in outcomes:
        print(f"{o.backend} server log: {o.log}")
    return 0 if outcomes and not any(o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
