"""Results as HL7 v2.5.1 ORU^R01, and sending them over MLLP.

`oru_r01` (pure) builds the message from a study's results (`lods.fhir.values`):

    MSH  sender LODS / the site, MSH-9 ORU^R01^ORU_R01, MSH-10 the caller's control id,
         MSH-12 2.5.1, MSH-18 UNICODE UTF-8
    PID  PID-3 patient id (^^^issuer^MR), PID-5 name, PID-7 birth date, PID-8 sex
    PV1  PV1-2 patient class U (Lods does not know the encounter)
    OBR  one per reporting source: OBR-3 and OBR-18 the accession number, OBR-4 the
         study, OBR-7 study date, OBR-22 when the result was made, OBR-24 RAD,
         OBR-25 result status P (AI only) / F (signed) / C (amended), OBR-32 the signer
    NTE  after an AI OBR: "AI suggestion — preliminary, not verified by a clinician"
    OBX  Study Instance UID (DCM 110180); per finding: the finding code with the AI score
         (NM), certainty and body site, or with the clinician's decision (CWE, OBX-4
         groups one finding's OBX); the conclusion; the report text (TX, one repetition
         per line). OBX-11 follows OBR-25; AI OBX name the solution and version in
         OBX-17 (method) and OBX-18 (equipment instance).

With a signed report the message carries the report (F or C); without one, one OBR per
current AI result (P). Every message is parsed back with python-hl7 before it is
returned, so a malformed one never reaches the outbox.

`send` frames the message for MLLP (0x0B … 0x1C 0x0D), waits for the ACK on the same
connection and maps it: MSA-1 AA (or CA) → delivered; AE / AR (or CE / CR) →
`PermanentSendError` with the peer's text; refused, closed, silent or timed out →
`TransientSendError`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime

import hl7
from sqlalchemy.orm import Session

from lods.exports.errors import PermanentSendError, TransientSendError
from lods.fhir.store import load_study_results
from lods.fhir.values import AiResult, Code, PatientInfo, StudyResults

VERSION = "2.5.1"
START_BLOCK, END_BLOCK, CARRIAGE_RETURN = b"\x0b", b"\x1c", b"\x0d"
AI_LABEL = "AI suggestion — preliminary, not verified by a clinician"
#: Result status (OBR-25, and OBX-11 of the same order) by report state.
RESULT_STATUS = {"signed": "F", "amended": "C"}
PRELIMINARY = "P"
#: Local coding systems (HL7 "99zzz" local tables).
LOCAL = "99LODS"
STUDY_UID = Code("DCM", "110180", "Study Instance UID")
REPORT_TEXT = Code("LN", "18782-3", "Radiology Study observation (narrative)")
AI_CERTAINTY = Code(LOCAL, "AICERT", "AI certainty")
AI_STUDY_RESULT = Code(LOCAL, "AIRESULT", "AI study result")
AI_STUDY_SCORE = Code(LOCAL, "AISCORE", "AI study score")
FINDING_SITE = Code("SCT", "363698007", "Finding site")
CONCLUSION = Code(LOCAL, "CONCL", "Conclusion")
AI_METHOD = Code(LOCAL, "AI", "Artificial intelligence (software)")
DECISION_WORDS = {
    "agree": "Agrees with the AI finding",
    "disagree": "Disagrees with the AI finding",
    "amend": "Amended the AI finding",
    "added": "Finding added by the clinician",
}
#: MSA-1 codes that mean the peer has taken the message.
ACCEPTED = frozenset({"AA", "CA"})
REFUSED = frozenset({"AE", "AR", "CE", "CR"})
MAX_ACK_BYTES = 1024 * 1024


# --- building ---------------------------------------------------------------------------------


def escape(text: str) -> str:
    """`text` as HL7 field data: delimiters as escape sequences, line breaks and other
    control characters (which could end a segment or an MLLP frame) as spaces."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return "".join(c if c >= " " or c == "\t" else " " for c in out)


def _components(*values: str) -> str:
    return "^".join(escape(v) for v in values).rstrip("^")


def _cwe(code: Code) -> str:
    return _components(code.value, code.meaning, code.scheme)


