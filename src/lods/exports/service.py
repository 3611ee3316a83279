"""Results out: turn an AI answer or a signed report into outbox rows for the site's PACS.

Two hooks, each called in the caller's transaction, so a result exists exactly when its
sends are queued (a crash cannot sign a report and lose its export):

- `on_ai_result(db, job_id, settings)` — after an AI job stored its findings: when the
  deployment exports unverified results (`Deployment.export_unverified_sr`) and its
  results are clinical (pilot or live; shadow output never leaves Lods), an UNVERIFIED
  SR of the answer.
- `on_report_signed(db, report_id, settings)` — after a radiologist signed or amended a
  report: the VERIFIED SR of that version (an amendment names the earlier versions as
  predecessors) and, once per report, a Secondary Capture per image with the confirmed
  boxes burned in.

Each goes to every active PACS node of the study's site (`DicomNode.kind == "pacs"`, with
host and port). The documents are built here, written to the blob store, and one outbox
row per node points at the blob; the sender delivers them. Calling a hook again for the
same job or report version is a no-op: the rows' dedupe keys already exist. UIDs are
derived from what the document is (job, report version, image), so a rebuilt document is
the same instance to a PACS.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.alerts.service import raise_alert
from lods.auth.models import User
from lods.config import Settings
from lods.db import utcnow
from lods.exports import fhir_push, hl7, outbox
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
from lods.exports.sc import CONFIRMED, Overlay, build_overlay_sc
from lods.exports.sr import build_unverified_sr, build_verified_sr
from lods.findings.models import Finding, StudyResult
from lods.imaging.models import Instance, Series, Study
from lods.imaging.store import BlobStore
from lods.jobs.models import Job
from lods.review.models import FindingDecision, Report, ReportState
from lods.sites.models import DicomNode, Site
from lods.solutions.models import Deployment, DeploymentMode, SolutionVersion
from lods.solutions.runtimes.base import Box, CodeRef

log = logging.getLogger(__name__)

TRANSPORT = "dicom"
#: The alert raised when a document cannot be built (the send never reaches the outbox).
BUILD_ALERT_KIND = "export.build_failed"
WHAT_SR_UNVERIFIED = "sr-unverified"
WHAT_SR_VERIFIED = "sr-verified"
WHAT_SC = "sc"
#: Series numbers of what Lods adds to a study (high, to sort after the acquisitions).
SERIES_NUMBERS = {WHAT_SR_UNVERIFIED: 9801, WHAT_SR_VERIFIED: 9802, WHAT_SC: 9803}
SERIES_DESCRIPTIONS = {
    WHAT_SR_UNVERIFIED: "AI results (not verified)",
    WHAT_SR_VERIFIED: "AI results verified by radiologist",
    WHAT_SC: "AI findings verified (burned in)",
}
#: Deployment modes whose results clinicians see, and which may therefore leave Lods.
CLINICAL_MODES = (DeploymentMode.PILOT.value, DeploymentMode.LIVE.value)
_DECISION_WORDS = {"agree": "agreed", "amend": "amended", "added": "added by radiologist"}
_UID_NAMESPACE = "lods.exports"


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, *map(str, parts)]))


def export_nodes(db: Session, *, site_id: int) -> list[DicomNode]:
    """Return the active PACS nodes of a site that have an address to send to."""
    return list(
        db.scalars(
            select(DicomNode)
            .where(
                DicomNode.site_id == site_id,
                DicomNode.kind == "pacs",
                DicomNode.is_active.is_(True),
                DicomNode.host.is_not(None),
                DicomNode.port.is_not(None),
            )
            .order_by(DicomNode.id)
        )
    )


def _existing(db: Session, keys: Iterable[str]) -> set[str]:
    wanted = list(keys)
    if not wanted:
        return set()
    return set(db.scalars(select(OutboxItem.dedupe_key).where(OutboxItem.dedupe_key.in_(wanted))))


def _store_dataset(store: BlobStore, ds: Dataset) -> str:
    """Write `ds` as a Part-10 file to the blob store; return its SHA-256."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return store.put_bytes(buffer.getvalue()).sha256


def _built(
    db: Session, store: BlobStore, build: Callable[[], Dataset], *, what: str, subject: str
) -> str | None:
    """Return the SHA-256 of the document `build()` makes, written to the blob store.

    When it cannot be built (an image file missing, a value DICOM cannot hold) the error
    is logged and an alert is raised for admins, and None is returned: a broken export
    must never stop a signature or an AI result from being stored.
    """
    try:
        return _store_dataset(store, build())
    except Exception as exc:
        log.exception("the %s of %s could not be built", what, subject)
        raise_alert(
            db,
            kind=BUILD_ALERT_KIND,
            subject=subject[:100],
            title=f"The {what} of {subject} could not be built for the PACS",
            detail=f"{type(exc).__name__}: {exc}"[:2000],
            audience=("admin",),
        )
        return None


