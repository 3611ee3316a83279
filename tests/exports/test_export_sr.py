"""DICOM SR of AI results (IHE AI Results): the UNVERIFIED one of an AI answer and the
VERIFIED one of a signed report pass dciodvfy, name the algorithm and the signer, and carry
every human decision — built from values, and through the export hooks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from exports_support import (
    ADDED_BOX,
    AI_FINDINGS,
    SITE_NAME,
    dciodvfy_errors,
    principal,
    reading_scene,
    sign_reading,
)
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update

from lods.alerts.models import Alert
from lods.exports import service
from lods.exports.models import OutboxItem
from lods.exports.results import (
    AiFinding,
    AiStudyResult,
    Algorithm,
    DocumentIds,
    HumanDecision,
    SignedReport,
    Signer,
    algorithm_device_uid,
    person_name,
)
from lods.exports.sr import build_unverified_sr, build_verified_sr
from lods.findings.sr import parse_measurement_report
from lods.imaging.models import Instance
from lods.imaging.store import BlobStore
from lods.review import service as review
from lods.review.models import Report
from lods.runtime import Runtime
from lods.solutions.models import Deployment
from lods.solutions.runtimes.base import Box, CodeRef
from lods.synth.xray import make_study, synthetic_patient

FRACTURE = CodeRef("SCT", "125605004", "Fracture of bone")
NODULE = CodeRef("SCT", "27925004", "Nodule")
ALGORITHM = Algorithm(
    name="Fracture finder",
    version="2.1.0",
    manufacturer="Lods demo",
    device_uid=algorithm_device_uid("org.lods.fracture", "2.1.0", "ab" * 32),
    model_name="org.lods.fracture",
)
SIGNED_AT = datetime(2026, 3, 4, 10, 30, 15, tzinfo=UTC)
SIGNER = Signer(person_name("Rita Hansen"), "Havnby Hospital", SIGNED_AT, login="rita")


@pytest.fixture(scope="module")
def images() -> list[Dataset]:
    return make_study(
        11,
        body_part="WRIST",
        modality="DX",
        patient=synthetic_patient(3, seed=11),
        views=2,
        size=256,
    )


def _ids(series_number: int = 9801, instance: int = 1) -> DocumentIds:
    return DocumentIds(str(generate_uid()), str(generate_uid()), series_number, instance)


def _findings(images: list[Dataset]) -> list[AiFinding]:
    first, second = (str(ds.SOPInstanceUID) for ds in images)
    return [
        AiFinding(
            FRACTURE,
            0.91,
            ALGORITHM,
            str(generate_uid()),
            "fracture 1",
            first,
            box=Box(10.5, 20.0, 42.0, 61.25),
        ),
        AiFinding(
            FRACTURE,
            0.45,
            ALGORITHM,
            str(generate_uid()),
            "",
            second,
            box=Box(100.0, 120.0, 130.0, 150.0),
        ),
        AiFinding(NODULE, 0.30, ALGORITHM, str(generate_uid()), "nodule, image level", second),
    ]


def _decisions(images: list[Dataset], findings: list[AiFinding]) -> list[HumanDecision]:
    second = str(images[1].SOPInstanceUID)
    agree, disagree, amend = findings
    return [
        HumanDecision("agree", agree.tracking_uid, agree),
        HumanDecision("disagree", disagree.tracking_uid, disagree),
        HumanDecision(
            "amend",
            amend.tracking_uid,
            amend,
            code=FRACTURE,
            sop_instance_uid=second,
            box=Box(60.0, 60.0, 90.0, 95.0),
        ),
        HumanDecision(
            "added",
            str(generate_uid()),
            None,
            code=NODULE,
            sop_instance_uid=second,
            box=Box(5.0, 5.0, 30.0, 30.0),
        ),
    ]


def _saved(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _assert_valid(path: Path) -> str:
    errors, output = dciodvfy_errors(path)
    assert errors == [], output
    assert "Comprehensive3DSR" in output
    return output


def _walk(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(list(item.get("ContentSequence") or []))


def _code(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[keyword][0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def _groups(ds: Dataset) -> list[Dataset]:
    return [i for i in _walk(list(ds.ContentSequence)) if _code(i) == ("DCM", "125007")]


def _decision_of(group: Dataset) -> str | None:
    for item in group.ContentSequence:
        if item.ValueType == "CODE" and _code(item) == ("99LODS", "decision"):
            return str(item.ConceptCodeSequence[0].CodeValue)
    return None


def _report_texts(sr: Dataset) -> list[str]:
    """TEXT items of the root's "Qualitative Evaluations" container (the report text)."""
    (container,) = [i for i in sr.ContentSequence if _code(i) == ("UMLS", "C0034375")]
    return [str(i.TextValue) for i in container.ContentSequence if i.ValueType == "TEXT"]