def _dtm(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _dt(value: date | None) -> str:
    return value.strftime("%Y%m%d") if value is not None else ""


def _segment(name: str, fields: Sequence[str]) -> str:
    return "|".join([name, *fields]).rstrip("|")


def _xpn(dicom_name: str) -> str:
    """A DICOM person name (family^given^middle^prefix^suffix) as an HL7 XPN
    (family^given^middle^suffix^prefix)."""
    parts = [*dicom_name.split("^"), "", "", "", "", ""][:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return _components(family, given, middle, suffix, prefix)


def _cx(patient: PatientInfo) -> str:
    issuer = patient.issuer.strip()
    if issuer and all(p.isdigit() for p in issuer.split(".")) and "." in issuer:
        authority = f"&{escape(issuer)}&ISO"
    else:
        authority = escape(issuer)
    return f"{escape(patient.patient_id)}^^^{authority}^MR"


class _Obx:
    """Numbers OBX segments across the message's order groups (OBX-1 per OBR)."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.count = 0
        self.lines: list[str] = []

    def add(
        self,
        value_type: str,
        code: Code,
        value: str,
        *,
        sub_id: str = "",
        units: str = "",
        method: str = "",
        equipment: str = "",
        when: datetime | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.count += 1
        fields = [""] * 19
        fields[0] = str(self.count)
        fields[1] = value_type
        fields[2] = _cwe(code)
        fields[3] = sub_id
        fields[4] = value
        fields[5] = units
        fields[10] = self.status
        fields[13] = _dtm(when) if when is not None else ""
        fields[16] = method
        fields[17] = equipment
        self.lines.append(_segment("OBX", fields))
        for index, note in enumerate(notes, start=1):
            self.lines.append(_segment("NTE", [str(index), "L", escape(note)]))


def _obr(
    set_id: int,
    results: StudyResults,
    *,
    status: str,
    made_at: datetime,
    interpreter: str = "",
) -> str:
    study = results.study
    fields = [""] * 32
    fields[0] = str(set_id)
    fields[2] = escape(study.accession_number)
    code = (study.modalities or "IMG").replace("\\", "-")
    fields[3] = _components(code, study.description or "Imaging study", LOCAL)
    fields[6] = _dt(study.study_date)
    fields[17] = escape(study.accession_number)
    fields[21] = _dtm(made_at)
    fields[23] = "RAD"
    fields[24] = status
    fields[31] = interpreter
    return _segment("OBR", fields)


def _equipment(result: AiResult) -> str:
    solution = result.solution
    return _components(f"{solution.solution_id}@{solution.version}", "LODS")


def _ai_order(set_id: int, results: StudyResults, result: AiResult) -> list[str]:
    obx = _Obx(PRELIMINARY)
    method, equipment = _cwe(AI_METHOD), _equipment(result)
    solution = result.solution
    label = f"{AI_LABEL}. {solution.name} {solution.version} ({solution.vendor})."
    obx.add("ST", STUDY_UID, escape(results.study.study_uid))
    words = result.text or result.outcome
    obx.add(
        "CWE",
        AI_STUDY_RESULT,
        _components(result.outcome, words, LOCAL),
        method=method,
        equipment=equipment,
        when=result.created_at,
    )
    if result.score is not None:
        obx.add(
            "NM",
            AI_STUDY_SCORE,
            f"{result.score:.4g}",
            method=method,
            equipment=equipment,
            when=result.created_at,
        )
    for index, finding in enumerate(result.findings, start=1):
        sub = str(index)
        notes = []
        if finding.box is not None:
            box = finding.box
            frame = f" frame {box.frame}" if box.frame is not None else ""
            corners = ", ".join(f"{v:g}" for v in (box.x0, box.y0, box.x1, box.y1))
            notes.append(f"Image region on {box.sop_instance_uid}{frame}: [{corners}] px")
        obx.add(
            "NM",
            finding.code,
            f"{finding.score:.4g}",
            sub_id=sub,
            method=method,
            equipment=equipment,
            when=result.created_at,
            notes=notes,
        )
        obx.add(
            "CWE",
            AI_CERTAINTY,
            _components(finding.certainty, finding.certainty.capitalize(), LOCAL),
            sub_id=sub,
            method=method,
            equipment=equipment,
        )
        if finding.body_part:
            obx.add("ST", FINDING_SITE, escape(finding.body_part), sub_id=sub)
    return [
        _obr(set_id, results, status=PRELIMINARY, made_at=result.created_at),
        _segment("NTE", ["1", "L", escape(label)]),
        *obx.lines,
    ]


def _report_order(results: StudyResults) -> list[str]:
    report = results.report
    assert report is not None
    status = RESULT_STATUS.get(report.state)
    if status is None:
        raise ValueError(f"a {report.state!r} report is not a result; only signed ones are")
    if report.signer is None or report.signed_at is None:
        raise ValueError("a signed report needs a named signer and a signing time")
    signer = report.signer
    interpreter = "&".join(escape(v) for v in (signer.username, signer.display))
    obx = _Obx(status)
    obx.add("ST", STUDY_UID, escape(results.study.study_uid))
    for index, decision in enumerate(results.decisions, start=1):
        code = decision.finding_code
        if code is None:
            continue
        notes = [decision.comment] if decision.comment else []
        ai = decision.ai_finding
        if ai is not None:
            notes.insert(0, f"AI finding score {ai.score:.4g} ({ai.certainty})")
        obx.add(
            "CWE",
            code,
            _components(decision.decision, DECISION_WORDS.get(decision.decision, ""), LOCAL),
            sub_id=str(index),
            when=decision.decided_at,
            notes=notes,
        )
        body_part = decision.body_part or (ai.body_part if ai is not None else "")
        if body_part:
            obx.add("ST", FINDING_SITE, escape(body_part), sub_id=str(index))
    if report.conclusion:
        obx.add(
            "CWE",
            CONCLUSION,
            _components(report.conclusion, report.conclusion.capitalize(), LOCAL),
            when=report.signed_at,
        )
    lines = report.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if report.text:
        obx.add("TX", REPORT_TEXT, "~".join(escape(line) for line in lines))
    return [
        _obr(1, results, status=status, made_at=report.signed_at, interpreter=interpreter),
        *obx.lines,
    ]


def oru_r01(
    results: StudyResults,
    *,
    control_id: str,
    now: datetime,
    sending_application: str = "LODS",
    sending_facility: str | None = None,
    receiving_application: str = "",
    receiving_facility: str = "",
    processing_id: str = "P",
) -> str:
    """The study's result as an ORU^R01 message (segments end with CR).

    The signed report (F, or C once amended) when there is one, else one OBR per current
    AI result (P). `control_id` (MSH-10, at most 20 characters) must be unique per
    message and the same on every resend of it, so that the receiver can drop a repeat.
    """
    if not control_id or len(control_id) > 20:
        raise ValueError("MSH-10 needs a control id of 1-20 characters")
    if results.report is not None:
        orders = _report_order(results)
    elif results.current_ai_results:
        orders = []
        for set_id, result in enumerate(results.current_ai_results, start=1):
            orders += _ai_order(set_id, results, result)
    else:
        raise ValueError("the study has no result that may leave Lods")
    patient = results.patient
    sex = patient.sex.upper() if patient.sex.upper() in ("M", "F", "O") else "U"
    msh = "MSH|^~\\&|" + "|".join(
        [
            escape(sending_application),
            escape(sending_facility if sending_facility is not None else results.study.site_code),
            escape(receiving_application),
            escape(receiving_facility),
            _dtm(now),
            "",
            "ORU^R01^ORU_R01",
            escape(control_id),
            processing_id,
            VERSION,
            "",
            "",
            "",
            "",
            "",
            "UNICODE UTF-8",
        ]
    )
    pid = _segment(
        "PID",
        ["1", "", _cx(patient), "", _xpn(patient.name), "", _dt(patient.birth_date), sex],
    )
    pv1 = _segment("PV1", ["1", "U"])
    message = "\r".join([msh, pid, pv1, *orders]) + "\r"
    check_structure(message)
    return message


def oru_r01_for_study(
    db: Session, study_id: int, *, control_id: str, now: datetime, **envelope: str
) -> str | None:
    """`oru_r01` of a study read from the database (`envelope`: the MSH keywords of
    `oru_r01`); None when the study has nothing that may leave Lods."""
    results = load_study_results(db, study_id)
    if results is None or not (results.report is not None or results.current_ai_results):
        return None
    return oru_r01(results, control_id=control_id, now=now, **envelope)


def check_structure(message: str) -> hl7.Message:
    """Parse `message` with python-hl7 and check the ORU^R01 shape; return the parse.

    MSH, PID, PV1, then one or more OBR each followed by its NTE and OBX segments.
    """
    parsed = hl7.parse(message)
    names = [str(segment[0]) for segment in parsed]
    if names[:3] != ["MSH", "PID", "PV1"]:
        raise ValueError(f"ORU^R01 must start MSH, PID, PV1, not {names[:3]}")
    if str(parsed.segment("MSH")(9)) != "ORU^R01^ORU_R01":
        raise ValueError("MSH-9 must be ORU^R01^ORU_R01")
    if len(names) < 4 or names[3] != "OBR":
        raise ValueError("ORU^R01 needs an OBR after PV1")
    unexpected = sorted(set(names[3:]) - {"OBR", "OBX", "NTE"})
    if unexpected:
        raise ValueError(f"unexpected segments {unexpected}")
    if not str(parsed.segment("PID")(3)):
        raise ValueError("PID-3 (patient id) is empty")
    return parsed


# --- MLLP ---------------------------------------------------------------------------------------


def _address(destination: str) -> tuple[str, int]:
    host, sep, port = destination.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PermanentSendError(f"{destination!r} is not an MLLP host:port")
    return host, int(port)


def frame(payload: str) -> bytes:
    """The MLLP block of a message: 0x0B, the UTF-8 bytes, 0x1C 0x0D."""
    return START_BLOCK + payload.encode("utf-8") + END_BLOCK + CARRIAGE_RETURN


def _read_block(sock: socket.socket, deadline: float, destination: str) -> bytes:
    data = b""
    while END_BLOCK + CARRIAGE_RETURN not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientSendError(f"no ACK from {destination} in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError as exc:
            raise TransientSendError(f"no ACK from {destination} in time") from exc
        except OSError as exc:
            raise TransientSendError(f"connection to {destination} failed: {exc}") from exc
        if not chunk:
            raise TransientSendError(f"{destination} closed the connection without an ACK")
        data += chunk
        if len(data) > MAX_ACK_BYTES:
            raise PermanentSendError(f"{destination} answered more than an ACK")
    block = data[: data.index(END_BLOCK + CARRIAGE_RETURN)]
    start = block.find(START_BLOCK)
    return block[start + 1 :] if start >= 0 else block


def _field(segment: hl7.Segment, index: int) -> str:
    """Field `index` (HL7 numbering, MSH included) as text; "" when absent."""
    try:
        return str(segment(index)).strip()
    except IndexError:
        return ""


def _ack_text(parsed: hl7.Message) -> str:
    words: list[str] = []
    msa = parsed.segment("MSA")
    if _field(msa, 3):
        words.append(parsed.unescape(_field(msa, 3)))
    try:
        errors = parsed.segments("ERR")
    except KeyError:
        errors = []
    for err in errors:
        # ERR-8 user message, ERR-3 HL7 error code, ERR-1 (2.3 style) location/code.
        for index in (8, 3, 1):
            text = _field(err, index)
            if text:
                words.append(parsed.unescape(text.replace("^", " ").strip()))
                break
    return "; ".join(w for w in words if w) or "no reason given"


def send(destination: str, payload: str, *, timeout: float) -> None:
    """Send the HL7 message `payload` to the MLLP listener at `destination` (host:port)
    and wait up to `timeout` seconds in all for its ACK."""
    host, port = _address(destination)
    try:
        control_id = str(hl7.parse(payload).segment("MSH")(10))
    except (hl7.exceptions.HL7Exception, KeyError, IndexError, ValueError) as exc:
        raise PermanentSendError(f"the payload is not an HL7 message: {exc}") from exc
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransientSendError(f"MLLP peer {destination} not reached: {exc}") from exc
    with sock:
        try:
            sock.sendall(frame(payload))
        except OSError as exc:
            raise TransientSendError(f"sending to {destination} failed: {exc}") from exc
        block = _read_block(sock, deadline, destination)
    text = block.decode("utf-8", errors="replace").replace("\n", "\r")
    try:
        ack = hl7.parse(text)
        msa = ack.segment("MSA")
    except (hl7.exceptions.HL7Exception, KeyError, IndexError, ValueError) as exc:
        raise PermanentSendError(f"{destination} did not answer with an HL7 ACK") from exc
    code = _field(msa, 1).upper()
    acked = _field(msa, 2)
    if acked and acked != control_id:
        raise TransientSendError(
            f"{destination} acknowledged message {acked!r}, not {control_id!r}"
        )
    if code in ACCEPTED:
        return
    if code in REFUSED:
        raise PermanentSendError(f"{destination} answered {code}: {_ack_text(ack)}")
    raise PermanentSendError(f"{destination} answered an unknown acknowledgment {code!r}")
