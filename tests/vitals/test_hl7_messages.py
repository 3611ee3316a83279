"""HL7 v2 in, without sockets or a database: MLLP framing, parsing ORU/ADT with
python-hl7, the vital-sign codes (STANDARDS.md §3), sentinels and plausibility, and the ACK."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hl7
import pytest
from vitals_support import adt, oru

from lods.vitals import codes, hl7in

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def parsed(raw: str) -> hl7in.ParsedMessage:
    message = hl7in.read(raw)
    assert isinstance(message, hl7in.ParsedMessage), message
    return message


def readings(raw: str) -> dict[str, hl7in.VitalReading]:
    return {r.parameter: r for r in hl7in.vital_readings(parsed(raw), received_at=T0)}


# --- codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mdc", "parameter", "loinc"),
    [
        ("147842", "heart_rate", "8867-4"),
        ("149530", "pulse_rate", "8867-4"),
        ("150456", "spo2", "59408-5"),
        ("151562", "resp_rate", "9279-1"),
        ("151578", "resp_rate", "9279-1"),
        ("150021", "bp_sys", "8480-6"),
        ("150022", "bp_dia", "8462-4"),
        ("150023", "bp_mean", "8478-0"),
        ("150344", "temperature", "8310-5"),
    ],
)
def test_the_standards_table_maps_mdc_codes_to_parameters_and_loinc(
    mdc: str, parameter: str, loinc: str
) -> None:
    assert codes.MDC[mdc].parameter == parameter
    assert codes.LOINC_OF[parameter] == loinc


def test_loinc_codes_map_back_including_the_older_spo2_code() -> None:
    assert codes.LOINC["2708-6"] == codes.LOINC["59408-5"] == "spo2"
    assert codes.LOINC["67775-7"] == "consciousness"
    assert codes.LOINC["3150-0"] == "oxygen"
    assert {codes.UCUM_OF[p] for p in ("resp_rate", "heart_rate")} == {"/min"}
    assert (codes.UCUM_OF["spo2"], codes.UCUM_OF["bp_sys"], codes.UCUM_OF["temperature"]) == (
        "%",
        "mm[Hg]",
        "Cel",
    )


@pytest.mark.parametrize(
    "value", [8388607, 8388608, 8388609, 8388610, 8388611, 8388612, -8388608, 8388606]
)
def test_device_sentinels_are_no_reading(value: int) -> None:
    reading = codes.check_numeric("heart_rate", float(value))
    assert not reading.valid and reading.value is None
    assert reading.invalid_reason and "sentinel" in reading.invalid_reason


@pytest.mark.parametrize(
    ("parameter", "value", "valid"),
    [
        ("spo2", 100, True),
        ("spo2", 101, False),
        ("heart_rate", 0, True),
        ("heart_rate", 400, False),
        ("resp_rate", 121, False),
        ("temperature", 19.9, False),
        ("temperature", 35.0, True),
        ("bp_sys", 400, False),
    ],
)
def test_physiologically_impossible_values_are_invalid_with_the_reason(
    parameter: str, value: float, valid: bool
) -> None:
    reading = codes.check_numeric(parameter, float(value))
    assert reading.valid is valid
    assert (reading.invalid_reason is None) is valid
    if not valid:
        assert reading.invalid_reason and "implausible" in reading.invalid_reason


def test_units_convert_or_make_the_value_invalid() -> None:
    assert codes.check_numeric("temperature", 98.6, "[degF]").value == pytest.approx(37.0)
    assert codes.check_numeric("bp_sys", 16.0, "kPa").value == pytest.approx(120.01, abs=0.01)
    wrong = codes.check_numeric("spo2", 97.0, "mm[Hg]")
    assert not wrong.valid and "unit" in (wrong.invalid_reason or "")


def test_coded_values_accept_letters_words_and_loinc_answers() -> None:
    assert codes.consciousness_letter("LA17108-4") == "V"
    assert codes.consciousness_letter("alert") == "A"
    assert codes.consciousness_letter("c") == "C"
    assert codes.consciousness_letter("maybe") is None
    assert codes.oxygen_text("Room air") == "air"
    assert codes.oxygen_text("28") == "oxygen"
    assert codes.oxygen_text("21") == "air"


# --- parsing ---------------------------------------------------------------------------------


def test_an_oru_is_read_into_header_patient_location_and_readings() -> None:
    raw = oru("C1", "P1", "W7", "3", {"spo2": 97, "heart_rate": 80, "temperature": 37.2}, T0)
    message = parsed(raw)
    assert message.is_oru and message.message_type == "ORU^R01"
    assert message.header.control_id == "C1"
    assert message.header.sender == "MONITOR^north"
    assert message.header.sent_at == T0
    assert message.patient is not None
    assert (message.patient.patient_id, message.patient.issuer) == ("P1", "HOSP")
    assert message.visit is not None
    assert (message.visit.location.ward, message.visit.location.bed) == ("W7", "3")
    got = readings(raw)
    assert got["spo2"].value == 97 and got["spo2"].unit == "%" and got["spo2"].valid
    assert got["spo2"].mdc_code == "150456" and got["spo2"].loinc == "59408-5"
    assert got["temperature"].value == pytest.approx(37.2)
    assert got["heart_rate"].observed_at == T0


def test_obx_11_x_and_sentinels_are_stored_invalid_and_unknown_codes_left_out() -> None:
    raw = oru(
        "C2", "P1", "W7", "3", {"spo2": None, "heart_rate": 8388607}, T0, status={"spo2": "X"}
    )
    raw += "OBX|9|NM|69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0||||||R\r"
    got = readings(raw)
    assert set(got) == {"spo2", "heart_rate"}
    assert not got["spo2"].valid and "OBX-11 X" in (got["spo2"].invalid_reason or "")
    assert not got["heart_rate"].valid and got["heart_rate"].value is None


def test_charted_consciousness_and_oxygen_arrive_as_loinc_cwe() -> None:
    got = readings(oru("C3", "P1", "W7", "3", {"consciousness": "V^Voice", "oxygen": "air"}, T0))
    assert got["consciousness"].value_text == "V" and got["consciousness"].valid
    assert got["oxygen"].value_text == "air"


def test_an_obx_without_its_own_time_takes_the_obr_time() -> None:
    stamp = f"{T0:%Y%m%d%H%M%S}+0000"
    raw = oru("C4", "P1", "W7", "3", {"spo2": 95}, T0)
    raw = raw.replace(f"SCT|||{stamp}", "SCT|||20261129020000+0000")  # OBR-7 an hour earlier
    raw = raw.replace(f"|||{stamp}\r", "\r")  # no OBX-14
    assert readings(raw)["spo2"].observed_at == datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def test_timestamps_with_offsets_are_utc() -> None:
    assert hl7in.parse_ts("20261129050000+0200") == T0
    assert hl7in.parse_ts("202611290300") is not None
    assert hl7in.parse_ts("2026-11-29") is None
    assert hl7in.parse_ts("") is None


def test_adt_fields_are_read() -> None:
    message = parsed(adt("A02", "A1", "P1", "W7", "2", visit_number="V9", at=T0))
    assert message.message_type == "ADT^A02"
    assert message.visit is not None and message.visit.visit_number == "V9"
    assert message.visit.admitted_at == T0 and message.event_at == T0


@pytest.mark.parametrize(
    ("raw", "error_code", "control_id"),
    [
        ("MSH|^~\\&|A|B|LODS|north|20261129||ORM^O01|X1|P|2.6\r", "200", "X1"),
        ("MSH|^~\\&|A|B|LODS|north|20261129||ADT^A04|X2|P|2.6\r", "201", "X2"),
        ("MSH|^~\\&|A|B|LODS|north|20261129||ORU^R01|X3|P|3.0\r", "203", "X3"),
        ("MSH|^~\\&|A|B|LODS|north|20261129||ORU^R01||P|2.6\r", "101", ""),
        ("this is not HL7 at all", "102", ""),
        ("MSH", "102", ""),
        ("", "102", ""),
    ],
)
def test_unsupported_or_unreadable_messages_are_rejected(
    raw: str, error_code: str, control_id: str
) -> None:
    message = hl7in.read(raw)
    assert isinstance(message, hl7in.Rejected)
    assert message.error_code == error_code
    assert message.header.control_id == control_id


def _hl7_reference(message: hl7.Message, seg: Any, num: int, comp: int, sub: int) -> str:
    """What python-hl7's own containers hold at SEG-num.comp.sub (first repetition)."""
    if num >= len(seg):
        return ""
    item: Any = seg[num]
    if not item:
        return ""
    item = item[0]
    if str(seg[0]) == "MSH" and num in (1, 2):
        return str(item) if comp == 1 and sub == 1 else ""
    if isinstance(item, str):
        return str(message.unescape(item)) if comp == 1 and sub == 1 else ""
    if comp > len(item):
        return ""
    item = item[comp - 1]
    if isinstance(item, str):
        return str(message.unescape(item)) if sub == 1 else ""
    return str(message.unescape(str(item[sub - 1]))) if sub <= len(item) else ""


