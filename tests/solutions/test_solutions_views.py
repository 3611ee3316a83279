"""The AI solution pages: the catalogue, a version's facts and its lifecycle forms."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.alerts.models import Alert
from lods.audit.models import AuditEvent
from lods.auth.service import get_user
from lods.jobs import service as jobs
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import create_site, get_site_by_code_or_raise
from lods.solutions import service
from lods.solutions.models import Deployment, SolutionVersion
from lods.solutions.packaging import build_package
from support import csrf, login

HTML = {"Accept": "text/html"}
ENGINE = (
    b"def run(ctx):\n"
    b"    from lods.solutions.runtimes.base import RunResult\n"
    b"    return RunResult()\n"
)
VERSION_URL = "/solutions/org.example.fracture/1.0"


def manifest(version: str = "1.0") -> dict[str, Any]:
    return {
        "id": "org.example.fracture",
        "name": "Fracture AI",
        "version": version,
        "vendor": "Example Medical",
        "description": "Finds fractures on radiographs.",
        "regulatory": {
            "status": "ce_marked",
            "ce_class": "IIa",
            "notified_body": "0123",
            "statement": "CE-marked for use by radiologists as a second reader.",
        },
        "intended_use": {
            "summary": "Suggests fractures on radiographs of adults",
            "input_kind": "dicom-study",
            "modalities": ["DX"],
            "limitations": ["Not validated for casts or splints"],
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


def package(folder: Path, version: str = "1.0") -> Path:
    return build_package(folder, manifest(version), {"engine.py": ENGINE})


def zipped(folder: Path) -> bytes:
    archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
    return Path(archive).read_bytes()


def as_user(client: TestClient, name: str) -> TestClient:
    client.cookies.clear()
    assert login(client, name).status_code == 303
    return client


def post(client: TestClient, url: str, **data: str) -> Any:
    return client.post(url, data={**data, "csrf_token": csrf(client)}, follow_redirects=False)


def upload(client: TestClient, content: bytes, name: str = "fracture.zip") -> Any:
    return client.post(
        "/solutions",
        data={"csrf_token": csrf(client)},
        files={"package": (name, content, "application/zip")},
        follow_redirects=False,
    )


def audit(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def deployment_of(rt: Runtime) -> Deployment:
    with rt.sessions() as db:
        return db.scalars(select(Deployment)).one()


@pytest.fixture
def site(app_runtime: Runtime) -> str:
    with app_runtime.sessions() as db, db.begin():
        create_site(db, code="AUH", name="Aarhus Universitetshospital", actor="test")
    return "AUH"


@pytest.fixture
def installed(app_runtime: Runtime, tmp_path: Path) -> int:
    with app_runtime.sessions() as db, db.begin():
        version = service.install(
            db, settings=app_runtime.settings, path=package(tmp_path / "pkg"), actor="test"
        )
        return version.id


def test_nurse_and_auditor_cannot_read_the_catalogue(client: TestClient, installed: int) -> None:
    for name in ("nina", "aud"):
        as_user(client, name)
        assert client.get("/solutions", headers=HTML).status_code == 403
        assert client.get(VERSION_URL, headers=HTML).status_code == 403


def test_clinicians_read_the_catalogue_without_action_buttons(
    client: TestClient, installed: int
) -> None:
    for name in ("rita", "peter"):
        page = as_user(client, name).get("/solutions")
        assert page.status_code == 200
        assert "Fracture AI 1.0" in page.text and "Example Medical" in page.text
        assert "CE-marked medical device, class IIa, notified body 0123" in page.text
        assert "Installed, not approved" in page.text
        assert 'action="/solutions"' not in page.text  # no install form
        version = client.get(VERSION_URL)
        assert version.status_code == 200
        assert "Suggests fractures on radiographs of adults" in version.text
        assert "Modalities: DX" in version.text
        assert "Not validated for casts or splints" in version.text
        assert "<form" not in version.text.split('<main id="main">')[1]


def test_version_page_shows_manifest_facts_and_every_file_hash(
    client: TestClient, app_runtime: Runtime, installed: int
) -> None:
    page = as_user(client, "otto").get(VERSION_URL)
    with app_runtime.sessions() as db:
        version = db.get(SolutionVersion, installed)
        assert version is not None
        files, manifest_sha = version.files, version.manifest_sha256
    assert page.status_code == 200
    assert "engine.py" in page.text and files["engine.py"] in page.text
    assert manifest_sha in page.text
    assert "Python code, inside Lods" in page.text
    assert "None: data stays inside the hospital." in page.text
    assert "SCT 125605004" in page.text and "≥ 0.8" in page.text and "≥ 0.5" in page.text
    assert 'action="/solutions/org.example.fracture/1.0/approve"' in page.text
    assert 'action="/solutions/org.example.fracture/1.0/verify"' in page.text
    # The page in Danish.
    danish = client.get(VERSION_URL, headers={"Accept-Language": "da"})
    assert "Tilsigtet anvendelse" in danish.text


def test_unknown_version_is_404(client: TestClient, installed: int) -> None:
    page = as_user(client, "rita").get("/solutions/org.example.fracture/9.9")
    assert page.status_code == 404 and 'role="alert"' in page.text


def test_radiologist_cannot_approve_deploy_or_suspend(
    client: TestClient, app_runtime: Runtime, installed: int, site: str
) -> None:
    as_user(client, "rita")
    client.get("/solutions")
    attempts = [
        post(client, f"{VERSION_URL}/approve", evidence="Local validation report LV-1"),
        post(client, f"{VERSION_URL}/deploy", site_code=site, mode="pilot"),
        post(client, f"{VERSION_URL}/verify"),
        post(client, f"{VERSION_URL}/retire"),
        post(client, f"{VERSION_URL}/deployments/1/suspend", reason="no"),
        upload(client, b"PK"),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts)
    # An administrator runs deployments, but only an AI owner approves.
    as_user(client, "ada")
    client.get("/solutions")
    refused = post(client, f"{VERSION_URL}/approve", evidence="Local validation report LV-1")
    assert refused.status_code == 403
    with app_runtime.sessions() as db:
        version = db.get(SolutionVersion, installed)
        assert version is not None and version.state == "installed"


def test_forms_need_the_csrf_token(client: TestClient, installed: int) -> None:
    as_user(client, "otto")
    client.get(VERSION_URL)
    response = client.post(
        f"{VERSION_URL}/approve",
        data={"evidence": "Local validation report LV-1"},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_install_approve_deploy_suspend_resume_and_retire_through_the_forms(
    client: TestClient, app_runtime: Runtime, tmp_path: Path, site: str
) -> None:
    as_user(client, "otto")
    assert 'enctype="multipart/form-data"' in client.get("/solutions").text
    installed = upload(client, zipped(package(tmp_path / "pkg")))
    assert installed.status_code == 303
    assert installed.headers["location"] == f"{VERSION_URL}?done=installed"
    page = client.get(installed.headers["location"])
    assert "The package was verified and installed." in page.text
    # Approval needs evidence; the refusal keeps what was typed.
    short = post(client, f"{VERSION_URL}/approve", evidence="ok")
    assert short.status_code == 422 and "evidence note" in short.text
    assert ">ok</textarea>" in short.text
    approved = post(client, f"{VERSION_URL}/approve", evidence="Local validation LV-7: 0.93")
    assert approved.status_code == 303
    page = client.get(approved.headers["location"])
    assert "Approved by otto" in page.text and "Local validation LV-7: 0.93" in page.text
    assert 'action="/solutions/org.example.fracture/1.0/deploy"' in page.text
    # An administrator deploys it as a pilot.
    as_user(client, "ada")
    client.get(VERSION_URL)
    deployed = post(client, f"{VERSION_URL}/deploy", site_code=site, mode="pilot")
    assert deployed.status_code == 303
    deployment = deployment_of(app_runtime)
    assert (deployment.mode, deployment.state) == ("pilot", "active")
    page = client.get(deployed.headers["location"])
    assert f'id="deployment-{deployment.id}"' in page.text
    assert "killswitch-button" in page.text
    # A queued job of the deployment, cancelled by the kill switch.
    with app_runtime.sessions() as db, db.begin():
        job_id = jobs.enqueue(
            db,
            version_id=deployment.version_fk,
            deployment_id=deployment.id,
            inputs={"mode": "pilot"},
            max_attempts=3,
            timeout_seconds=60,
        )
    base = f"{VERSION_URL}/deployments/{deployment.id}"
    no_reason = post(client, f"{base}/suspend", reason="  ")
    assert no_reason.status_code == 422 and "say why" in no_reason.text
    assert deployment_of(app_runtime).state == "active"
    suspended = post(client, f"{base}/suspend", reason="Wrong side marked in two results")
    assert suspended.status_code == 303
    assert deployment_of(app_runtime).state == "suspended"
    page = client.get(suspended.headers["location"])
    assert "Wrong side marked in two results" in page.text
    with app_runtime.sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None and job.state == "cancelled"
    (event,) = audit(app_runtime, "solution.suspend")
    assert event.actor == "ada" and event.source == "testclient"
    # Resume it in shadow mode, then end it, then retire the version.
    resumed = post(client, f"{base}/mode", mode="shadow")
    assert resumed.status_code == 303
    assert (deployment_of(app_runtime).state, deployment_of(app_runtime).mode) == (
        "active",
        "shadow",
    )
    assert post(client, f"{base}/retire").status_code == 303
    assert deployment_of(app_runtime).state == "retired"
    again = post(client, f"{base}/suspend", reason="again")
    assert again.status_code == 409 and "cannot become suspended" in again.text
    assert post(client, f"{VERSION_URL}/retire", reason="Replaced").status_code == 303
    page = client.get("/solutions")
    assert re.search(r'class="vstate retired"', page.text)
    actions = [e.actor for e in audit(app_runtime, "solution.approve")]
    assert actions == ["otto"]
    assert [e.actor for e in audit(app_runtime, "solution.deploy")] == ["ada", "ada"]


def test_refused_upload_shows_every_problem(
    client: TestClient, app_runtime: Runtime, tmp_path: Path
) -> None:
    folder = package(tmp_path / "pkg")
    (folder / "engine.py").write_bytes(ENGINE + b"# changed after hashing\n")
    (folder / "notes.txt").write_text("not listed")
    as_user(client, "ada")
    client.get("/solutions")
    refused = upload(client, zipped(folder))
    assert refused.status_code == 422
    assert 'role="alert"' in refused.text
    assert "engine.py does not match its SHA-256" in refused.text
    assert "notes.txt is in the package but not listed in the manifest" in refused.text
    not_zip = upload(client, b"plain text", name="package.zip")
    assert not_zip.status_code == 422 and "not a valid .zip archive" in not_zip.text
    with app_runtime.sessions() as db:
        assert db.scalars(select(SolutionVersion)).all() == []
    failures = [e for e in audit(app_runtime, "solution.install") if e.outcome == "failure"]
    assert len(failures) == 2 and failures[0].actor == "ada"


def test_verify_finds_a_changed_file_suspends_and_alerts(
    client: TestClient, app_runtime: Runtime, installed: int, site: str
) -> None:
    with app_runtime.sessions() as db, db.begin():
        otto = get_user(db, username="otto")
        assert otto is not None
        service.approve(
            db,
            settings=app_runtime.settings,
            version_id=installed,
            approver=otto,
            evidence="Validated locally, report LV-3",
        )
        site_id = get_site_by_code_or_raise(db, code=site).id
        service.deploy(db, version_id=installed, site_id=site_id, mode="live", actor="test")
    as_user(client, "otto")
    client.get(VERSION_URL)
    assert (
        post(client, f"{VERSION_URL}/verify")
        .headers["location"]
        .endswith("done=verified#integrity")
    )
    with app_runtime.sessions() as db:
        version = db.get(SolutionVersion, installed)
        assert version is not None
        folder = service.package_dir(app_runtime.settings, version)
    (folder / "engine.py").chmod(0o644)
    (folder / "engine.py").write_bytes(b"def run(ctx):\n    raise SystemExit\n")
    checked = post(client, f"{VERSION_URL}/verify")
    assert checked.headers["location"].endswith("done=verify_failed#integrity")
    page = client.get(checked.headers["location"])
    assert "Integrity check failed" in page.text and "engine.py does not match" in page.text
    assert 'action="/solutions/org.example.fracture/1.0/deploy"' not in page.text
    assert deployment_of(app_runtime).state == "suspended"
    with app_runtime.sessions() as db:
        alert = db.scalars(select(Alert)).one()
        assert alert.severity == "urgent"
    assert 'class="vstate integrity-failed"' in client.get("/solutions").text


def test_every_message_the_new_pages_build_exists_in_both_languages() -> None:
    from lods.alerts import views as alerts_views
    from lods.alerts.models import AlertState
    from lods.alerts.service import SEVERITIES
    from lods.jobs import views as jobs_views
    from lods.jobs.models import JobState
    from lods.solutions import views as solutions_views
    from lods.solutions.manifest import RegulatoryStatus
    from lods.solutions.models import DeploymentMode, DeploymentState, VersionState
    from lods.web.i18n import SUPPORTED_LANGUAGES, catalog

    keys = (
        [f"solutions.notice.{n}" for n in solutions_views.NOTICES]
        + [f"solutions.error.{e}" for e in ("not_found", "conflict", "invalid")]
        + [f"solutions.state.{s}" for s in VersionState]
        + [f"solutions.deployment_state.{s}" for s in DeploymentState]
        + [f"solutions.mode.{m}" for m in DeploymentMode]
        + [f"solutions.mode.{m}.hint" for m in DeploymentMode]
        + [f"solutions.regulatory.status.{s}" for s in RegulatoryStatus]
        + [f"solutions.runtime.{k}" for k in ("onnx", "python", "dicom_node")]
        + [f"jobs.notice.{n}" for n in jobs_views.NOTICES]
        + [f"jobs.state.{s}" for s in JobState]
        + [f"jobs.error.{e}" for e in ("not_found", "not_failed", "not_active")]
        + [f"alerts.notice.{n}" for n in alerts_views.NOTICES]
        + [f"alerts.severity.{s}" for s in SEVERITIES]
        + [f"alerts.state.{s}" for s in AlertState]
        + [f"alerts.error.{e}" for e in ("not_found", "conflict", "invalid")]
        + [f"ai.certainty.{c}" for c in ("sure", "doubtful", "none")]
    )
    for lang in SUPPORTED_LANGUAGES:
        assert [k for k in keys if k not in catalog(lang)] == [], lang
