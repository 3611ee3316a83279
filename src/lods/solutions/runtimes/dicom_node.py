"""The `dicom_node` runtime: a vendor's AI appliance reached over DICOM.

A run sends the study's images by C-STORE to the appliance (one association, calling AE
= Lods' own AE title), then waits for the appliance's answer: it opens its own association
to Lods' DICOM node (calling AE = `answer_ae`) and sends a TID 1500 Measurement Report SR
(and maybe a secondary capture) for the same Study Instance UID. Lods' SCP files such
answers in an inbox; this runtime reads them through `ctx.inbox` and turns each report
into `FindingResult`s with `lods.findings.sr`.

Correlation: answers are matched by Study Instance UID and the appliance's calling AE
title, received since just before the send began. UIDs are never changed, not even when
the manifest asks for pseudonymisation, so the answer finds its study.

Files are sent as stored: one presentation context per (SOP class, transfer syntax) pair
found in the files' meta information, nothing is transcoded; a pair the appliance does
not accept fails the run before anything is sent. With `data_egress.pseudonymise`, each
image is read into memory and its patient identifiers replaced (see `pseudonymise`); the
stored file is never touched.

Errors: peer down, association rejected or aborted, out-of-resources statuses and no answer
in time are `TransientRuntimeError`; data-set errors (0xA9xx, 0xCxxx and other refusals),
files that cannot be read and unacceptable transfer syntaxes are `PermanentRuntimeError`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association

from lods.findings.sr import ParsedFinding, ParsedReport, ReportError, parse_measurement_report
from lods.solutions.manifest import DicomNodeRuntimeSpec, FindingOutput
from lods.solutions.runtimes.base import (
    CodeRef,
    FindingResult,
    InputImage,
    PermanentRuntimeError,
    RunContext,
    RunResult,
    TransientRuntimeError,
)

log = logging.getLogger(__name__)

#: Seconds per inbox call: the runtime heartbeats between calls.
WAIT_SLICE_SECONDS = 1.0
#: Answers are looked for from this long before the send began (clock granularity).
SINCE_SLACK_SECONDS = 2.0
#: A-ASSOCIATE-RQ carries at most 128 presentation contexts.
MAX_CONTEXTS = 128
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: C-STORE warning statuses (the instance was stored).
_WARNINGS = {0x0001, 0xB000, 0xB006, 0xB007}
#: Failure statuses worth a retry besides 0xA7xx: processing failure, resource limitation.
_TRANSIENT_FAILURES = {0x0110, 0x0213}
#: Patient identifiers removed when pseudonymising (besides those replaced).
_REMOVED = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "PatientInsurancePlanCodeSequence",
    "PatientReligiousPreference",
    "PatientComments",
    "ResponsiblePerson",
    "PerformingPhysicianName",
    "OperatorsName",
    "RequestingPhysician",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
)
#: Type 2 person names kept present but emptied.
_EMPTIED = ("ReferringPhysicianName",)


# --- pseudonymisation -----------------------------------------------------------------------


def pseudonym_key(secret: str, solution_id: str) -> bytes:
    """Return the pseudonymisation key for one solution: pseudonyms differ per destination."""
    return hmac.new(
        secret.encode(), b"lods.dicom_node.pseudonym\0" + solution_id.encode(), hashlib.sha256
    ).digest()


def _digest(key: bytes, kind: str, value: str) -> str:
    mac = hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256)
    return mac.hexdigest().upper()


def _pseudonymise_item(ds: Dataset, key: bytes, patient: str) -> None:
    for keyword in _REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in _EMPTIED:
        if keyword in ds:
            setattr(ds, keyword, "")
    if "PatientID" in ds:
        ds.PatientID = f"LP{patient[:14]}"
    if "PatientName" in ds:
        ds.PatientName = f"Pseudonym^{patient[:10]}"
    if ds.get("PatientBirthDate"):
        year = str(ds.PatientBirthDate)[:4]
        ds.PatientBirthDate = f"{year}0101" if year.isdigit() else ""
    for keyword, prefix in (("AccessionNumber", "A"), ("StudyID", "S")):
        if ds.get(keyword):
            ds[keyword].value = prefix + _digest(key, keyword, str(ds[keyword].value))[:15]
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _pseudonymise_item(item, key, patient)


def pseudonymise(ds: Dataset, key: bytes) -> Dataset:
    """Replace the patient identifiers of `ds` in place by keyed-hash pseudonyms; return it.

    Patient ID and name become `LP<hash>` and `Pseudonym^<hash>` (the same patient always gets
    the same pseudonym under the same key), the birth date keeps only its year (1 January),
    accession number and study ID are hashed, other patient identifiers and staff names are
    removed (also inside sequences). UIDs, dates of the study and clinical attributes stay.
    Call it on an in-memory copy, never on a stored data set.
    """
    issuer = str(ds.get("IssuerOfPatientID") or "")
    patient = _digest(key, "patient", f"{ds.get('PatientID', '')}\0{issuer}")
    _pseudonymise_item(ds, key, patient)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Lods keyed-hash pseudonymisation; UIDs retained"
    return ds


# --- sending --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outgoing:
    image: InputImage
    sop_class_uid: str
    transfer_syntax_uid: str


def _outgoing(images: Sequence[InputImage]) -> list[_Outgoing]:
    """Read each file's meta information: the SOP class and transfer syntax as stored."""
    found: list[_Outgoing] = []
    for image in images:
        try:
            meta = read_file_meta_info(image.path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise PermanentRuntimeError(f"cannot read {image.path.name}: {exc}") from exc
        syntax = str(meta.get("TransferSyntaxUID") or "").strip()
        sop_class = str(meta.get("MediaStorageSOPClassUID") or image.sop_class_uid).strip()
        if not syntax:
            raise PermanentRuntimeError(f"{image.path.name} has no transfer syntax in its meta")
        found.append(_Outgoing(image, sop_class, syntax))
    return found


def _status_text(code: int, status: Dataset) -> str:
    comment = str(status.get("ErrorComment") or "").strip()
    return f"0x{code:04X}" + (f" ({comment})" if comment else "")


def _check_status(status: Dataset, where: str, image: InputImage) -> bool:
    """Raise for a failed C-STORE; return True for a warning status, False for success."""
    if not status or "Status" not in status:
        raise TransientRuntimeError(
            f"vendor appliance {where}: no C-STORE response for {image.sop_instance_uid} "
            "(time-out or connection lost)"
        )
    code = int(status.Status)
    if code == 0x0000:
        return False
    if code in _WARNINGS:
        return True
    text = _status_text(code, status)
    message = f"vendor appliance {where} refused {image.sop_instance_uid}: status {text}"
    if 0xA700 <= code <= 0xA7FF or code in _TRANSIENT_FAILURES:
        raise TransientRuntimeError(message + " (out of resources)")
    raise PermanentRuntimeError(message)


@dataclass
class _Connection:
    """What the association's events told us (did TCP ever connect?)."""

    connected: bool = False

    def on_open(self, event: evt.Event) -> None:
        self.connected = True


def _association_failure(
    assoc: Association, conn: _Connection, where: str, waited: float, timeout: float
) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        if primitive is not None:
            return (
                f"vendor appliance AE at {where} rejected the association: "
                f"{primitive.reason_str} ({primitive.result_str}, {primitive.source_str})"
            )
        return f"vendor appliance AE at {where} rejected the association"
    if not conn.connected:
        why = "connection timed out" if waited >= 0.9 * timeout else "connection refused"
        return f"vendor appliance AE at {where} is not reachable: {why}"
    return f"vendor appliance AE at {where} aborted the association or did not answer it"


def _names(pairs: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{UID(c).name} in {UID(t).name}" for c, t in pairs)


def _prepared(item: _Outgoing, key: bytes | None) -> Dataset:
    try:
        ds = pydicom.dcmread(item.image.path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PermanentRuntimeError(f"cannot read {item.image.path.name}: {exc}") from exc
    return pseudonymise(ds, key) if key is not None else ds


def _send(
    ctx: RunContext, spec: DicomNodeRuntimeSpec, items: list[_Outgoing], key: bytes | None
) -> int:
    """Send every image in one association; return the number of warning statuses."""
    where = f"{spec.host}:{spec.port} ({spec.ae_title})"
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
    if len(pairs) > MAX_CONTEXTS:
        raise PermanentRuntimeError(
            f"the study needs {len(pairs)} presentation contexts; DICOM allows {MAX_CONTEXTS}"
        )
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        raise TransientRuntimeError("the job's deadline passed before the study was sent")
    timeout = min(spec.network_timeout_seconds, left)
    ae = AE(ae_title=ctx.local_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])
    conn = _Connection()
    asked = time.monotonic()
    assoc = ae.associate(
        spec.host,
        spec.port,
        ae_title=spec.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, conn.on_open)],
    )
    if not assoc.is_established:
        if conn.connected and assoc.rejected_contexts and not assoc.accepted_contexts:
            raise PermanentRuntimeError(
                f"vendor appliance AE at {where} accepts none of {_names(pairs)}"
            )
        failure = _association_failure(assoc, conn, where, time.monotonic() - asked, timeout)
        raise TransientRuntimeError(failure)
    warnings = 0
    try:
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
            if cx.transfer_syntax
        }
        refused = [pair for pair in pairs if pair not in accepted]
        if refused:
            raise PermanentRuntimeError(
                f"vendor appliance AE at {where} does not accept {_names(refused)}"
            )
        for item in items:
            ctx.heartbeat()
            dataset = _prepared(item, key)
            try:
                status = assoc.send_c_store(dataset)
            except ValueError as exc:  # the data set cannot be encoded as stored
                raise PermanentRuntimeError(
                    f"{item.image.path.name} cannot be sent to {where}: {exc}"
                ) from exc
            except RuntimeError as exc:  # the association ended under us
                raise TransientRuntimeError(
                    f"vendor appliance AE at {where}: sending {item.image.sop_instance_uid} "
                    f"failed: {exc}"
                ) from exc
            if not assoc.is_established and not status:
                raise TransientRuntimeError(
                    f"vendor appliance AE at {where} aborted the association during the send"
                )
            warnings += int(_check_status(status, f"AE at {where}", item.image))
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return warnings


