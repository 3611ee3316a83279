"""HL7 v2 in (pure): MLLP framing, reading ORU^R01 and ADT messages, and building the ACK.

Framing. `MllpFramer` cuts a byte stream into messages on python-hl7's MLLP block
characters (0x0B … 0x1C 0x0D). python-hl7's own asyncio reader (`hl7.mllp`) is not used
for the listener because of what it does with bad input: a message preceded by garbage
is raised as `InvalidBlockError` and lost together with the garbage, and an oversize
message clears the buffer so its control id can no longer be answered. The framer skips
bytes before a start block, keeps a message open until its end block arrives (a new start
block abandons the unfinished one: the sender gave up on it), and reports an oversize
message once its end arrives, with its first bytes so the answer can echo its MSH-10.

Parsing. `read(raw)` never raises: it returns a `ParsedMessage` (MSH, PID, PV1, EVN, OBR
time and OBX as plain dataclasses) or a `Rejected` with the reason and the HL7 error code
(table 0357). python-hl7 reads each message's delimiters (MSH-1/MSH-2) and undoes escape
sequences; fields are split on those delimiters with `str.split` (`_Tokens`: the same
fields as `hl7.parse`, which a test checks, at a twentieth of its cost). Supported:
ORU^R01 (IHE PCD-01 vital signs) and ADT^A01/A02/A03/A08; anything else is rejected (AR).
`vital_readings` turns a message's OBX into checked readings (MDC or LOINC code →
parameter, unit conversion, OBX-11 status, device sentinels, plausibility — see
`lods.vitals.codes`); OBX with codes Lods does not score
(device containers, other metrics) are left out.

ACK. `build_ack` answers with MSH sender/receiver swapped, MSA-1 AA/AE/AR, MSA-2 = the
message's MSH-10 (empty when it could not be read), MSA-3 the text, and for AE/AR an ERR
segment (ERR-3 the table 0357 code, ERR-4 severity E, ERR-8 the text).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache

import hl7
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK
from hl7.parser import create_parse_plan
from hl7.util import unescape

from lods.vitals import codes

#: Message types Lods accepts, by MSH-9.1^MSH-9.2.
ORU_R01 = "ORU^R01"
ADT_EVENTS = frozenset({"ADT^A01", "ADT^A02", "ADT^A03", "ADT^A08"})
SUPPORTED = frozenset({ORU_R01}) | ADT_EVENTS
#: HL7 versions accepted (MSH-12, compared on major.minor).
VERSIONS = frozenset({"2.3", "2.4", "2.5", "2.6", "2.7", "2.8"})
ACK_VERSION = "2.6"
APPLICATION = "LODS"

# HL7 table 0357 (message error condition codes).
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD = "101"
ERR_DATA_TYPE = "102"
ERR_UNSUPPORTED_TYPE = "200"
ERR_UNSUPPORTED_EVENT = "201"
ERR_UNSUPPORTED_VERSION = "203"
ERR_UNKNOWN_KEY = "204"
ERR_INTERNAL = "207"
ERROR_TEXT = {
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD: "Required field missing",
    ERR_DATA_TYPE: "Data type error",
    ERR_UNSUPPORTED_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_EVENT: "Unsupported event code",
    ERR_UNSUPPORTED_VERSION: "Unsupported version id",
    ERR_UNKNOWN_KEY: "Unknown key identifier",
    ERR_INTERNAL: "Application internal error",
}
#: OBX-11 result statuses whose value is a reading (F final, R not verified, C corrected,
#: P preliminary, S partial, A amended; empty: not sent); X, N, W, D, I, U are not.
VALID_OBX_STATUS = frozenset({"", "F", "R", "C", "P", "S", "A"})
#: How much of an oversize message is kept (to read its MSH and store as the trail).
OVERSIZE_HEAD_BYTES = 4096


# --- framing ----------------------------------------------------------------------------------

_SB = START_BLOCK[0]
_END = END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class Frame:
    """One complete MLLP block: the message bytes, or (oversize) only its first bytes."""

    data: bytes
    oversize: bool = False
    size: int = 0


class MllpFramer:
    """Incremental MLLP decoder for one connection: `feed` bytes as they arrive, get the
    complete blocks. Never raises; memory stays bounded by `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._open = False  # inside a block (a start block was seen)
        self._scan = 0  # where to resume looking for the end block
        self._oversize_head: bytes | None = None  # discarding the rest of an oversize block
        self._oversize_size = 0

    @property
    def pending(self) -> bool:
        """A block has started and not ended (a message is being received)."""
        return self._open

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buf
        buf += data
        while buf:
            if not self._open:
                start = buf.find(START_BLOCK)
                if start < 0:
                    buf.clear()  # garbage between blocks
                    break
                del buf[: start + 1]
                self._open, self._scan = True, 0
                continue
            end = buf.find(_END, self._scan)
            restart = buf.find(START_BLOCK, self._scan, end if end >= 0 else len(buf))
            if restart >= 0:
                # A new start block before this one ended: the sender abandoned it.
                del buf[: restart + 1]
                self._scan, self._oversize_head, self._oversize_size = 0, None, 0
                continue
            if end < 0:
                if self._oversize_head is not None:
                    keep = 1 if buf.endswith(END_BLOCK) else 0
                    self._oversize_size += len(buf) - keep
                    del buf[: len(buf) - keep]
                    self._scan = 0
                elif len(buf) > self.max_bytes:
                    self._oversize_head = bytes(buf[:OVERSIZE_HEAD_BYTES])
                    keep = 1 if buf.endswith(END_BLOCK) else 0
                    self._oversize_size = len(buf) - keep
                    del buf[: len(buf) - keep]
                    self._scan = 0
                else:
                    self._scan = max(0, len(buf) - 1)
                break
            if self._oversize_head is not None:
                size = self._oversize_size + end
                frames.append(Frame(self._oversize_head, oversize=True, size=size))
                self._oversize_head, self._oversize_size = None, 0
            elif end > self.max_bytes:
                frames.append(Frame(bytes(buf[:OVERSIZE_HEAD_BYTES]), oversize=True, size=end))
            else:
                frames.append(Frame(bytes(buf[:end]), size=end))
            del buf[: end + len(_END)]
            self._open, self._scan = False, 0
        return frames


def frame(message: str | bytes) -> bytes:
    """`message` wrapped in an MLLP block (UTF-8)."""
    data = message.encode() if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK + CARRIAGE_RETURN


def decode(data: bytes) -> str:
    """Message bytes as text: UTF-8, else Latin-1 (never fails); line breaks as HL7
    segment terminators; NUL (never valid HL7, and refused by PostgreSQL in text) as
    U+FFFD, so even garbage can be kept in the trail."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text


# --- parsed message ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The MSH fields Lods uses."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    sent_at: datetime | None = None
    message_code: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""

    @property
    def sender(self) -> str:
        """MSH-3^MSH-4: who sent it (duplicates are recognised per sender)."""
        return f"{self.sending_app}^{self.sending_facility}"[:200]

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code


@dataclass(frozen=True)
class PatientIdent:
    """PID: PID-3.1 patient id, PID-3.4 assigning authority (issuer), PID-5, -7, -8."""

    patient_id: str
    issuer: str = ""
    family: str = ""
    given: str = ""
    birth_date: date | None = None
    sex: str = ""

    @property
    def name(self) -> str:
        """DICOM-style person name (family^given), as the patients table keeps it."""
        return f"{self.family}^{self.given}".rstrip("^")


@dataclass(frozen=True)
class Location:
    """PV1-3 / PV1-6: ward (point of care) ^ room ^ bed."""

    ward: str = ""
    room: str = ""
    bed: str = ""

    def __bool__(self) -> bool:
        return bool(self.ward or self.bed)

    def __str__(self) -> str:
        return "^".join((self.ward, self.room, self.bed)).rstrip("^")


@dataclass(frozen=True)
class Visit:
    """PV1: patient class, location, prior location, visit number, admit/discharge time."""

    patient_class: str = ""
    location: Location = field(default_factory=Location)
    prior_location: Location = field(default_factory=Location)
    visit_number: str = ""
    admitted_at: datetime | None = None
    discharged_at: datetime | None = None


@dataclass(slots=True)
class Obx:
    """One OBX: the code (OBX-3 and its alternate), value, unit, status, time, device."""

    set_id: str
    value_type: str
    code: str
    code_text: str
    code_system: str
    alt_code: str
    alt_system: str
    sub_id: str
    value: str
    unit_code: str
    unit_text: str
    status: str
    observed_at: datetime | None
    equipment: str


@dataclass(frozen=True)
class ParsedMessage:
    raw: str
    header: Header
    patient: PatientIdent | None
    visit: Visit | None
    event_at: datetime | None = None
    obr_at: datetime | None = None
    observations: tuple[Obx, ...] = ()

    @property
    def message_type(self) -> str:
        return self.header.message_type

    @property
    def is_oru(self) -> bool:
        return self.header.message_type == ORU_R01


@dataclass(frozen=True)
class Rejected:
    """A message answered AR without being processed; `header` holds what could be read."""

    raw: str
    header: Header
    reason: str
    error_code: str


class _Invalid(Exception):
    def __init__(self, reason: str, error_code: str) -> None:
        super().__init__(reason)
        self.reason, self.error_code = reason, error_code


# --- field access -----------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _parse_plan(head: str) -> hl7.parser._ParsePlan:
    """`create_parse_plan` for a message starting with `head` (MSH, MSH-1, MSH-2 and the
    field separator after it: all the plan depends on); shared, as python-hl7 never
    changes a plan."""
    return create_parse_plan(head)


class _Tokens:
    """One message's segments, split on its own delimiters.

    python-hl7 reads the delimiters (MSH-1, MSH-2: `create_parse_plan`) and undoes escape
    sequences (`hl7.util.unescape`); the split itself is done here with `str.split`, which
    gives the same fields as `hl7.parse` (a test checks they agree) at a twentieth of the
    cost — `hl7.parse` builds a container per component and takes about a millisecond per
    monitor message, more than the listener's budget at 2,000 messages a second.

    `plain`: no field (MSH-1 and MSH-2 aside) holds the repetition or subcomponent
    separator or the escape character, as in a typical monitor message. Then a field's
    components are simply its `str.split` on the component separator, with nothing to cut
    or unescape, and `value` and `_obx` take that shortcut.
    """

    def __init__(self, raw: str) -> None:
        text = raw.strip()  # as hl7.parse does
        if not text.startswith("MSH") or len(text) < 8:
            raise _Invalid("not an HL7 message (it must start with MSH)", ERR_DATA_TYPE)
        fs = text[3]
        line_end = text.find("\r")
        if line_end < 0:
            line_end = len(text)
        msh2_end = text.find(fs, 4, line_end)  # MSH-3 and every later field start here
        # create_parse_plan reads only up to the field separator after MSH-2.
        self.plan = _parse_plan(text[: msh2_end + 1]) if 0 <= msh2_end < 16 else None
        if self.plan is None:
            self.plan = create_parse_plan(text)
        self.fs, self.rs, self.cs, self.ss = self.plan.separators[1:5]
        self.esc = self.plan.esc
        # Every field but MSH-1 and MSH-2 (read as they are) lies after MSH-2; and the
        # first segment's name is "MSH".
        start = msh2_end if msh2_end >= 0 else line_end
        self.plain = not any(
            text.find(char, start) >= 0 or char in "MSH" for char in (self.rs, self.ss, self.esc)
        )
        self.segments: list[list[str]] = []
        self._by_name: dict[str, list[list[str]]] = {}
        for line in text.split("\r"):
            if not line:
                continue
            if line.startswith("MSH"):
                # python-hl7 numbering: MSH-1 is the field separator itself.
                seg = ["MSH", self.fs, *line[4:].split(self.fs)]
            else:
                seg = line.split(self.fs)
            self.segments.append(seg)
            self._by_name.setdefault(seg[0], []).append(seg)

    def all(self, name: str) -> list[list[str]]:
        return self._by_name.get(name, [])

    def components(self, seg: list[str], num: int, count: int) -> list[str]:
        """The first `count` components of field `num` (first repetition, first
        subcomponent each, unescaped), padded with "": one split for a coded field."""
        text = seg[num] if num < len(seg) else ""
        if self.rs in text:
            text = text.split(self.rs, 1)[0]
        parts = text.split(self.cs) if self.cs in text else [text]
        out: list[str] = []
        for part in parts[:count]:
            if self.ss in part:
                part = part.split(self.ss, 1)[0]
            out.append(str(unescape(self.plan, part)) if self.esc in part else part)
        return out + [""] * (count - len(out))

    def value(self, seg: list[str] | None, num: int, comp: int = 1, sub: int = 1) -> str:
        """Field `num` (HL7 numbering), first repetition, component `comp`, subcomponent
        `sub`, unescaped; "" when absent."""
        if seg is None or num >= len(seg):
            return ""
        text = seg[num]
        if seg[0] == "MSH" and num in (1, 2):
            return text if comp == 1 and sub == 1 else ""
        if self.plain:  # one subcomponent, nothing to unescape
            if sub != 1:
                return ""
            if self.cs not in text:
                return text if comp == 1 else ""
            parts = text.split(self.cs)
            return parts[comp - 1] if comp <= len(parts) else ""
        if self.rs in text:
            text = text.split(self.rs, 1)[0]
        if self.cs in text:
            parts = text.split(self.cs)
            text = parts[comp - 1] if comp <= len(parts) else ""
        elif comp != 1:
            return ""
        if self.ss in text:
            parts = text.split(self.ss)
            text = parts[sub - 1] if sub <= len(parts) else ""
        elif sub != 1:
            return ""
        return str(unescape(self.plan, text)) if self.esc in text else text


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


@lru_cache(maxsize=4096)
def parse_ts(value: str) -> datetime | None:
    """An HL7 DTM/TS as an aware datetime; None when empty or malformed. Without an
    offset the time is the Lods host's local time (what the ward's clocks show)."""
    match = _TS.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        naive = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(float(fraction) * 1_000_000) if fraction else 0,
        )
    except ValueError:
        return None
    if offset is None:
        return naive.astimezone().astimezone(UTC)
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 14 or minutes > 59:
        return None
    tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    return naive.replace(tzinfo=tz).astimezone(UTC)


@lru_cache(maxsize=1024)
def _parse_date(value: str) -> date | None:
    stamp = parse_ts(value[:8]) if len(value) >= 8 else None
    if stamp is None:
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def peek_header(raw: str) -> Header:
    """MSH-3, -4, -9, -10 read without a parser: for answering what python-hl7 cannot
    parse. Empty fields when even that fails."""
    first = raw.lstrip().split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return Header()
    fields = first[3:].split(first[3])

    # fields[0] is "" (before the separator); MSH-n is fields[n - 1] from MSH-2 on.
    def get(n: int) -> str:
        idx = n - 1
        return fields[idx][:64] if idx < len(fields) else ""

    comp = get(2)[:1] or "^"
    kind = get(9).split(comp)
    return Header(
        sending_app=get(3).split(comp)[0],
        sending_facility=get(4).split(comp)[0],
        receiving_app=get(5).split(comp)[0],
        receiving_facility=get(6).split(comp)[0],
        message_code=kind[0],
        trigger=kind[1] if len(kind) > 1 else "",
        control_id=get(10),
        processing_id=get(11).split(comp)[0],
        version=get(12).split(comp)[0],
    )


def _header(msg: _Tokens) -> Header:
    msh = msg.all("MSH")[0]
    return Header(
        sending_app=msg.value(msh, 3)[:100],
        sending_facility=msg.value(msh, 4)[:100],
        receiving_app=msg.value(msh, 5)[:100],
        receiving_facility=msg.value(msh, 6)[:100],
        sent_at=parse_ts(msg.value(msh, 7)),
        message_code=msg.value(msh, 9, 1).strip().upper(),
        trigger=msg.value(msh, 9, 2).strip().upper(),
        control_id=msg.value(msh, 10).strip(),
        processing_id=msg.value(msh, 11),
        version=msg.value(msh, 12),
    )


def _location(msg: _Tokens, seg: list[str], num: int) -> Location:
    if num >= len(seg) or not seg[num]:
        return Location()  # absent or empty (as PV1-6 mostly is): nothing to split
    return Location(
        ward=msg.value(seg, num, 1).strip(),
        room=msg.value(seg, num, 2).strip(),
        bed=msg.value(seg, num, 3).strip(),
    )


def _patient(msg: _Tokens, pid: list[str]) -> PatientIdent:
    return PatientIdent(
        patient_id=msg.value(pid, 3, 1).strip()[:64],
        issuer=(msg.value(pid, 3, 4, 1) or msg.value(pid, 3, 4, 2)).strip()[:64],
        family=msg.value(pid, 5, 1).strip(),
        given=msg.value(pid, 5, 2).strip(),
        birth_date=_parse_date(msg.value(pid, 7).strip()),
        sex=msg.value(pid, 8).strip()[:16],
    )


def _visit(msg: _Tokens, pv1: list[str]) -> Visit:
    return Visit(
        patient_class=msg.value(pv1, 2).strip(),
        location=_location(msg, pv1, 3),
        prior_location=_location(msg, pv1, 6),
        visit_number=msg.value(pv1, 19, 1).strip()[:64],
        admitted_at=parse_ts(msg.value(pv1, 44)),
        discharged_at=parse_ts(msg.value(pv1, 45)),
    )


#: OBX and OBX-1 … OBX-18: what `_obx` reads.
_OBX_LENGTH = 19
_PAD = ("",) * 6


def _obx(msg: _Tokens, seg: list[str]) -> Obx:
    if not msg.plain:
        return _obx_escaped(msg, seg)
    # Plain message (see `_Tokens`): what `_obx_escaped` reads, straight from the fields —
    # a field's first component is its text up to the first component separator.
    cs = msg.cs
    if len(seg) < _OBX_LENGTH:
        seg = seg + [""] * (_OBX_LENGTH - len(seg))
    code, code_text, code_system, alt_code, _, alt_system = (*seg[3].split(cs), *_PAD)[:6]
    unit_code, unit_text = (*seg[6].split(cs), *_PAD)[:2]
    # Positional: keyword arguments cost as much again as the rest of this function.
    return Obx(
        seg[1].partition(cs)[0],  # set_id
        seg[2].partition(cs)[0].strip().upper(),  # value_type
        code.strip(),
        code_text.strip(),
        code_system.strip().upper(),
        alt_code.strip(),
        alt_system.strip().upper(),
        seg[4].partition(cs)[0],  # sub_id
        seg[5].partition(cs)[0].strip(),  # value
        unit_code.strip(),
        unit_text.strip(),
        seg[11].partition(cs)[0].strip().upper(),  # status
        parse_ts(seg[14].partition(cs)[0]),  # observed_at
        seg[18].partition(cs)[0].strip()[:100],  # equipment
    )


def _obx_escaped(msg: _Tokens, seg: list[str]) -> Obx:
    """`_obx` for any message: repetitions, subcomponents and escapes handled by `_Tokens`."""
    code, code_text, code_system, alt_code, _, alt_system = msg.components(seg, 3, 6)
    unit_code, unit_text = msg.components(seg, 6, 2)
    return Obx(
        set_id=msg.value(seg, 1),
        value_type=msg.value(seg, 2).strip().upper(),
        code=code.strip(),
        code_text=code_text.strip(),
        code_system=code_system.strip().upper(),
        alt_code=alt_code.strip(),
        alt_system=alt_system.strip().upper(),
        sub_id=msg.value(seg, 4),
        value=msg.value(seg, 5).strip(),
        unit_code=unit_code.strip(),
        unit_text=unit_text.strip(),
        status=msg.value(seg, 11).strip().upper(),
        observed_at=parse_ts(msg.value(seg, 14)),
        equipment=msg.value(seg, 18).strip()[:100],
    )


def _version_ok(version: str) -> bool:
    if not version:
        return True
    return ".".join(version.split(".")[:2]) in VERSIONS


def _parse(raw: str) -> ParsedMessage:
    try:
        msg = _Tokens(raw)
    except _Invalid:
        raise
    except Exception as exc:  # python-hl7 raises several kinds on malformed input
        reason = f"not a parseable HL7 message ({type(exc).__name__})"
        raise _Invalid(reason, ERR_DATA_TYPE) from None
    header = _header(msg)
    if not header.control_id:
        raise _Invalid("MSH-10 (message control id) is missing", ERR_REQUIRED_FIELD)
    if len(header.control_id) > 64:
        raise _Invalid("MSH-10 (message control id) is longer than 64", ERR_DATA_TYPE)
    if not header.message_code:
        raise _Invalid("MSH-9 (message type) is missing", ERR_REQUIRED_FIELD)
    if header.message_type not in SUPPORTED:
        known_code = header.message_code in {"ORU", "ADT"}
        code = ERR_UNSUPPORTED_EVENT if known_code else ERR_UNSUPPORTED_TYPE
        raise _Invalid(f"message type {header.message_type} is not supported", code)
    if not _version_ok(header.version):
        raise _Invalid(f"HL7 version {header.version} is not supported", ERR_UNSUPPORTED_VERSION)
    pids = msg.all("PID")
    if len(pids) > 1:
        raise _Invalid("one patient (PID) per message", ERR_SEGMENT_SEQUENCE)
    pv1s = msg.all("PV1")
    evns = msg.all("EVN")
    obrs = msg.all("OBR")
    event_at = None
    if evns:
        event_at = parse_ts(msg.value(evns[0], 6)) or parse_ts(msg.value(evns[0], 2))
    return ParsedMessage(
        raw=raw,
        header=header,
        patient=_patient(msg, pids[0]) if pids else None,
        visit=_visit(msg, pv1s[0]) if pv1s else None,
        event_at=event_at,
        obr_at=parse_ts(msg.value(obrs[0], 7)) if obrs else None,
        observations=tuple(_obx(msg, seg) for seg in msg.all("OBX")),
    )


def read(raw: str) -> ParsedMessage | Rejected:
    """Parse one message (the text inside an MLLP block). Never raises."""
    try:
        return _parse(raw)
    except _Invalid as exc:
        return Rejected(raw, peek_header(raw), exc.reason, exc.error_code)
    except Exception as exc:  # a bug here must not stop the listener: answer AR
        return Rejected(raw, peek_header(raw), f"cannot read message ({exc!r})", ERR_INTERNAL)


def oversize(head: bytes, size: int, limit: int) -> Rejected:
    """The answer to a message larger than the listener accepts (only its head was kept)."""
    raw = decode(head)
    reason = f"message of {size} bytes exceeds the limit of {limit} bytes"
    return Rejected(raw, peek_header(raw), reason, ERR_DATA_TYPE)


# --- vital signs from OBX ---------------------------------------------------------------------


@dataclass(slots=True)
class VitalReading:
    """One OBX as a vital sign ready to store (valid or with the reason it is not)."""

    parameter: str
    loinc: str
    mdc_code: str | None
    value: float | None
    value_text: str | None
    unit: str
    observed_at: datetime
    valid: bool
    invalid_reason: str | None
    equipment: str


@lru_cache(maxsize=1024)
def _parameter_of(
    code: str, code_system: str, alt_code: str, alt_system: str, code_text: str
) -> tuple[str, str | None] | None:
    """(parameter, MDC code or None) for an OBX code Lods knows (OBX-3.1/3.3, else the
    alternate 3.4/3.6, else the MDC reference name in 3.2), else None."""
    for candidate, system in ((code, code_system), (alt_code, alt_system)):
        if not candidate:
            continue
        if system in ("MDC", "") and candidate in codes.MDC:
            return codes.MDC[candidate].parameter, candidate
        if system in ("LN", "LOINC", "") and candidate in codes.LOINC:
            return codes.LOINC[candidate], None
    if code_text in codes.MDC_BY_REFERENCE:
        mdc = codes.MDC_BY_REFERENCE[code_text]
        return codes.MDC[mdc].parameter, mdc
    return None


@lru_cache(maxsize=1024)
def _unit(parameter: str, unit_code: str, unit_text: str) -> str:
    """The unit to read a value in: OBX-6.1, or OBX-6.2 when 6.1 does not fit."""
    if unit_code and unit_text and not codes.unit_fits(parameter, unit_code):
        return unit_text
    return unit_code


#: `codes.check_coded` for the few short values monitors and charts send (ACVPU, air/O2);
#: its `Reading` is immutable, so one can be shared.
_check_coded = lru_cache(maxsize=256)(codes.check_coded)


def vital_readings(message: ParsedMessage, *, received_at: datetime) -> list[VitalReading]:
    """The message's OBX that are vital signs, each checked; time from OBX-14, else OBR-7,
    else MSH-7, else `received_at`."""
    default_time = message.obr_at or message.header.sent_at or received_at
    out: list[VitalReading] = []
    for obx in message.observations:
        found = _parameter_of(
            obx.code, obx.code_system, obx.alt_code, obx.alt_system, obx.code_text
        )
        if found is None:
            continue
        parameter, mdc = found
        observed_at = obx.observed_at or default_time
        if obx.status not in VALID_OBX_STATUS:
            loinc = codes.LOINC_OF[parameter]
            out.append(
                VitalReading(
                    parameter,
                    loinc,
                    mdc,
                    None,
                    None,
                    codes.UCUM_OF.get(parameter, ""),
                    observed_at,
                    False,
                    f"OBX-11 {obx.status}: no valid value",
                    obx.equipment,
                )
            )
            continue
        if parameter in codes.CODED_PARAMETERS:
            value = obx.value
            check = _check_coded if len(value) <= 64 else codes.check_coded
            reading = check(parameter, value)
        else:
            unit = _unit(parameter, obx.unit_code, obx.unit_text)
            if not obx.value:
                reading = codes.Reading(
                    parameter,
                    codes.LOINC_OF[parameter],
                    codes.UCUM_OF[parameter],
                    None,
                    None,
                    False,
                    "no value",
                )
            else:
                # Fast path: a valid number needs no `Reading` (what check_value would say).
                number = codes.valid_number(parameter, obx.value, unit)
                if number is not None:
                    out.append(
                        VitalReading(
                            parameter,
                            codes.LOINC_OF[parameter],
                            mdc,
                            number,
                            None,
                            codes.UCUM_OF.get(parameter, ""),
                            observed_at,
                            True,
                            None,
                            obx.equipment,
                        )
                    )
                    continue
                reading = codes.check_value(parameter, obx.value, unit)
        out.append(
            VitalReading(
                parameter,
                reading.loinc,
                mdc,
                reading.value,
                reading.value_text,
                reading.unit,
                observed_at,
                reading.valid,
                reading.invalid_reason,
                obx.equipment,
            )
        )
    return out


# --- ACK --------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """`text` as HL7 field data (delimiters escaped, control characters as spaces)."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return "".join(c if c >= " " else " " for c in out)


def _ack_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def build_ack(
    header: Header,
    code: str,
    text: str = "",
    *,
    error_code: str | None = None,
    now: datetime | None = None,
    ack_control_id: str | None = None,
) -> str:
    """The ACK (segments joined by CR) for a message with this `header`: MSA-1 `code`
    (AA, AE or AR), MSA-2 its MSH-10, MSA-3 `text`; AE and AR carry an ERR segment."""
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"acknowledgement code {code!r}")
    stamp = _ack_time(now or datetime.now(UTC))
    version = header.version if _version_ok(header.version) and header.version else ACK_VERSION
    msh = [
        "MSH",
        "^~\\&",
        escape(header.receiving_app or APPLICATION),
        escape(header.receiving_facility),
        escape(header.sending_app),
        escape(header.sending_facility),
        stamp,
        "",
        f"ACK^{escape(header.trigger)}^ACK" if header.trigger else "ACK",
        ack_control_id or uuid.uuid4().hex[:20],
        escape(header.processing_id or "P"),
        escape(version),
    ]
    segments = [
        "|".join(msh),
        "|".join(["MSA", code, escape(header.control_id), escape(text[:500])]).rstrip("|"),
    ]
    if code != "AA":
        err = error_code or ERR_INTERNAL
        reason = escape(ERROR_TEXT.get(err, ""))
        fields = ["ERR", "", "", f"{err}^{reason}^HL70357", "E", "", "", "", escape(text[:500])]
        segments.append("|".join(fields).rstrip("|"))
    return "\r".join(segments) + "\r"


def ack_code(ack: str) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK's text (parsed with python-hl7); for tests and
    clients."""
    message = hl7.parse(ack)
    msa = message.segment("MSA")
    code, control_id, text = (
        str(message.unescape(str(msa(n)))) if n < len(msa) else "" for n in (1, 2, 3)
    )
    return code, control_id, text