@dataclass(frozen=True)
class _Image:
    sop_instance_uid: str
    sha256: str


def _images(db: Session, study_id: int, uids: Iterable[str] | None) -> list[_Image]:
    """Current instances of the study (those named in `uids`, or all when None)."""
    query = (
        select(Instance.sop_instance_uid, Instance.sha256)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == study_id, Instance.superseded_at.is_(None))
        .order_by(Series.series_number, Instance.instance_number, Instance.id)
    )
    if uids is not None:
        query = query.where(Instance.sop_instance_uid.in_(sorted(set(uids))))
    return [_Image(row.sop_instance_uid, row.sha256) for row in db.execute(query)]


def _evidence(
    db: Session, store: BlobStore, study_id: int, uids: Iterable[str] | None
) -> list[Dataset]:
    """Headers of the study's images named in `uids` (all of them when none is found)."""
    images = _images(db, study_id, uids) if uids is not None else []
    if not images:
        images = _images(db, study_id, None)
    if not images:
        raise ValueError(f"study {study_id} has no stored images to reference")
    return [pydicom.dcmread(store.path_for(i.sha256), stop_before_pixels=True) for i in images]


def _algorithm(version: SolutionVersion) -> Algorithm:
    return Algorithm(
        name=version.name,
        version=version.version,
        manufacturer=version.vendor,
        device_uid=algorithm_device_uid(
            version.solution_id, version.version, version.manifest_sha256
        ),
        model_name=version.solution_id,
    )


def _box(x0: float | None, y0: float | None, x1: float | None, y1: float | None) -> Box | None:
    if x0 is None or y0 is None or x1 is None or y1 is None:
        return None
    return Box(x0, y0, x1, y1)


def _ai_finding(finding: Finding, algorithm: Algorithm) -> AiFinding:
    return AiFinding(
        code=CodeRef(finding.code_scheme, finding.code_value, finding.code_meaning),
        score=finding.score,
        algorithm=algorithm,
        tracking_uid=_uid("finding", finding.id),
        label=finding.label,
        sop_instance_uid=finding.sop_instance_uid,
        frame=finding.frame,
        box=_box(finding.box_x0, finding.box_y0, finding.box_x1, finding.box_y1),
    )


def _study_result(result: StudyResult, algorithm: Algorithm) -> AiStudyResult:
    return AiStudyResult(
        algorithm=algorithm, outcome=result.outcome, text=result.text, score=result.score
    )


class _Versions:
    """Solution versions as `Algorithm`s, loaded once each."""

    def __init__(self, db: Session) -> None:
        self._db = db
        self._found: dict[int, Algorithm] = {}

    def __call__(self, version_id: int) -> Algorithm:
        if version_id not in self._found:
            version = self._db.get(SolutionVersion, version_id)
            if version is None:
                raise ValueError(f"no solution version {version_id}")
            self._found[version_id] = _algorithm(version)
        return self._found[version_id]


def _enqueue_all(
    db: Session,
    *,
    what: str,
    keys: dict[int, str],
    sha256: str,
    study_id: int,
    report_id: int | None = None,
) -> list[int]:
    return [
        outbox.enqueue(
            db,
            transport=TRANSPORT,
            destination=str(node_id),
            what=what,
            dedupe_key=key,
            payload_sha256=sha256,
            study_id=study_id,
            report_id=report_id,
        )
        for node_id, key in keys.items()
    ]


# --- AI result → UNVERIFIED SR --------------------------------------------------------------------


