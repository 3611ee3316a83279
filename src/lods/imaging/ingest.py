"""Reading received DICOM bytes without decoding pixel data: structure check, header, file meta.

The intake path never decodes pixel data. `read_header` walks the data set's element
structure once (tag, VR, length; nested sequences and encapsulated fragments followed
by their delimiters), which proves the data set is complete and well formed, and decodes
only the few top-level attributes the index needs. A truncated or garbled data set raises
`IntakeError` with a DICOM failure status (PS3.4 Annex B.2.3) and a short reason.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from lods import __version__

# C-STORE statuses (PS3.4 B.2.3; general statuses PS3.7 Annex C) -------------------------
SUCCESS = 0x0000
#: Refused: out of resources -- the disk or the database failed; the sender may retry.
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP class -- a Type 1 identifying attribute is missing
#: or invalid, or the data set's SOP Class/Instance UID differs from what the request
#: (or the Part-10 file meta) declares for it.
DATASET_DOES_NOT_MATCH = 0xA900
#: Error: cannot understand -- the data set's structure cannot be read (truncated,
#: garbled, bad deflate stream, not a Part-10 file).
CANNOT_UNDERSTAND = 0xC000
#: Error: cannot understand -- an unexpected fault in Lods (the code pynetdicom uses).
PROCESSING_FAILURE = 0xC211
#: Refused: not authorised -- the sending AE title is no longer known (PS3.7 C.5.x).
NOT_AUTHORIZED = 0x0124

#: Lods' DICOM implementation identity, written into every file meta we create.
IMPLEMENTATION_CLASS_UID = "2.25.272408512223613176370737750039917821732"
IMPLEMENTATION_VERSION_NAME = f"LODS_{__version__}"[:16]

PREAMBLE = b"\x00" * 128 + b"DICM"

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_MAX_DEPTH = 32

#: Top-level attributes the index reads (group, element) -> keyword.
_WANTED = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080030: "StudyTime",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00080090: "ReferringPhysicianName",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100021: "IssuerOfPatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200010: "StudyID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
}


STORED = "stored"
DUPLICATE = "duplicate"
NEW_VERSION = "new_version"
REJECTED = "rejected"


@dataclass(frozen=True)
class IngestResult:
    """What became of one received object, and the DICOM status to answer with."""

    outcome: str  # "stored" | "duplicate" | "new_version" | "rejected"
    dicom_status: int
    reason: str = ""
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    instance_id: int | None = None
    version: int | None = None
    patient_id: str | None = None
    study_pk: int | None = None
    series_pk: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != REJECTED


class IntakeError(Exception):
    """A received object Lods refuses, with the DICOM status that says why."""

    def __init__(self, status: int, reason: str, *, sop_instance_uid: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes of one received instance that the index stores."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    birth_date: date | None = None
    sex: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: date | None = None
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None


# Structure walk ----------------------------------------------------------------------------


class _Walker:
    """Walks encoded elements; records where the wanted top-level values are."""

    def __init__(self, data: bytes | memoryview, *, implicit: bool, little: bool) -> None:
        self.data = data
        self.end = len(data)
        self.implicit = implicit
        self.little = little
        order = "<" if little else ">"
        self.tag_len = struct.Struct(order + "HHL")
        self.explicit = struct.Struct(order + "HH2sH")
        self.u32 = struct.Struct(order + "L")
        self.found: dict[int, tuple[str | None, int, int]] = {}

    def _truncated(self, pos: int) -> IntakeError:
        return IntakeError(CANNOT_UNDERSTAND, f"data set is truncated or garbled at byte {pos}")

    def element(self, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
        """Return (tag, VR, value length, value position) of the element at `pos`."""
        if pos + 8 > self.end:
            raise self._truncated(pos)
        if implicit:
            group, elem, length = self.tag_len.unpack_from(self.data, pos)
            return group << 16 | elem, None, length, pos + 8
        group, elem, vr, short = self.explicit.unpack_from(self.data, pos)
        if group == 0xFFFE or not (b"AA" <= vr <= b"ZZ"):
            # Items and delimiters carry no VR; a writer that slipped into implicit VR
            # is read the way pydicom reads it.
            group, elem, length = self.tag_len.unpack_from(self.data, pos)
            return group << 16 | elem, None, length, pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > self.end:
                raise self._truncated(pos)
            return (
                group << 16 | elem,
                vr.decode(),
                self.u32.unpack_from(self.data, pos + 8)[0],
                pos + 12,
            )
        return group << 16 | elem, vr.decode(), short, pos + 8

    def dataset(self, pos: int, *, nested: bool, implicit: bool, depth: int) -> int:
        """Walk a data set from `pos`; return where it ends.

        The top-level data set ends at the end of the bytes; a nested one (an item of
        undefined length) at its item delimiter. Defined-length items are bounds-checked
        and skipped, which is also how encapsulated pixel fragments are passed over.
        """
        if depth > _MAX_DEPTH:
            raise IntakeError(CANNOT_UNDERSTAND, "data set nests sequences too deeply")
        while pos < self.end:
            tag, vr, length, value = self.element(pos, implicit)
            if tag == _ITEM_END and nested:
                return value
            if tag >> 16 == 0xFFFE:
                raise IntakeError(CANNOT_UNDERSTAND, f"unexpected delimiter at byte {pos}")
            if length == _UNDEFINED:
                # Values of undefined length are sequences (of items) or encapsulated
                # pixel data (of fragments); the content of UN is implicit VR (PS3.5 6.2.2).
                pos = self.items(value, implicit=implicit or vr == "UN", depth=depth + 1)
                continue
            pos = value + length
            if pos > self.end:
                raise self._truncated(value)
            if not nested and tag in _WANTED:
                self.found[tag] = (vr, value, length)
        if nested:
            raise self._truncated(pos)
        return pos

    def items(self, pos: int, *, implicit: bool, depth: int) -> int:
        """Walk the items of an undefined-length value; return the position after it."""
        while True:
            if pos + 8 > self.end:
                raise self._truncated(pos)
            group, elem, length = self.tag_len.unpack_from(self.data, pos)
            tag, value = group << 16 | elem, pos + 8
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise IntakeError(CANNOT_UNDERSTAND, f"expected an item at byte {pos}")
            if length == _UNDEFINED:
                pos = self.dataset(value, nested=True, implicit=implicit, depth=depth)
            else:
                pos = value + length
                if pos > self.end:
                    raise self._truncated(value)


# Header -------------------------------------------------------------------------------------


def transfer_syntax_encoding(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """Return (implicit VR, little endian, deflated) for a transfer syntax.

    A transfer syntax pydicom does not know (a private one) is read as explicit VR little
    endian, as every encapsulated transfer syntax is; the structure walk still checks it.
    """
    uid = UID(transfer_syntax_uid)
    try:
        return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    except ValueError:
        return False, True, False


def _inflate(data: bytes | memoryview) -> bytes:
    try:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise IntakeError(
            CANNOT_UNDERSTAND, f"deflated data set cannot be inflated: {exc}"
        ) from exc
    if not inflater.eof:
        raise IntakeError(CANNOT_UNDERSTAND, "deflated data set is truncated")
    return out


def _raw_dataset(walker: _Walker, *, implicit: bool, little: bool) -> Dataset:
    data = walker.data
    raw: dict[BaseTag, DataElement | RawDataElement] = {}
    for tag, (vr, pos, length) in walker.found.items():
        raw[BaseTag(tag)] = RawDataElement(
            BaseTag(tag), vr, length, bytes(data[pos : pos + length]), pos, implicit, little
        )
    ds = Dataset(raw)
    # No character set here: text is decoded with the data set's own SpecificCharacterSet
    # (an explicit one would override it and garble e.g. ISO_IR 192 names).
    ds.set_original_encoding(implicit, little)
    return ds


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = _get(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip().strip("\x00")[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _get(ds, keyword)
    if type(value).__name__ == "MultiValue" or isinstance(value, list):
        value = value[0] if value else None
    try:
        return None if value is None or value == "" else int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _date(ds: Dataset, keyword: str) -> date | None:
    text = _text(ds, keyword, 32).replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword, 1000)
    if not value:
        raise IntakeError(DATASET_DOES_NOT_MATCH, f"{keyword} is missing or empty")
    if len(value) > 64 or any(c not in "0123456789." for c in value):
        raise IntakeError(DATASET_DOES_NOT_MATCH, f"{keyword} is not a valid UID: {value[:70]!r}")
    return value


def read_header(dataset: bytes | memoryview, transfer_syntax_uid: str) -> InstanceHeader:
    """Return the indexed attributes of an encoded data set, checking its whole structure.

    Raises `IntakeError` when the structure cannot be read (0xC000) or an identifying
    UID is missing or invalid (0xA900).
    """
    implicit, little, deflated = transfer_syntax_encoding(transfer_syntax_uid)
    if deflated:
        dataset = _inflate(dataset)
    walker = _Walker(dataset, implicit=implicit, little=little)
    walker.dataset(0, nested=False, implicit=implicit, depth=0)
    ds = _raw_dataset(walker, implicit=implicit, little=little)
    sop_instance_uid = _text(ds, "SOPInstanceUID", 64) or None
    try:
        return _header_from(ds)
    except IntakeError as exc:
        exc.sop_instance_uid = sop_instance_uid
        raise


def _header_from(ds: Dataset) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID", 64),
        issuer=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 200),
        birth_date=_date(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex", 16),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_id=_text(ds, "StudyID", 64),
        study_date=_date(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime", 32),
        study_description=_text(ds, "StudyDescription", 200),
        referring_physician=_text(ds, "ReferringPhysicianName", 200),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 200),
        body_part=_text(ds, "BodyPartExamined", 64),
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames"),
    )


def check_identity(
    header: InstanceHeader,
    *,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    declared_by: str,
) -> None:
    """Raise 0xA900 when the data set's SOP Class/Instance UID differ from the declared ones."""
    if sop_class_uid and sop_class_uid.strip("\x00 ") != header.sop_class_uid:
        raise IntakeError(
            DATASET_DOES_NOT_MATCH,
            f"SOP Class UID differs from {declared_by}: data set {header.sop_class_uid}, "
            f"declared {sop_class_uid}",
            sop_instance_uid=header.sop_instance_uid,
        )
    if sop_instance_uid and sop_instance_uid.strip("\x00 ") != header.sop_instance_uid:
        raise IntakeError(
            DATASET_DOES_NOT_MATCH,
            f"SOP Instance UID differs from {declared_by}: data set "
            f"{header.sop_instance_uid}, declared {sop_instance_uid}",
            sop_instance_uid=header.sop_instance_uid,
        )