# --- waiting and reading the answer ---------------------------------------------------------


def _read_report(path: Path) -> ParsedReport | None:
    """Return the parsed report at `path`, or None when it is not a measurement report."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        log.warning("cannot read the answer %s: %s", path, exc)
        return None
    if not str(ds.get("SOPClassUID", "")).startswith(_SR_CLASS_PREFIX):
        return None
    try:
        return parse_measurement_report(ds)
    except ReportError as exc:
        log.warning("answer %s is not a measurement report: %s", path, exc)
        return None


def _wait(
    ctx: RunContext, spec: DicomNodeRuntimeSpec, since: float
) -> tuple[list[ParsedReport], list[Path]]:
    """Poll the inbox in short slices until a report for the study arrived, or time runs out."""
    if ctx.inbox is None:
        raise PermanentRuntimeError("the worker gave the dicom_node runtime no inbox to wait on")
    budget = min(spec.answer_timeout_seconds, ctx.deadline - time.monotonic())
    if budget <= 0:
        raise TransientRuntimeError("the job's deadline passed before the appliance could answer")
    until = time.monotonic() + budget
    seen: dict[Path, ParsedReport | None] = {}
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            break
        paths = ctx.inbox(ctx.study_uid, spec.answer_ae, since, min(WAIT_SLICE_SECONDS, remaining))
        ctx.heartbeat()
        for path in paths:
            if path not in seen:
                seen[path] = _read_report(Path(path))
        reports = [r for r in seen.values() if r is not None and r.study_uid == ctx.study_uid]
        if reports:
            return reports, list(seen)
    if seen:
        raise TransientRuntimeError(
            f"{spec.answer_ae} sent {len(seen)} object(s) but no measurement report for the "
            f"study within {budget:.3g} s"
        )
    raise TransientRuntimeError(f"no answer from {spec.answer_ae} within {budget:.3g} s")


@dataclass
class _Mapping:
    """Parsed findings turned into results, and what was dropped on the way."""

    findings: list[FindingResult] = field(default_factory=list)
    undeclared: int = 0
    unreferenced: int = 0
    clamped: int = 0


def _score(finding: ParsedFinding, low: float, high: float) -> tuple[float, bool]:
    """The finding's score on the manifest's range: a bare presence counts as low or high."""
    if finding.score is None:
        return (low if finding.present is False else high), False
    clamped = min(max(finding.score, low), high)
    return clamped, clamped != finding.score


def _map_findings(reports: Sequence[ParsedReport], outputs: Any, sent: set[str]) -> _Mapping:
    declared: dict[tuple[str, str], FindingOutput] = {
        (item.code.scheme, item.code.value): item for item in outputs.findings
    }
    low, high = (float(v) for v in outputs.score_range)
    result = _Mapping()
    for report in reports:
        for finding in report.findings:
            output = declared.get((finding.code.scheme, finding.code.value))
            if output is None:
                result.undeclared += 1
                continue
            if finding.sop_instance_uid is not None and finding.sop_instance_uid not in sent:
                result.unreferenced += 1
                continue
            score, clamped = _score(finding, low, high)
            result.clamped += int(clamped)
            code = output.code
            result.findings.append(
                FindingResult(
                    code=CodeRef(code.scheme, code.value, code.meaning),
                    score=score,
                    label=output.label,
                    sop_instance_uid=finding.sop_instance_uid,
                    frame=finding.frame if finding.sop_instance_uid else None,
                    box=finding.box,
                )
            )
    return result


# --- the runtime ----------------------------------------------------------------------------


class DicomNodeRuntime:
    """Runs a solution on a vendor appliance: C-STORE the study, wait for its TID 1500 SR."""

    def __init__(self, *, pseudonym_secret: str | None = None) -> None:
        #: Secret the pseudonym keys derive from; default: the installation's signing key.
        self._secret = pseudonym_secret

    def _key(self, ctx: RunContext) -> bytes | None:
        if not ctx.manifest.data_egress.pseudonymise:
            return None
        secret = self._secret
        if secret is None:
            from lods.config import get_settings

            secret = get_settings().signing_key()
        return pseudonym_key(secret, str(ctx.manifest.id))

    def run(self, ctx: RunContext) -> RunResult:
        """Send the study, wait for the appliance's answer and return its findings."""
        spec = ctx.manifest.runtime
        if not isinstance(spec, DicomNodeRuntimeSpec):
            raise PermanentRuntimeError("the manifest's runtime is not dicom_node")
        if not ctx.images:
            raise PermanentRuntimeError("no images to send to the vendor appliance")
        key = self._key(ctx)
        items = _outgoing(ctx.images)
        since = time.time() - SINCE_SLACK_SECONDS
        started = time.monotonic()
        warnings = _send(ctx, spec, items, key)
        sent_at = time.monotonic()
        log.info(
            "job %s: sent %d images of %s to %s at %s:%d",
            ctx.job_id,
            len(items),
            ctx.study_uid,
            spec.ae_title,
            spec.host,
            spec.port,
        )
        reports, received = _wait(ctx, spec, since)
        answered_at = time.monotonic()
        mapped = _map_findings(
            reports, ctx.manifest.outputs, {i.image.sop_instance_uid for i in items}
        )
        first = reports[0]
        details: dict[str, Any] = {
            "vendor": first.identification(),
            "reports": [r.sop_instance_uid for r in reports],
            "report_verified": all(r.verified for r in reports),
            "answer_objects": len(received),
            "sent_instances": len(items),
            "store_warnings": warnings,
            "pseudonymised": key is not None,
            "undeclared_findings": mapped.undeclared,
            "unreferenced_findings": mapped.unreferenced,
            "scores_clamped": mapped.clamped,
            "skipped_groups": sum(r.skipped_groups for r in reports),
            "timings": {
                "send_seconds": round(sent_at - started, 3),
                "answer_seconds": round(answered_at - sent_at, 3),
                "total_seconds": round(time.monotonic() - started, 3),
            },
        }
        return RunResult(findings=mapped.findings, details=details)
