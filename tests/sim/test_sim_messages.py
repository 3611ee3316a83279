"""The HL7 messages the monitor simulator sends: valid v2.6 ORU^R01 (IHE PCD-01) and
ADT^A01 by hl7apy's strict validation, parseable by python-hl7, every field in its place,
and every code one Lods maps (lods.vitals.codes)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from lods.sim.monitors import (
    METRICS,
    SENTINEL,
    BedModel,
    Reading,
    VitalSet,
    admitted_at,
    adt_a01,
    oru_r01,
    vital_set,
    ward_models,
)
from lods.vitals import codes, hl7in

START = datetime(2025, 3, 1, 7, 0, tzinfo=UTC)
SENT = datetime(2025, 3, 1, 9, 30, 5, tzinfo=UTC)


@pytest.fixture
def model() -> BedModel:
    return ward_models(
        site="north", ward="W7", beds=["12", "14"], start=START, rooms={"12": "701"}, seed=7
    )[0]


def _strict(message: str) -> object:
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() is True
    return parsed


def field(msg: hl7.Message, segment: str, number: int) -> str:
    """The whole field (all components) of the message's first `segment`."""
    return str(msg.segment(segment)(number))


def _oru(model: BedModel, vitals: VitalSet, control_id: str = "SIM-1") -> str:
    return oru_r01(
        site="north", ward="W7", model=model, vitals=vitals, observed_at=SENT, control_id=control_id
    )


def test_oru_is_a_valid_pcd01_message(model: BedModel) -> None:
    vitals = vital_set(model, START, faults=False)
    message = _oru(model, vitals)
    assert message.endswith("\r") and "\n" not in message
    parsed = _strict(message)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"  # type: ignore[attr-defined]
    assert parsed.msh.msh_12.to_er7() == "2.6"  # type: ignore[attr-defined]

    msg = hl7.parse(message)
    assert field(msg, "MSH", 3) == "LODS-SIM"  # MSH-3 sending application
    assert field(msg, "MSH", 4) == "north"  # MSH-4 sending facility: the site
    assert field(msg, "MSH", 5) == "LODS"
    assert field(msg, "MSH", 6) == "north"
    assert field(msg, "MSH", 7) == "20250301093005+0000"
    assert field(msg, "MSH", 9) == "ORU^R01^ORU_R01"
    assert field(msg, "MSH", 10) == "SIM-1"
    assert field(msg, "MSH", 11) == "P" and field(msg, "MSH", 12) == "2.6"
    patient = model.patient
    assert str(msg["PID.F3.R1.C1"]) == patient.patient_id
    assert str(msg["PID.F3.R1.C4"]) == "LODS-SIM"
    assert str(msg["PID.F3.R1.C5"]) == "MR"
    assert str(msg["PID.F5.R1.C1"]) == patient.family
    assert str(msg["PID.F5.R1.C2"]) == patient.given
    assert field(msg, "PID", 7) == patient.birth_date.strftime("%Y%m%d")
    assert field(msg, "PID", 8) == patient.sex
    assert field(msg, "PV1", 2) == "I"
    assert field(msg, "PV1", 3) == "W7^701^12"
    assert field(msg, "OBR", 4) == "182777000^monitoring of patient^SCT"
    assert field(msg, "OBR", 7) == "20250301093005+0000"

    obx = msg.segments("OBX")
    assert len(obx) == len(vitals.readings)
    for n, (segment, reading) in enumerate(zip(obx, vitals.readings, strict=True), start=1):
        assert str(segment(1)) == str(n)
        assert str(segment(14)) == "20250301093005+0000"
        code, system = str(segment(3)(1)(1)), str(segment(3)(1)(3))
        if reading.parameter in METRICS:
            metric = METRICS[reading.parameter]
            assert (str(segment(2)), system, code) == ("NM", "MDC", metric.code)
            assert codes.MDC[code].parameter == reading.parameter
            assert str(segment(3)(1)(2)) == codes.MDC[code].reference_id
            assert str(segment(4)) == metric.sub_id
            assert str(segment(6)(1)(1)) == metric.unit_code
            assert str(segment(11)) == "R"
            value = float(str(segment(5)))
            assert value == reading.value
            assert codes.check_numeric(reading.parameter, value, metric.unit_code).valid
            assert str(segment(18)(1)(1)) == "MON-W7-12"
        else:
            assert (str(segment(2)), system) == ("CWE", "LN")
            assert codes.LOINC[code] == reading.parameter
            assert str(segment(11)) == "F"
            answer = str(segment(5)(1)(1))
            assert codes.check_coded(reading.parameter, answer).valid
            assert answer == reading.value
    # Integers without a decimal point; the temperature with exactly one decimal.
    values = {str(s(3)(1)(1)): str(s(5)) for s in obx}
    assert values["150456"].isdigit() and values["151562"].isdigit()
    whole, _, tenths = values["150344"].partition(".")
    assert whole.isdigit() and len(tenths) == 1


