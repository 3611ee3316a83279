"""DICOM SR of AI results for the PACS (IHE AI Results): pure builders, values in, data set out.

Two documents, both Comprehensive 3D SR with TID 1500 (Measurement Report) as root, built
with highdicom:

- `build_unverified_sr` — what an AI answered, as soon as it answered (when the deployment
  asks for it): Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY, the algorithm
  as the device observer (TID 1004) and in Contributing Equipment (manufacturer, model
  name, software version, Device UID — which changes with the version).
- `build_verified_sr` — the radiologist's signed reading: Verification Flag VERIFIED with
  the signer as Verifying Observer (name, organisation, time of signing), Preliminary Flag
  FINAL, the signer as the person observer (TID 1003), and one group per clinician
  decision. An amendment names the earlier versions in Predecessor Documents.

Content of the measurement groups (TID 1410 with a box, TID 1501 without):

- an AI finding: Finding (DCM 121071) = its code, Finding Category, the box as a closed
  POLYLINE SCOORD "Image Region" SELECTED FROM the source image (and frame), the score as
  DCM 122157 "Probability" (UCUM "1"), and TID 4019 Algorithm Identification. Its
  Tracking Unique Identifier is the same in both documents, so a receiver can match the
  verified group to the unverified one.
- a clinician decision adds two qualitative evaluations: "Clinician decision"
  (99LODS decision) = agree / disagree / amend / added (99LODS codes), and <finding> =
  Present (DCM 121053) or Absent (DCM 121054: the clinician disagreed). An amended
  finding carries the clinician's code and box and no score; an added finding has no
  algorithm.
- the AI's study-level answer: a TID 1501 group "AI result: <text>" with the study score
  (SCT 246262008 "Score") and Conclusion (DCM 121077) = Positive / Negative /
  Inconclusive (SCT), with its algorithm.
- the clinician's conclusion (verified only): a TID 1501 group "Report conclusion" with
  Conclusion = Positive / Negative / Inconclusive and no algorithm; the report text is a
  TEXT "Findings" (DCM 121070) in the root "Qualitative Evaluations" container (TID 1500
  row 12), with the amendment reason, if any.

The values the builders take are defined in `lods.exports.results`. Coordinates are
(column, row) pixel positions with (0, 0) at the top-left corner of the top-left pixel,
as everywhere in Lods. Procedure Reported names the imaging procedure, never the
algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from lods.exports.results import (
    AiFinding,
    AiStudyResult,
    Algorithm,
    DocumentIds,
    HumanDecision,
    SignedReport,
    Signer,
)
from lods.findings.sr import DEFAULT_CATEGORY, DEFAULT_PROCEDURE, SCORE_CONCEPT, SCORE_UNIT
from lods.solutions.runtimes.base import Box, CodeRef

#: Lods' local coding scheme (a "99" designator is private by definition, PS3.16 8.2).
LOCAL_SCHEME = "99LODS"
DECISION_CONCEPT = CodeRef(LOCAL_SCHEME, "decision", "Clinician decision on AI finding")
DECISION_CODES = {
    "agree": CodeRef(LOCAL_SCHEME, "agree", "Clinician agreed with AI finding"),
    "disagree": CodeRef(LOCAL_SCHEME, "disagree", "Clinician disagreed with AI finding"),
    "amend": CodeRef(LOCAL_SCHEME, "amend", "Clinician amended AI finding"),
    "added": CodeRef(LOCAL_SCHEME, "added", "Finding added by clinician"),
}
AMENDMENT_REASON = CodeRef(LOCAL_SCHEME, "amend-reason", "Reason for amendment")
PRESENT = CodeRef("DCM", "121053", "Present")
ABSENT = CodeRef("DCM", "121054", "Absent")
CONCLUSION = CodeRef("DCM", "121077", "Conclusion")
FINDINGS_TEXT = CodeRef("DCM", "121070", "Findings")
STUDY_SCORE = CodeRef("SCT", "246262008", "Score")
QUALITATIVE_EVALUATIONS = CodeRef("UMLS", "C0034375", "Qualitative Evaluations")
#: A study outcome (Lods' words) as the SNOMED CT qualifier a receiver understands.
OUTCOME_CODES = {
    "positive": CodeRef("SCT", "10828004", "Positive"),
    "negative": CodeRef("SCT", "260385009", "Negative"),
    "uncertain": CodeRef("SCT", "419984006", "Inconclusive"),
}
#: The organisation that makes the documents (the algorithms are contributing equipment).
MANUFACTURER = "Lods"


@dataclass
class _Groups:
    """Measurement groups being collected, and the images they reference."""

    items: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = field(default_factory=list)
    algorithms: dict[str, Algorithm] = field(default_factory=dict)


# --- content pieces -------------------------------------------------------------------------------


def _coded(code: CodeRef) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _closed_polyline(box: Box) -> np.ndarray:
    return np.array(
        [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1], [box.x0, box.y0]],
        dtype=float,
    )


def _algorithm_id(algorithm: Algorithm) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, manufacturer=algorithm.manufacturer
    )


def _frames(source: Dataset, frame: int | None) -> list[int] | None:
    if frame is None or int(source.get("NumberOfFrames") or 1) <= 1:
        return None
    return [frame]


def _source(sources: dict[str, Dataset], uid: str | None, what: str) -> Dataset | None:
    if not uid:
        return None
    found = sources.get(uid)
    if found is None:
        raise ValueError(f"{what} references image {uid}, which is not in the evidence")
    return found


def _group(
    groups: _Groups,
    sources: dict[str, Dataset],
    *,
    tracking_uid: str,
    label: str,
    finding: CodeRef | None,
    image: tuple[str | None, int | None, Box | None],
    algorithm: Algorithm | None,
    measurements: Sequence[hd.sr.Measurement] = (),
    evaluations: Sequence[hd.sr.QualitativeEvaluation] = (),
) -> None:
    """Append one TID 1410 group (with a box) or TID 1501 group (without)."""
    uid, frame, box = image
    source = _source(sources, uid, label)
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label[:64])
    finding_type = _coded(finding) if finding is not None else None
    category = _coded(DEFAULT_CATEGORY) if finding is not None else None
    algorithm_id = _algorithm_id(algorithm) if algorithm is not None else None
    if algorithm is not None:
        groups.algorithms.setdefault(algorithm.device_uid, algorithm)
    if box is not None:
        if source is None:
            raise ValueError(f"{label}: a box needs the image it is drawn on")
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_closed_polyline(box),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                referenced_frame_numbers=_frames(source, frame),
            ),
        )
        groups.items.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                finding_type=finding_type,
                finding_category=category,
                algorithm_id=algorithm_id,
                measurements=list(measurements) or None,
                qualitative_evaluations=list(evaluations) or None,
            )
        )
        return
    images = None
    if source is not None:
        images = [
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                referenced_frame_numbers=_frames(source, frame),
            )
        ]
    groups.items.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type,
            finding_category=category,
            algorithm_id=algorithm_id,
            measurements=list(measurements) or None,
            qualitative_evaluations=list(evaluations) or None,
            source_images=images,
        )
    )


def _score(value: float, concept: CodeRef = SCORE_CONCEPT) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=_coded(concept), value=float(value), unit=_coded(SCORE_UNIT))


def _evaluation(name: CodeRef, value: CodeRef) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=_coded(name), value=_coded(value))


def _ai_finding_group(groups: _Groups, sources: dict[str, Dataset], finding: AiFinding) -> None:
    _group(
        groups,
        sources,
        tracking_uid=finding.tracking_uid,
        label=finding.label or finding.code.meaning,
        finding=finding.code,
        image=(finding.sop_instance_uid, finding.frame, finding.box),
        algorithm=finding.algorithm,
        measurements=[_score(finding.score)] if finding.score is not None else (),
    )


def _study_result_group(
    groups: _Groups, sources: dict[str, Dataset], result: AiStudyResult, tracking_uid: str
) -> None:
    _group(
        groups,
        sources,
        tracking_uid=tracking_uid,
        label=f"AI result: {result.text}" if result.text else "AI result",
        finding=None,
        image=(None, None, None),
        algorithm=result.algorithm,
        measurements=[_score(result.score, STUDY_SCORE)] if result.score is not None else (),
        evaluations=[_evaluation(CONCLUSION, OUTCOME_CODES[result.outcome])],
    )


def _decision_group(groups: _Groups, sources: dict[str, Dataset], decision: HumanDecision) -> None:
    ai = decision.ai_finding
    keeps_ai = decision.decision in ("agree", "disagree")
    code = decision.final_code
    _group(
        groups,
        sources,
        tracking_uid=decision.tracking_uid,
        label=(ai.label if ai and ai.label else code.meaning),
        finding=code,
        image=decision.final_region,
        # An amended finding keeps its AI origin; an added one is the clinician's alone.
        algorithm=ai.algorithm if ai is not None else None,
        measurements=[_score(ai.score)] if ai and keeps_ai and ai.score is not None else (),
        evaluations=[
            _evaluation(DECISION_CONCEPT, DECISION_CODES[decision.decision]),
            _evaluation(code, PRESENT if decision.present else ABSENT),
        ],
    )


def _device_observer(algorithm: Algorithm) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=algorithm.name[:64],
            manufacturer_name=algorithm.manufacturer[:64],
            model_name=(algorithm.model_name or algorithm.name)[:64],
        ),
    )


def _person_observer(signer: Signer) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=signer.name, login_name=signer.login, organization_name=signer.organisation
        ),
    )


def _model_name(algorithm: Algorithm) -> str:
    return (algorithm.model_name or algorithm.name)[:64]


def _equipment(algorithm: Algorithm) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer[:64],
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=_model_name(algorithm),
        software_versions=algorithm.version[:64],
        contribution_description=f"{algorithm.name} {algorithm.version}"[:64],
    )


# --- documents ------------------------------------------------------------------------------------

#: Type 2 attributes highdicom copies from the evidence; absent ones are added empty.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _complete_type2(ds: Dataset) -> Dataset:
    missing = [k for k in _TYPE2_COPIED if k not in ds]
    if not missing:
        return ds
    copy = Dataset()
    copy.update(ds)
    for keyword in missing:
        setattr(copy, keyword, None)
    return copy


def _check_evidence(evidence: Sequence[Dataset]) -> dict[str, Dataset]:
    if not evidence:
        raise ValueError("an SR needs the images it reports on as evidence")
    studies = {str(ds.StudyInstanceUID) for ds in evidence}
    if len(studies) != 1:
        raise ValueError("the evidence must be images of one study")
    return {str(ds.SOPInstanceUID): ds for ds in evidence}


def _text_item(name: CodeRef, text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=_coded(name), value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _document(
    evidence: Sequence[Dataset],
    groups: _Groups,
    *,
    context: hd.sr.ObservationContext,
    ids: DocumentIds,
    procedure: CodeRef,
    institution_name: str | None,
    texts: Sequence[tuple[CodeRef, str]] = (),
    signer: Signer | None = None,
    previous: Sequence[Dataset] = (),
) -> Dataset:
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_coded(procedure),
        imaging_measurements=groups.items,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    root = report[0]
    if texts:
        container = hd.sr.ContainerContentItem(
            name=_coded(QUALITATIVE_EVALUATIONS),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        container.ContentSequence = hd.sr.ContentSequence(
            [_text_item(name, text) for name, text in texts]
        )
        root.ContentSequence.append(container)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_complete_type2(ds) for ds in evidence],
        content=root,
        series_instance_uid=ids.series_uid,
        series_number=ids.series_number,
        sop_instance_uid=ids.sop_instance_uid,
        instance_number=ids.instance_number,
        manufacturer=MANUFACTURER,
        institution_name=institution_name,
        is_complete=True,
        is_final=signer is not None,
        is_verified=signer is not None,
        verifying_observer_name=signer.name if signer else None,
        verifying_organization=signer.organisation if signer else None,
        previous_versions=list(previous) or None,
        contributing_equipment=[_equipment(a) for a in groups.algorithms.values()] or None,
    )
    _add_device_uids(sr, groups.algorithms.values())
    if signer is not None:
        verified_at = DT(signer.signed_at.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f+0000"))
        sr.VerifyingObserverSequence[0].VerificationDateTime = verified_at
    if ids.series_description:
        sr.SeriesDescription = ids.series_description[:64]
    _declare_local_scheme(sr)
    return sr


def _add_device_uids(sr: Dataset, algorithms: Iterable[Algorithm]) -> None:
    """Give each algorithm's Contributing Equipment item its Device UID (highdicom has no
    parameter for it; the evidence's acquisition equipment comes first and is left alone)."""
    wanted = {(_model_name(a), a.version[:64]): a.device_uid for a in algorithms}
    for item in sr.get("ContributingEquipmentSequence") or []:
        purpose = item.get("PurposeOfReferenceCodeSequence") or []
        if not purpose or str(purpose[0].CodeValue) != "109102":  # Processing Equipment
            continue
        versions = item.get("SoftwareVersions")
        key = (str(item.get("ManufacturerModelName", "")), str(versions or ""))
        if key in wanted:
            item.DeviceUID = wanted[key]