def on_ai_result(db: Session, job_id: int, settings: Settings) -> list[int]:
    """Queue the UNVERIFIED SR of job `job_id`'s answer for the site's PACS, when its
    deployment asks for it; return the outbox row ids (none when nothing is to be sent)."""
    job = db.get(Job, job_id)
    if job is None or job.deployment_fk is None or job.study_fk is None:
        return []
    deployment = db.get(Deployment, job.deployment_fk)
    if deployment is None or not deployment.export_unverified_sr:
        return []
    result = db.scalar(select(StudyResult).where(StudyResult.job_fk == job_id))
    findings = list(
        db.scalars(select(Finding).where(Finding.job_fk == job_id).order_by(Finding.id))
    )
    modes = {f.mode for f in findings} | ({result.mode} if result is not None else set())
    if not modes or not modes <= set(CLINICAL_MODES):
        return []  # no answer, or shadow output, which stays inside Lods
    study = db.get(Study, job.study_fk)
    assert study is not None
    nodes = export_nodes(db, site_id=study.site_id)
    keys = {n.id: f"{WHAT_SR_UNVERIFIED}:job:{job_id}:node:{n.id}" for n in nodes}
    if job.version_fk is None or not keys:
        return []
    if _existing(db, keys.values()) == set(keys.values()):
        return _enqueued(db, keys.values())
    store = BlobStore.from_settings(settings)
    algorithm = _Versions(db)(job.version_fk)
    uids = {str(u) for u in (job.inputs or {}).get("sop_instance_uids", [])}
    uids |= {f.sop_instance_uid for f in findings if f.sop_instance_uid}
    site = db.get(Site, study.site_id)
    sha = _built(
        db,
        store,
        lambda: build_unverified_sr(
            _evidence(db, store, study.id, uids),
            algorithm=algorithm,
            findings=[_ai_finding(f, algorithm) for f in findings],
            result=_study_result(result, algorithm) if result is not None else None,
            ids=_ids(study.study_uid, WHAT_SR_UNVERIFIED, ("job", job_id), instance_number=job_id),
            institution_name=site.name if site else None,
        ),
        what="unverified SR",
        subject=f"job {job_id}",
    )
    if sha is None:
        return []
    return _enqueue_all(db, what=WHAT_SR_UNVERIFIED, keys=keys, sha256=sha, study_id=study.id)


def _enqueued(db: Session, keys: Iterable[str]) -> list[int]:
    wanted = list(keys)
    if not wanted:
        return []
    return list(
        db.scalars(
            select(OutboxItem.id).where(OutboxItem.dedupe_key.in_(wanted)).order_by(OutboxItem.id)
        )
    )


def _ids(
    study_uid: str, what: str, identity: Sequence[object], *, instance_number: int
) -> DocumentIds:
    return DocumentIds(
        series_uid=_uid("series", study_uid, what),
        sop_instance_uid=_uid(what, study_uid, *identity),
        series_number=SERIES_NUMBERS[what],
        instance_number=max(1, instance_number % 2_000_000_000),
        series_description=SERIES_DESCRIPTIONS[what],
    )


# --- signed report → VERIFIED SR and Secondary Captures -----------------------------------------


@dataclass(frozen=True)
class _Reading:
    """What the signed report says, as builder values."""

    report: SignedReport
    decisions: list[HumanDecision]
    results: list[AiStudyResult]
    #: Images the documents reference: decisions' images and the AI jobs' inputs.
    uids: set[str]
    #: (decision row, AI finding row or None) per decision, for the burned-in labels.
    rows: list[tuple[FindingDecision, Finding | None]]


def _human_decision(row: FindingDecision, ai: AiFinding | None) -> HumanDecision:
    code = (
        CodeRef(row.code_scheme or "", row.code_value, row.code_meaning or row.code_value)
        if row.code_value
        else None
    )
    box = _box(row.box_x0, row.box_y0, row.box_x1, row.box_y1)
    return HumanDecision(
        decision=row.decision,
        tracking_uid=ai.tracking_uid if ai is not None else _uid("decision", row.id),
        ai_finding=ai,
        code=code,
        sop_instance_uid=row.sop_instance_uid if box is not None else None,
        frame=row.frame if box is not None else None,
        box=box,
    )


def _clinical_results(db: Session, study_id: int) -> list[StudyResult]:
    """The newest clinically visible AI result per deployment of the study."""
    rows = db.scalars(
        select(StudyResult)
        .where(StudyResult.study_fk == study_id, StudyResult.mode.in_(CLINICAL_MODES))
        .order_by(StudyResult.created_at.desc(), StudyResult.id.desc())
    )
    newest: dict[int | None, StudyResult] = {}
    for row in rows:
        newest.setdefault(row.deployment_fk, row)
    return sorted(newest.values(), key=lambda r: r.id)


