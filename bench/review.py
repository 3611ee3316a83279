#!/usr/bin/env python3
"""Worklist and review-screen server time with 100,000 studies in the database. Prints
figures; it is not a test.

    .venv/bin/python bench/review.py [--studies 100000] [--requests 60] [--no-postgres]

For SQLite (a fresh file under bench/out/review/) and a scratch PostgreSQL database (when
reachable), the database is migrated and filled with core bulk inserts: N studies of 2
instances each (85 % DX/CR, 15 % MG, spread over the last 60 days, 3 sites), a finished
job and an AI study result for 70 % of them (sure / doubtful / negative), findings with
boxes for the positive ones, and a signed report for 85 % (the history a live region
has), so that the acute list holds several thousand open studies. Then the real FastAPI
app is called in-process (Starlette's TestClient, logged in as a radiologist): the
worklist page (/review), its JSON (/api/review/worklist), the review screen's data
(/api/review/studies/{uid}) and page (/review/studies/{uid}) of random open studies,
and the ED view (/review/ed). Server time = wall time of the in-process request (no
network). p95 is the nearest rank.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text

from lods.app import create_app
from lods.auth.models import Role, User
from lods.auth.service import create_user
from lods.db import utcnow
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import Instance, Patient, Series, Study
from lods.jobs.models import Job
from lods.review.models import Report, ReportRevision
from lods.runtime import Runtime
from lods.sites.models import Site
from lods.sites.service import create_site

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from jobs import DEFAULT_POSTGRES, postgres_problem, scratch_postgres  # noqa: E402
from support import PASSWORD, login, make_settings  # noqa: E402
from support_solutions import install_approve_deploy, python_package  # noqa: E402

BATCH = 5000
TARGETS_MS = {"worklist": 150.0, "review data": 300.0}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def populate(rt: Runtime, studies: int, folder: Path) -> None:
    """Fill the database (see the module docstring)."""
    rng = random.Random(7)
    with rt.sessions() as db, db.begin():
        sites = [
            create_site(db, code=f"S{k}", name=f"Site {k}", actor="bench").id for k in range(3)
        ]
        create_user(
            db,
            username="rita",
            full_name="Rita Radiolog",
            password=PASSWORD,
            roles=[Role.RADIOLOGIST, Role.PHYSICIAN],
            actor="bench",
        )
        create_user(db, username="otto", roles=[Role.AI_OWNER], password=PASSWORD, actor="bench")
    version_id, deployment_id = install_approve_deploy(
        rt, python_package(folder / "pkg"), site="S0"
    )
    with rt.sessions() as db:
        rita_id = db.scalar(select(User.id).where(User.username == "rita"))
    now = utcnow()
    started = time.perf_counter()
    with rt.engine.begin() as conn:
        next_patient = 1
        for start in range(0, studies, BATCH):
            count = min(BATCH, studies - start)
            ids = range(start + 1, start + count + 1)
            patients, study_rows, series_rows, instances = [], [], [], []
            jobs_rows, results, findings, reports, revisions = [], [], [], [], []
            for i in ids:
                if i == 1 or rng.random() < 0.6:
                    patients.append(
                        {
                            "id": next_patient,
                            "patient_id": f"P{next_patient:08d}",
                            "name": f"Doe^{next_patient}",
                        }
                    )
                    next_patient += 1
                received = now - timedelta(minutes=rng.uniform(1, 60 * 24 * 60))
                modality = "MG" if rng.random() < 0.15 else rng.choice(["DX", "CR"])
                study_rows.append(
                    {
                        "id": i,
                        "study_uid": f"1.2.826.0.1.3680043.8.498.9.{i}",
                        "patient_fk": next_patient - 1,
                        "site_id": sites[i % 3],
                        "accession_number": f"A{i:09d}",
                        "modalities": modality,
                        "num_series": 1,
                        "num_instances": 2,
                        "first_received_at": received,
                        "last_received_at": received,
                        "stable_at": received,
                        "description": "Wrist" if modality != "MG" else "Screening",
                    }
                )
                series_rows.append(
                    {
                        "id": i,
                        "series_uid": f"1.2.826.0.1.3680043.8.498.8.{i}",
                        "study_fk": i,
                        "modality": modality,
                    }
                )
                for k in (1, 2):
                    instances.append(
                        {
                            "id": 2 * i + k - 2,
                            "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.7.{i}.{k}",
                            "series_fk": i,
                            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
                            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                            "sha256": "0" * 64,
                            "dataset_sha256": "0" * 64,
                            "size": 1,
                            "channel": "dicom",
                            "received_at": received,
                        }
                    )
                if rng.random() < 0.7:
                    level = rng.choices(["sure", "doubtful", "none"], [0.15, 0.1, 0.75])[0]
                    outcome = {"sure": "positive", "doubtful": "uncertain", "none": "negative"}[
                        level
                    ]
                    jobs_rows.append(
                        {
                            "id": i,
                            "kind": "solution",
                            "state": "succeeded",
                            "version_fk": version_id,
                            "deployment_fk": deployment_id,
                            "study_fk": i,
                            "inputs": {},
                            "created_at": received,
                            "not_before": received,
                        }
                    )
                    results.append(
                        {
                            "job_fk": i,
                            "study_fk": i,
                            "version_fk": version_id,
                            "deployment_fk": deployment_id,
                            "mode": "live",
                            "outcome": outcome,
                            "text": outcome,
                            "score": {"sure": 0.95, "doubtful": 0.5, "none": 0.1}[level],
                            "certainty": level,
                            "num_findings": 1 if level != "none" else 0,
                            "provenance": "{}",
                            "created_at": received,
                        }
                    )
                    if level != "none":
                        findings.append(
                            {
                                "job_fk": i,
                                "study_fk": i,
                                "version_fk": version_id,
                                "deployment_fk": deployment_id,
                                "mode": "live",
                                "finding_key": "spot",
                                "code_scheme": "SCT",
                                "code_value": "125605004",
                                "code_meaning": "Fracture of bone",
                                "label": "Fracture",
                                "score": 0.95 if level == "sure" else 0.5,
                                "certainty": level,
                                "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.7.{i}.1",
                                "box_x0": 10.0,
                                "box_y0": 10.0,
                                "box_x1": 40.0,
                                "box_y1": 40.0,
                                "created_at": received,
                            }
                        )
                if rng.random() < 0.85 and received < now - timedelta(hours=2):
                    signed = received + timedelta(minutes=30)
                    reports.append(
                        {
                            "id": i,
                            "study_fk": i,
                            "state": "signed",
                            "text": "No acute findings.",
                            "conclusion": "negative",
                            "version": 1,
                            "author_fk": rita_id,
                            "signer_fk": rita_id,
                            "signed_at": signed,
                            "created_at": signed,
                            "updated_at": signed,
                        }
                    )
                    revisions.append(
                        {
                            "report_fk": i,
                            "version": 1,
                            "state": "signed",
                            "text": "No acute findings.",
                            "conclusion": "negative",
                            "decisions": "[]",
                            "signer_fk": rita_id,
                            "signed_at": signed,
                        }
                    )
            for table, rows in (
                (Patient, patients),
                (Study, study_rows),
                (Series, series_rows),
                (Instance, instances),
                (Job, jobs_rows),
                (StudyResult, results),
                (Finding, findings),
                (Report, reports),
                (ReportRevision, revisions),
            ):
                if rows:
                    conn.execute(insert(table), rows)
        if conn.dialect.name == "postgresql":
            for table in ("patients", "studies", "series", "instances", "jobs", "reports"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT MAX(id) FROM {table}))"
                    )
                )
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    print(f"  populated {studies:,} studies in {time.perf_counter() - started:.0f} s", flush=True)


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000.0)
    return out


def measure(rt: Runtime, requests: int) -> dict[str, list[float]]:
    app = create_app(rt)
    figures: dict[str, list[float]] = {}
    with TestClient(app, base_url="http://testserver") as client:
        reply = login(client, "rita")
        assert reply.status_code in (200, 302, 303), reply.text
        with rt.sessions() as db:
            site_id = db.scalar(select(Site.id).where(Site.code == "S0"))
            open_uids = list(
                db.scalars(
                    select(Study.study_uid)
                    .outerjoin(Report, Report.study_fk == Study.id)
                    .where(Report.id.is_(None), Study.site_id == site_id, Study.modalities != "MG")
                    .limit(500)
                )
            )
        rng = random.Random(3)

        def get(path: str) -> None:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])

        get("/review?site=S0")  # warm
        figures["worklist"] = timed(lambda: get("/review?site=S0"), requests)
        figures["worklist JSON"] = timed(lambda: get("/api/review/worklist?site=S0"), requests)
        figures["review data"] = timed(
            lambda: get(f"/api/review/studies/{rng.choice(open_uids)}"), requests
        )
        figures["review page"] = timed(
            lambda: get(f"/review/studies/{rng.choice(open_uids)}"), requests
        )
        figures["ED view"] = timed(lambda: get("/review/ed?site=S0"), requests)
    return figures


def bench_backend(
    name: str, url: str, folder: Path, args: argparse.Namespace
) -> dict[str, list[float]]:
    print(f"{name}: {url.split('@')[-1]}", flush=True)
    settings = make_settings(folder / "data", url)
    rt = Runtime.open(settings, migrate=True)
    try:
        populate(rt, args.studies, folder)
        return measure(rt, args.requests)
    finally:
        rt.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LODS_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
    )
    args = parser.parse_args(argv)
    out = HERE / "out" / "review"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results: dict[str, dict[str, list[float]]] = {}
    results["SQLite"] = bench_backend(
        "SQLite", f"sqlite:///{out / 'sqlite' / 'lods.sqlite3'}", out / "sqlite", args
    )
    if not args.no_postgres:
        problem = postgres_problem(args.postgres)
        if problem:
            print(f"PostgreSQL skipped: {problem}")
        else:
            with scratch_postgres(args.postgres) as url:
                results["PostgreSQL"] = bench_backend("PostgreSQL", url, out / "postgres", args)
    print(f"\nreview benchmark, {args.studies:,} studies, {args.requests} requests each (ms)")
    print(f"{'backend':<11} {'what':<14} {'p50':>8} {'p95':>8} {'max':>8}  target p95")
    for backend, figures in results.items():
        for what, values in figures.items():
            target = TARGETS_MS.get(what)
            verdict = (
                ""
                if target is None
                else f"≤ {target:.0f} {'ok' if _p95(values) <= target else 'MISSED'}"
            )
            print(
                f"{backend:<11} {what:<14} {statistics.median(values):8.1f} {_p95(values):8.1f} "
                f"{max(values):8.1f}  {verdict}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
