"""`/fhir`: who may read, what is served (never shadow output, never a draft), search by
patient, status and date, and an audit event with patient and study for every read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.auth.service import get_user
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import Instance, Patient, Series, Study
from lods.jobs.models import Job
from lods.review.models import FindingDecision, Report, ReportRevision
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions import service
from lods.solutions.packaging import build_package
from support import auth, login

ENGINE = (
    b"def run(ctx):\n"
    b"    from lods.solutions.runtimes.base import RunResult\n"
    b"    return RunResult()\n"
)
PATIENT_A, PATIENT_B = "0101501234", "0202602345"
S1, S2, S3 = (
    "1.2.826.0.1.3680043.8.498.2001",
    "1.2.826.0.1.3680043.8.498.2002",
    "1.2.826.0.1.3680043.8.498.2003",
)
SOP = "1.2.826.0.1.3680043.8.498.2001.1.1"
FHIR_JSON = "application/fhir+json"


def _manifest(solution_id: str, name: str) -> dict[str, Any]:
    return {
        "id": solution_id,
        "name": name,
        "version": "1.0",
        "vendor": "Example Medical",
        "regulatory": {"status": "ce_marked", "ce_class": "I", "statement": f"{name} (CE)"},
        "intended_use": {
            "summary": f"{name} on radiographs of adults",
            "input_kind": "dicom-study",
            "modalities": ["DX"],
            "limitations": ["Not for children"],
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


def _deploy(rt: Runtime, folder: Path, solution_id: str, name: str, mode: str, site: int) -> int:
    build_package(folder, _manifest(solution_id, name), {"engine.py": ENGINE})
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
        return service.deploy(db, version_id=version.id, site_id=site, mode=mode, actor="test").id


def _ai(
    db: Session,
    deployment_id: int,
    study_id: int,
    mode: str,
    outcome: str,
    findings: list[dict[str, Any]],
) -> tuple[int, list[int]]:
    deployment = service.get_deployment(db, deployment_id=deployment_id)
    job = Job(
        kind="solution",
        state="succeeded",
        version_fk=deployment.version_fk,
        deployment_fk=deployment_id,
        study_fk=study_id,
        inputs={"mode": mode},
        result={},
    )
    db.add(job)
    db.flush()
    result = StudyResult(
        job_fk=job.id,
        study_fk=study_id,
        version_fk=job.version_fk,
        deployment_fk=deployment_id,
        mode=mode,
        outcome=outcome,
        text={"positive": "Fracture", "negative": "No fracture"}[outcome],
        score=0.91 if outcome == "positive" else 0.1,
        certainty="sure" if outcome == "positive" else "none",
        num_findings=len(findings),
        provenance='{"solution": "test"}',
    )
    db.add(result)
    rows = [
        Finding(
            job_fk=job.id,
            study_fk=study_id,
            version_fk=job.version_fk,
            deployment_fk=deployment_id,
            mode=mode,
            finding_key="finding",
            code_scheme="SCT",
            code_value="125605004",
            code_meaning="Fracture of bone",
            label="Fracture",
            **found,
        )
        for found in findings
    ]
    db.add_all(rows)
    db.flush()
    return result.id, [r.id for r in rows]


@dataclass
class Scene:
    site_id: int
    fracture_result: int
    fracture_findings: list[int]
    shadow_result: int
    shadow_finding: int
    shadow_only_result: int
    triage_result: int
    report_id: int
    draft_id: int
    decisions: list[int]
    rita_id: int
    study_ids: dict[str, int]


def build_scene(rt: Runtime, tmp_path: Path) -> Scene:
    with rt.sessions() as db, db.begin():
        site_id = create_site(db, code="AUH", name="Aarhus", actor="test").id
    fracture = _deploy(rt, tmp_path / "f", "org.example.fracture", "Fracture AI", "pilot", site_id)
    lung = _deploy(rt, tmp_path / "l", "org.example.lung", "Lung AI", "shadow", site_id)
    triage = _deploy(rt, tmp_path / "t", "org.example.triage", "Triage AI", "live", site_id)
    with rt.sessions() as db, db.begin():
        rita = get_user(db, username="rita")
        assert rita is not None
        a = Patient(patient_id=PATIENT_A, name="Østergård^Søren", sex="M")
        b = Patient(patient_id=PATIENT_B, name="Berg^Bente", sex="F")
        db.add_all([a, b])
        db.flush()
        studies = {
            S1: Study(
                study_uid=S1,
                patient_fk=a.id,
                site_id=site_id,
                accession_number="ACC1",
                study_date=date(2026, 3, 1),
                description="Wrist DX",
            ),
            S2: Study(
                study_uid=S2, patient_fk=b.id, site_id=site_id, study_date=date(2025, 12, 15)
            ),
            S3: Study(study_uid=S3, patient_fk=a.id, site_id=site_id, study_date=date(2026, 1, 10)),
        }
        db.add_all(studies.values())
        db.flush()
        series = Series(
            series_uid=S1 + ".1", study_fk=studies[S1].id, modality="DX", body_part="L WRIST"
        )
        db.add(series)
        db.flush()
        db.add(
            Instance(
                sop_instance_uid=SOP,
                series_fk=series.id,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                sha256="0" * 64,
                dataset_sha256="0" * 64,
                size=1,
                channel="import",
            )
        )
        s1 = studies[S1].id
        fracture_result, fracture_findings = _ai(
            db,
            fracture,
            s1,
            "pilot",
            "positive",
            [
                {
                    "score": 0.91,
                    "certainty": "sure",
                    "sop_instance_uid": SOP,
                    "box_x0": 10.0,
                    "box_y0": 20.0,
                    "box_x1": 110.0,
                    "box_y1": 220.0,
                },
                {"score": 0.62, "certainty": "doubtful"},
            ],
        )
        shadow_result, [shadow_finding] = _ai(
            db, lung, s1, "shadow", "positive", [{"score": 0.88, "certainty": "sure"}]
        )
        shadow_only_result, _ = _ai(
            db, lung, studies[S3].id, "shadow", "positive", [{"score": 0.9, "certainty": "sure"}]
        )
        triage_result, _ = _ai(db, triage, studies[S2].id, "live", "negative", [])
        signed_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        report = Report(
            study_fk=s1,
            state="signed",
            text="Distal radius fracture.",
            conclusion="positive",
            version=1,
            author_fk=rita.id,
            signer_fk=rita.id,
            signed_at=signed_at,
        )
        draft = Report(study_fk=studies[S2].id, state="draft", text="Draft", author_fk=rita.id)
        db.add_all([report, draft])
        db.flush()
        db.add(
            ReportRevision(
                report_fk=report.id,
                version=1,
                state="signed",
                text=report.text,
                conclusion="positive",
                decisions="[]",
                signer_fk=rita.id,
                signed_at=signed_at,
            )
        )
        decisions = [
            FindingDecision(
                report_fk=report.id,
                study_fk=s1,
                finding_fk=fracture_findings[0],
                decision="agree",
                user_fk=rita.id,
            ),
            FindingDecision(
                report_fk=report.id,
                study_fk=s1,
                finding_fk=fracture_findings[1],
                decision="disagree",
                user_fk=rita.id,
            ),
            FindingDecision(
                report_fk=report.id,
                study_fk=s1,
                finding_fk=None,
                decision="added",
                code_scheme="SCT",
                code_value="263204007",
                code_meaning="Dislocation",
                sop_instance_uid=SOP,
                box_x0=1.0,
                box_y0=2.0,
                box_x1=30.0,
                box_y1=40.0,
                user_fk=rita.id,
            ),
        ]
        db.add_all(decisions)
        db.flush()
        return Scene(
            site_id=site_id,
            fracture_result=fracture_result,
            fracture_findings=fracture_findings,
            shadow_result=shadow_result,
            shadow_finding=shadow_finding,
            shadow_only_result=shadow_only_result,
            triage_result=triage_result,
            report_id=report.id,
            draft_id=draft.id,
            decisions=[d.id for d in decisions],
            rita_id=rita.id,
            study_ids={uid: s.id for uid, s in studies.items()},
        )


@pytest.fixture
def scene(app_runtime: Runtime, tmp_path: Path) -> Scene:
    return build_scene(app_runtime, tmp_path)


@pytest.fixture
def fhir(app_runtime: Runtime) -> TestClient:
    return TestClient(create_app(app_runtime), base_url="http://testserver")


def get(client: TestClient, rt: Runtime, user: str, path: str, **params: Any) -> Any:
    response = client.get(path, params=params or None, headers=auth(rt, user))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return body


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def audit_events(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(
            db.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


# --- who may read -------------------------------------------------------------------------------


def test_anonymous_requests_get_an_operation_outcome_401(fhir: TestClient, scene: Scene) -> None:
    for path in (
        "/fhir/metadata",
        f"/fhir/DiagnosticReport/ai-{scene.fracture_result}",
        "/fhir/DiagnosticReport",
        "/fhir/Patient/1",
    ):
        response = fhir.get(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"].startswith(FHIR_JSON)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["code"] == "login"


@pytest.mark.parametrize("user", ["nina", "otto", "aud"])
def test_other_roles_are_refused(
    fhir: TestClient, app_runtime: Runtime, scene: Scene, user: str
) -> None:
    for path in (f"/fhir/DiagnosticReport/report-{scene.report_id}", "/fhir/DiagnosticReport"):
        response = fhir.get(path, headers=auth(app_runtime, user))
        assert response.status_code == 403
        assert response.json()["issue"][0]["code"] == "forbidden"
    # The capability statement has no patient data: any logged-in user may read it.
    assert fhir.get("/fhir/metadata", headers=auth(app_runtime, user)).status_code == 200


@pytest.mark.parametrize("user", ["rita", "peter", "ada"])
def test_clinical_roles_and_admin_read(
    fhir: TestClient, app_runtime: Runtime, scene: Scene, user: str
) -> None:
    report = get(fhir, app_runtime, user, f"/fhir/DiagnosticReport/report-{scene.report_id}")
    assert report["status"] == "final"


def test_a_login_session_works_as_well_as_a_token(fhir: TestClient, scene: Scene) -> None:
    assert login(fhir, "peter").status_code == 303
    response = fhir.get(f"/fhir/DiagnosticReport/ai-{scene.fracture_result}")
    assert response.status_code == 200
    assert response.json()["status"] == "preliminary"


def test_capability_statement(fhir: TestClient, app_runtime: Runtime, scene: Scene) -> None:
    statement = get(fhir, app_runtime, "rita", "/fhir/metadata")
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["format"] == ["json"]
    kinds = {r["type"] for r in statement["rest"][0]["resource"]}
    assert kinds == {"DiagnosticReport", "Observation", "Provenance", "Device", "Practitioner"}
    assert statement["implementation"]["url"] == "http://testserver/fhir"


# --- what is served -----------------------------------------------------------------------------


def test_ai_report_is_preliminary_and_labelled(
    fhir: TestClient, app_runtime: Runtime, scene: Scene
) -> None:
    report = get(fhir, app_runtime, "rita", f"/fhir/DiagnosticReport/ai-{scene.fracture_result}")
    assert report["status"] == "preliminary"
    assert report["meta"]["security"][0]["code"] == "AIAST"
    assert report["subject"]["identifier"]["value"] == PATIENT_A
    first = scene.fracture_findings[0]
    finding = get(fhir, app_runtime, "rita", f"/fhir/Observation/ai-finding-{first}")
    assert finding["status"] == "preliminary"
    assert finding["bodySite"] == {"text": "WRIST"}
    assert finding["valueQuantity"]["value"] == 0.91
    device_ref = finding["device"]["reference"]
    device = get(fhir, app_runtime, "rita", f"/fhir/{device_ref}")
    assert device["deviceName"][0]["name"] == "Fracture AI"
    assert device["version"] == [{"value": "1.0"}]


def test_signed_report_decisions_provenance_and_practitioner(
    fhir: TestClient, app_runtime: Runtime, scene: Scene
) -> None:
    report = get(fhir, app_runtime, "peter", f"/fhir/DiagnosticReport/report-{scene.report_id}")
    assert report["status"] == "final"
    assert report["resultsInterpreter"][0]["reference"] == f"Practitioner/user-{scene.rita_id}"
    assert [r["reference"] for r in report["result"]] == [
        f"Observation/decision-{d}" for d in scene.decisions
    ]
    agree = get(fhir, app_runtime, "peter", f"/fhir/Observation/decision-{scene.decisions[0]}")
    assert agree["valueCodeableConcept"]["coding"][0]["code"] == "agree"
    assert agree["meta"]["security"][0]["code"] == "AIAST"
    added = get(fhir, app_runtime, "peter", f"/fhir/Observation/decision-{scene.decisions[2]}")
    assert "security" not in added.get("meta", {})
    bundle = get(
        fhir,
        app_runtime,
        "peter",
        "/fhir/Provenance",
        target=f"DiagnosticReport/report-{scene.report_id}",
    )
    assert ids(bundle) == [f"report-{scene.report_id}-v1"]
    provenance = bundle["entry"][0]["resource"]
    agents = {(a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in provenance["agent"]}
    assert ("verifier", f"Practitioner/user-{scene.rita_id}") in agents
    ai_bundle = get(
        fhir,
        app_runtime,
        "peter",
        "/fhir/Provenance",
        target=f"DiagnosticReport/ai-{scene.fracture_result}",
    )
    [ai_provenance] = [e["resource"] for e in ai_bundle["entry"]]
    assert ai_provenance["agent"][0]["who"]["display"] == "Fracture AI 1.0"
    person = get(fhir, app_runtime, "peter", f"/fhir/Practitioner/user-{scene.rita_id}")
    assert person["name"] == [{"text": "Rita"}]


def test_amended_report_reads_as_amended(
    fhir: TestClient, app_runtime: Runtime, scene: Scene
) -> None:
    with app_runtime.sessions() as db, db.begin():
        report = db.get(Report, scene.report_id)
        assert report is not None
        amended_at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        report.state, report.version, report.signed_at = "amended", 2, amended_at
        report.amendment_reason = "Wrong side"
        db.add(
            ReportRevision(
                report_fk=report.id,
                version=2,
                state="amended",
                text=report.text,
                conclusion="positive",
                decisions="[]",
                signer_fk=scene.rita_id,
                signed_at=amended_at,
                reason="Wrong side",
            )
        )
    report_json = get(fhir, app_runtime, "rita", f"/fhir/DiagnosticReport/report-{scene.report_id}")
    assert report_json["status"] == "amended"
    assert report_json["meta"]["versionId"] == "2"
    bundle = get(fhir, app_runtime, "rita", "/fhir/DiagnosticReport", status="amended")
    assert ids(bundle) == [f"report-{scene.report_id}"]
    provenance = get(fhir, app_runtime, "rita", f"/fhir/Provenance/report-{scene.report_id}-v2")
    assert provenance["reason"] == [{"text": "Wrong side"}]


def test_shadow_output_and_drafts_are_never_served(
    fhir: TestClient, app_runtime: Runtime, scene: Scene
) -> None:
    for path in (
        f"/fhir/DiagnosticReport/ai-{scene.shadow_result}",
        f"/fhir/DiagnosticReport/ai-{scene.shadow_only_result}",
        f"/fhir/Observation/ai-result-{scene.shadow_result}",
        f"/fhir/Observation/ai-finding-{scene.shadow_finding}",
        f"/fhir/Provenance/ai-{scene.shadow_result}",
        f"/fhir/DiagnosticReport/report-{scene.draft_id}",
        "/fhir/DiagnosticReport/nonsense",
        "/fhir/Device/solution-999",
        "/fhir/Patient/1",
    ):
        response = fhir.get(path, headers=auth(app_runtime, "ada"))
        assert response.status_code == 404, path
        assert response.json()["resourceType"] == "OperationOutcome"
    everything = get(fhir, app_runtime, "ada", "/fhir/DiagnosticReport", _count="200")
    assert f"ai-{scene.shadow_result}" not in ids(everything)
    assert f"ai-{scene.shadow_only_result}" not in ids(everything)
    assert f"report-{scene.draft_id}" not in ids(everything)
    shown = [e["resource"] for e in everything["entry"]]
    assert all("Lung AI" not in r["code"].get("text", "") for r in shown)
    provenance = get(
        fhir,
        app_runtime,
        "ada",
        "/fhir/Provenance",
        target=f"DiagnosticReport/ai-{scene.shadow_result}",
    )
    assert provenance["total"] == 0
    # A report's provenance names only the solutions clinicians saw.
    signed = get(
        fhir,
        app_runtime,
        "ada",
        "/fhir/Provenance",
        target=f"DiagnosticReport/report-{scene.report_id}",
    )
    agents = {a["who"].get("display") for a in signed["entry"][0]["resource"]["agent"]}
    assert "Lung AI 1.0" not in agents


# --- search -------------------------------------------------------------------------------------


def test_search_by_patient_status_and_date(
    fhir: TestClient, app_runtime: Runtime, scene: Scene
) -> None:
    ai1, rep1, ai2 = (
        f"ai-{scene.fracture_result}",
        f"report-{scene.report_id}",
        f"ai-{scene.triage_result}",
    )

    def search(**params: Any) -> list[str]:
        bundle = get(fhir, app_runtime, "rita", "/fhir/DiagnosticReport", **params)
        assert bundle["type"] == "searchset"
        assert bundle["total"] == len(bundle.get("entry", []))
        return sorted(ids(bundle))

    assert search() == sorted([ai1, rep1, ai2])
    assert search(patient=PATIENT_A) == sorted([ai1, rep1])
    assert search(patient=f"Patient/{PATIENT_B}") == [ai2]
    assert search(patient=f"urn:lods:patient-id|{PATIENT_B}") == [ai2]
    assert search(patient=f"urn:oid:9.9|{PATIENT_B}") == []
    assert search(patient="nobody") == []
    assert search(status="preliminary") == sorted([ai1, ai2])
    assert search(status="final") == [rep1]
    assert search(status="final,preliminary", patient=PATIENT_A) == sorted([ai1, rep1])
    assert search(status="amended") == []
    assert search(status="entered-in-error") == []
    assert search(date="ge2026-01-01") == sorted([ai1, rep1])
    assert search(date="lt2026-01-01") == [ai2]
    assert search(date="2025-12") == [ai2]
    assert search(date="2026") == sorted([ai1, rep1])
    assert search(date="gt2026-03-01") == []
    assert search(date=["ge2026-03-01", "le2026-03-01"], status="preliminary") == [ai1]


def test_search_pages(fhir: TestClient, app_runtime: Runtime, scene: Scene) -> None:
    first = get(fhir, app_runtime, "rita", "/fhir/DiagnosticReport", _count="2")
    assert first["total"] == 3 and len(first["entry"]) == 2
    # Newest study first.
    assert {e["resource"]["effectiveDateTime"] for e in first["entry"]} == {"2026-03-01"}
    [next_link] = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert next_link.startswith("http://testserver/fhir/DiagnosticReport?")
    second = get(fhir, app_runtime, "rita", next_link.removeprefix("http://testserver"))
    assert ids(second) == [f"ai-{scene.triage_result}"]
    assert not [link for link in second["link"] if link["relation"] == "next"]
    full_url = first["entry"][0]["fullUrl"]
    assert full_url.startswith("http://testserver/fhir/DiagnosticReport/")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"date": "ne2026-01-01"}, "not-supported"),
        ({"date": "2026-13-01"}, "invalid"),
        ({"status": "done"}, "code-invalid"),
        ({"_count": "-1"}, "invalid"),
    ],
)
def test_bad_searches_get_400(
    fhir: TestClient, app_runtime: Runtime, scene: Scene, params: dict[str, str], code: str
) -> None:
    response = fhir.get("/fhir/DiagnosticReport", params=params, headers=auth(app_runtime, "rita"))
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == code
    missing = fhir.get("/fhir/Provenance", headers=auth(app_runtime, "rita"))
    assert missing.status_code == 400


# --- audit --------------------------------------------------------------------------------------


def test_every_read_and_search_is_audited_with_patient_and_study(
    fhir: TestClient, app_runtime: Runtime, scene: Scene
) -> None:
    get(fhir, app_runtime, "peter", f"/fhir/DiagnosticReport/report-{scene.report_id}")
    get(fhir, app_runtime, "peter", f"/fhir/Observation/decision-{scene.decisions[0]}")
    [report_read, observation_read] = audit_events(app_runtime, "fhir.read")
    assert report_read.actor == "peter"
    assert report_read.patient_id == PATIENT_A and report_read.study_uid == S1
    assert report_read.object_ref == f"DiagnosticReport/report-{scene.report_id}"
    assert observation_read.object_ref == f"Observation/decision-{scene.decisions[0]}"
    assert observation_read.study_uid == S1

    get(fhir, app_runtime, "peter", "/fhir/DiagnosticReport", status="preliminary")
    searches = audit_events(app_runtime, "fhir.search")
    assert {(e.patient_id, e.study_uid) for e in searches} == {(PATIENT_A, S1), (PATIENT_B, S2)}
    assert all("status=preliminary" in e.detail for e in searches)

    get(fhir, app_runtime, "peter", "/fhir/DiagnosticReport", patient="nobody")
    empty = audit_events(app_runtime, "fhir.search")[-1]
    assert empty.patient_id is None and "patient=nobody" in empty.detail

    get(
        fhir,
        app_runtime,
        "peter",
        "/fhir/Provenance",
        target=f"DiagnosticReport/ai-{scene.fracture_result}",
    )
    assert audit_events(app_runtime, "fhir.search")[-1].study_uid == S1
    # Refused and unknown reads leave no patient data and no read event.
    fhir.get(f"/fhir/DiagnosticReport/ai-{scene.shadow_result}", headers=auth(app_runtime, "peter"))
    assert len(audit_events(app_runtime, "fhir.read")) == 2


def test_writes_are_refused_read_only(fhir: TestClient, app_runtime: Runtime, scene: Scene) -> None:
    response = fhir.post(
        "/fhir/DiagnosticReport",
        json={"resourceType": "DiagnosticReport"},
        headers=auth(app_runtime, "ada"),
    )
    assert response.status_code == 405
    assert response.json()["issue"][0]["code"] == "not-supported"
    assert fhir.post("/fhir/DiagnosticReport", json={}).status_code == 401


# --- the same reads feed the push and HL7 builders ---------------------------------------------


def test_study_bundle_and_oru_from_the_database(app_runtime: Runtime, scene: Scene) -> None:
    import hl7

    from lods.exports.fhir_push import bundle_for_study
    from lods.exports.hl7 import oru_r01_for_study

    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    with app_runtime.sessions() as db:
        payload = bundle_for_study(db, scene.study_ids[S1])
        message = oru_r01_for_study(db, scene.study_ids[S1], control_id="T1", now=now)
        ai_message = oru_r01_for_study(db, scene.study_ids[S2], control_id="T2", now=now)
        assert bundle_for_study(db, scene.study_ids[S3]) is None  # shadow output only
        assert oru_r01_for_study(db, scene.study_ids[S3], control_id="T3", now=now) is None
    assert payload is not None and message is not None and ai_message is not None
    bundle = json.loads(payload)
    get_fhir_model_class("Bundle").model_validate(bundle)
    statuses = sorted(
        e["resource"]["status"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert statuses == ["final", "preliminary"]
    assert "Lung AI" not in payload
    parsed = hl7.parse(message)
    assert str(parsed.segment("OBR")(25)) == "F"
    assert parsed["PID.F3.R1.C1"] == PATIENT_A
    assert str(hl7.parse(ai_message).segment("OBR")(25)) == "P"