def _reading(db: Session, report: Report, site: Site) -> _Reading:
    signer_row = db.get(User, report.signer_fk) if report.signer_fk is not None else None
    if signer_row is None or report.signed_at is None:
        raise ValueError(f"report {report.id} has no signer")
    signer = Signer(
        name=person_name(signer_row.full_name or signer_row.username),
        organisation=site.name,
        signed_at=report.signed_at,
        login=signer_row.username,
    )
    versions = _Versions(db)
    rows: list[tuple[FindingDecision, Finding | None]] = []
    decisions: list[HumanDecision] = []
    uids: set[str] = set()
    for row in db.scalars(
        select(FindingDecision)
        .where(FindingDecision.report_fk == report.id)
        .order_by(FindingDecision.id)
    ):
        finding = db.get(Finding, row.finding_fk) if row.finding_fk is not None else None
        ai = _ai_finding(finding, versions(finding.version_fk)) if finding is not None else None
        decision = _human_decision(row, ai)
        decisions.append(decision)
        rows.append((row, finding))
        uids |= {u for u in (decision.image_uid, decision.final_region[0]) if u}
    results = _clinical_results(db, report.study_fk)
    for result in results:
        job = db.get(Job, result.job_fk)
        uids |= {str(u) for u in ((job.inputs or {}) if job else {}).get("sop_instance_uids", [])}
    signed = SignedReport(
        text=report.text,
        conclusion=report.conclusion,
        version=report.version,
        signer=signer,
        amendment_reason=report.amendment_reason
        if report.state == ReportState.AMENDED.value
        else None,
    )
    return _Reading(
        report=signed,
        decisions=decisions,
        results=[_study_result(r, versions(r.version_fk)) for r in results],
        uids=uids,
        rows=rows,
    )


_VERSION_IN_KEY = re.compile(r":v(\d+):")


def _predecessors(
    db: Session, report_id: int, version: int, ids: DocumentIds, study: Study
) -> list[Dataset]:
    """Minimal data sets naming the verified SRs of earlier versions that were exported."""
    keys = db.scalars(
        select(OutboxItem.dedupe_key).where(
            OutboxItem.report_fk == report_id, OutboxItem.what == WHAT_SR_VERIFIED
        )
    )
    earlier = sorted({int(m.group(1)) for k in keys if (m := _VERSION_IN_KEY.search(k))})
    found = []
    for number in (n for n in earlier if n < version):
        ds = Dataset()
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = ids.series_uid
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        ds.SOPInstanceUID = _uid(WHAT_SR_VERIFIED, study.study_uid, "report", report_id, number)
        found.append(ds)
    return found


def on_report_signed(db: Session, report_id: int, settings: Settings) -> list[int]:
    """Queue the VERIFIED SR of the report's current version, and the burned-in Secondary
    Captures of its confirmed findings, for every PACS of the study's site; return the
    outbox row ids. Raises ValueError for a report that is not signed."""
    report = db.get(Report, report_id)
    if report is None:
        raise ValueError(f"no report {report_id}")
    if report.state == ReportState.DRAFT.value or report.version < 1:
        raise ValueError(f"report {report_id} is a draft; only signed reports are exported")
    study = db.get(Study, report.study_fk)
    assert study is not None
    site = db.get(Site, study.site_id)
    assert site is not None
    queued = _queue_record_messages(db, report, study, settings)
    nodes = export_nodes(db, site_id=study.site_id)
    if not nodes:
        return queued
    store = BlobStore.from_settings(settings)
    reading = _reading(db, report, site)
    queued += _queue_verified_sr(db, store, study, site, report, reading, nodes)
    return queued + _queue_captures(db, store, study, report_id, reading, nodes)


def _queue_record_messages(
    db: Session, report: Report, study: Study, settings: Settings
) -> list[int]:
    """The signed report for the patient record: a FHIR transaction Bundle to
    `LODS_FHIR_PUSH_URL` and an HL7 ORU^R01 to `LODS_HL7_ORU_TARGET`, when set. One row
    per report version and destination; MSH-10 stays the same on every resend."""
    queued: list[int] = []
    version = f"report:{report.id}:v{report.version}"
    if settings.fhir_push_url:
        bundle = fhir_push.bundle_for_study(db, study.id)
        if bundle is not None:
            queued.append(
                outbox.enqueue(
                    db,
                    transport="fhir",
                    destination=settings.fhir_push_url,
                    what="fhir-report",
                    dedupe_key=f"fhir-report:{version}:{settings.fhir_push_url}",
                    payload=bundle,
                    study_id=study.id,
                    report_id=report.id,
                )
            )
    if settings.hl7_oru_target:
        message = hl7.oru_r01_for_study(
            db, study.id, control_id=f"R{report.id}V{report.version}", now=utcnow()
        )
        if message is not None:
            queued.append(
                outbox.enqueue(
                    db,
                    transport="hl7",
                    destination=settings.hl7_oru_target,
                    what="hl7-oru",
                    dedupe_key=f"hl7-oru:{version}:{settings.hl7_oru_target}",
                    payload=message,
                    study_id=study.id,
                    report_id=report.id,
                )
            )
    return queued


