"""The stored HTML report of a local validation, for AI owners and administrators.

The report can show patient images (the missed cases), so each view is audited and the
page is served with a policy that lets it load nothing from anywhere: it is
self-contained by construction.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from lods.auth.deps import SessionDep, SettingsDep
from lods.solutions.api import OPERATION_ERRORS, SolutionOperator, find_version
from lods.validation import service

router = APIRouter(include_in_schema=False)

#: No scripts, no network: inline styles, inline SVG and data: images only.
REPORT_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_NOT_FOUND = "<!doctype html><title>404</title><h1>404</h1><p>No such validation report.</p>"


@router.get("/solutions/{solution_id}/{version}/validation/{report_id}")
def report_page(
    solution_id: str,
    version: str,
    report_id: int,
    db: SessionDep,
    settings: SettingsDep,
    user: SolutionOperator,
) -> HTMLResponse:
    """The report as it was written by `lods validate` (the view is audited)."""
    try:
        row = find_version(db, solution_id, version)
        report = service.get_report(db, report_id=report_id, version_id=row.id)
        html = (service.report_folder(settings, report) / service.REPORT_HTML).read_text(
            encoding="utf-8"
        )
    except (*OPERATION_ERRORS, service.ReportNotFound, OSError):
        return HTMLResponse(_NOT_FOUND, status_code=404, headers=REPORT_HEADERS)
    service.record_view(db, report=report, version=row, actor=user.username, source=user.source)
    return HTMLResponse(html, headers=REPORT_HEADERS)
