#!/usr/bin/env python3
"""AI pipeline latency benchmark: from "study stable" to findings stored, for a small ONNX
model, through a real `lods serve`. Prints figures; it is not a test.

    .venv/bin/python bench/pipeline.py [--studies 40] [--interval 1.5] [--quick] [--no-postgres]

A fresh `lods serve` (LODS_WORKERS=2, LODS_STABLE_SECONDS=1) runs on SQLite in a fresh
data dir under bench/out/pipeline/, and once more on a scratch PostgreSQL database when
PostgreSQL can be reached. Before it starts, the bright-spot `onnx` package of the tests
(a 64×64 model) is installed, approved and deployed live at a site whose modality AE
BENCH sends the studies. Then N studies of 2 DX images (192×256, 12 bits) each are sent
with DCMTK storescu, one association per study, one study every `--interval` seconds, so
the figures show latency rather than queueing.

For each study the server's own timestamps are read from the database: `studies.
stable_at` (set by the stable-study watcher once the study was quiet for the stable
period), the last `instances.received_at`, and `study_results.created_at` of its result
(written in the transaction that completes the job). Latency after stable = created_at -
stable_at, so the quiet period is excluded by definition; latency after the last image
= created_at - last received_at includes it. p50 is the median, p95 the nearest rank.
Every study must have been sent in one association and got exactly one stable event,
exactly one result and one succeeded job, claimed once.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from lods.auth.models import Role
from lods.auth.service import create_user
from lods.config import Settings
from lods.findings.models import StudyResult
from lods.imaging.models import Instance, Series, Study, StudyEvent
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import add_dicom_node, create_site

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' live server and spot package

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
    from support_solutions import install_approve_deploy, spot_package, write_dx_image

OUT = HERE / "out" / "pipeline"
CALLING_AE, SITE = "BENCH", "HAV"
#: What `LiveServer` gives `lods serve`; the preparing runtime must sign with the same key.
SECRET = "test-secret-key-not-for-production"
TARGET_P95 = 3.0
#: The CSV's names for the stretches of `_parts`.
PARTS = ("stable_to_queued_s", "queued_to_started_s", "started_to_stored_s")


@dataclass(frozen=True)
class SentStudy:
    uid: str
    files: tuple[Path, ...]


@dataclass
class Row:
    """One study's timestamps, as the server recorded them."""

    uid: str
    stable_at: datetime | None = None
    last_received: datetime | None = None
    queued: datetime | None = None
    started: datetime | None = None
    stored: datetime | None = None


@dataclass
class Outcome:
    backend: str
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    log: Path | None = None


def _seconds(later: datetime | None, earlier: datetime | None) -> float:
    return (later - earlier).total_seconds() if later and earlier else math.nan


def write_studies(folder: Path, n: int, images: int) -> list[SentStudy]:
    """Write n studies of `images` DX images each (the first bright); return them."""
    shutil.rmtree(folder, ignore_errors=True)
    studies = []
    for i in range(n):
        uid, series = generate_uid(), generate_uid()
        files = []
        for k in range(images):
            path = folder / f"{i:03d}" / f"{k}.dcm"
            write_dx_image(
                path,
                study_uid=uid,
                series_uid=series,
                bright=k == 0,
                patient_id=f"BENCH{i:03d}",
                instance_number=k + 1,
            )
            files.append(path)
        studies.append(SentStudy(uid, tuple(files)))
    return studies


def prepare(settings: Settings, folder: Path) -> None:
    """Migrate; add an AI owner, the site and its sending node; install, approve, deploy."""
    rt = Runtime.open(settings)
    try:
        with rt.sessions() as db, db.begin():
            create_user(
                db,
                username="otto",
                roles=[Role.AI_OWNER],
                password="benchmark passphrase, long enough",
                full_name="Otto",
                actor="bench",
            )
            site = create_site(db, code=SITE, name="Benchmark Hospital", actor="bench")
            add_dicom_node(db, site_id=site.id, ae_title=CALLING_AE, kind="modality", actor="bench")
        install_approve_deploy(rt, spot_package(folder / "pkg"), site=SITE, mode="live")
    finally:
        rt.close()


def send(study: SentStudy, port: int) -> str | None:
    """Send a study over one storescu association; return the problem, or None."""
    cmd = ["storescu", "-v", "-aet", CALLING_AE, "-aec", "LODS", "127.0.0.1", str(port)]
    env = dict(os.environ, TCP_NODELAY="1")
    done = subprocess.run(
        [*cmd, *map(str, study.files)], env=env, capture_output=True, text=True, timeout=60
    )
    log = done.stdout + done.stderr
    associations = log.count("I: Requesting Association")
    stored = log.count("I: Received Store Response (Success)")
    if done.returncode != 0 or associations != 1 or stored != len(study.files):
        return (
            f"storescu rc {done.returncode}, {associations} associations, "
            f"{stored}/{len(study.files)} stored: {log.strip()[-300:]}"
        )
    return None