AGREEMENT_SAMPLES = [
    oru("C1", "P1", "W7", "3", {"spo2": 97, "consciousness": "V^Voice", "oxygen": "air"}, T0),
    adt("A02", "A1", "P1", "W7", "2", visit_number="V9", at=T0),
    "MSH|^~\\&|MON|north|LODS|north|20261129||ORU^R01|E\\S\\1|P|2.6\r"
    "PID|||P\\S\\1^^^HO\\T\\SP&1.2.3&ISO^MR~X2^^^Y||Doe\\F\\x^Jane&Mid||19400101|F\r"
    "PV1||I|W7^R1^1~W8^R2^2\r"
    "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC^^^X|1.1|97|262688&x^%^MDC|||||R\r",
    "MSH#!*$@#APP#FAC#LODS#north#20261129##ORU!R01#C$F$2#P#2.5\r"
    "PID###P7!!!ISS@sub!MR*other##Name!Given\rPV1##I#W7!R1!1\r",
]


@pytest.mark.parametrize("raw", AGREEMENT_SAMPLES)
def test_the_fast_split_agrees_with_python_hl7(raw: str) -> None:
    reference = hl7.parse(raw)
    tokens = hl7in._Tokens(raw)
    assert [seg[0] for seg in tokens.segments] == [str(seg[0]) for seg in reference]
    for mine, theirs in zip(tokens.segments, reference, strict=True):
        for num in range(1, max(len(mine), len(theirs)) + 1):
            for comp in range(1, 5):
                for sub in range(1, 4):
                    expected = _hl7_reference(reference, theirs, num, comp, sub)
                    assert tokens.value(mine, num, comp, sub) == expected, (mine[0], num, comp, sub)


