"""Helpers the vital-sign tests share (and other monitoring tests may import by bare name):
a ward with beds, admitting a patient, HL7 ORU/ADT builders and a tiny MLLP client."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.orm import Session

from lods.sites import service as sites
from lods.vitals import service as vitals
from lods.vitals.models import Encounter

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
ISSUER = "HOSP"


@dataclass(frozen=True)
class Ward:
    site_id: int
    site_code: str
    ward_id: int
    ward_code: str
    #: bed code → bed id
    beds: dict[str, int]


def make_ward(
    db: Session,
    site_code: str = "north",
    ward_code: str = "W7",
    beds: Sequence[str] = ("1", "2", "3", "4"),
    *,
    kind: str = "ward",
    room: str = "R1",
) -> Ward:
    """A site (created when missing), a ward of it and its beds, all in `room`."""
    site = sites.get_site_by_code(db, code=site_code) or sites.create_site(
        db, code=site_code, name=f"{site_code} hospital", actor="test"
    )
    ward = sites.add_department(
        db, site_id=site.id, code=ward_code, name=f"Ward {ward_code}", kind=kind, actor="test"
    )
    ids = {
        code: sites.add_bed(db, ward_id=ward.id, code=code, room=room, actor="test").id
        for code in beds
    }
    return Ward(site.id, site.code, ward.id, ward.code, ids)


def admit_patient(
    db: Session,
    ward: Ward,
    bed: str,
    patient_id: str,
    *,
    issuer: str = ISSUER,
    name: str = "Doe^Jane",
    birth_date: date | None = date(1940, 5, 17),
    sex: str = "F",
    visit_number: str = "",
    at: datetime | None = None,
) -> Encounter:
    """Create (or find) the patient and admit them to `bed` of `ward`."""
    patient = vitals.patient_for(
        db, patient_id=patient_id, issuer=issuer, name=name, birth_date=birth_date, sex=sex
    )
    return vitals.admit(
        db,
        patient_fk=patient.id,
        bed_id=ward.beds[bed],
        visit_number=visit_number,
        at=at,
        actor="test",
    )


# --- HL7 builders ----------------------------------------------------------------------------

#: parameter → (OBX-2, OBX-3, OBX-6) as a monitor (MDC) or a chart (LOINC, CWE) sends it.
OBX_CODES: dict[str, tuple[str, str, str]] = {
    "heart_rate": ("NM", "147842^MDC_ECG_HEART_RATE^MDC", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    "pulse_rate": ("NM", "149530^MDC_PULS_OXIM_PULS_RATE^MDC", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    "spo2": ("NM", "150456^MDC_PULS_OXIM_SAT_O2^MDC", "262688^MDC_DIM_PERCENT^MDC"),
    "resp_rate": ("NM", "151562^MDC_RESP_RATE^MDC", "264928^MDC_DIM_RESP_PER_MIN^MDC"),
    "bp_sys": ("NM", "150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "266016^MDC_DIM_MMHG^MDC"),
    "bp_dia": ("NM", "150022^MDC_PRESS_BLD_NONINV_DIA^MDC", "266016^MDC_DIM_MMHG^MDC"),
    "bp_mean": ("NM", "150023^MDC_PRESS_BLD_NONINV_MEAN^MDC", "266016^MDC_DIM_MMHG^MDC"),
    "temperature": ("NM", "150344^MDC_TEMP^MDC", "268192^MDC_DIM_DEGC^MDC"),
    "consciousness": ("CWE", "67775-7^Level of responsiveness^LN", ""),
    "oxygen": ("CWE", "3150-0^Inhaled oxygen concentration^LN", ""),
}


def hl7_ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def msh(
    message_type: str,
    control_id: str,
    *,
    app: str = "MONITOR",
    facility: str = "north",
    receiver_facility: str = "north",
    ts: datetime | None = None,
    version: str = "2.6",
) -> str:
    stamp = hl7_ts(ts or datetime.now(UTC))
    return (
        f"MSH|^~\\&|{app}|{facility}|LODS|{receiver_facility}|{stamp}||{message_type}|"
        f"{control_id}|P|{version}"
    )


def pid(patient_id: str, *, issuer: str = ISSUER, name: str = "Doe^Jane") -> str:
    if not patient_id:
        return "PID|||"
    return f"PID|||{patient_id}^^^{issuer}^MR||{name}||19400517|F"


def oru(
    control_id: str,
    patient_id: str,
    ward: str,
    bed: str,
    values: Mapping[str, float | str | None],
    ts: datetime | None = None,
    *,
    room: str = "R1",
    status: Mapping[str, str] | None = None,
    issuer: str = ISSUER,
    site: str = "north",
    app: str = "MONITOR",
) -> str:
    """An IHE PCD-01 ORU^R01: one OBX per value (None: an empty value); OBX-11 R unless
    `status` says otherwise (e.g. {"spo2": "X"})."""
    when = ts or datetime.now(UTC)
    lines = [
        msh("ORU^R01^ORU_R01", control_id, app=app, facility=site, receiver_facility=site, ts=when),
        pid(patient_id, issuer=issuer),
        f"PV1||I|{ward}^{room}^{bed}",
        f"OBR|1|||182777000^monitoring of patient^SCT|||{hl7_ts(when)}",
    ]
    for n, (parameter, value) in enumerate(values.items(), start=1):
        kind, code, unit = OBX_CODES[parameter]
        shown = "" if value is None else str(value)
        flag = (status or {}).get(parameter, "F" if kind == "CWE" else "R")
        lines.append(f"OBX|{n}|{kind}|{code}|1.1.1.{n}|{shown}|{unit}|||||{flag}|||{hl7_ts(when)}")
    return "\r".join(lines) + "\r"


def adt(
    event: str,
    control_id: str,
    patient_id: str,
    ward: str = "",
    bed: str = "",
    *,
    room: str = "R1",
    visit_number: str = "",
    issuer: str = ISSUER,
    name: str = "Doe^Jane",
    at: datetime | None = None,
    site: str = "north",
) -> str:
    """ADT^<event> (A01 admit, A02 transfer, A03 discharge, A08 update) with EVN, PID, PV1
    (PV1-3 ward^room^bed when `ward` is given, PV1-19 visit number, PV1-44/45 time)."""
    when = at or datetime.now(UTC)
    pv1 = [""] * 46
    pv1[0], pv1[2] = "PV1", "I"
    if ward:
        pv1[3] = f"{ward}^{room}^{bed}"
    pv1[19] = visit_number
    if event == "A03":
        pv1[45] = hl7_ts(when)
    else:
        pv1[44] = hl7_ts(when)
    lines = [
        msh(
            f"ADT^{event}^ADT_{event}", control_id, app="PAS", facility=site, receiver_facility=site
        ),
        f"EVN|{event}|{hl7_ts(when)}",
        pid(patient_id, issuer=issuer, name=name),
        "|".join(pv1).rstrip("|"),
    ]
    return "\r".join(lines) + "\r"


# --- MLLP ------------------------------------------------------------------------------------


def frame(message: str | bytes) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


def read_ack(sock: socket.socket, buffer: bytearray | None = None) -> str:
    """The next MLLP block from `sock` (blocking, with the socket's timeout) as text."""
    buf = buffer if buffer is not None else bytearray()
    while END_BLOCK not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the ACK")
        buf += chunk
    end = buf.index(END_BLOCK)
    block = bytes(buf[:end])
    del buf[: end + len(END_BLOCK)]
    start = block.find(START_BLOCK)
    return block[start + 1 :].decode()


def mllp_send(host: str, port: int, message: str | bytes, *, timeout: float = 10.0) -> str:
    """Send one message on a new connection and return its ACK's text."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame(message))
        return read_ack(sock)


def ack_fields(ack: str) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK's text."""
    for segment in ack.split("\r"):
        if segment.startswith("MSA|"):
            fields = [*segment.split("|"), "", "", ""]
            return fields[1], fields[2], fields[3]
    raise AssertionError(f"no MSA in {ack!r}")
