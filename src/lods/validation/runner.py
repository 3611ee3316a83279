"""`lods validate`: run an installed solution version on local, labelled cases and report.

The cases are DICOM files in a folder (any layout), grouped into studies by Study
Instance UID; the labels file (`labels.json` from the synthetic case writers, or a CSV
with `study_uid` or `case_id` and `label`) gives the reference standard per case.

Each case goes the way a job would, but in this process and on the files of the folder:
the version's installed files are verified first (a mismatch is recorded like a failed
load and refuses the run); the intended-use matcher decides whether the case is in scope
(cases outside it are listed with the reasons, never scored) and which images the
solution may read; the runtime gets a `RunContext` with those images and the manifest's
time limit; the study result comes from the platform's operating points
(`lods.findings.service.study_outcome`). A case whose run fails is counted as failed
with its error, not dropped. Nothing is written to the study store and no finding is
stored: the output is the report (`report.json`, `report.html`) and one audited row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lods.db import utcnow
from lods.findings.service import (
    POSITIVE,
    UNCERTAIN,
    certainty,
    finding_key_for,
    study_outcome,
)
from lods.runtime import Runtime
from lods.solutions import service as solutions
from lods.solutions.intended_use import (
    ImageFacts,
    match,
    patient_age_years,
    study_facts_from_datasets,
)
from lods.solutions.manifest import InputKind, Manifest
from lods.solutions.models import SolutionVersion
from lods.solutions.runtimes import get_runtime
from lods.solutions.runtimes.base import InputImage, RunContext, RunResult
from lods.validation import report as reporting
from lods.validation.service import record_report, reports_dir

#: Status of a case in the report.
SCORED, EXCLUDED, FAILED, MISSING = "scored", "excluded", "failed", "missing"
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0, 18, "0-17"),
    (18, 50, "18-49"),
    (50, 70, "50-69"),
    (70, math.inf, "70+"),
)
_TRUE = {"1", "true", "yes", "positive", "pos"}
_FALSE = {"0", "false", "no", "negative", "neg"}


class ValidationRefused(Exception):
    """The validation cannot be run as asked; the message says why, in plain words."""


# --- labels ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelCase:
    """One labelled case: the reference standard (`label` 1 = condition present)."""

    case_id: str
    study_uid: str
    label: int
    age: float | None = None
    sex: str = ""
    body_part: str = ""
    density: str = ""
    finding: str | None = None
    boxes: tuple[Any, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.case_id or self.study_uid


@dataclass(frozen=True)
class LabelSet:
    kind: str
    cases: tuple[LabelCase, ...]
    sha256: str
    file_name: str
    format: str


def _label_value(raw: object, where: str) -> int:
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int | float) and raw in (0, 1):
        return int(raw)
    text = str(raw if raw is not None else "").strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise ValidationRefused(f"{where}: label must be 0 or 1, not {raw!r}")


def _age_value(raw: object, where: str) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        age = float(str(raw).strip().upper().removesuffix("Y"))
    except ValueError as exc:
        raise ValidationRefused(f"{where}: age must be a number of years, not {raw!r}") from exc
    if not 0 <= age <= 150:
        raise ValidationRefused(f"{where}: age {raw!r} is not plausible")
    return age


def _text(raw: object) -> str:
    return "" if raw is None else str(raw).strip()


def _case(data: dict[str, Any], where: str) -> LabelCase:
    case_id, study_uid = _text(data.get("case_id")), _text(data.get("study_uid"))
    if not case_id and not study_uid:
        raise ValidationRefused(f"{where}: a case needs a study_uid or a case_id")
    boxes = data.get("boxes") or []
    files = data.get("files") or []
    if not isinstance(boxes, list) or not isinstance(files, list):
        raise ValidationRefused(f"{where}: boxes and files must be lists")
    finding = data.get("finding")
    return LabelCase(
        case_id=case_id,
        study_uid=study_uid,
        label=_label_value(data.get("label"), where),
        age=_age_value(data.get("age"), where),
        sex=_text(data.get("sex")).upper()[:1],
        body_part=_text(data.get("body_part")).upper(),
        density=_text(data.get("density")).lower(),
        finding=_text(finding) or None,
        boxes=tuple(boxes),
        files=tuple(str(f) for f in files),
    )


def _csv_cases(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = {(c or "").strip().lower() for c in reader.fieldnames or []}
    if "label" not in columns or not columns & {"study_uid", "case_id"}:
        raise ValidationRefused(
            "the labels CSV needs a 'label' column and a 'study_uid' or 'case_id' column"
        )
    return [
        {(k or "").strip().lower(): v for k, v in row.items()}
        for row in reader
        if any((v or "").strip() for v in row.values() if isinstance(v, str))
    ]


def load_labels(path: Path) -> LabelSet:
    """Read `labels.json` ({"kind", "cases": [...]}) or a labels CSV; refuse what is unclear."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValidationRefused(f"cannot read the labels file {path}: {exc}") from exc
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationRefused(f"the labels file {path.name} is not UTF-8 text") from exc
    kind = ""
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        form = "json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationRefused(
                f"the labels file {path.name} is not valid JSON: {exc}"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise ValidationRefused('labels.json must be {"kind": ..., "cases": [...]}')
        kind = _text(data.get("kind"))
        rows = data["cases"]
    else:
        form = "csv"
        rows = _csv_cases(text)
    cases: list[LabelCase] = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValidationRefused(f"case {index}: must be an object with named fields")
        cases.append(_case(row, f"case {index}"))
    if not cases:
        raise ValidationRefused(f"the labels file {path.name} lists no cases")
    for attribute in ("case_id", "study_uid"):
        seen: set[str] = set()
        for item in cases:
            value = getattr(item, attribute)
            if value and value in seen:
                raise ValidationRefused(f"{attribute} {value} appears twice in the labels")
            seen.add(value)
    return LabelSet(kind, tuple(cases), sha256, path.name, form)