# --- framing ---------------------------------------------------------------------------------


def test_framer_skips_garbage_and_splits_several_blocks_in_one_read() -> None:
    framer = hl7in.MllpFramer(1024)
    data = b"\x00junk\r\n" + hl7in.frame("MSH|a") + b"noise" + hl7in.frame("MSH|b")
    assert [f.data for f in framer.feed(data)] == [b"MSH|a", b"MSH|b"]
    assert not framer.pending


def test_framer_joins_a_message_split_byte_by_byte() -> None:
    framer = hl7in.MllpFramer(1024)
    got: list[hl7in.Frame] = []
    for byte in hl7in.frame("MSH|split"):
        got += framer.feed(bytes([byte]))
    assert [f.data for f in got] == [b"MSH|split"]


def test_framer_waits_for_the_end_block_and_a_new_start_abandons_the_old() -> None:
    framer = hl7in.MllpFramer(1024)
    assert framer.feed(b"\x0bMSH|unfinished") == [] and framer.pending
    assert [f.data for f in framer.feed(b"\x0bMSH|next\x1c\r")] == [b"MSH|next"]
    assert framer.feed(b"\x0bMSH|x\x1c") == []
    assert [f.data for f in framer.feed(b"\r")] == [b"MSH|x"]


def test_framer_reports_an_oversize_message_once_it_ends_and_resyncs() -> None:
    framer = hl7in.MllpFramer(1024)
    head = b"MSH|^~\\&|A|B|LODS|north|20261129||ORU^R01|BIG|P|2.6\r"
    assert framer.feed(b"\x0b" + head + b"x" * 3000) == []
    assert framer.feed(b"y" * 5000) == []
    frames = framer.feed(b"\x1c\r" + hl7in.frame("MSH|after"))
    assert [f.oversize for f in frames] == [True, False]
    assert frames[0].data.startswith(head) and frames[0].size == len(head) + 8000
    rejected = hl7in.oversize(frames[0].data, frames[0].size, 1024)
    assert rejected.header.control_id == "BIG" and "exceeds" in rejected.reason


# --- ACK -------------------------------------------------------------------------------------


def test_the_ack_swaps_sender_and_receiver_and_echoes_msh_10() -> None:
    header = parsed(oru("C9", "P1", "W7", "3", {"spo2": 97}, T0)).header
    ack = hl7.parse(hl7in.build_ack(header, "AA", "accepted", now=T0))
    msh, msa = ack.segment("MSH"), ack.segment("MSA")
    assert (str(msh(3)), str(msh(4)), str(msh(5)), str(msh(6))) == (
        "LODS",
        "north",
        "MONITOR",
        "north",
    )
    assert str(msh(9)) == "ACK^R01^ACK"
    assert (str(msa(1)), str(msa(2)), str(msa(3))) == ("AA", "C9", "accepted")
    assert not [s for s in ack if str(s[0]) == "ERR"]


def test_ae_and_ar_carry_an_err_segment_and_escape_the_text() -> None:
    header = parsed(oru("C10", "P1", "W7", "3", {"spo2": 97}, T0)).header
    text = hl7in.build_ack(header, "AE", "unknown location W7^R1^9", error_code="204")
    code, control_id, msa_text = hl7in.ack_code(text)
    assert (code, control_id, msa_text) == ("AE", "C10", "unknown location W7^R1^9")
    err = hl7.parse(text).segment("ERR")
    assert str(err(3)).startswith("204^") and str(err(4)) == "E"


def test_an_unreadable_message_is_answered_ar_with_an_empty_msa_2() -> None:
    rejected = hl7in.read("garbage")
    assert isinstance(rejected, hl7in.Rejected)
    text = hl7in.build_ack(rejected.header, "AR", rejected.reason, error_code=rejected.error_code)
    assert hl7in.ack_code(text)[:2] == ("AR", "")
