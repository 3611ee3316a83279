"""AI results of a study on the study page and as JSON: skips, jobs, role-filtered results."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.auth.service import get_user
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import Patient, Study
from lods.jobs.models import Job
from lods.routing.models import RouteDecision
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions import service
from lods.solutions.packaging import build_package
from support import add_cast, bearer_token, login

STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
PRELIMINARY = "AI suggestion — preliminary, not verified by a clinician"
ENGINE = (
    b"def run(ctx):\n"
    b"    from lods.solutions.runtimes.base import RunResult\n"
    b"    return RunResult()\n"
)
SKIP_REASONS = [
    {"criterion": "modality", "text": "modality CR is outside the intended use (DX)"},
    {"criterion": "body_part", "text": "body part CHEST is outside the intended use (hand)"},
]


def manifest(solution_id: str, name: str) -> dict[str, Any]:
    return {
        "id": solution_id,
        "name": name,
        "version": "1.0",
        "vendor": "Example Medical",
        "regulatory": {
            "status": "ce_marked",
            "ce_class": "I",
            "statement": f"{name} is CE-marked as a decision aid.",
        },
        "intended_use": {
            "summary": f"{name} on radiographs of adults",
            "input_kind": "dicom-study",
            "modalities": ["DX"],
            "limitations": [f"{name} was not validated on children"],
        },
        "runtime": {"kind": "python", "entry_point": "engine.py:run"},
        "outputs": {
            "findings": [
                {
                    "key": "finding",
                    "code": {"scheme": "SCT", "value": "125605004", "meaning": "Fracture of bone"},
                    "label": "Fracture",
                }
            ],
            "operating_points": {"sure": 0.8, "doubtful": 0.5},
        },
        "data_egress": {"kind": "none"},
    }


@dataclass
class Scene:
    study_id: int
    fracture: int
    lung: int
    bone_age: int
    triage: int


def _deploy(rt: Runtime, folder: Path, solution_id: str, name: str, mode: str, site_id: int) -> int:
    build_package(folder, manifest(solution_id, name), {"engine.py": ENGINE})
    with rt.sessions() as db, db.begin():
        version = service.install(db, settings=rt.settings, path=folder, actor="test")
        otto = get_user(db, username="otto")
        assert otto is not None
        service.approve(
            db,
            settings=rt.settings,
            version_id=version.id,
            approver=otto,
            evidence="Validated locally, report LV-1",
        )
        return service.deploy(
            db, version_id=version.id, site_id=site_id, mode=mode, actor="test"
        ).id


def _job(db: Any, deployment_id: int, study_id: int, mode: str, state: str, **extra: Any) -> Job:
    deployment = service.get_deployment(db, deployment_id=deployment_id)
    job = Job(
        kind="solution",
        state=state,
        version_fk=deployment.version_fk,
        deployment_fk=deployment_id,
        study_fk=study_id,
        inputs={"mode": mode, "sop_instance_uids": ["1.2.3.4"]},
        attempts=extra.pop("attempts", 1),
        max_attempts=3,
        timeout_seconds=60,
        result={},
        **extra,
    )
    db.add(job)
    db.flush()
    db.add(
        RouteDecision(
            study_fk=study_id,
            deployment_fk=deployment_id,
            version_fk=deployment.version_fk,
            outcome="job",
            job_fk=job.id,
            reasons=[],
            eligible=["1.2.3.4"],
            num_instances=1,
        )
    )
    return job


def _result(db: Any, job: Job, mode: str, text: str, findings: list[dict[str, Any]]) -> None:
    db.add(
        StudyResult(
            job_fk=job.id,
            study_fk=job.study_fk,
            version_fk=job.version_fk,
            deployment_fk=job.deployment_fk,
            mode=mode,
            outcome="positive",
            text=text,
            score=0.91,
            certainty="sure",
            num_findings=len(findings),
            provenance='{"solution": "test"}',
        )
    )
    for found in findings:
        db.add(
            Finding(
                job_fk=job.id,
                study_fk=job.study_fk,
                version_fk=job.version_fk,
                deployment_fk=job.deployment_fk,
                mode=mode,
                finding_key="finding",
                code_scheme="SCT",
                code_value="125605004",
                code_meaning="Fracture of bone",
                **found,
            )
        )


def build_scene(rt: Runtime, tmp_path: Path) -> Scene:
    """One study at AUH and four deployments: a pilot with a result, a shadow with a
    result, a pilot that skipped the study, and a live one whose job failed."""
    with rt.sessions() as db, db.begin():
        site_id = create_site(db, code="AUH", name="Aarhus", actor="test").id
    fracture = _deploy(rt, tmp_path / "f", "org.example.fracture", "Fracture AI", "pilot", site_id)
    lung = _deploy(rt, tmp_path / "l", "org.example.lung", "Lung Nodule AI", "shadow", site_id)
    bone_age = _deploy(rt, tmp_path / "b", "org.example.boneage", "Bone Age AI", "pilot", site_id)
    triage = _deploy(rt, tmp_path / "t", "org.example.triage", "Triage AI", "live", site_id)
    with rt.sessions() as db, db.begin():
        patient = Patient(patient_id="0101501234", name="Østergård^Søren")
        db.add(patient)
        db.flush()
        study = Study(study_uid=STUDY_UID, patient_fk=patient.id, site_id=site_id)
        db.add(study)
        db.flush()
        done = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
        job = _job(db, fracture, study.id, "pilot", "succeeded", finished_at=done)
        _result(
            db,
            job,
            "pilot",
            "Fracture",
            [
                {
                    "label": "Fracture",
                    "score": 0.91,
                    "certainty": "sure",
                    "sop_instance_uid": "1.2.3.4",
                    "box_x0": 10.0,
                    "box_y0": 20.0,
                    "box_x1": 110.0,
                    "box_y1": 220.0,
                },
                {
                    "label": "Fracture",
                    "score": 0.62,
                    "certainty": "doubtful",
                    "sop_instance_uid": "1.2.3.4",
                },
            ],
        )
        shadow_job = _job(db, lung, study.id, "shadow", "succeeded", finished_at=done)
        _result(
            db,
            shadow_job,
            "shadow",
            "Nodule",
            [{"label": "Lung nodule", "score": 0.85, "certainty": "sure"}],
        )
        deployment = service.get_deployment(db, deployment_id=bone_age)
        db.add(
            RouteDecision(
                study_fk=study.id,
                deployment_fk=bone_age,
                version_fk=deployment.version_fk,
                outcome="skipped",
                reasons=SKIP_REASONS,
                eligible=[],
                num_instances=1,
            )
        )
        _job(
            db,
            triage,
            study.id,
            "live",
            "failed",
            attempts=3,
            last_error="the vendor appliance did not answer",
            error_kind="transient",
        )
        return Scene(study.id, fracture, lung, bone_age, triage)


@pytest.fixture
def scene(app_runtime: Runtime, tmp_path: Path) -> Scene:
    return build_scene(app_runtime, tmp_path)


def as_user(client: TestClient, name: str) -> TestClient:
    client.cookies.clear()
    assert login(client, name).status_code == 303
    return client


def panel(html: str) -> str:
    start = html.index('id="ai-results"')
    return html[start : html.index("</section>", start)]


def test_study_page_shows_skips_jobs_and_results_without_shadow_for_a_radiologist(
    client: TestClient, scene: Scene
) -> None:
    page = as_user(client, "rita").get(f"/studies/{STUDY_UID}")
    assert page.status_code == 200
    ai = panel(page.text)
    assert "Bone Age AI 1.0:</strong> not run —" in ai
    for reason in SKIP_REASONS:
        assert reason["text"] in ai
    assert "Triage AI 1.0" in ai and "Failed" in ai
    assert "the vendor appliance did not answer" in ai
    assert "Fracture AI 1.0" in ai and PRELIMINARY in ai
    assert 'class="certainty sure"' in ai and 'class="certainty doubtful"' in ai
    assert "Region 10,20 – 110,220 px" in ai
    assert "Fracture AI is CE-marked as a decision aid." in ai
    # Shadow output never reaches a clinician.
    assert "Lung Nodule AI" not in page.text and "Nodule" not in page.text
    assert "shadow-badge" not in page.text


def test_study_page_shows_shadow_results_to_the_ai_owner(client: TestClient, scene: Scene) -> None:
    ai = panel(as_user(client, "otto").get(f"/studies/{STUDY_UID}").text)
    assert "Lung Nodule AI 1.0" in ai and "Lung nodule" in ai
    assert ai.count('class="shadow-badge"') == 1
    assert ai.count(PRELIMINARY) == 2
    danish = as_user(client, "otto").get(f"/studies/{STUDY_UID}", headers={"Accept-Language": "da"})
    assert "AI-forslag — foreløbigt, ikke verificeret af en kliniker" in danish.text


def test_study_page_without_ai_says_so(client: TestClient, app_runtime: Runtime) -> None:
    with app_runtime.sessions() as db, db.begin():
        site_id = create_site(db, code="AUH", name="Aarhus", actor="test").id
        patient = Patient(patient_id="P1", name="Doe^Jane")
        db.add(patient)
        db.flush()
        db.add(Study(study_uid=STUDY_UID, patient_fk=patient.id, site_id=site_id))
    page = as_user(client, "peter").get(f"/studies/{STUDY_UID}")
    assert "No AI solution is deployed for this study" in panel(page.text)


@pytest.fixture
def api(runtime: Runtime, tmp_path: Path) -> Iterator[tuple[TestClient, Scene]]:
    """The same scene on SQLite and PostgreSQL, with a plain API client."""
    add_cast(runtime)
    scene = build_scene(runtime, tmp_path)
    with TestClient(create_app(runtime), base_url="http://testserver") as client:
        yield client, scene


def _get(client: TestClient, rt: Runtime, name: str, uid: str = STUDY_UID) -> Any:
    headers = {"Authorization": f"Bearer {bearer_token(rt, name)}"}
    return client.get(f"/api/studies/{uid}/ai", headers=headers)


def test_ai_json_hides_shadow_from_clinicians_and_is_audited(
    api: tuple[TestClient, Scene], runtime: Runtime
) -> None:
    client, scene = api
    response = _get(client, runtime, "rita")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "preliminary" and body["label"] == PRELIMINARY
    entries = {e["solution_id"]: e for e in body["entries"]}
    assert set(entries) == {"org.example.fracture", "org.example.boneage", "org.example.triage"}
    assert entries["org.example.fracture"]["deployment_id"] == scene.fracture
    skipped = entries["org.example.boneage"]
    assert skipped["deployment_id"] == scene.bone_age
    assert skipped["decision"]["outcome"] == "skipped"
    assert skipped["decision"]["reasons"] == SKIP_REASONS
    assert skipped["job"] is None and skipped["result"] is None
    failed = entries["org.example.triage"]
    assert failed["job"]["state"] == "failed"
    assert failed["job"]["last_error"] == "the vendor appliance did not answer"
    assert (failed["job"]["attempts"], failed["job"]["max_attempts"]) == (3, 3)
    result = entries["org.example.fracture"]["result"]
    assert (result["text"], result["status"], result["mode"]) == (
        "Fracture",
        "preliminary",
        "pilot",
    )
    assert [f["certainty"] for f in result["findings"]] == ["sure", "doubtful"]
    assert result["findings"][0]["box"] == [10.0, 20.0, 110.0, 220.0]
    assert result["findings"][1]["box"] is None
    assert entries["org.example.fracture"]["job"]["study_uid"] == STUDY_UID
    with runtime.sessions() as db:
        (event,) = db.scalars(select(AuditEvent).where(AuditEvent.action == "study.ai.view"))
        assert (event.actor, event.study_uid, event.patient_id) == ("rita", STUDY_UID, "0101501234")

    owner = _get(client, runtime, "otto").json()
    shadow = [e for e in owner["entries"] if e["shadow"]]
    assert [e["solution_id"] for e in shadow] == ["org.example.lung"]
    assert shadow[0]["result"]["mode"] == "shadow"
    assert shadow[0]["result"]["findings"][0]["label"] == "Lung nodule"


def test_ai_json_roles_and_unknown_study(api: tuple[TestClient, Scene], runtime: Runtime) -> None:
    client, _scene = api
    assert client.get(f"/api/studies/{STUDY_UID}/ai").status_code == 401
    assert _get(client, runtime, "nina").status_code == 403
    assert _get(client, runtime, "aud").status_code == 403
    assert _get(client, runtime, "peter").status_code == 200
    assert _get(client, runtime, "ada", uid="1.2.3.999").status_code == 404