def _has_algorithm(group: Dataset) -> bool:
    return any(_code(i) == ("DCM", "111001") for i in group.ContentSequence)


# --- built from values ---------------------------------------------------------------------------


@pytest.mark.peers
def test_unverified_sr_passes_dciodvfy_and_names_the_algorithm(
    images: list[Dataset], tmp_path: Path
) -> None:
    findings = _findings(images)
    result = AiStudyResult(ALGORITHM, "positive", "Fracture", 0.91)
    sr = _saved(
        build_unverified_sr(
            images,
            algorithm=ALGORITHM,
            findings=findings,
            result=result,
            ids=_ids(),
            institution_name="Havnby Hospital",
        ),
        tmp_path / "unverified.dcm",
    )
    _assert_valid(tmp_path / "unverified.dcm")
    assert (sr.VerificationFlag, sr.PreliminaryFlag, sr.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "COMPLETE",
    )
    assert "VerifyingObserverSequence" not in sr
    assert sr.StudyInstanceUID == images[0].StudyInstanceUID
    assert sr.PatientID == images[0].PatientID
    (equipment,) = [
        item
        for item in sr.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # processing
        and item.Manufacturer == "Lods demo"
    ]
    assert (equipment.Manufacturer, equipment.ManufacturerModelName) == (
        "Lods demo",
        "org.lods.fracture",
    )
    assert (equipment.SoftwareVersions, equipment.DeviceUID) == ("2.1.0", ALGORITHM.device_uid)
    parsed = parse_measurement_report(sr)
    assert parsed.verified is False
    assert (parsed.algorithm_name, parsed.algorithm_version) == ("Fracture finder", "2.1.0")
    assert parsed.device_uid == ALGORITHM.device_uid
    boxed = [(f.sop_instance_uid, f.box, f.score) for f in parsed.findings if f.box]
    assert boxed == [(f.sop_instance_uid, f.box, pytest.approx(f.score)) for f in findings[:2]]
    assert {f.tracking_uid for f in parsed.findings} >= {f.tracking_uid for f in findings}
    # The AI's study-level answer: Conclusion = Positive (SCT 10828004), with its score.
    conclusions = [
        _code(i, "ConceptCodeSequence")
        for i in _walk(list(sr.ContentSequence))
        if i.ValueType == "CODE" and _code(i) == ("DCM", "121077")
    ]
    assert conclusions == [("SCT", "10828004")]


@pytest.mark.peers
def test_a_negative_ai_answer_is_reported_without_findings(
    images: list[Dataset], tmp_path: Path
) -> None:
    result = AiStudyResult(ALGORITHM, "negative", "No fracture", 0.04)
    build_unverified_sr(
        images, algorithm=ALGORITHM, findings=[], result=result, ids=_ids()
    ).save_as(tmp_path / "negative.dcm", enforce_file_format=True)
    _assert_valid(tmp_path / "negative.dcm")
    with pytest.raises(ValueError, match="findings or a study-level result"):
        build_unverified_sr(images, algorithm=ALGORITHM, findings=[], result=None, ids=_ids())


@pytest.mark.peers
def test_verified_sr_names_the_signer_and_carries_every_decision(
    images: list[Dataset], tmp_path: Path
) -> None:
    findings = _findings(images)
    decisions = _decisions(images, findings)
    report = SignedReport("Fracture of the distal radius.", "positive", 1, SIGNER)
    sr = _saved(
        build_verified_sr(
            images,
            report=report,
            decisions=decisions,
            results=[AiStudyResult(ALGORITHM, "positive", "Fracture", 0.91)],
            ids=_ids(9802),
        ),
        tmp_path / "verified.dcm",
    )
    _assert_valid(tmp_path / "verified.dcm")
    assert (sr.VerificationFlag, sr.PreliminaryFlag, sr.CompletionFlag) == (
        "VERIFIED",
        "FINAL",
        "COMPLETE",
    )
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Hansen^Rita"
    assert observer.VerifyingOrganization == "Havnby Hospital"
    assert str(observer.VerificationDateTime).startswith("20260304103015")
    # The signer is also the person observer of the content (TID 1002/1003).
    names = [str(i.PersonName) for i in _walk(list(sr.ContentSequence)) if i.ValueType == "PNAME"]
    assert names == ["Hansen^Rita"]
    by_tracking = {
        next(str(i.UID) for i in g.ContentSequence if i.ValueType == "UIDREF"): g
        for g in _groups(sr)
    }
    for decision in decisions:
        group = by_tracking[decision.tracking_uid]
        assert _decision_of(group) == decision.decision
        # Only the clinician's own finding comes without an algorithm.
        assert _has_algorithm(group) is (decision.decision != "added")
    parsed = {f.tracking_uid: f for f in parse_measurement_report(sr).findings}
    agree, disagree, amend, added = (parsed[d.tracking_uid] for d in decisions)
    assert (agree.present, agree.box, agree.score) == (True, findings[0].box, pytest.approx(0.91))
    assert (disagree.present, disagree.box) == (False, findings[1].box)
    assert (amend.present, amend.code, amend.box) == (True, FRACTURE, Box(60.0, 60.0, 90.0, 95.0))
    assert amend.score is None  # the AI's score belonged to the AI's finding, not this one
    assert (added.present, added.code, added.box) == (True, NODULE, Box(5.0, 5.0, 30.0, 30.0))
    texts = _report_texts(sr)
    assert texts == ["Fracture of the distal radius."]