def _declare_local_scheme(sr: Dataset) -> None:
    """Name the 99LODS scheme in Coding Scheme Identification (PS3.3 C.12.1.1.4)."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "Lods local codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    existing = list(sr.get("CodingSchemeIdentificationSequence") or [])
    if not any(str(i.get("CodingSchemeDesignator")) == LOCAL_SCHEME for i in existing):
        sr.CodingSchemeIdentificationSequence = [*existing, item]


def _result_tracking_uid(ids: DocumentIds, index: int) -> str:
    return str(generate_uid(entropy_srcs=["lods.sr.result", ids.sop_instance_uid, str(index)]))


def build_unverified_sr(
    evidence: Sequence[Dataset],
    *,
    algorithm: Algorithm,
    findings: Sequence[AiFinding],
    result: AiStudyResult | None,
    ids: DocumentIds,
    institution_name: str | None = None,
    procedure: CodeRef = DEFAULT_PROCEDURE,
) -> Dataset:
    """Return the UNVERIFIED Comprehensive 3D SR of one AI answer on one study.

    `evidence` are the images the AI read (headers suffice); every finding on an image
    must reference one of them. There must be findings or a study-level result: a
    negative answer is reported as a result without findings.
    """
    sources = _check_evidence(evidence)
    if not findings and result is None:
        raise ValueError("an AI result SR needs findings or a study-level result")
    groups = _Groups()
    for finding in findings:
        if finding.algorithm != algorithm:
            raise ValueError("every finding of an unverified SR comes from its one algorithm")
        _ai_finding_group(groups, sources, finding)
    if result is not None:
        _study_result_group(groups, sources, result, _result_tracking_uid(ids, 0))
    groups.algorithms.setdefault(algorithm.device_uid, algorithm)
    context = hd.sr.ObservationContext(observer_device_context=_device_observer(algorithm))
    return _document(
        evidence,
        groups,
        context=context,
        ids=ids,
        procedure=procedure,
        institution_name=institution_name,
    )


def build_verified_sr(
    evidence: Sequence[Dataset],
    *,
    report: SignedReport,
    decisions: Sequence[HumanDecision],
    results: Sequence[AiStudyResult] = (),
    ids: DocumentIds,
    previous: Sequence[Dataset] = (),
    institution_name: str | None = None,
    procedure: CodeRef = DEFAULT_PROCEDURE,
) -> Dataset:
    """Return the VERIFIED Comprehensive 3D SR of a signed report.

    `decisions` are the clinician's decisions (each AI finding agreed, disagreed or
    amended, and the findings added); `results` the AI study-level answers the clinician
    saw; `previous` the earlier verified SRs of this report (for an amendment).
    """
    sources = _check_evidence(evidence)
    groups = _Groups()
    for decision in decisions:
        _decision_group(groups, sources, decision)
    for index, result in enumerate(results, start=1):
        _study_result_group(groups, sources, result, _result_tracking_uid(ids, index))
    _group(
        groups,
        sources,
        tracking_uid=_result_tracking_uid(ids, 0),
        label="Report conclusion",
        finding=None,
        image=(None, None, None),
        algorithm=None,
        evaluations=[_evaluation(CONCLUSION, OUTCOME_CODES[report.conclusion])],
    )
    signer = report.signer
    algorithms = list(groups.algorithms.values())
    context = hd.sr.ObservationContext(
        observer_person_context=_person_observer(signer),
        observer_device_context=_device_observer(algorithms[0]) if len(algorithms) == 1 else None,
    )
    texts: list[tuple[CodeRef, str]] = []
    if report.text.strip():
        texts.append((FINDINGS_TEXT, report.text))
    if report.amendment_reason:
        texts.append((AMENDMENT_REASON, report.amendment_reason))
    return _document(
        evidence,
        groups,
        context=context,
        ids=ids,
        procedure=procedure,
        institution_name=institution_name,
        texts=texts,
        signer=signer,
        previous=previous,
    )
