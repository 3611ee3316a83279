"""Store and find local validation reports; record each one in the audit trail.

A report's files (`report.json`, `report.html`) live under `<data dir>/validation/<id>/`;
the row keeps the headline figures and the aggregate summary (no per-case rows, so the
row can be listed to anyone who may read the solution catalogue). The HTML can show
patient images and is served to AI owners and administrators only, each view audited.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.config import Settings
from lods.db import utcnow
from lods.solutions.models import SolutionVersion
from lods.validation.models import ValidationReport

#: Folder under the data dir that holds one sub-folder per report id.
REPORTS_FOLDER = "validation"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


class ReportNotFound(LookupError):
    """No validation report with that id (for that version)."""


def reports_dir(settings: Settings) -> Path:
    return settings.data_dir / REPORTS_FOLDER


def report_folder(settings: Settings, report: ValidationReport) -> Path:
    """The report's folder on disk (its stored path is relative to the data dir)."""
    relative = PurePosixPath(report.report_path)
    if relative.is_absolute() or ".." in relative.parts:
        raise ReportNotFound(f"validation report {report.id} has an unsafe path")
    return settings.data_dir.joinpath(*relative.parts)


def _figure(summary: dict[str, Any], point: str, measure: str) -> float | None:
    value = summary.get("operating_points", {}).get(point, {}).get(measure, {}).get("value")
    return float(value) if value is not None else None


def record_report(
    db: Session,
    *,
    version: SolutionVersion,
    site_code: str | None,
    actor: str,
    labels_sha256: str,
    summary: dict[str, Any],
    source: str = "",
) -> ValidationReport:
    """Add the report row (its folder is `validation/<id>`) and audit `solution.validate`.

    `summary` is the aggregate part of report.json (see `lods.validation.report.summary`).
    """
    counts = summary["counts"]
    auc = summary.get("auc", {})
    report = ValidationReport(
        version_fk=version.id,
        site_code=site_code,
        created_at=utcnow(),
        created_by=actor,
        labels_sha256=labels_sha256,
        n_cases=int(counts["scored"]),
        n_positive=int(counts["positive"]),
        n_excluded=int(counts["excluded"]),
        n_failed=int(counts["failed"]),
        auc=auc.get("value"),
        auc_low=auc.get("low"),
        auc_high=auc.get("high"),
        sens_doubtful=_figure(summary, "doubtful", "sensitivity"),
        spec_doubtful=_figure(summary, "doubtful", "specificity"),
        sens_sure=_figure(summary, "sure", "sensitivity"),
        spec_sure=_figure(summary, "sure", "specificity"),
        summary=summary,
        report_path="",
    )
    db.add(report)
    db.flush()
    report.report_path = f"{REPORTS_FOLDER}/{report.id}"
    record(
        db,
        actor=actor,
        action="solution.validate",
        object_ref=f"solution:{version.solution_id}@{version.version}",
        source=source,
        detail={
            "report": report.id,
            "site": site_code,
            "labels_sha256": labels_sha256,
            "cases": report.n_cases,
            "positive": report.n_positive,
            "excluded": report.n_excluded,
            "failed": report.n_failed,
            "auc": report.auc,
            "auc_ci": [report.auc_low, report.auc_high],
            "sensitivity": {"doubtful": report.sens_doubtful, "sure": report.sens_sure},
            "specificity": {"doubtful": report.spec_doubtful, "sure": report.spec_sure},
        },
    )
    db.flush()
    return report


def list_reports(db: Session, *, version_id: int) -> list[ValidationReport]:
    """The version's reports, newest first."""
    return list(
        db.scalars(
            select(ValidationReport)
            .where(ValidationReport.version_fk == version_id)
            .order_by(ValidationReport.created_at.desc(), ValidationReport.id.desc())
        )
    )


def get_report(db: Session, *, report_id: int, version_id: int | None = None) -> ValidationReport:
    report = db.get(ValidationReport, report_id)
    if report is None or (version_id is not None and report.version_fk != version_id):
        raise ReportNotFound(f"no validation report {report_id}")
    return report


def record_view(
    db: Session, *, report: ValidationReport, version: SolutionVersion, actor: str, source: str
) -> None:
    """Audit that someone opened a report's HTML (it can show patient images)."""
    record(
        db,
        actor=actor,
        action="solution.validation_view",
        object_ref=f"validation_report:{report.id}",
        source=source,
        detail={"solution": f"{version.solution_id}@{version.version}"},
    )


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def citation(report: ValidationReport) -> str:
    """One line naming the report and its headline figures (for an approval's evidence)."""
    auc = "n/a" if report.auc is None else f"{report.auc:.3f}"
    if report.auc is not None and report.auc_low is not None and report.auc_high is not None:
        auc += f" [{report.auc_low:.3f}–{report.auc_high:.3f}]"
    site = f", cases from {report.site_code}" if report.site_code else ""
    return (
        f"Local validation report #{report.id} ({report.created_at:%Y-%m-%d}{site}): "
        f"{report.n_cases} cases, {report.n_positive} positive, AUC {auc}; "
        f"sensitivity/specificity {_share(report.sens_sure)}/{_share(report.spec_sure)} at sure, "
        f"{_share(report.sens_doubtful)}/{_share(report.spec_doubtful)} at doubtful."
    )
