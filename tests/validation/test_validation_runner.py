"""`validate` runs a version through its runtime on local cases and stores the report."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select
from validation_support import CaseSet, install

from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from lods.solutions import service
from lods.solutions.models import SolutionVersion
from lods.solutions.packaging import build_package
from lods.validation import runner
from lods.validation.models import ValidationReport
from lods.validation.runner import ValidationRefused, load_labels, validate
from support_solutions import manifest_dict, python_package, spot_package, write_dx_image

#: Scores by brightness; a study whose patient id ends in "BAD" breaks the engine.
ENGINE = """
import pydicom
from lods.solutions.runtimes.base import CodeRef, FindingResult, RunResult

def run(ctx):
    code = CodeRef("99LODS", "SPOT1", "Bright spot")
    findings = []
    for image in ctx.images:
        ds = pydicom.dcmread(image.path)
        if str(ds.PatientID).endswith("BAD"):
            raise ValueError("cannot read this image")
        score = 0.9 if int(ds.pixel_array.max()) > 3000 else 0.1
        uid = image.sop_instance_uid
        findings.append(FindingResult(code=code, score=score, sop_instance_uid=uid))
    return RunResult(findings=findings)
"""


def events(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_validate_scores_excludes_and_stores_an_audited_report(
    runtime: Runtime, tmp_path: Path, case_set: CaseSet
) -> None:
    version_id = install(runtime, spot_package(tmp_path / "pkg"))
    result = validate(
        runtime,
        ref="org.test.spot",
        cases_dir=case_set.cases_dir,
        labels=case_set.labels_json,
        site_code="AUH",
        out_dir=None,
        actor="otto",
    )
    counts = result.summary["counts"]
    assert counts == {
        "labelled": 12,
        "scored": 11,
        "positive": 5,
        "negative": 6,
        "excluded": 1,
        "failed": 0,
        "missing": 0,
        "unlabelled_studies": 0,
        "not_dicom_files": 0,
    }
    by_case = {c.case_id: c for c in result.cases}
    assert by_case["XV012"].status == runner.EXCLUDED
    assert "body part CHEST" in by_case["XV012"].reasons[0]
    assert by_case["XV001"].outcome == "positive" and by_case["XV001"].score > 0.9
    assert by_case["XV005"].outcome == "negative" and by_case["XV005"].score < 0.1
    assert by_case["XV002"].age_band == "70+" and by_case["XV002"].body_part == "WRIST"
    assert all(c.runtime_ms is not None for c in result.cases if c.status == "scored")
    assert result.folder == runtime.settings.data_dir / "validation" / str(result.report_id)
    assert result.json_path == result.folder / "report.json"
    stored = json.loads(result.json_path.read_text())
    assert stored["report_id"] == result.report_id
    assert stored["labels"]["sha256"] == case_set.labels_sha256()
    assert stored["solution"]["manifest_sha256"]
    assert stored["site_code"] == "AUH" and stored["created_by"] == "otto"
    with runtime.sessions() as db:
        row = db.get(ValidationReport, result.report_id)
        assert row is not None
        assert (row.version_fk, row.site_code, row.created_by) == (version_id, "AUH", "otto")
        assert (row.n_cases, row.n_positive, row.n_excluded, row.n_failed) == (11, 5, 1, 0)
        assert row.sens_sure == pytest.approx(0.8) and row.spec_sure == pytest.approx(5 / 6)
        assert row.auc == pytest.approx(result.summary["auc"]["value"])
        assert row.report_path == f"validation/{row.id}"
        assert "cases" not in row.summary  # no per-case rows in the database
    [event] = events(runtime, "solution.validate")
    assert event.actor == "otto" and event.object_ref == "solution:org.test.spot@1.0"
    detail = json.loads(event.detail)
    assert detail["report"] == result.report_id and detail["cases"] == 11


def test_runtime_errors_are_counted_as_failed_cases(runtime: Runtime, tmp_path: Path) -> None:
    install(runtime, python_package(tmp_path / "pkg", source=ENGINE))
    cases = tmp_path / "cases"
    rows = ["study_uid,label,age,sex"]
    for index, (bright, label, patient) in enumerate(
        [(True, 1, "P1"), (False, 0, "P2"), (True, 1, "P3BAD"), (False, 1, "P4")]
    ):
        uid = f"1.2.826.0.1.3680043.10.999.{index + 1}"
        write_dx_image(
            cases / f"nested/deeper/{index}.dcm", study_uid=uid, bright=bright, patient_id=patient
        )
        rows.append(f"{uid},{label},45,F")
    (cases / "notes.txt").write_text("not DICOM")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    result = validate(
        runtime,
        ref="org.test.rule@1.0",
        cases_dir=cases,
        labels=labels,
        site_code=None,
        out_dir=tmp_path / "out",
        actor="otto",
    )
    counts = result.summary["counts"]
    assert (counts["scored"], counts["failed"], counts["not_dicom_files"]) == (3, 1, 1)
    [failed] = result.document["failed"]
    assert failed["study_uid"].endswith(".3") and "cannot read this image" in failed["error"]
    assert result.json_path == tmp_path / "out" / "report.json"
    assert (tmp_path / "out" / "report.html").is_file()
    sure = result.summary["operating_points"]["sure"]
    assert (sure["tp"], sure["fn"], sure["tn"], sure["fp"]) == (1, 1, 1, 0)


def test_labels_csv_matched_by_case_folder(
    runtime: Runtime, tmp_path: Path, case_set: CaseSet
) -> None:
    install(runtime, spot_package(tmp_path / "pkg"))
    labels = tmp_path / "own.csv"
    labels.write_text("case_id,label\nXV001,1\nXV006,0\nXV099,1\n")
    result = validate(
        runtime,
        ref="org.test.spot@1.0",
        cases_dir=case_set.cases_dir,
        labels=labels,
        site_code="RH",
        out_dir=None,
        actor="otto",
    )
    counts = result.summary["counts"]
    assert (counts["scored"], counts["missing"], counts["unlabelled_studies"]) == (2, 1, 10)
    assert result.summary["auc"]["value"] == 1.0
    assert result.document["missing"][0]["case_id"] == "XV099"


def test_a_changed_installed_file_refuses_the_run_and_is_recorded(
    runtime: Runtime, tmp_path: Path, case_set: CaseSet
) -> None:
    version_id = install(runtime, spot_package(tmp_path / "pkg"))
    model = runtime.settings.solutions_dir / "org.test.spot" / "1.0" / "model.onnx"
    os.chmod(model.parent, stat.S_IRWXU)
    os.chmod(model, stat.S_IRUSR | stat.S_IWUSR)
    model.write_bytes(model.read_bytes() + b"tampered")
    with pytest.raises(ValidationRefused, match=r"model\.onnx"):
        validate(
            runtime,
            ref="org.test.spot",
            cases_dir=case_set.cases_dir,
            labels=case_set.labels_json,
            site_code=None,
            out_dir=None,
            actor="otto",
        )
    with runtime.sessions() as db:
        version = db.get(SolutionVersion, version_id)
        assert version is not None and version.integrity_failed_at is not None
        assert db.scalars(select(ValidationReport)).all() == []
    assert len(events(runtime, "solution.integrity_failed")) == 1
    with pytest.raises(ValidationRefused, match="integrity check"):
        validate(
            runtime,
            ref="org.test.spot",
            cases_dir=case_set.cases_dir,
            labels=case_set.labels_json,
            site_code=None,
            out_dir=None,
            actor="otto",
        )


def test_unknown_solution_and_bad_inputs_are_refused(
    runtime: Runtime, tmp_path: Path, case_set: CaseSet
) -> None:
    with pytest.raises(service.SolutionNotFound):
        validate(
            runtime,
            ref="org.test.none",
            cases_dir=case_set.cases_dir,
            labels=case_set.labels_json,
            site_code=None,
            out_dir=None,
            actor="otto",
        )
    install(runtime, spot_package(tmp_path / "pkg"))
    with pytest.raises(ValidationRefused, match="does not exist"):
        validate(
            runtime,
            ref="org.test.spot",
            cases_dir=tmp_path / "nowhere",
            labels=case_set.labels_json,
            site_code=None,
            out_dir=None,
            actor="otto",
        )


def test_labels_files_are_read_strictly(tmp_path: Path, case_set: CaseSet) -> None:
    parsed = load_labels(case_set.labels_json)
    assert parsed.kind == "xray" and parsed.format == "json" and len(parsed.cases) == 12
    first = parsed.cases[0]
    assert (first.case_id, first.label, first.age, first.sex) == ("XV001", 1, 45.0, "F")
    assert first.files == ("XV001/1.dcm",)
    mammo = tmp_path / "mammo.csv"
    mammo.write_text("case_id,study_uid,label,age,sex,density\nM1,1.2.3,1,61,F,C\n")
    assert load_labels(mammo).cases[0].density == "c"
    bad = tmp_path / "bad.csv"
    for text, problem in [
        ("case_id,label\nA,2\n", "label must be 0 or 1"),
        ("case_id,label\nA,1\nA,0\n", "appears twice"),
        ("case_id,result\nA,1\n", "'label' column"),
        ("case_id,label,age\nA,1,old\n", "age must be a number"),
        ("case_id,label\n", "lists no cases"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValidationRefused, match=problem):
            load_labels(bad)
    broken = tmp_path / "labels.json"
    broken.write_text('{"kind": "xray", "cases": [')
    with pytest.raises(ValidationRefused, match="not valid JSON"):
        load_labels(broken)
    broken.write_text('{"cases": [{"label": 1}]}')
    with pytest.raises(ValidationRefused, match="study_uid or a case_id"):
        load_labels(broken)


def test_age_bands() -> None:
    assert [runner.age_band(a) for a in (None, 0, 17.9, 18, 49.5, 50, 69.99, 70, 104)] == [
        "unknown",
        "0-17",
        "0-17",
        "18-49",
        "18-49",
        "50-69",
        "50-69",
        "70+",
        "70+",
    ]


def test_vendor_appliance_solutions_are_refused_with_a_reason(
    runtime: Runtime, tmp_path: Path, case_set: CaseSet
) -> None:
    appliance = {"kind": "dicom_node", "host": "127.0.0.1", "port": 11112, "ae_title": "VENDOR"}
    package = build_package(
        tmp_path / "vendor",
        manifest_dict(solution_id="org.test.vendor", version="1.0", runtime=appliance),
        {"README.txt": b"a vendor appliance"},
    )
    install(runtime, package)
    with pytest.raises(ValidationRefused, match="dicom_node runtime"):
        validate(
            runtime,
            ref="org.test.vendor",
            cases_dir=case_set.cases_dir,
            labels=case_set.labels_json,
            site_code=None,
            out_dir=None,
            actor="otto",
        )