@pytest.mark.peers
def test_an_amended_report_names_its_predecessor(images: list[Dataset], tmp_path: Path) -> None:
    findings = _findings(images)
    decisions = _decisions(images, findings)
    first_ids = _ids(9802, 1)
    first = build_verified_sr(
        images,
        report=SignedReport("v1", "positive", 1, SIGNER),
        decisions=decisions,
        ids=first_ids,
    )
    second = _saved(
        build_verified_sr(
            images,
            report=SignedReport("No fracture after all.", "negative", 2, SIGNER, "misread"),
            decisions=decisions,
            ids=DocumentIds(first_ids.series_uid, str(generate_uid()), 9802, 2),
            previous=[first],
        ),
        tmp_path / "amended.dcm",
    )
    _assert_valid(tmp_path / "amended.dcm")
    referenced = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert (
        referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_ids.sop_instance_uid
    )
    texts = _report_texts(second)
    assert texts == ["No fracture after all.", "misread"]


def test_builders_refuse_what_they_cannot_reference(images: list[Dataset]) -> None:
    stray = AiFinding(
        FRACTURE, 0.5, ALGORITHM, str(generate_uid()), "", "1.2.3", box=Box(0, 0, 1, 1)
    )
    with pytest.raises(ValueError, match="not in the evidence"):
        build_unverified_sr(images, algorithm=ALGORITHM, findings=[stray], result=None, ids=_ids())
    with pytest.raises(ValueError, match="added finding"):
        HumanDecision("added", str(generate_uid()), None, code=NODULE)
    with pytest.raises(ValueError, match="conclusion"):
        SignedReport("", "maybe", 1, SIGNER)
    with pytest.raises(ValueError, match="timezone"):
        Signer("A^B", "Org", datetime(2026, 1, 1))  # naive on purpose


def test_person_names_in_dicom_order() -> None:
    assert person_name("Rita Hansen") == "Hansen^Rita"
    assert person_name("Anne Marie  Holm") == "Holm^Anne Marie"
    assert person_name("rita") == "rita^"
    assert person_name("  ") == "Unknown"


# --- through the export hooks --------------------------------------------------------------------


def _rows(rt: Runtime) -> list[OutboxItem]:
    with rt.sessions() as db:
        return list(db.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def _payload(rt: Runtime, row: OutboxItem) -> Dataset:
    assert row.payload_sha256 is not None
    path = BlobStore.from_settings(rt.settings).path_for(row.payload_sha256)
    return pydicom.dcmread(path)


@pytest.mark.peers
def test_signing_queues_a_verified_sr_of_the_review_for_each_pacs(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1), ("PACS2", "127.0.0.1", 2)])
    report_id = sign_reading(scene, text="Fracture of the fifth metacarpal.")
    with rt.sessions() as db, db.begin():
        queued = service.on_report_signed(db, report_id, rt.settings)
        assert service.on_report_signed(db, report_id, rt.settings) == queued  # idempotent
    rows = _rows(rt)
    assert [r.id for r in rows] == sorted(queued)
    srs = [r for r in rows if r.what == "sr-verified"]
    assert sorted(r.destination for r in srs) == sorted(map(str, scene.node_ids))
    assert len({r.payload_sha256 for r in srs}) == 1  # one document, sent to both
    assert all(r.state == "pending" and r.report_fk == report_id for r in rows)
    sr = _payload(rt, srs[0])
    sr.save_as(tmp_path / "hook.dcm", enforce_file_format=True)
    _assert_valid(tmp_path / "hook.dcm")
    assert sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Rita^"
    assert sr.VerifyingObserverSequence[0].VerifyingOrganization == SITE_NAME
    assert sr.StudyInstanceUID == scene.study_uid
    decisions = sorted(filter(None, (_decision_of(g) for g in _groups(sr))))
    assert decisions == ["added", "agree", "disagree"]
    parsed = parse_measurement_report(sr)
    boxes = {(f.sop_instance_uid, f.box, f.present) for f in parsed.findings if f.box}
    (first, first_box, _), (second, second_box, _) = (
        (scene.uids[i], box, score) for i, box, score in AI_FINDINGS
    )
    assert boxes == {
        (first, first_box, True),
        (second, second_box, False),
        (second, ADDED_BOX, True),
    }
    texts = _report_texts(sr)
    assert texts == ["Fracture of the fifth metacarpal."]


