"""`lods validate` end to end: a synthetic labelled set, the reports, the row and the audit."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from typer.testing import CliRunner
from validation_support import CaseSet, install

from lods.audit.models import AuditEvent
from lods.cli import app
from lods.runtime import Runtime
from lods.validation.models import ValidationReport
from support_solutions import spot_package


def direct_figures(cases: list[dict[str, Any]], threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV counted by hand from labels and scores."""
    scored = [c for c in cases if c["status"] == "scored"]
    tp = sum(1 for c in scored if c["label"] == 1 and float(c["score"]) >= threshold)
    fn = sum(1 for c in scored if c["label"] == 1 and float(c["score"]) < threshold)
    fp = sum(1 for c in scored if c["label"] == 0 and float(c["score"]) >= threshold)
    tn = sum(1 for c in scored if c["label"] == 0 and float(c["score"]) < threshold)
    return {
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "ppv": tp / (tp + fp),
        "npv": tn / (tn + fn),
    }


def direct_auc(cases: list[dict[str, Any]]) -> float:
    scored = [c for c in cases if c["status"] == "scored"]
    positives = [float(c["score"]) for c in scored if c["label"] == 1]
    negatives = [float(c["score"]) for c in scored if c["label"] == 0]
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives)
    )
    return wins / (len(positives) * len(negatives))


def test_lods_validate_end_to_end(cli_runtime: Runtime, tmp_path: Path, case_set: CaseSet) -> None:
    install(cli_runtime, spot_package(tmp_path / "pkg"))
    out = tmp_path / "report-out"
    result = CliRunner().invoke(
        app,
        [
            "validate",
            "org.test.spot@1.0",
            "--cases",
            str(case_set.cases_dir),
            "--labels",
            str(case_set.labels_json),
            "--site",
            "AUH",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "11 scored (5 positive, 6 negative) of 12 labelled" in text
    assert "AUC: " in text and "95 % CI" in text
    assert "excluded (outside the intended use): 1" in text and "failed: 0" in text
    assert "at sure (score >= 0.8):" in text and "at doubtful (score >= 0.4):" in text
    assert "these local cases only" in text
    assert f"HTML report: {out / 'report.html'}" in text

    document = json.loads((out / "report.json").read_text())
    cases = document["cases"]
    assert len(cases) == 12
    assert [c["case_id"] for c in document["excluded"]] == ["XV012"]
    points = document["summary"]["operating_points"]
    for point, threshold in (("sure", 0.8), ("doubtful", 0.4)):
        expected = direct_figures(cases, threshold)
        for measure, value in expected.items():
            assert points[point][measure]["value"] == value, (point, measure)
    # The toy model finds the four squares of positive cases and the one of XV010.
    assert points["sure"]["sensitivity"]["value"] == 4 / 5
    assert points["sure"]["specificity"]["value"] == 5 / 6
    auc = document["summary"]["auc"]
    assert auc["value"] == direct_auc(cases)
    assert auc["low"] <= auc["value"] <= auc["high"]
    assert document["summary"]["prevalence"]["value"] == 5 / 11

    html = (out / "report.html").read_text()
    assert '<svg id="roc-curve"' in html and 'class="operating-point"' in html
    assert 'id="calibration-plot"' in html
    # XV005 is the one false negative: its thumbnail is inlined.
    assert html.count('class="fn-case"') == 1 and "XV005" in html
    assert "data:image/png;base64," in html
    assert "these local cases only" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "<script" not in html

    with cli_runtime.sessions() as db:
        [row] = db.scalars(select(ValidationReport)).all()
        [event] = db.scalars(
            select(AuditEvent).where(AuditEvent.action == "solution.validate")
        ).all()
    assert row.id == document["report_id"] and row.site_code == "AUH"
    assert row.created_by.startswith("cli:") and event.actor == row.created_by
    stored = cli_runtime.settings.data_dir / row.report_path
    assert (stored / "report.html").read_text() == html
    assert json.loads(event.detail)["report"] == row.id


def test_lods_validate_errors_exit_1(
    cli_runtime: Runtime, tmp_path: Path, case_set: CaseSet
) -> None:
    runner = CliRunner()
    args = ["--cases", str(case_set.cases_dir), "--labels", str(case_set.labels_json)]
    unknown = runner.invoke(app, ["validate", "org.test.none", *args])
    assert unknown.exit_code == 1
    assert "error: no installed solution 'org.test.none'" in unknown.output
    install(cli_runtime, spot_package(tmp_path / "pkg"))
    missing = runner.invoke(
        app,
        ["validate", "org.test.spot", "--cases", str(case_set.cases_dir), "--labels", "nope.json"],
    )
    assert missing.exit_code == 1 and "cannot read the labels file" in missing.output