def _queue_verified_sr(
    db: Session,
    store: BlobStore,
    study: Study,
    site: Site,
    report: Report,
    reading: _Reading,
    nodes: Sequence[DicomNode],
) -> list[int]:
    keys = {
        n.id: f"{WHAT_SR_VERIFIED}:report:{report.id}:v{report.version}:node:{n.id}" for n in nodes
    }
    if _existing(db, keys.values()) == set(keys.values()):
        return _enqueued(db, keys.values())
    ids = _ids(
        study.study_uid,
        WHAT_SR_VERIFIED,
        ("report", report.id, report.version),
        instance_number=report.version,
    )
    sha = _built(
        db,
        store,
        lambda: build_verified_sr(
            _evidence(db, store, study.id, reading.uids),
            report=reading.report,
            decisions=reading.decisions,
            results=reading.results,
            ids=ids,
            previous=_predecessors(db, report.id, report.version, ids, study),
            institution_name=site.name,
        ),
        what=f"verified SR (version {report.version})",
        subject=f"report {report.id}",
    )
    if sha is None:
        return []
    return _enqueue_all(
        db, what=WHAT_SR_VERIFIED, keys=keys, sha256=sha, study_id=study.id, report_id=report.id
    )


def _overlays(reading: _Reading) -> dict[tuple[str, int | None], list[Overlay]]:
    """The confirmed boxes per (image, frame), labelled with code, score and decision."""
    found: dict[tuple[str, int | None], list[Overlay]] = {}
    for decision, (_row, finding) in zip(reading.decisions, reading.rows, strict=True):
        uid, frame, box = decision.final_region
        if not decision.present or uid is None or box is None:
            continue
        label = decision.final_code.meaning
        if finding is not None and decision.decision == "agree":
            label += f" {finding.score:.2f}"
        label += f" · {_DECISION_WORDS[decision.decision]}"
        found.setdefault((uid, frame), []).append(Overlay(box=box, label=label, colour=CONFIRMED))
    return found


def _queue_captures(
    db: Session,
    store: BlobStore,
    study: Study,
    report_id: int,
    reading: _Reading,
    nodes: Sequence[DicomNode],
) -> list[int]:
    """One Secondary Capture per image (and frame) with confirmed boxes, once per report:
    an amendment changes the text, never the decisions, so the captures stay valid."""
    signer = reading.report.signer
    caption = (
        f"Findings verified by {_display_name(signer.name)}, {signer.organisation}, "
        f"{signer.signed_at:%Y-%m-%d %H:%M} UTC"
    )
    queued: list[int] = []
    overlays = _overlays(reading)
    images = {i.sop_instance_uid: i for i in _images(db, study.id, {u for u, _ in overlays})}
    ordered = sorted(overlays.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
    for number, ((uid, frame), boxes) in enumerate(ordered, start=1):
        image = images.get(uid)
        if image is None:
            continue  # the image was superseded or removed: nothing to draw on
        keys = {n.id: f"{WHAT_SC}:report:{report_id}:{uid}:{frame or 1}:node:{n.id}" for n in nodes}
        if _existing(db, keys.values()) == set(keys.values()):
            queued += _enqueued(db, keys.values())
            continue
        ids = _ids(
            study.study_uid, WHAT_SC, ("report", report_id, uid, frame or 1), instance_number=number
        )
        sha = _built(
            db,
            store,
            partial(_capture, store, image.sha256, boxes, ids=ids, caption=caption, frame=frame),
            what=f"burned-in capture of image {uid}",
            subject=f"report {report_id}",
        )
        if sha is not None:
            queued += _enqueue_all(
                db, what=WHAT_SC, keys=keys, sha256=sha, study_id=study.id, report_id=report_id
            )
    return queued


def _capture(
    store: BlobStore,
    sha256: str,
    boxes: Sequence[Overlay],
    *,
    ids: DocumentIds,
    caption: str,
    frame: int | None,
) -> Dataset:
    source = pydicom.dcmread(store.path_for(sha256))
    return build_overlay_sc(source, boxes, ids=ids, caption=caption, frame=frame)


def _display_name(dicom_name: str) -> str:
    family, _, given = dicom_name.partition("^")
    return f"{given} {family}".strip()
