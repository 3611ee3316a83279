"""The job monitor page and its JSON API: counts, filters, retry and cancel."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.imaging.models import Patient, Study
from lods.jobs import service as jobs
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions.models import SolutionVersion
from support import add_cast, auth, csrf, login

STUDY_UID = "1.2.826.0.1.3680043.8.498.2002"
HTML = {"Accept": "text/html"}


@dataclass
class Queue:
    failed: int
    queued: int
    running: int
    succeeded: int


def fill_queue(rt: Runtime) -> Queue:
    """A solution version and four jobs of it on one study, one in each of four states."""
    with rt.sessions() as db, db.begin():
        site_id = create_site(db, code="AUH", name="Aarhus", actor="test").id
        patient = Patient(patient_id="P1", name="Doe^Jane")
        db.add(patient)
        db.flush()
        study = Study(study_uid=STUDY_UID, patient_fk=patient.id, site_id=site_id)
        version = SolutionVersion(
            solution_id="org.example.fracture",
            version="1.0",
            name="Fracture AI",
            vendor="Example Medical",
            runtime_kind="python",
            input_kind="dicom-study",
            manifest_text="",
            manifest_sha256="0" * 64,
            files={},
            package_path="org.example.fracture/1.0",
            installed_by="test",
        )
        db.add_all([study, version])
        db.flush()

        def enqueue() -> int:
            return jobs.enqueue(
                db,
                version_id=version.id,
                deployment_id=None,
                study_id=study.id,
                inputs={"mode": "pilot"},
                max_attempts=3,
                timeout_seconds=60,
            )

        ids = [enqueue() for _ in range(4)]
        db.execute(
            update(Job)
            .where(Job.id == ids[0])
            .values(state="failed", attempts=3, last_error="model file unreadable")
        )
        db.execute(update(Job).where(Job.id == ids[2]).values(state="running", attempts=1))
        db.execute(update(Job).where(Job.id == ids[3]).values(state="succeeded", attempts=1))
        return Queue(failed=ids[0], queued=ids[1], running=ids[2], succeeded=ids[3])


def job_state(rt: Runtime, job_id: int) -> Job:
    with rt.sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None
        return job


def audited(rt: Runtime, action: str) -> list[tuple[str, str | None]]:
    with rt.sessions() as db:
        rows = db.scalars(select(AuditEvent).where(AuditEvent.action == action))
        return [(e.actor, e.object_ref) for e in rows]


@pytest.fixture
def queue(app_runtime: Runtime) -> Queue:
    return fill_queue(app_runtime)


def count_of(html: str, state: str) -> int:
    found = re.search(rf'data-state="{state}"[^>]*>\s*<span class="count">(\d+)</span>', html)
    assert found, state
    return int(found.group(1))


def as_user(client: TestClient, name: str) -> TestClient:
    client.cookies.clear()
    assert login(client, name).status_code == 303
    return client


def test_job_monitor_is_for_admins_and_ai_owners(client: TestClient, queue: Queue) -> None:
    for name in ("rita", "peter", "nina", "aud"):
        as_user(client, name)
        assert client.get("/jobs", headers=HTML).status_code == 403
        refused = client.post(f"/jobs/{queue.failed}/retry", data={"csrf_token": csrf(client)})
        assert refused.status_code == 403
        assert "/jobs" not in client.get("/").text
    for name in ("ada", "otto"):
        page = as_user(client, name).get("/jobs")
        assert page.status_code == 200 and 'href="/jobs"' in page.text


def test_job_monitor_shows_counts_and_filters_by_state(client: TestClient, queue: Queue) -> None:
    page = as_user(client, "ada").get("/jobs")
    assert page.text.count('<tr id="job-') == 4
    assert count_of(page.text, "failed") == 1 and count_of(page.text, "queued") == 1
    assert count_of(page.text, "cancelled") == 0
    assert "Fracture AI 1.0" in page.text and STUDY_UID in page.text
    assert "model file unreadable" in page.text and "3 of 3" in page.text
    failed = client.get("/jobs?state=failed")
    assert failed.text.count('<tr id="job-') == 1 and f'id="job-{queue.failed}"' in failed.text
    assert f'action="/jobs/{queue.failed}/retry"' in failed.text
    queued = client.get("/jobs?state=queued").text
    assert f'action="/jobs/{queue.queued}/cancel"' in queued and "/retry" not in queued
    # An unknown state shows everything rather than failing.
    assert client.get("/jobs?state=bogus").text.count('<tr id="job-') == 4


def test_retry_a_failed_job_and_cancel_a_running_one(
    client: TestClient, app_runtime: Runtime, queue: Queue
) -> None:
    as_user(client, "otto").get("/jobs")
    retried = client.post(
        f"/jobs/{queue.failed}/retry",
        data={"csrf_token": csrf(client), "state": "failed"},
        follow_redirects=False,
    )
    assert retried.status_code == 303
    assert retried.headers["location"] == f"/jobs?state=failed&done=retried#job-{queue.failed}"
    job = job_state(app_runtime, queue.failed)
    assert (job.state, job.attempts) == ("queued", 0)
    assert audited(app_runtime, "job.retry") == [("otto", f"job:{queue.failed}")]
    assert "The job was put back in the queue." in client.get(retried.headers["location"]).text
    again = client.post(f"/jobs/{queue.failed}/retry", data={"csrf_token": csrf(client)})
    assert again.status_code == 409 and "Only failed jobs can be retried." in again.text

    cancelled = client.post(
        f"/jobs/{queue.running}/cancel",
        data={"csrf_token": csrf(client), "reason": "stuck on a huge study"},
        follow_redirects=False,
    )
    assert cancelled.status_code == 303
    job = job_state(app_runtime, queue.running)
    assert job.state == "cancelled"
    assert job.last_error == "cancelled by otto: stuck on a huge study"
    assert audited(app_runtime, "job.cancel") == [("otto", f"job:{queue.running}")]
    done = client.post(f"/jobs/{queue.succeeded}/cancel", data={"csrf_token": csrf(client)})
    assert done.status_code == 409
    missing = client.post("/jobs/9999/cancel", data={"csrf_token": csrf(client)})
    assert missing.status_code == 404
    without_token = client.post(f"/jobs/{queue.queued}/cancel", data={})
    assert without_token.status_code == 403


@pytest.fixture
def api(runtime: Runtime) -> Iterator[tuple[TestClient, Queue]]:
    """The same queue on SQLite and PostgreSQL."""
    add_cast(runtime)
    queue = fill_queue(runtime)
    with TestClient(create_app(runtime), base_url="http://testserver") as client:
        yield client, queue


def test_jobs_api(api: tuple[TestClient, Queue], runtime: Runtime) -> None:
    client, queue = api
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", headers=auth(runtime, "rita")).status_code == 403
    ada = auth(runtime, "ada")
    page = client.get("/api/jobs", headers=ada).json()
    assert page["counts"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert [j["id"] for j in page["items"]] == [
        queue.succeeded,
        queue.running,
        queue.queued,
        queue.failed,
    ]
    failed = client.get("/api/jobs?state=failed", headers=ada).json()["items"]
    assert [j["id"] for j in failed] == [queue.failed]
    assert failed[0]["solution_label"] == "Fracture AI 1.0"
    assert failed[0]["study_uid"] == STUDY_UID and failed[0]["mode"] == "pilot"
    active = client.get("/api/jobs?state=queued&state=running", headers=ada).json()["items"]
    assert {j["id"] for j in active} == {queue.queued, queue.running}
    assert client.get("/api/jobs?state=lost", headers=ada).status_code == 422

    retried = client.post(f"/api/jobs/{queue.failed}/retry", headers=ada)
    assert retried.status_code == 200 and retried.json()["state"] == "queued"
    assert retried.json()["attempts"] == 0
    assert client.post(f"/api/jobs/{queue.failed}/retry", headers=ada).status_code == 409
    assert client.post("/api/jobs/9999/retry", headers=ada).status_code == 404

    cancelled = client.post(
        f"/api/jobs/{queue.queued}/cancel", json={"reason": "duplicate"}, headers=ada
    )
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["last_error"] == "cancelled by ada: duplicate"
    no_body = client.post(f"/api/jobs/{queue.running}/cancel", headers=ada)
    assert no_body.status_code == 200 and no_body.json()["last_error"] == "cancelled by ada"
    conflict = client.post(f"/api/jobs/{queue.succeeded}/cancel", headers=ada)
    assert conflict.status_code == 409 and "succeeded" in conflict.json()["detail"]
    assert audited(runtime, "job.retry") == [("ada", f"job:{queue.failed}")]
    assert [actor for actor, _ in audited(runtime, "job.cancel")] == ["ada", "ada"]
    assert client.get(f"/api/jobs/{queue.queued}", headers=ada).json()["state"] == "cancelled"
