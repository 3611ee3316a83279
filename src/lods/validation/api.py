"""JSON API for local validation reports of a solution version.

The list (headline figures and aggregate summary, no per-case rows) is open to whoever
may read the solution catalogue. The full report.json holds per-case rows (study UIDs,
ages) and is for AI owners and administrators, each read audited.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from lods.auth.deps import SessionDep, SettingsDep
from lods.solutions.api import (
    ERROR_RESPONSES,
    OPERATION_ERRORS,
    SolutionOperator,
    SolutionReader,
    find_version,
)
from lods.solutions.models import SolutionVersion
from lods.solutions.schemas import problem_of
from lods.validation import service
from lods.validation.models import ValidationReport

router = APIRouter(prefix="/api", tags=["validation"])


class ValidationReportOut(BaseModel):
    """One local validation report: where the cases came from and the headline figures."""

    id: int
    solution_id: str
    version: str
    site_code: str | None
    created_at: datetime
    created_by: str
    labels_sha256: str
    #: Scored cases, positives among them, cases outside the intended use, failed runs.
    n_cases: int
    n_positive: int
    n_excluded: int
    n_failed: int
    auc: float | None
    auc_low: float | None
    auc_high: float | None
    sens_doubtful: float | None
    spec_doubtful: float | None
    sens_sure: float | None
    spec_sure: float | None
    summary: dict[str, Any]
    #: The HTML report (AI owners and administrators).
    html_url: str
    #: The full report.json (AI owners and administrators).
    json_url: str

    @classmethod
    def of(cls, report: ValidationReport, version: SolutionVersion) -> ValidationReportOut:
        base = f"{quote(version.solution_id, safe='')}/{quote(version.version, safe='')}"
        return cls(
            id=report.id,
            solution_id=version.solution_id,
            version=version.version,
            site_code=report.site_code,
            created_at=report.created_at,
            created_by=report.created_by,
            labels_sha256=report.labels_sha256,
            n_cases=report.n_cases,
            n_positive=report.n_positive,
            n_excluded=report.n_excluded,
            n_failed=report.n_failed,
            auc=report.auc,
            auc_low=report.auc_low,
            auc_high=report.auc_high,
            sens_doubtful=report.sens_doubtful,
            spec_doubtful=report.spec_doubtful,
            sens_sure=report.sens_sure,
            spec_sure=report.spec_sure,
            summary=report.summary,
            html_url=f"/solutions/{base}/validation/{report.id}",
            json_url=f"/api/solutions/{base}/validation/{report.id}",
        )


def _problem(exc: Exception) -> JSONResponse:
    code, body = problem_of(exc)
    return JSONResponse(body.model_dump(), status_code=code)


def _not_found(report_id: int) -> JSONResponse:
    return JSONResponse({"detail": f"no validation report {report_id}"}, status_code=404)


@router.get(
    "/solutions/{solution_id}/{version}/validation",
    response_model=list[ValidationReportOut],
    responses=ERROR_RESPONSES,
)
def list_reports(
    solution_id: str, version: str, db: SessionDep, _user: SolutionReader
) -> list[ValidationReportOut] | JSONResponse:
    """The version's local validation reports, newest first."""
    try:
        row = find_version(db, solution_id, version)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    return [ValidationReportOut.of(r, row) for r in service.list_reports(db, version_id=row.id)]


@router.get(
    "/solutions/{solution_id}/{version}/validation/{report_id}",
    responses=ERROR_RESPONSES,
)
def get_report(
    solution_id: str,
    version: str,
    report_id: int,
    db: SessionDep,
    settings: SettingsDep,
    user: SolutionOperator,
) -> JSONResponse:
    """The full report.json, with the per-case table (the read is audited)."""
    try:
        row = find_version(db, solution_id, version)
    except OPERATION_ERRORS as exc:
        return _problem(exc)
    try:
        report = service.get_report(db, report_id=report_id, version_id=row.id)
        path = service.report_folder(settings, report) / service.REPORT_JSON
        document = json.loads(path.read_text(encoding="utf-8"))
    except (service.ReportNotFound, OSError, ValueError):
        return _not_found(report_id)
    service.record_view(db, report=report, version=row, actor=user.username, source=user.source)
    return JSONResponse(document, headers={"Cache-Control": "no-store"})