def wait_for_results(reader: Engine, n: int, *, timeout: float) -> int:
    """Wait until n studies have a result (or `timeout`); return how many have one."""
    deadline = time.monotonic() + timeout
    while True:
        with Session(reader) as db:
            count = db.scalar(select(func.count(func.distinct(StudyResult.study_fk)))) or 0
        if count >= n or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.2)


def read_rows(reader: Engine, studies: list[SentStudy]) -> tuple[list[Row], list[str]]:
    """Return each sent study's timestamps and the problems found checking them."""
    with Session(reader) as db:
        ids = {uid: key for uid, key in db.execute(select(Study.study_uid, Study.id))}
        stable_at = {key: at for key, at in db.execute(select(Study.id, Study.stable_at))}
        last = {
            key: at
            for key, at in db.execute(
                select(Series.study_fk, func.max(Instance.received_at))
                .join(Instance, Instance.series_fk == Series.id)
                .group_by(Series.study_fk)
            )
        }
        stables = Counter(
            db.scalars(select(StudyEvent.study_fk).where(StudyEvent.kind == "stable"))
        )
        results = db.execute(
            select(
                StudyResult.study_fk,
                StudyResult.created_at,
                Job.created_at,
                Job.started_at,
                Job.state,
                Job.attempts,
            ).join(Job, Job.id == StudyResult.job_fk)
        ).all()
        job_counts = Counter(db.scalars(select(Job.study_fk)))
    by_study: dict[int | None, list[tuple[datetime, datetime, datetime | None, str, int]]] = {}
    for study_fk, stored, queued, started, state, attempts in results:
        by_study.setdefault(study_fk, []).append((stored, queued, started, state, attempts))
    rows, problems = [], Counter[str]()
    for study in studies:
        row = Row(study.uid)
        rows.append(row)
        study_id = ids.get(study.uid)
        if study_id is None:
            problems["study not received"] += 1
            continue
        row.stable_at, row.last_received = stable_at.get(study_id), last.get(study_id)
        if stables[study_id] != 1:
            problems[f"{stables[study_id]} stable events"] += 1
        found = by_study.get(study_id, [])
        if len(found) != 1:
            problems[f"{len(found)} results"] += 1
        if job_counts[study_id] != 1:
            problems[f"{job_counts[study_id]} jobs"] += 1
        if found:
            row.stored, row.queued, row.started, state, attempts = found[0]
            if state != "succeeded" or attempts != 1:
                problems[f"job {state} after {attempts} attempts"] += 1
    return rows, [f"{what}: {n} studies" for what, n in problems.items()]