# --- cases on disk --------------------------------------------------------------------------


@dataclass
class StudyFiles:
    """The DICOM files of one study found in the cases folder."""

    study_uid: str
    files: list[tuple[Path, Dataset]] = field(default_factory=list)
    #: Names of the folders holding its files (top level under the cases folder, and own).
    folders: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class CaseScan:
    studies: dict[str, StudyFiles]
    by_path: dict[Path, str]
    not_dicom: int


def scan_cases(cases_dir: Path) -> CaseScan:
    """Read the header of every DICOM file under `cases_dir` and group them by study."""
    if not cases_dir.is_dir():
        raise ValidationRefused(f"the cases folder {cases_dir} does not exist")
    studies: dict[str, StudyFiles] = {}
    by_path: dict[Path, str] = {}
    not_dicom = 0
    for root, dirs, names in os.walk(cases_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, TypeError, EOFError):
                not_dicom += 1
                continue
            study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
            if not study_uid or not str(ds.get("SOPInstanceUID", "") or "").strip():
                not_dicom += 1
                continue
            entry = studies.setdefault(study_uid, StudyFiles(study_uid))
            entry.files.append((path, ds))
            relative = path.relative_to(cases_dir)
            if len(relative.parts) > 1:
                entry.folders.update({relative.parts[0], path.parent.name})
            by_path[path.resolve()] = study_uid
    return CaseScan(studies, by_path, not_dicom)


def _study_of(case: LabelCase, scan: CaseScan, cases_dir: Path) -> str | None:
    """Match by study_uid; else by the files the label lists; else by the folder name."""
    if case.study_uid and case.study_uid in scan.studies:
        return case.study_uid
    for name in case.files:
        found = scan.by_path.get((cases_dir / name).resolve())
        if found:
            return found
    if case.case_id:
        owners = [s.study_uid for s in scan.studies.values() if case.case_id in s.folders]
        if len(owners) == 1:
            return owners[0]
    return None


# --- running cases --------------------------------------------------------------------------


def age_band(age: float | None) -> str:
    if age is None:
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= age < high:
            return name
    return "unknown"


@dataclass
class CaseResult:
    """One labelled case as the report shows it."""

    case_id: str
    study_uid: str
    label: int
    status: str
    reasons: list[str] = field(default_factory=list)
    score: float | None = None
    outcome: str | None = None
    certainty: str | None = None
    num_findings: int = 0
    age: float | None = None
    sex: str = ""
    body_part: str = ""
    density: str = ""
    finding: str | None = None
    #: The images the solution read (absolute paths; relative ones go into the report).
    images: list[Path] = field(default_factory=list)
    runtime_ms: float | None = None

    @property
    def age_band(self) -> str:
        return age_band(self.age)

    @property
    def positive_at_doubtful(self) -> bool:
        return self.outcome in (POSITIVE, UNCERTAIN)

    @property
    def positive_at_sure(self) -> bool:
        return self.outcome == POSITIVE


def _images(
    eligible: tuple[str, ...], study: StudyFiles, facts: tuple[ImageFacts, ...]
) -> list[InputImage]:
    by_uid = {str(ds.SOPInstanceUID): (path, ds) for path, ds in study.files}
    facts_of = {image.sop_instance_uid: image for image in facts}
    images = []
    for uid in eligible:
        path, ds = by_uid[uid]
        known = facts_of.get(uid)
        images.append(
            InputImage(
                sop_instance_uid=uid,
                series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
                path=path.resolve(),
                number_of_frames=known.number_of_frames if known else 1,
                facts=(
                    {
                        "laterality": known.laterality,
                        "view_position": known.view_position,
                        "body_part": known.body_part,
                    }
                    if known
                    else {}
                ),
            )
        )
    return images


