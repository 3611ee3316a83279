"""The validation report: every figure as JSON, and one self-contained HTML page.

`build_document` computes the figures (`lods.validation.metrics`) from the per-case
results; `write_report` writes `report.json` and `report.html` into a folder. The HTML
needs nothing outside itself: the ROC curve and the calibration plot are inline SVG, the
thumbnails of the missed cases are PNG rendered from the DICOM files (window from the
header) and inlined as base64, and the style sheet is in the page.

At each operating point a case counts as called positive when the platform would show
it as such: at "sure" when its study result is positive, at "doubtful" when it is
positive or uncertain (the manifest's own operating points, per finding where it
overrides them). Without per-finding overrides this is "study score ≥ threshold".
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from lods.imaging.render import PNG, Viewport, render
from lods.solutions.manifest import Manifest
from lods.validation import metrics
from lods.web.templating import TEMPLATES_DIR

if TYPE_CHECKING:
    from lods.validation.runner import CaseResult

JSON_NAME = "report.json"
HTML_NAME = "report.html"
FORMAT = "lods.validation-report/1"
#: Longest side of a thumbnail, in pixels, and how many missed cases get one.
THUMBNAIL_SIDE = 256
MAX_THUMBNAILS = 50
SCOPE_STATEMENT = (
    "This report describes how this solution version performed on these local cases only: "
    "the cases, their labels and the figures below. It does not show how the solution "
    "performs on other patients, at other sites, on other equipment or over time."
)
AUC_METHOD = (
    "Mann-Whitney U (ties count one half); 95 % percentile bootstrap over cases "
    f"({metrics.BOOTSTRAP_REPLICATES} replicates, seed {metrics.BOOTSTRAP_SEED})"
)
POINTS = ("sure", "doubtful")

_env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


# --- figures --------------------------------------------------------------------------------


def _subgroup_keys(scored: Sequence[CaseResult]) -> list[str]:
    keys = ["age_band", "sex"]
    if any(c.body_part for c in scored):
        keys.append("body_part")
    if any(c.density for c in scored):
        keys.append("density")
    return keys


def _case_row(case: CaseResult, cases_dir: Path) -> dict[str, Any]:
    images = []
    for path in case.images:
        try:
            images.append(path.relative_to(cases_dir).as_posix())
        except ValueError:
            images.append(str(path))
    scored = case.status == "scored"
    return {
        "case_id": case.case_id,
        "study_uid": case.study_uid,
        "label": case.label,
        "status": case.status,
        "score": case.score,
        "outcome": case.outcome,
        "certainty": case.certainty,
        "positive_at_doubtful": case.positive_at_doubtful if scored else None,
        "positive_at_sure": case.positive_at_sure if scored else None,
        "num_findings": case.num_findings,
        "age": case.age,
        "age_band": case.age_band,
        "sex": case.sex,
        "body_part": case.body_part,
        "density": case.density,
        "finding": case.finding,
        "runtime_ms": case.runtime_ms,
        "reasons": list(case.reasons),
        "images": images,
    }


def build_document(
    *,
    cases: Sequence[CaseResult],
    manifest: Manifest,
    solution: dict[str, Any],
    labels: dict[str, Any],
    cases_dir: Path,
    site_code: str | None,
    created_by: str,
    created_at: datetime,
    unlabelled_studies: int,
    not_dicom_files: int,
) -> dict[str, Any]:
    """Every figure of the report, the per-case table and where it all came from."""
    outputs = manifest.outputs
    score_range = (float(outputs.score_range[0]), float(outputs.score_range[1]))
    scored = [c for c in cases if c.status == "scored"]
    scores = np.array([c.score for c in scored], dtype=np.float64)
    truth = np.array([c.label for c in scored], dtype=np.int64)
    predicted = {
        "sure": np.array([c.positive_at_sure for c in scored], dtype=bool),
        "doubtful": np.array([c.positive_at_doubtful for c in scored], dtype=bool),
    }
    thresholds = {
        "sure": outputs.operating_points.sure,
        "doubtful": outputs.operating_points.doubtful,
    }
    auc = metrics.auc(scores, truth)
    interval = metrics.bootstrap_auc_ci(scores, truth)
    probabilities = metrics.scores_are_probabilities(score_range)
    brier = metrics.brier(scores, truth) if probabilities else None
    by_status = {
        status: [c for c in cases if c.status == status]
        for status in ("excluded", "failed", "missing")
    }
    summary = {
        "counts": {
            "labelled": len(cases),
            "scored": len(scored),
            "positive": int(truth.sum()),
            "negative": int(truth.size - truth.sum()),
            "excluded": len(by_status["excluded"]),
            "failed": len(by_status["failed"]),
            "missing": len(by_status["missing"]),
            "unlabelled_studies": unlabelled_studies,
            "not_dicom_files": not_dicom_files,
        },
        "prevalence": metrics.prevalence(truth).as_dict(),
        "auc": {
            "value": auc,
            "low": interval.low,
            "high": interval.high,
            "replicates": interval.replicates,
            "seed": interval.seed,
            "level": interval.level,
            "method": AUC_METHOD,
        },
        "operating_points": {
            point: {
                "threshold": thresholds[point],
                **metrics.confusion_of(predicted[point], truth).as_dict(),
            }
            for point in POINTS
        },
        "brier": brier,
        "score_range": list(score_range),
    }
    groups: dict[str, list[dict[str, Any]]] = {}
    for key in _subgroup_keys(scored):
        values = [c.age_band if key == "age_band" else getattr(c, key) for c in scored]
        rows = metrics.subgroups(
            key, values, scores, truth, predicted["doubtful"], predicted["sure"]
        )
        groups[key] = [row.as_dict() for row in rows]
    return {
        "format": FORMAT,
        "report_id": None,
        "statement": SCOPE_STATEMENT,
        "created_at": created_at.isoformat(),
        "created_by": created_by,
        "site_code": site_code,
        "solution": solution,
        "labels": labels,
        "cases_dir": str(cases_dir),
        "score_range": list(score_range),
        "operating_points": thresholds,
        "summary": summary,
        "roc": [p.as_dict() for p in metrics.roc_curve(scores, truth)],
        "calibration": {
            "normalised_from": list(score_range),
            "bins": [b.as_dict() for b in metrics.calibration(scores, truth, score_range)],
            "brier": brier,
        },
        "subgroups": groups,
        "excluded": [
            {"case_id": c.case_id, "study_uid": c.study_uid, "reasons": c.reasons}
            for c in by_status["excluded"]
        ],
        "failed": [
            {"case_id": c.case_id, "study_uid": c.study_uid, "error": "; ".join(c.reasons)}
            for c in by_status["failed"]
        ],
        "missing": [
            {"case_id": c.case_id, "study_uid": c.study_uid, "reasons": c.reasons}
            for c in by_status["missing"]
        ],
        "cases": [_case_row(c, cases_dir) for c in cases],
    }


# --- HTML pieces ----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _proportion(item: dict[str, Any] | None) -> str:
    """'83.3 % (10/12) [55.2–95.3 %]', or 'undefined (0/0)'."""
    if not item or item.get("value") is None:
        denominator = (item or {}).get("denominator", 0)
        return f"undefined ({(item or {}).get('numerator', 0)}/{denominator})"
    return (
        f"{_pct(item['value'])} ({item['numerator']}/{item['denominator']}) "
        f"[{item['low'] * 100:.1f}–{item['high'] * 100:.1f} %]"
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


_SVG_SIZE, _MARGIN = 320, 40


def _xy(x: float, y: float) -> tuple[float, float]:
    side = _SVG_SIZE - 2 * _MARGIN
    return _MARGIN + x * side, _SVG_SIZE - _MARGIN - y * side


def _axes(x_label: str, y_label: str) -> list[str]:
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts = [
        f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" stroke="#444"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 4"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        tx, _ = _xy(tick, 0)
        _, ty = _xy(0, tick)
        parts.append(
            f'<text x="{tx:.1f}" y="{y0 + 14:.1f}" font-size="10" text-anchor="middle">'
            f"{tick:g}</text>"
        )
        parts.append(
            f'<text x="{x0 - 6:.1f}" y="{ty + 3:.1f}" font-size="10" text-anchor="end">'
            f"{tick:g}</text>"
        )
    parts.append(
        f'<text x="{(x0 + x1) / 2:.1f}" y="{_SVG_SIZE - 6}" font-size="11" '
        f'text-anchor="middle">{x_label}</text>'
    )
    parts.append(
        f'<text x="12" y="{(y0 + y1) / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {(y0 + y1) / 2:.1f})">{y_label}</text>'
    )
    return parts


def roc_svg(document: dict[str, Any]) -> Markup:
    """The ROC curve with the sure and doubtful operating points marked."""
    points = document["roc"]
    parts = [
        f'<svg id="roc-curve" class="roc" xmlns="http://www.w3.org/2000/svg" '
        f'width="{_SVG_SIZE}" height="{_SVG_SIZE}" viewBox="0 0 {_SVG_SIZE} {_SVG_SIZE}" '
        'role="img" aria-label="ROC curve">',
        "<title>ROC curve: sensitivity against 1 − specificity</title>",
        *_axes("1 − specificity", "sensitivity"),
    ]
    if points:
        path = " ".join("{:.1f},{:.1f}".format(*_xy(p["fpr"], p["tpr"])) for p in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#0b5cad" stroke-width="2"/>')
    styles = {"sure": ("#b00020", "sure"), "doubtful": ("#e08a00", "doubtful")}
    for point in POINTS:
        figures = document["summary"]["operating_points"][point]
        sens, spec = figures["sensitivity"]["value"], figures["specificity"]["value"]
        if sens is None or spec is None:
            continue
        cx, cy = _xy(1 - spec, sens)
        colour, name = styles[point]
        parts.append(
            f'<circle class="operating-point" data-point="{point}" cx="{cx:.1f}" cy="{cy:.1f}" '
            f'r="5" fill="{colour}"><title>{name}: sensitivity {_pct(sens)}, '
            f"specificity {_pct(spec)}</title></circle>"
        )
        parts.append(
            f'<text x="{cx + 7:.1f}" y="{cy + (12 if point == "doubtful" else -6):.1f}" '
            f'font-size="11" fill="{colour}">{name}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and fixed words only


def calibration_svg(document: dict[str, Any]) -> Markup:
    """Observed rate against mean predicted (normalised) score, per non-empty bin."""
    parts = [
        f'<svg id="calibration-plot" xmlns="http://www.w3.org/2000/svg" width="{_SVG_SIZE}" '
        f'height="{_SVG_SIZE}" viewBox="0 0 {_SVG_SIZE} {_SVG_SIZE}" role="img" '
        'aria-label="Calibration plot">',
        "<title>Calibration: observed rate against mean predicted score</title>",
        *_axes("mean predicted (normalised score)", "observed rate"),
    ]
    bins = [b for b in document["calibration"]["bins"] if b["count"]]
    coords = [_xy(b["mean_predicted"], b["observed_rate"]) for b in bins]
    if len(coords) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#0b5cad"/>')
    for (x, y), item in zip(coords, bins, strict=True):
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#0b5cad"><title>{item["count"]} '
            f"cases</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and fixed words only


def thumbnail(path: Path) -> str | None:
    """A PNG data URI of the image's first frame (header window), at most 256 px; None if
    it cannot be rendered."""
    try:
        ds = pydicom.dcmread(path)
        png = render(ds, viewport=Viewport(THUMBNAIL_SIDE, THUMBNAIL_SIDE), media_type=PNG)
    except Exception:  # a picture that cannot be drawn must not lose the report
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def false_negatives(cases: Sequence[CaseResult]) -> list[CaseResult]:
    """Scored cases labelled positive that were not called positive at the doubtful point."""
    return [
        c for c in cases if c.status == "scored" and c.label == 1 and not c.positive_at_doubtful
    ]


def render_html(document: dict[str, Any], cases: Sequence[CaseResult]) -> str:
    missed = false_negatives(cases)
    shown = []
    for case in missed[:MAX_THUMBNAILS]:
        picture = thumbnail(case.images[0]) if case.images else None
        shown.append({"case": case, "thumbnail": picture})
    template = _env.get_template("validation/report.html")
    return template.render(
        doc=document,
        summary=document["summary"],
        roc=roc_svg(document),
        calibration_plot=calibration_svg(document),
        missed=shown,
        missed_total=len(missed),
        max_thumbnails=MAX_THUMBNAILS,
        points=POINTS,
        pct=_pct,
        proportion=_proportion,
        num=_num,
    )


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def write_report(folder: Path, document: dict[str, Any], cases: Sequence[CaseResult]) -> None:
    """Write report.json and report.html into `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / JSON_NAME, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    _write(folder / HTML_NAME, render_html(document, cases))