@pytest.mark.peers
def test_an_amendment_queues_a_new_version_naming_the_first(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1)])
    report_id = sign_reading(scene)
    with rt.sessions() as db, db.begin():
        service.on_report_signed(db, report_id, rt.settings)
    with rt.sessions() as db, db.begin():
        review.amend(
            db,
            study_id=scene.study_id,
            user=principal(rt, "rita"),
            text="No fracture.",
            conclusion="negative",
            reason="second look",
        )
        service.on_report_signed(db, report_id, rt.settings)
    srs = [r for r in _rows(rt) if r.what == "sr-verified"]
    assert len(srs) == 2
    assert len([r for r in _rows(rt) if r.what == "sc"]) == 2  # captures are not repeated
    first, second = (_payload(rt, r) for r in srs)
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    second.save_as(tmp_path / "amended-hook.dcm", enforce_file_format=True)
    _assert_valid(tmp_path / "amended-hook.dcm")


def test_a_draft_report_is_not_exported(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1)])
    with rt.sessions() as db, db.begin():
        draft = review.save_draft(db, study_id=scene.study_id, user=principal(rt, "rita"), text="x")
        with pytest.raises(ValueError, match="draft"):
            service.on_report_signed(db, draft.id, rt.settings)


@pytest.mark.peers
def test_an_ai_answer_queues_an_unverified_sr_only_when_the_deployment_asks(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1)])
    with rt.sessions() as db, db.begin():
        assert service.on_ai_result(db, scene.job_id, rt.settings) == []  # not asked for
        db.execute(
            update(Deployment)
            .where(Deployment.id == scene.deployment_id)
            .values(export_unverified_sr=True)
        )
        queued = service.on_ai_result(db, scene.job_id, rt.settings)
        assert service.on_ai_result(db, scene.job_id, rt.settings) == queued
    (row,) = _rows(rt)
    assert (row.what, row.destination, row.report_fk) == (
        "sr-unverified",
        str(scene.node_ids[0]),
        None,
    )
    sr = _payload(rt, row)
    sr.save_as(tmp_path / "ai.dcm", enforce_file_format=True)
    _assert_valid(tmp_path / "ai.dcm")
    assert sr.VerificationFlag == "UNVERIFIED"
    parsed = parse_measurement_report(sr)
    assert sorted(f.score for f in parsed.findings if f.box) == pytest.approx([0.55, 0.93])


def test_shadow_output_never_leaves(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    rt = sqlite_runtime
    scene = reading_scene(
        rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1)], export_unverified=True, mode="shadow"
    )
    with rt.sessions() as db, db.begin():
        assert service.on_ai_result(db, scene.job_id, rt.settings) == []
    with rt.sessions() as db:
        assert db.scalar(select(func.count()).select_from(OutboxItem)) == 0


def test_a_site_without_pacs_exports_nothing(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, export_unverified=True)
    report_id = sign_reading(scene)
    with rt.sessions() as db, db.begin():
        assert service.on_ai_result(db, scene.job_id, rt.settings) == []
        assert service.on_report_signed(db, report_id, rt.settings) == []


def test_a_document_that_cannot_be_built_alerts_admins_and_never_blocks_signing(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=[("PACS1", "127.0.0.1", 1)])
    with rt.sessions() as db:
        sha = db.scalar(select(Instance.sha256).where(Instance.sop_instance_uid == scene.uids[1]))
    assert sha is not None
    BlobStore.from_settings(rt.settings).path_for(sha).unlink()  # the second image's file is gone
    report_id = sign_reading(scene)
    with rt.sessions() as db, db.begin():
        queued = service.on_report_signed(db, report_id, rt.settings)
    rows = _rows(rt)
    assert [r.id for r in rows] == queued
    assert [r.what for r in rows] == ["sc"]  # only the first image's capture could be built
    with rt.sessions() as db:
        alert = db.scalars(select(Alert).where(Alert.kind == service.BUILD_ALERT_KIND)).one()
        report = db.get(Report, report_id)
    assert alert.subject == f"report {report_id}" and alert.occurrences == 2
    assert "FileNotFoundError" in alert.detail
    assert report is not None and report.state == "signed"
