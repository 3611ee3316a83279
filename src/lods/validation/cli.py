"""`lods validate SOLUTION[@VERSION] --cases DIR --labels FILE [--site S] [--out DIR]`.

Runs the installed version on the labelled cases (see `lods.validation.runner`), prints
a short summary and where the HTML and JSON reports are. Errors go to stderr with exit
status 1. The run is audited (`solution.validate`) as `cli:<operating-system user>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lods.auth.cli import cli_actor
from lods.config import get_settings

if TYPE_CHECKING:
    from lods.validation.runner import ValidationResult


def _pct(item: dict[str, Any]) -> str:
    if item.get("value") is None:
        return f"undefined ({item['numerator']}/{item['denominator']})"
    return (
        f"{item['value'] * 100:.1f} % [{item['low'] * 100:.1f}–{item['high'] * 100:.1f}] "
        f"({item['numerator']}/{item['denominator']})"
    )


def summary_lines(result: ValidationResult) -> list[str]:
    """The figures a person reads first, one per line."""
    doc = result.document
    summary = result.summary
    counts = summary["counts"]
    auc = summary["auc"]
    auc_text = "undefined (needs positive and negative cases)"
    if auc["value"] is not None:
        auc_text = f"{auc['value']:.3f}"
        if auc["low"] is not None:
            auc_text += f" [95 % CI {auc['low']:.3f}–{auc['high']:.3f}]"
    lines = [
        f"validation report #{result.report_id}: {doc['solution']['label']} "
        f"({doc['solution']['id']}@{doc['solution']['version']})"
        + (f", cases from {doc['site_code']}" if doc["site_code"] else ""),
        f"cases: {counts['scored']} scored ({counts['positive']} positive, "
        f"{counts['negative']} negative) of {counts['labelled']} labelled",
        f"prevalence: {_pct(summary['prevalence'])}",
        f"AUC: {auc_text}",
    ]
    for point in ("sure", "doubtful"):
        figures = summary["operating_points"][point]
        lines.append(f"at {point} (score >= {figures['threshold']:g}):")
        for key, name in (
            ("sensitivity", "sensitivity"),
            ("specificity", "specificity"),
            ("ppv", "PPV"),
            ("npv", "NPV"),
        ):
            lines.append(f"  {name}: {_pct(figures[key])}")
    lines.append(f"excluded (outside the intended use): {counts['excluded']}")
    lines.append(f"failed: {counts['failed']}")
    if counts["missing"]:
        lines.append(f"labelled cases without DICOM files: {counts['missing']}")
    if counts["unlabelled_studies"]:
        lines.append(f"studies without a label (not used): {counts['unlabelled_studies']}")
    lines.append("These figures describe performance on these local cases only.")
    lines.append(f"HTML report: {result.html_path}")
    lines.append(f"JSON report: {result.json_path}")
    return lines


def validate_command(
    solution: Annotated[str, typer.Argument(help="ID@VERSION, or ID for the newest version")],
    cases: Annotated[Path, typer.Option("--cases", help="Folder of DICOM files (any layout)")],
    labels: Annotated[
        Path, typer.Option("--labels", help="labels.json, or a CSV with study_uid/case_id,label")
    ],
    site: Annotated[
        str | None, typer.Option("--site", help="Where the cases come from (kept in the report)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write report.html and report.json here")
    ] = None,
) -> None:
    """Measure an installed solution on local, labelled cases before it goes live."""
    # Imported here: the runtimes, rendering and reporting are not needed by other commands.
    from lods.runtime import Runtime
    from lods.solutions.service import SolutionError
    from lods.validation.runner import ValidationRefused, validate

    runtime = Runtime.open(get_settings())
    try:
        result = validate(
            runtime,
            ref=solution,
            cases_dir=cases,
            labels=labels,
            site_code=(site or "").strip() or None,
            out_dir=out,
            actor=cli_actor(),
        )
    except (ValidationRefused, SolutionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    finally:
        runtime.close()
    typer.echo("\n".join(summary_lines(result)))
