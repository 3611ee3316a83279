"""AI solutions over HTTP: read by clinicians, run by AI owners and administrators."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.jobs import service as jobs
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions import service
from lods.solutions.packaging import build_package
from support import add_cast, auth

ENGINE = (
    b"def run(ctx):\n"
    b"    from lods.solutions.runtimes.base import RunResult\n"
    b"    return RunResult()\n"
)
BASE = "/api/solutions/org.example.fracture/1.0"


def manifest(version: str) -> dict[str, Any]:
    return {
        "id": "org.example.fracture",
        "name": "Fracture AI",
        "version": version,
        "vendor": "Example Medical",
        "regulatory": {"status": "demonstration"},
        "intended_use": {
            "summary": "Suggests fractures on radiographs",
            "input_kind": "dicom-study",
            "modalities": ["DX"],
        },
        "runtime": {"kind": "python", "entry_point": "engine.py:run"},
        "outputs": {
            "findings": [
                {
                    "key": "fracture",
                    "code": {"scheme": "SCT", "value": "125605004", "meaning": "Fracture of bone"},
                    "label": "Fracture",
                }
            ],
            "operating_points": {"sure": 0.8, "doubtful": 0.5},
        },
        "data_egress": {"kind": "none"},
    }


def zipped_package(folder: Path, version: str = "1.0", *, tamper: bool = False) -> bytes:
    build_package(folder, manifest(version), {"engine.py": ENGINE})
    if tamper:
        (folder / "engine.py").write_bytes(b"def run(ctx):\n    return None\n")
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder)).read_bytes()


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    """A client on SQLite and PostgreSQL, with the cast and one hospital."""
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        create_site(db, code="AUH", name="Aarhus Universitetshospital", actor="test")
    with TestClient(create_app(runtime), base_url="http://testserver") as client:
        yield client


def install(api: TestClient, headers: dict[str, str], content: bytes) -> Any:
    return api.post(
        "/api/solutions",
        files={"package": ("fracture.zip", content, "application/zip")},
        headers=headers,
    )


def actions(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_solutions_api_refuses_anonymous_requests(api: TestClient) -> None:
    assert api.get("/api/solutions").status_code == 401
    assert api.post("/api/deployments/1/suspend", json={"reason": "x"}).status_code == 401


def test_catalogue_roles(api: TestClient, runtime: Runtime, tmp_path: Path) -> None:
    otto = auth(runtime, "otto")
    assert install(api, otto, zipped_package(tmp_path / "pkg")).status_code == 201
    for name, code in [("rita", 200), ("peter", 200), ("ada", 200), ("nina", 403), ("aud", 403)]:
        headers = auth(runtime, name)
        assert api.get("/api/solutions", headers=headers).status_code == code, name
        assert api.get(BASE, headers=headers).status_code == code, name
    rita = auth(runtime, "rita")
    (solution,) = api.get("/api/solutions", headers=rita).json()
    assert solution["solution_id"] == "org.example.fracture"
    assert [v["version"] for v in solution["versions"]] == ["1.0"]
    assert solution["versions"][0]["regulatory_summary"] == "Demonstration, not a medical device"
    # A radiologist reads, but never changes anything.
    attempts = [
        api.post(f"{BASE}/approve", json={"evidence": "Validated locally, LV-1"}, headers=rita),
        api.post(f"{BASE}/deployments", json={"site_code": "AUH", "mode": "live"}, headers=rita),
        api.post(f"{BASE}/verify", headers=rita),
        api.post(f"{BASE}/retire", headers=rita),
        api.post("/api/deployments/1/suspend", json={"reason": "x"}, headers=rita),
        api.post("/api/deployments/1/retire", headers=rita),
        install(api, rita, b"PK"),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts)


def test_install_approve_deploy_suspend_and_retire(
    api: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    otto, ada = auth(runtime, "otto"), auth(runtime, "ada")
    installed = install(api, ada, zipped_package(tmp_path / "pkg"))
    assert installed.status_code == 201
    body = installed.json()
    assert (body["state"], body["label"], body["approval"]) == (
        "installed",
        "Fracture AI 1.0",
        None,
    )
    assert body["intended_use"]["criteria"][:2] == [
        "Input: a DICOM imaging study",
        "Modalities: DX",
    ]
    assert [f["path"] for f in body["files"]] == ["engine.py"]
    assert len(body["files"][0]["sha256"]) == 64
    assert body["outputs"]["operating_points"] == {"sure": 0.8, "doubtful": 0.5}
    assert body["data_egress"]["kind"] == "none"

    # Only an AI owner approves, with evidence.
    assert (
        api.post(f"{BASE}/approve", json={"evidence": "Validated, LV-1"}, headers=ada).status_code
        == 403
    )
    short = api.post(f"{BASE}/approve", json={"evidence": "ok"}, headers=otto)
    assert short.status_code == 422
    # Not deployable before approval.
    early = api.post(f"{BASE}/deployments", json={"site_code": "AUH", "mode": "live"}, headers=ada)
    assert early.status_code == 409 and "only approved versions" in early.json()["detail"]
    approved = api.post(f"{BASE}/approve", json={"evidence": "Local validation LV-7"}, headers=otto)
    assert approved.status_code == 200
    assert approved.json()["approval"]["approved_by"] == "otto"
    again = api.post(f"{BASE}/approve", json={"evidence": "Local validation LV-7"}, headers=otto)
    assert again.status_code == 409 and "cannot become approved" in again.json()["detail"]

    unknown_site = api.post(
        f"{BASE}/deployments", json={"site_code": "XXX", "mode": "live"}, headers=ada
    )
    assert unknown_site.status_code == 404
    bad_mode = api.post(
        f"{BASE}/deployments", json={"site_code": "AUH", "mode": "everywhere"}, headers=ada
    )
    assert bad_mode.status_code == 422
    deployed = api.post(
        f"{BASE}/deployments", json={"site_code": "AUH", "mode": "pilot"}, headers=ada
    )
    assert deployed.status_code == 200
    deployment = deployed.json()
    assert (deployment["site_code"], deployment["mode"], deployment["state"]) == (
        "AUH",
        "pilot",
        "active",
    )
    with runtime.sessions() as db, db.begin():
        job_id = jobs.enqueue(
            db,
            version_id=approved.json()["id"],
            deployment_id=deployment["id"],
            inputs={"mode": "pilot"},
            max_attempts=3,
            timeout_seconds=60,
        )

    # The kill switch.
    suspend = f"/api/deployments/{deployment['id']}/suspend"
    assert api.post(suspend, json={"reason": "   "}, headers=otto).status_code == 422
    stopped = api.post(suspend, json={"reason": "Misses fractures of the scaphoid"}, headers=otto)
    assert stopped.status_code == 200
    assert stopped.json()["cancelled_jobs"] == [job_id]
    assert stopped.json()["deployment"]["state"] == "suspended"
    assert stopped.json()["deployment"]["state_reason"] == "Misses fractures of the scaphoid"
    with runtime.sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None and job.state == "cancelled"
    twice = api.post(suspend, json={"reason": "again"}, headers=otto)
    assert twice.status_code == 409
    assert (
        api.post("/api/deployments/999/suspend", json={"reason": "x"}, headers=otto).status_code
        == 404
    )
    (event,) = actions(runtime, "solution.suspend")
    assert event.actor == "otto" and event.object_ref == f"deployment:{deployment['id']}"

    # Resume in shadow mode through the same deployment call, then end it.
    resumed = api.post(
        f"{BASE}/deployments", json={"site_code": "AUH", "mode": "shadow"}, headers=ada
    )
    assert resumed.json()["state"] == "active" and resumed.json()["mode"] == "shadow"
    retired = api.post(f"/api/deployments/{deployment['id']}/retire", headers=ada)
    assert retired.status_code == 200 and retired.json()["state"] == "retired"
    assert api.post(f"/api/deployments/{deployment['id']}/retire", headers=ada).status_code == 409

    verified = api.post(f"{BASE}/verify", headers=ada)
    assert verified.status_code == 200 and verified.json()["ok"] is True
    gone = api.post(f"{BASE}/retire", json={"reason": "replaced by 2.0"}, headers=ada)
    assert gone.status_code == 200 and gone.json()["state"] == "retired"
    detail = api.get(BASE, headers=auth(runtime, "rita")).json()
    assert detail["deployments"][0]["state"] == "retired"
    assert api.get("/api/solutions/org.example.fracture/9.9", headers=ada).status_code == 404


def test_refused_package_answers_422_with_every_problem(
    api: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    otto = auth(runtime, "otto")
    refused = install(api, otto, zipped_package(tmp_path / "bad", tamper=True))
    assert refused.status_code == 422
    body = refused.json()
    assert any("engine.py does not match its SHA-256" in p for p in body["problems"])
    assert install(api, otto, zipped_package(tmp_path / "good")).status_code == 201
    duplicate = install(api, otto, zipped_package(tmp_path / "again"))
    assert duplicate.status_code == 422
    assert "already installed" in duplicate.json()["problems"][0]
    failures = [e for e in actions(runtime, "solution.install") if e.outcome == "failure"]
    assert len(failures) == 2 and {e.actor for e in failures} == {"otto"}
    with runtime.sessions() as db:
        assert len(service.list_versions(db)) == 1


def test_verify_reports_changed_files(api: TestClient, runtime: Runtime, tmp_path: Path) -> None:
    ada = auth(runtime, "ada")
    version_id = install(api, ada, zipped_package(tmp_path / "pkg")).json()["id"]
    with runtime.sessions() as db:
        version = service.get_version(db, version_id=version_id)
        folder = service.package_dir(runtime.settings, version)
    (folder / "engine.py").chmod(0o644)
    (folder / "engine.py").write_bytes(b"import os\n")
    checked = api.post(f"{BASE}/verify", headers=ada)
    assert checked.status_code == 200
    body = checked.json()
    assert body["ok"] is False and "engine.py does not match" in body["problems"][0]
    assert body["version"]["integrity_failed_at"] is not None
    otto = auth(runtime, "otto")
    refused = api.post(f"{BASE}/approve", json={"evidence": "Local validation LV-9"}, headers=otto)
    assert refused.status_code == 409 and "integrity" in refused.json()["detail"]
