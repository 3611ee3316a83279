"""Validation reports on the version page, the stored HTML report, the JSON API, and an
approval that cites a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from validation_support import CaseSet, install

from lods.audit.models import AuditEvent
from lods.auth.service import get_user
from lods.runtime import Runtime
from lods.solutions import service
from lods.solutions.models import SolutionVersion
from lods.validation.runner import ValidationResult, validate
from support import login
from support_solutions import spot_package

HTML = {"Accept": "text/html"}
VERSION_URL = "/solutions/org.test.spot/1.0"


def as_user(client: TestClient, name: str) -> TestClient:
    client.cookies.clear()
    assert login(client, name).status_code == 303
    return client


def post(client: TestClient, url: str, **data: str) -> Any:
    csrf = client.cookies.get("lods_csrf") or ""
    return client.post(url, data={**data, "csrf_token": csrf}, follow_redirects=False)


def audit(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.fixture
def validated(app_runtime: Runtime, tmp_path: Path, case_set: CaseSet) -> ValidationResult:
    install(app_runtime, spot_package(tmp_path / "pkg"))
    return validate(
        app_runtime,
        ref="org.test.spot@1.0",
        cases_dir=case_set.cases_dir,
        labels=case_set.labels_json,
        site_code="AUH",
        out_dir=None,
        actor="otto",
    )


def test_the_version_page_lists_reports_with_a_link_for_ai_owners(
    client: TestClient, validated: ValidationResult
) -> None:
    page = as_user(client, "otto").get(VERSION_URL, headers=HTML)
    assert page.status_code == 200
    assert 'id="validation"' in page.text and "Local validation" in page.text
    row = page.text.split(f'id="validation-{validated.report_id}"')[1].split("</tr>")[0]
    auc = validated.summary["auc"]
    assert f"{auc['value']:.3f} [{auc['low']:.3f}–{auc['high']:.3f}]" in row
    assert "AUH" in row and "otto" in row and "11 scored (5 positive)" in row
    assert "80.0 % / 83.3 %" in row
    link = f"{VERSION_URL}/validation/{validated.report_id}"
    assert f'href="{link}"' in row
    # The approve form offers the report to cite.
    assert f'<option value="{validated.report_id}"' in page.text
    # A radiologist sees the figures but gets no link to the patient images.
    page = as_user(client, "rita").get(VERSION_URL, headers=HTML)
    assert f'id="validation-{validated.report_id}"' in page.text
    assert f'href="{link}"' not in page.text


def test_the_danish_page_translates_the_section(
    client: TestClient, validated: ValidationResult
) -> None:
    page = as_user(client, "otto").get(VERSION_URL, headers={**HTML, "Accept-Language": "da"})
    assert "Lokal validering" in page.text and "Tilfælde fra" in page.text


def test_the_html_report_is_for_ai_owners_and_admins_and_audited(
    client: TestClient, app_runtime: Runtime, validated: ValidationResult
) -> None:
    url = f"{VERSION_URL}/validation/{validated.report_id}"
    for name in ("rita", "peter", "nina"):
        assert as_user(client, name).get(url, headers=HTML).status_code == 403
    assert audit(app_runtime, "solution.validation_view") == []
    for name in ("otto", "ada"):
        page = as_user(client, name).get(url, headers=HTML)
        assert page.status_code == 200
        assert '<svg id="roc-curve"' in page.text and "data:image/png;base64," in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
    views = audit(app_runtime, "solution.validation_view")
    assert [e.actor for e in views] == ["otto", "ada"]
    assert views[0].object_ref == f"validation_report:{validated.report_id}"
    assert as_user(client, "otto").get(f"{VERSION_URL}/validation/999").status_code == 404
    other_version = f"/solutions/org.test.spot/9.9/validation/{validated.report_id}"
    assert client.get(other_version).status_code == 404


def test_the_json_api_lists_reports_and_serves_the_full_report(
    client: TestClient, app_runtime: Runtime, validated: ValidationResult
) -> None:
    listing = as_user(client, "rita").get(f"/api{VERSION_URL}/validation")
    assert listing.status_code == 200
    [item] = listing.json()
    assert item["id"] == validated.report_id and item["n_cases"] == 11
    assert item["n_excluded"] == 1 and item["site_code"] == "AUH"
    assert item["auc"] == pytest.approx(validated.summary["auc"]["value"])
    assert item["html_url"] == f"{VERSION_URL}/validation/{validated.report_id}"
    assert item["summary"]["counts"]["scored"] == 11
    full_url = item["json_url"]
    assert client.get(full_url).status_code == 403
    full = as_user(client, "otto").get(full_url)
    assert full.status_code == 200 and len(full.json()["cases"]) == 12
    assert [e.actor for e in audit(app_runtime, "solution.validation_view")] == ["otto"]
    assert client.get("/api/solutions/org.test.none/1.0/validation").status_code == 404


def test_an_approval_can_cite_a_report(
    client: TestClient, app_runtime: Runtime, validated: ValidationResult
) -> None:
    as_user(client, "otto")
    refused = post(
        client, f"{VERSION_URL}/approve", evidence="Validated locally, fine.", report_id="999"
    )
    assert refused.status_code == 409 and "has no validation report 999" in refused.text
    done = post(
        client,
        f"{VERSION_URL}/approve",
        evidence="Validated on 11 local hand studies.",
        report_id=str(validated.report_id),
    )
    assert done.status_code == 303
    with app_runtime.sessions() as db:
        version = db.scalars(select(SolutionVersion)).one()
        assert version.approval_report_fk == validated.report_id
        assert version.approval_evidence is not None
        assert f"Local validation report #{validated.report_id}" in version.approval_evidence
    [event] = audit(app_runtime, "solution.approve")
    assert json.loads(event.detail)["validation_report"] == validated.report_id
    page = client.get(VERSION_URL, headers=HTML)
    assert 'id="approval-report"' in page.text
    assert f"cites local validation report #{validated.report_id}" in page.text


def test_the_service_refuses_a_report_of_another_version(
    app_runtime: Runtime, tmp_path: Path, validated: ValidationResult
) -> None:
    other = install(app_runtime, spot_package(tmp_path / "pkg2", version="2.0"))
    with app_runtime.sessions() as db, db.begin():
        otto = get_user(db, username="otto")
        assert otto is not None
        with pytest.raises(service.SolutionError, match="no validation report"):
            service.approve(
                db,
                settings=app_runtime.settings,
                version_id=other,
                approver=otto,
                evidence="validated elsewhere, trust me",
                report_id=validated.report_id,
            )
        version = service.approve(
            db,
            settings=app_runtime.settings,
            version_id=other,
            approver=otto,
            evidence="approved without a cited report",
        )
        assert version.approval_report_fk is None