def _first_body_part(images: tuple[ImageFacts, ...], eligible: tuple[str, ...]) -> str:
    for image in images:
        if image.sop_instance_uid in eligible and image.body_part:
            return image.body_part
    return next((i.body_part for i in images if i.body_part), "")


def _score_of(manifest: Manifest, result: RunResult) -> tuple[float, str, str, int]:
    """(study score, outcome, certainty, findings) as the platform would store them."""
    certainties = []
    declared = 0
    for found in result.findings:
        key = finding_key_for(manifest, found)
        if key is None:
            continue
        declared += 1
        certainties.append(certainty(found.score, manifest.outputs.points_for(key)))
    outcome = study_outcome(manifest, result, certainties)
    score = outcome.score if outcome.score is not None else manifest.outputs.score_range[0]
    return float(score), outcome.outcome, outcome.certainty, declared


def run_case(
    case: LabelCase,
    study: StudyFiles,
    *,
    manifest: Manifest,
    package_dir: Path,
    runtime_kind: str,
    local_ae_title: str,
) -> CaseResult:
    """Match the case against the intended use and, when it is in scope, run it."""
    datasets = [ds for _path, ds in study.files]
    facts = study_facts_from_datasets(datasets, input_kind=InputKind.DICOM_STUDY)
    header_age = next((a for a in map(patient_age_years, datasets) if a is not None), None)
    result = CaseResult(
        case_id=case.case_id,
        study_uid=study.study_uid,
        label=case.label,
        status=EXCLUDED,
        age=case.age if case.age is not None else header_age,
        sex=case.sex or facts.patient_sex,
        density=case.density,
        finding=case.finding,
    )
    decision = match(manifest.intended_use, facts)
    result.body_part = case.body_part or _first_body_part(facts.images, decision.eligible)
    if not decision.matched:
        result.reasons = decision.reasons
        return result
    images = _images(decision.eligible, study, facts.images)
    result.images = [image.path for image in images]
    timeout = float(manifest.limits.timeout_seconds)
    started = time.monotonic()
    ctx = RunContext(
        job_id=0,
        package_dir=package_dir,
        manifest=manifest,
        study_uid=study.study_uid,
        images=images,
        deadline=started + timeout,
        heartbeat=lambda: None,
        local_ae_title=local_ae_title,
    )
    try:
        output = get_runtime(runtime_kind).run(ctx)
    except Exception as exc:  # every failure is reported per case, none is dropped
        result.status = FAILED
        result.reasons = [f"{type(exc).__name__}: {exc}"]
        result.runtime_ms = round((time.monotonic() - started) * 1000, 1)
        return result
    elapsed = time.monotonic() - started
    result.runtime_ms = round(elapsed * 1000, 1)
    if elapsed > timeout:
        result.status = FAILED
        result.reasons = [f"timeout: the run took {elapsed:.1f} s, the limit is {timeout:g} s"]
        return result
    result.score, result.outcome, result.certainty, result.num_findings = _score_of(
        manifest, output
    )
    result.status = SCORED
    return result


# --- the whole run --------------------------------------------------------------------------


@dataclass
class ValidationResult:
    report_id: int
    #: The report's folder under the data dir (validation/<id>/).
    folder: Path
    json_path: Path
    html_path: Path
    document: dict[str, Any]
    cases: list[CaseResult]

    @property
    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.document["summary"]
        return summary


@dataclass(frozen=True)
class _Loaded:
    version_id: int
    label: str
    solution_id: str
    version: str
    runtime_kind: str
    manifest: Manifest
    manifest_sha256: str
    files: dict[str, str]
    package_dir: Path


def _load_version(runtime: Runtime, ref: str) -> _Loaded:
    failure: solutions.IntegrityFailure | None = None
    with runtime.sessions() as db:
        version: SolutionVersion = solutions.find_version(db, ref=ref)
        if version.integrity_failed_at is not None:
            raise ValidationRefused(
                f"{version.label} failed its integrity check on "
                f"{version.integrity_failed_at:%Y-%m-%d %H:%M} UTC; install a clean copy"
            )
        if version.runtime_kind == "dicom_node":
            raise ValidationRefused(
                f"{version.label} runs on a vendor appliance (dicom_node runtime); "
                "validate it through a shadow deployment instead"
            )
        if version.input_kind != InputKind.DICOM_STUDY.value:
            raise ValidationRefused(
                f"{version.label} reads {version.input_kind}, not DICOM studies; "
                "lods validate runs on DICOM cases only"
            )
        try:
            verified = solutions.verify_version(runtime.settings, version)
        except solutions.IntegrityFailure as exc:
            failure = exc
            version_id = version.id
        else:
            loaded = _Loaded(
                version_id=version.id,
                label=version.label,
                solution_id=version.solution_id,
                version=version.version,
                runtime_kind=version.runtime_kind,
                manifest=verified.manifest,
                manifest_sha256=version.manifest_sha256,
                files=dict(version.files),
                package_dir=verified.folder,
            )
    if failure is not None:
        with runtime.sessions() as db, db.begin():
            solutions.record_integrity_failure(db, version_id=version_id, problems=failure.problems)
        raise ValidationRefused(f"refused: {failure}") from failure
    return loaded