# File meta (Part-10) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part10:
    """A Part-10 file split into its meta and the offset where its data set starts."""

    transfer_syntax_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    dataset_offset: int


def is_part10(head: bytes) -> bool:
    """Return True when `head` (the first 132 bytes or more) starts a DICOM Part-10 file."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def split_part10(data: bytes | memoryview) -> Part10:
    """Return the file meta of a Part-10 file; `IntakeError` (0xC000) if it has none."""
    if not is_part10(bytes(data[:132])):
        raise IntakeError(CANNOT_UNDERSTAND, "not a DICOM Part-10 file (no 'DICM' prefix)")
    walker = _Walker(data, implicit=False, little=True)
    values: dict[int, str] = {}
    pos = 132
    while pos + 8 <= len(data):
        tag, _vr, length, value = walker.element(pos, False)
        if tag >> 16 != 0x0002:
            break
        if length == _UNDEFINED or value + length > len(data):
            raise IntakeError(CANNOT_UNDERSTAND, "file meta information is garbled")
        if tag in (0x00020002, 0x00020003, 0x00020010):
            values[tag] = bytes(data[value : value + length]).decode("ascii", "replace")
            values[tag] = values[tag].strip("\x00 ")
        pos = value + length
    if not values.get(0x00020010):
        raise IntakeError(CANNOT_UNDERSTAND, "file meta information lacks a Transfer Syntax UID")
    return Part10(
        transfer_syntax_uid=values[0x00020010],
        sop_class_uid=values.get(0x00020002) or None,
        sop_instance_uid=values.get(0x00020003) or None,
        dataset_offset=pos,
    )


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHL", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Return preamble, prefix and file meta for a received data set (deterministic).

    The same instance received twice gets the same bytes, so an identical data set
    makes an identical file with the same blob address.
    """
    version = IMPLEMENTATION_VERSION_NAME.encode("ascii")
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _ui(sop_class_uid)),
            _meta_element(0x0003, b"UI", _ui(sop_instance_uid)),
            _meta_element(0x0010, b"UI", _ui(transfer_syntax_uid)),
            _meta_element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _meta_element(0x0013, b"SH", version + b" " * (len(version) % 2)),
        )
    )
    return PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<L", len(body))) + body