@contextmanager
def live_server(folder: Path, database_url: str, args: argparse.Namespace) -> Iterator[LiveServer]:
    """Yield a started `lods serve` on a prepared database; stop it afterwards."""
    server = LiveServer(
        data_dir=folder / "data",
        database_url=database_url,
        ae_title="LODS",
        extra_env={
            "LODS_WORKERS": str(args.workers),
            "LODS_STABLE_SECONDS": f"{args.stable_seconds:g}",
        },
    )
    settings = Settings(
        data_dir=server.data_dir,
        database_url=database_url,
        secret_key=SECRET,
        http_port=server.http_port,
        dicom_port=server.dicom_port,
    )
    prepare(settings, folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def run_backend(
    backend: str, database_url: str, studies: list[SentStudy], args: argparse.Namespace
) -> Outcome:
    """Send the studies, paced, to a fresh server on `database_url`; return what came of it."""
    folder = OUT / backend.lower()
    folder.mkdir(parents=True)
    outcome = Outcome(backend)
    print(f"{backend}: preparing and starting lods serve ...", flush=True)
    with live_server(folder, database_url, args) as server:
        outcome.log = server.log_path
        reader = create_engine(database_url)
        try:
            print(
                f"{backend}: sending {len(studies)} studies, one every {args.interval:g} s ...",
                flush=True,
            )
            start = time.monotonic()
            for i, study in enumerate(studies):
                time.sleep(max(0.0, start + i * args.interval - time.monotonic()))
                problem = send(study, server.dicom_port)
                if problem:
                    outcome.problems.append(f"study {i}: {problem}")
            have = wait_for_results(reader, len(studies), timeout=args.timeout)
            print(f"{backend}: {have}/{len(studies)} studies have a result", flush=True)
            time.sleep(args.stable_seconds + 1)  # room for a duplicate to show up
            outcome.rows, problems = read_rows(reader, studies)
            outcome.problems += problems
        finally:
            reader.dispose()
    with (OUT / f"{backend.lower()}-studies.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["study_uid", "after_stable_s", "after_last_image_s", *PARTS])
        for r in outcome.rows:
            out.writerow(
                [r.uid]
                + [
                    f"{_seconds(*pair):.3f}"
                    for pair in [(r.stored, r.stable_at), (r.stored, r.last_received), *_parts(r)]
                ]
            )
    return outcome


# --- report ---------------------------------------------------------------------------------


def _parts(r: Row) -> list[tuple[datetime | None, datetime | None]]:
    return [(r.queued, r.stable_at), (r.started, r.queued), (r.stored, r.started)]


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else math.nan


def _valid(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    print()
    print(f"{'':<11} {'':>7} {'after stable (s)':^22}  {'after last image':^15}")
    print(
        f"{'backend':<11} {'studies':>7} {'p50':>6} {'p95':>7} {'max':>7}  "
        f"{'p50':>7} {'p95':>7}  check"
    )
    verdicts = []
    for o in outcomes:
        after_stable = _valid([_seconds(r.stored, r.stable_at) for r in o.rows])
        after_last = _valid([_seconds(r.stored, r.last_received) for r in o.rows])
        worst = max(after_stable) if after_stable else math.nan
        check = "; ".join(o.problems) or (
            f"{len(o.rows)}/{args.studies} studies: 1 association, 1 stable event, 1 job "
            "succeeded once, 1 result each"
        )
        print(
            f"{o.backend:<11} {len(after_stable):>7} {p50(after_stable):>6.2f} "
            f"{p95(after_stable):>7.2f} {worst:>7.2f}  "
            f"{p50(after_last):>7.2f} {p95(after_last):>7.2f}  {check}"
        )
        met = "met" if p95(after_stable) <= TARGET_P95 else "NOT met"
        verdicts.append(f"{o.backend} {p95(after_stable):.2f} s ({met})")
    print(
        f"\ntarget: p95 ≤ {TARGET_P95:g} s after stable on a 2-core machine: " + ", ".join(verdicts)
    )
    print("\nwhere the time after stable goes, p50 / p95 (s):")
    for o in outcomes:
        names = ("stable → job queued", "queued → claimed", "claimed → result stored")
        parts = [_valid([_seconds(*_parts(r)[k]) for r in o.rows]) for k in range(len(names))]
        text = ", ".join(
            f"{name} {p50(v):.2f} / {p95(v):.2f}" for name, v in zip(names, parts, strict=True)
        )
        print(f"  {o.backend:<11} {text}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=40, help="studies sent (default 40)")
    parser.add_argument("--images", type=int, default=2, help="DX images per study (default 2)")
    parser.add_argument(
        "--interval", type=float, default=1.5, help="seconds between studies (default 1.5)"
    )
    parser.add_argument("--workers", type=int, default=2, help="LODS_WORKERS (default 2)")
    parser.add_argument(
        "--stable-seconds", type=float, default=1.0, help="LODS_STABLE_SECONDS (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for results after the last study was sent (default 120)",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run: 10 studies")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("LODS_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="an existing database to connect to for creating the scratch database "
        f"(default $LODS_TEST_POSTGRES_URL or {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    if args.quick:
        args.studies = 10
    if args.studies < 1 or args.images < 1 or args.workers < 1 or args.interval < 0:
        parser.error("studies, images and workers are at least 1; interval is not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("storescu") is None:
        print("storescu (DCMTK) is missing; run `make system-deps`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    studies = write_studies(OUT / "studies", args.studies, args.images)
    print(
        f"AI pipeline benchmark: {args.studies} studies of {args.images} DX images "
        f"(192×256, 12 bits), one storescu association each, one study every "
        f"{args.interval:g} s; lods serve with {args.workers} workers, stable after "
        f"{args.stable_seconds:g} s quiet; model: bright-spot ONNX, 64×64 input"
    )
    print(f"machine: {os.cpu_count()} CPUs, load average before {load_average()}")
    outcomes: list[Outcome] = []
    try:
        outcomes.append(
            run_backend(
                "SQLite", f"sqlite:///{OUT / 'sqlite' / 'data' / 'lods.sqlite3'}", studies, args
            )
        )
        problem = "skipped (--no-postgres)" if args.no_postgres else None
        problem = problem or postgres_problem(args.postgres_url)
        if problem:
            print(f"PostgreSQL: skipped: {problem}", flush=True)
        else:
            with scratch_postgres(args.postgres_url) as url:
                outcomes.append(run_backend("PostgreSQL", url, studies, args))
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and scratch databases dropped", file=sys.stderr)
        return 130
    report(outcomes, args)
    print(f"load average after: {load_average()}")
    for o in outcomes:
        print(f"{o.backend} server log: {o.log}")
    print(f"outputs: {OUT} (per-study CSVs, SQLite data dir, studies sent)")
    return 0 if outcomes and not any(o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