def validate(
    runtime: Runtime,
    *,
    ref: str,
    cases_dir: Path,
    labels: Path,
    site_code: str | None,
    out_dir: Path | None,
    actor: str,
    source: str = "",
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Run `ref` ("id" or "id@version") on the labelled cases and store the report.

    The report is kept under `<data dir>/validation/<id>/` and, when `out_dir` is given,
    copied there too. Raises `ValidationRefused` (or `SolutionNotFound`) when it cannot run.
    """
    loaded = _load_version(runtime, ref)
    label_set = load_labels(labels)
    cases_dir = cases_dir.resolve()
    scan = scan_cases(cases_dir)
    if not scan.studies:
        raise ValidationRefused(f"no DICOM studies were found under {cases_dir}")
    claimed: set[str] = set()
    results: list[CaseResult] = []
    for index, case in enumerate(label_set.cases, start=1):
        study_uid = _study_of(case, scan, cases_dir)
        if study_uid is None or study_uid in claimed:
            why = (
                "no DICOM files were found for this case"
                if study_uid is None
                else "its study is already another labelled case"
            )
            results.append(
                CaseResult(
                    case_id=case.case_id,
                    study_uid=case.study_uid,
                    label=case.label,
                    status=MISSING,
                    reasons=[why],
                    age=case.age,
                    sex=case.sex,
                    body_part=case.body_part,
                    density=case.density,
                    finding=case.finding,
                )
            )
            continue
        claimed.add(study_uid)
        outcome = run_case(
            case,
            scan.studies[study_uid],
            manifest=loaded.manifest,
            package_dir=loaded.package_dir,
            runtime_kind=loaded.runtime_kind,
            local_ae_title=runtime.settings.dicom_ae_title,
        )
        results.append(outcome)
        if progress is not None:
            progress(f"[{index}/{len(label_set.cases)}] {case.name}: {outcome.status}")
    unlabelled = len(set(scan.studies) - claimed)
    created_at = utcnow()
    document = reporting.build_document(
        cases=results,
        manifest=loaded.manifest,
        solution={
            "id": loaded.solution_id,
            "version": loaded.version,
            "label": loaded.label,
            "name": loaded.manifest.name,
            "vendor": loaded.manifest.vendor,
            "runtime": loaded.runtime_kind,
            "regulatory": loaded.manifest.regulatory.summary(),
            "manifest_sha256": loaded.manifest_sha256,
            "files": loaded.files,
        },
        labels={
            "file": label_set.file_name,
            "sha256": label_set.sha256,
            "kind": label_set.kind,
            "format": label_set.format,
            "cases": len(label_set.cases),
        },
        cases_dir=cases_dir,
        site_code=site_code,
        created_by=actor,
        created_at=created_at,
        unlabelled_studies=unlabelled,
        not_dicom_files=scan.not_dicom,
    )
    return _store(runtime, loaded, document, results, label_set, site_code, actor, source, out_dir)


def _store(
    runtime: Runtime,
    loaded: _Loaded,
    document: dict[str, Any],
    results: list[CaseResult],
    label_set: LabelSet,
    site_code: str | None,
    actor: str,
    source: str,
    out_dir: Path | None,
) -> ValidationResult:
    """Insert the row, write the files into its folder, commit; then copy to `out_dir`."""
    settings = runtime.settings
    reports_dir(settings).mkdir(parents=True, exist_ok=True)
    folder: Path | None = None
    try:
        with runtime.sessions() as db, db.begin():
            version = solutions.get_version(db, version_id=loaded.version_id)
            row = record_report(
                db,
                version=version,
                site_code=site_code,
                actor=actor,
                labels_sha256=label_set.sha256,
                summary=document["summary"],
                source=source,
            )
            report_id = row.id
            document["report_id"] = report_id
            folder = settings.data_dir / row.report_path
            reporting.write_report(folder, document, results)
    except BaseException:
        if folder is not None and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    json_path, html_path = folder / reporting.JSON_NAME, folder / reporting.HTML_NAME
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = Path(
            shutil.copyfile(folder / reporting.JSON_NAME, out_dir / reporting.JSON_NAME)
        )
        html_path = Path(
            shutil.copyfile(folder / reporting.HTML_NAME, out_dir / reporting.HTML_NAME)
        )
    return ValidationResult(report_id, folder, json_path, html_path, document, results)