def test_invalid_readings_are_flagged_as_monitors_do(model: BedModel) -> None:
    vitals = VitalSet(
        bed=model.bed,
        at=START,
        severity=0.0,
        readings=(
            Reading("spo2", None, "X", "invalid"),
            Reading("pulse_rate", SENTINEL, "R", "sentinel"),
            Reading("temperature", 37.0, "R"),
        ),
    )
    message = _oru(model, vitals)
    _strict(message)
    obx = hl7.parse(message).segments("OBX")
    assert (str(obx[0](5)), str(obx[0](11))) == ("", "X")
    assert (str(obx[1](5)), str(obx[1](11))) == ("8388607", "R")
    assert codes.sentinel_reason(float(str(obx[1](5)))) is not None
    assert str(obx[2](5)) == "37.0"


def test_every_simulated_set_makes_a_valid_message(model: BedModel) -> None:
    models = ward_models(site="north", ward="W7", beds=["1", "2", "3"], start=START, seed=5)
    for m in models:
        for k in range(0, 24 * 4, 7):
            vitals = vital_set(m, START + timedelta(minutes=15 * k))
            message = _oru(m, vitals, control_id=f"S{k}")
            _strict(message)
            assert len(hl7.parse(message).segments("OBX")) == len(vitals.readings)


def test_delimiters_in_names_are_escaped(model: BedModel) -> None:
    odd = dataclasses.replace(
        model, patient=dataclasses.replace(model.patient, family="Smith|Jones^&~", given="Ann\\")
    )
    message = _oru(odd, vital_set(odd, START, faults=False))
    _strict(message)
    assert "Smith\\F\\Jones\\S\\\\T\\\\R\\^Ann\\E\\" in message
    assert len(hl7.parse(message).segments("PID")) == 1


def test_adt_a01_admits_the_patient_to_the_bed(model: BedModel) -> None:
    admitted = admitted_at(model)
    assert START - timedelta(days=3) <= admitted < START
    message = adt_a01(
        site="north", ward="W7", model=model, admitted_at=admitted, control_id="A-1", sent_at=SENT
    )
    parsed = _strict(message)
    assert parsed.msh.msh_9.to_er7() == "ADT^A01^ADT_A01"  # type: ignore[attr-defined]
    msg = hl7.parse(message)
    assert field(msg, "MSH", 10) == "A-1"
    assert field(msg, "EVN", 2) == "20250301093005+0000"
    assert str(msg["PID.F3.R1.C1"]) == model.patient.patient_id
    assert str(msg["PID.F3.R1.C4"]) == model.patient.issuer
    assert field(msg, "PID", 7) == model.patient.birth_date.strftime("%Y%m%d")
    assert field(msg, "PV1", 2) == "I"
    assert field(msg, "PV1", 3) == "W7^701^12"
    assert field(msg, "PV1", 19) == model.patient.visit_number
    assert field(msg, "PV1", 44) == admitted.strftime("%Y%m%d%H%M%S+0000")


def test_lods_reads_what_the_simulator_means(model: BedModel) -> None:
    """Lods' own HL7 reader (lods.vitals.hl7in) finds the patient, the bed and every
    reading with the value and validity the simulator meant."""
    models = ward_models(site="north", ward="W7", beds=["1", "2", "3"], start=START, seed=5)
    for m in models:
        for k in range(0, 24 * 4, 5):
            vitals = vital_set(m, START + timedelta(minutes=15 * k))
            parsed = hl7in.read(_oru(m, vitals, control_id=f"S{k}"))
            assert isinstance(parsed, hl7in.ParsedMessage), parsed
            assert parsed.is_oru and parsed.header.control_id == f"S{k}"
            assert parsed.header.sending_facility == "north"
            assert parsed.patient is not None and parsed.visit is not None
            assert parsed.patient.patient_id == m.patient.patient_id
            assert parsed.patient.issuer == m.patient.issuer
            assert parsed.patient.birth_date == m.patient.birth_date
            assert (parsed.visit.location.ward, parsed.visit.location.bed) == ("W7", m.bed)
            read = hl7in.vital_readings(parsed, received_at=SENT)
            assert [r.parameter for r in read] == [r.parameter for r in vitals.readings]
            for got, meant in zip(read, vitals.readings, strict=True):
                assert got.valid == meant.valid, (got, meant)
                assert got.observed_at == SENT
                if meant.valid and isinstance(meant.value, str):
                    assert got.value_text == meant.value
                elif meant.valid:
                    assert got.value == meant.value


def test_lods_reads_the_admission(model: BedModel) -> None:
    admitted = admitted_at(model)
    parsed = hl7in.read(
        adt_a01(
            site="north",
            ward="W7",
            model=model,
            admitted_at=admitted,
            control_id="A-2",
            sent_at=SENT,
        )
    )
    assert isinstance(parsed, hl7in.ParsedMessage), parsed
    assert parsed.message_type == "ADT^A01"
    assert parsed.visit is not None and parsed.patient is not None
    assert parsed.visit.visit_number == model.patient.visit_number
    assert parsed.visit.admitted_at == admitted
    assert str(parsed.visit.location) == "W7^701^12"
    assert (parsed.patient.family, parsed.patient.given, parsed.patient.sex) == (
        model.patient.family,
        model.patient.given,
        model.patient.sex,
    )
