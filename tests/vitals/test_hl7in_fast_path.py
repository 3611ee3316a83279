"""The HL7 intake's fast paths give what the general code gives: `_Tokens.plain` (fields
read without looking for repetitions, subcomponents or escapes) and `codes.valid_number`
(a valid numeric reading without building the `Reading`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from vitals_support import oru

from lods.vitals import codes, hl7in

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
VALUES: dict[str, float | str | None] = {
    "resp_rate": 16,
    "spo2": 98,
    "oxygen": "air^Room air",
    "bp_sys": 124,
    "bp_dia": 78,
    "heart_rate": 72,
    "pulse_rate": None,
    "consciousness": "A",
    "temperature": 36.8,
}
PLAIN_SAMPLES = [
    oru("C1", "P1", "W7", "3", VALUES, T0, status={"bp_dia": "X"}),
    "MSH|^~\\&|MON|north|LODS|north|20261129||ORU^R01|C2|P|2.6\r"
    "PID|||P2^^^HOSP^MR||Doe^Jane||19400101|F\r"
    "PV1||I|W7^R1^1|||W6^^2\r"
    "OBX|1|NM|^MDC_TEMP^|1|98.6|F^degF|||||r\r"
    "OBX|2|NM|X^^L^150456^^MDC|1|8388607|262688^%\r"
    "OBX|3|NM|8867-4^Heart rate^LN||400|bpm||||| C |||bad||||MON^1\r"
    "OBX|4\r",
    "MSH#!*$@#APP#FAC#LODS#north#20261129##ORU!R01#C3#P#2.5\r"
    "PID###P7!!!ISS!MR##Name!Given\rPV1##I#W7!R1!1\r"
    "OBX#1#NM#150456!MDC_PULS_OXIM_SAT_O2!MDC##97#262688!MDC_DIM_PERCENT!MDC#####R\r",
]


@pytest.mark.parametrize("raw", PLAIN_SAMPLES)
def test_plain_fields_read_as_the_general_code_reads_them(raw: str) -> None:
    plain = hl7in._Tokens(raw)
    general = hl7in._Tokens(raw)
    general.plain = False
    assert plain.plain
    for seg in plain.segments:
        for num in range(len(seg) + 2):
            for comp in range(1, 7):
                for sub in range(1, 3):
                    expected = general.value(seg, num, comp, sub)
                    assert plain.value(seg, num, comp, sub) == expected, (seg[0], num, comp, sub)
    for seg in plain.all("OBX"):
        assert hl7in._obx(plain, seg) == hl7in._obx_escaped(general, seg)


@pytest.mark.parametrize(
    "raw",
    [
        oru("C1", "P1", "W7", "3", {"spo2": "9\\E\\8"}, T0),
        oru("C1", "P1", "W7", "3", {"spo2": "98~97"}, T0),
        oru("C1", "P1", "W7", "3", {"spo2": "98&1"}, T0),
        "MSH|^~\\&|MON\\H\\|north|LODS|north|20261129||ORU^R01|C2|P|2.6\r",
    ],
)
def test_a_message_with_repetitions_subcomponents_or_escapes_is_not_plain(raw: str) -> None:
    assert not hl7in._Tokens(raw).plain


NUMBERS = ["98", " 36.8 ", "98.6", "8388607", "-8388608", "nan", "inf", "1e999", "abc", "400"]
NUMBERS += ["-1", "0", "1_0", "13.3", "1e308", "-0", "+5", ".5", "350", "350.0004", "350.0006"]
UNITS = ["", "%", "262688", "F", "[degF]", "kPa", "mmHg", "bpm", "Cel", "°C", "nonsense"]


@pytest.mark.parametrize("parameter", sorted(codes.NUMERIC_PARAMETERS))
def test_valid_number_is_what_check_value_stores_for_a_valid_reading(parameter: str) -> None:
    for raw in NUMBERS:
        for unit in UNITS:
            reading = codes.check_value(parameter, raw, unit)
            expected = reading.value if reading.valid else None
            assert codes.valid_number(parameter, raw, unit) == expected, (raw, unit)
