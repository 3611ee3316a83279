"""Simulated bedside monitors: vital-sign trajectories per bed, as HL7 v2 over MLLP.

The model (pure, seeded):

- `ward_models` gives each bed a synthetic adult patient (id, name, birth date, sex) and
  a baseline drawn from plausible adult ranges; the first `deteriorating` beds (in a
  seeded order) deteriorate over hours: respiration rate and pulse rise, SpO2 and
  systolic pressure fall, fever comes, oxygen is started, and at the end there is new
  confusion, so their NEWS2 band climbs low → medium → high.
- `vital_set(model, at)` is what the monitor shows at time `at`: baseline + slow drift
  (two slow waves per parameter) + a circadian swing + noise + the deterioration, at the
  resolution monitors send (RR, pulse, SpO2, blood pressure as integers; temperature to
  0.1 °C). Now and then a reading is invalid (OBX-11 `X`, or the device sentinel
  8388607) or an artefact (probe off, motion). Consciousness (ACVPU) and air/oxygen are
  nurse-charted, not measured: they come now and then, and whenever they changed.
  The same (model, at, seed) always gives the same set.

The messages (pure): `oru_r01` (IHE PCD-01: MSH, PID, PV1, OBR, OBX per reading, MDC
codes; charted items as LOINC) and `adt_a01` (admit to the bed), HL7 2.6.

The sender: `run_monitors(config)` sends, per bed, one set every `interval` minutes of
simulated time, compressed by `speed` (60: an hour's set each minute; 0: no waiting),
over `connections` MLLP connections (python-hl7's asyncio MLLP streams), waiting for each
ACK, and returns a `Summary` of what was sent and how it was answered. Message times are
the wall clock at sending; the trajectory runs on simulated time, so a demo shows hours
of deterioration in minutes while every observation is fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import hl7
from hl7.mllp import HL7StreamReader, HL7StreamWriter, open_hl7_connection

HL7_VERSION = "2.6"
#: The device sentinel for "no value" (2^23 - 1, the largest 24-bit FLOAT-Type mantissa).
SENTINEL = 8388607
DEFAULT_ISSUER = "LODS-SIM"
SENDING_APP = "LODS-SIM"
#: Fixed reference year for ages: a bed's patient is the same in every run.
REFERENCE_YEAR = 2025
#: Hours east of UTC used for the circadian swing (Danish wards).
LOCAL_OFFSET_HOURS = 1.0


@dataclass(frozen=True)
class Metric:
    """One measured quantity: its parameter key, IEEE 11073 MDC code and unit, and the
    OBX-4 sub-id (MDS.VMD.channel.metric) the simulated monitor reports it under."""

    parameter: str
    code: str
    name: str
    unit_code: str
    unit_name: str
    sub_id: str
    decimals: int = 0


METRICS: dict[str, Metric] = {
    m.parameter: m
    for m in (
        Metric("heart_rate", "147842", "MDC_ECG_HEART_RATE", "264864", "MDC_DIM_BEAT_PER_MIN",
               "1.1.1.1"),
        Metric("spo2", "150456", "MDC_PULS_OXIM_SAT_O2", "262688", "MDC_DIM_PERCENT", "1.2.1.1"),
        Metric("pulse_rate", "149530", "MDC_PULS_OXIM_PULS_RATE", "264864",
               "MDC_DIM_BEAT_PER_MIN", "1.2.1.2"),
        Metric("resp_rate", "151562", "MDC_RESP_RATE", "264928", "MDC_DIM_RESP_PER_MIN",
               "1.3.1.1"),
        Metric("bp_sys", "150021", "MDC_PRESS_BLD_NONINV_SYS", "266016", "MDC_DIM_MMHG",
               "1.4.1.1"),
        Metric("bp_dia", "150022", "MDC_PRESS_BLD_NONINV_DIA", "266016", "MDC_DIM_MMHG",
               "1.4.1.2"),
        Metric("bp_mean", "150023", "MDC_PRESS_BLD_NONINV_MEAN", "266016", "MDC_DIM_MMHG",
               "1.4.1.3"),
        Metric("temperature", "150344", "MDC_TEMP", "268192", "MDC_DIM_DEGC", "1.5.1.1", 1),
    )
}  # fmt: skip
#: Nurse-charted items (LOINC), sent as CWE OBX: code, name, answer names.
CHARTED: dict[str, tuple[str, str, dict[str, str]]] = {
    "consciousness": (
        "67775-7",
        "Level of responsiveness",
        {"A": "Alert", "C": "New confusion", "V": "Voice", "P": "Pain", "U": "Unresponsive"},
    ),
    "oxygen": (
        "3150-0",
        "Inhaled oxygen concentration",
        {"air": "Room air", "oxygen": "Supplemental oxygen"},
    ),
}
MONITORING = "182777000^monitoring of patient^SCT"

_GIVEN = {
    "F": ("Anna", "Karen", "Inge", "Birthe", "Kirsten", "Hanne", "Mette", "Lone", "Grethe",
          "Sofie", "Ida", "Ellen", "Jytte", "Bodil", "Else", "Marianne"),
    "M": ("Jens", "Peter", "Niels", "Henrik", "Søren", "Lars", "Ole", "Poul", "Erik", "Hans",
          "Mikkel", "Frederik", "Bent", "Knud", "Torben", "Jørgen"),
}  # fmt: skip
_FAMILY = ("Jensen", "Nielsen", "Hansen", "Pedersen", "Andersen", "Christensen", "Larsen",
           "Sørensen", "Rasmussen", "Jørgensen", "Petersen", "Madsen", "Kristensen", "Olsen",
           "Thomsen", "Poulsen", "Møller", "Mortensen", "Holm", "Lund")  # fmt: skip


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    """The synthetic patient in a bed (what ADT and PID carry)."""

    patient_id: str
    issuer: str
    family: str
    given: str
    birth_date: date
    sex: str
    visit_number: str


@dataclass(frozen=True)
class Baseline:
    """A patient's resting values (before drift, circadian swing and noise)."""

    resp_rate: float
    spo2: float
    pulse: float
    bp_sys: float
    bp_dia: float
    temperature: float


@dataclass(frozen=True)
class BedModel:
    """Everything that decides what a bed's monitor shows over time."""

    bed: str
    room: str
    patient: Patient
    baseline: Baseline
    #: The simulation's start: trajectory hours count from here.
    start: datetime
    seed: int
    #: Also on ECG (sends MDC_ECG_HEART_RATE next to the oximeter's pulse rate).
    ecg: bool
    deteriorating: bool
    #: Hours after `start` the deterioration begins (may be negative: already under way).
    onset_hours: float
    #: Hours from its beginning until the patient is as ill as the model makes them.
    course_hours: float
    #: Per parameter: two slow waves (amplitude, period hours, phase radians).
    drift: dict[str, tuple[tuple[float, float, float], ...]]


@dataclass(frozen=True)
class Reading:
    """One value as the monitor (or the chart) reports it.

    `value` is a number for measured parameters, "A".."U" / "air" / "oxygen" for charted
    ones, None when OBX-11 is `X`; `quality` is "ok", "artefact", "invalid" (`X`) or
    "sentinel" (a number that means "no reading")."""

    parameter: str
    value: float | str | None
    status: str
    quality: str = "ok"

    @property
    def valid(self) -> bool:
        return self.quality in ("ok", "artefact")


@dataclass(frozen=True)
class VitalSet:
    """What a bed shows at `at` (trajectory time), with how ill the model made them."""

    bed: str
    at: datetime
    severity: float
    readings: tuple[Reading, ...]

    def value(self, parameter: str) -> float | str | None:
        """The reported value of `parameter` (None when absent or invalid)."""
        for r in self.readings:
            if r.parameter == parameter and r.valid:
                return r.value
        return None


def _rng(*parts: object) -> random.Random:
    """A generator seeded from `parts` the same way in every process (str seeds are hashed
    with SHA-512, not with the per-process salted hash)."""
    return random.Random(":".join(str(p) for p in parts))


def parse_beds(spec: str) -> list[str]:
    """Bed codes from `spec`: comma-separated codes and ranges, e.g. "1-12", "A1-A4,B2",
    "01-12" (a range keeps the zero padding of its start)."""
    beds: list[str] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        match = re.fullmatch(r"([^\d-]*)(\d+)-\1?(\d+)", token)
        if match:
            prefix, first, last = match.group(1), match.group(2), match.group(3)
            lo, hi = int(first), int(last)
            if hi < lo:
                raise ValueError(f"bed range {token!r} runs backwards")
            width = len(first) if first.startswith("0") else 0
            beds.extend(f"{prefix}{n:0{width}d}" for n in range(lo, hi + 1))
        elif re.fullmatch(r"[A-Za-z0-9._]+", token):
            beds.append(token)
        else:
            raise ValueError(f"not a bed code or range: {token!r}")
    if not beds:
        raise ValueError("no beds given")
    if len(set(beds)) != len(beds):
        raise ValueError("a bed is named twice")
    return beds


def parse_rooms(specs: Sequence[str], beds: Sequence[str]) -> dict[str, str]:
    """Room per bed from specs "ROOM=BEDS" (BEDS as in `parse_beds`); beds not named get
    an empty room (PV1-3.2 / the sensor topic then use "-")."""
    rooms = dict.fromkeys(beds, "")
    for spec in specs:
        room, sep, bed_spec = spec.partition("=")
        if not sep or not room.strip():
            raise ValueError(f"expected ROOM=BEDS, got {spec!r}")
        for bed in parse_beds(bed_spec):
            if bed not in rooms:
                raise ValueError(f"room {room}: bed {bed} is not one of the simulated beds")
            rooms[bed] = room.strip()
    return rooms


def make_patient(*, site: str, ward: str, bed: str, seed: int, issuer: str) -> Patient:
    """The synthetic adult in `bed` (at least 18 on 1 January of REFERENCE_YEAR): four in
    ten are 75 or older, a third 55–74."""
    rng = _rng("patient", seed, site, ward, bed)
    sex = rng.choice("FM")
    roll = rng.random()
    age = rng.randint(75, 96) if roll < 0.4 else rng.randint(55, 74) if roll < 0.75 else None
    if age is None:
        age = rng.randint(18, 54)
    birth = date(REFERENCE_YEAR - age - 1, 1, 1) + timedelta(days=rng.randrange(365))
    number = rng.randrange(10**10)
    return Patient(
        patient_id=f"SIM{number:010d}",
        issuer=issuer,
        family=rng.choice(_FAMILY),
        given=rng.choice(_GIVEN[sex]),
        birth_date=birth,
        sex=sex,
        visit_number=f"SIM-{site}-{ward}-{bed}-{seed}",
    )


def _baseline(rng: random.Random, age: int) -> Baseline:
    sbp = rng.uniform(112, 142) + max(0, age - 60) * 0.25
    return Baseline(
        resp_rate=rng.uniform(13, 18),
        spo2=rng.uniform(95.5, 98.5),
        pulse=rng.uniform(60, 84),
        bp_sys=sbp,
        bp_dia=sbp * rng.uniform(0.55, 0.65),
        temperature=rng.uniform(36.4, 37.1),
    )


#: How much each parameter drifts slowly (amplitude of each of two waves).
_DRIFT = {
    "resp_rate": 0.8,
    "spo2": 0.5,
    "pulse": 3.0,
    "bp_sys": 5.0,
    "bp_dia": 3.0,
    "temperature": 0.12,
}
#: Measurement noise (standard deviation).
_NOISE = {
    "resp_rate": 0.7,
    "spo2": 0.5,
    "pulse": 2.0,
    "bp_sys": 4.0,
    "bp_dia": 3.0,
    "temperature": 0.08,
}
#: What full deterioration adds (severity 1): tachypnoea, tachycardia, hypoxia,
#: hypotension, fever.
_DETERIORATION = {
    "resp_rate": 12.0,
    "spo2": -8.0,
    "pulse": 40.0,
    "bp_sys": -35.0,
    "bp_dia": -16.0,
    "temperature": 2.0,
}
#: Severity from which the nurse has started oxygen, and from which there is new confusion.
OXYGEN_FROM = 0.7
CONFUSION_FROM = 0.88
#: What supplemental oxygen gives back of the lost saturation.
OXYGEN_SPO2_GAIN = 2.5


def ward_models(
    *,
    site: str,
    ward: str,
    beds: Sequence[str],
    start: datetime,
    deteriorating: int = 2,
    seed: int = 7,
    rooms: dict[str, str] | None = None,
    issuer: str = DEFAULT_ISSUER,
) -> list[BedModel]:
    """One model per bed. Which beds deteriorate is decided by the seed; the first of them
    is already on its way at the start (so a demo shows a medium band within minutes),
    the others begin within the first hours."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    order = list(beds)
    _rng("deteriorating", seed, site, ward).shuffle(order)
    worse = {bed: rank for rank, bed in enumerate(order[: max(0, deteriorating)])}
    models = []
    for bed in beds:
        patient = make_patient(site=site, ward=ward, bed=bed, seed=seed, issuer=issuer)
        rng = _rng("model", seed, site, ward, bed)
        age = REFERENCE_YEAR - patient.birth_date.year
        drift = {
            key: tuple(
                (amp * rng.uniform(0.5, 1.0), rng.uniform(3, 11), rng.uniform(0, 2 * math.pi))
                for _ in range(2)
            )
            for key, amp in _DRIFT.items()
        }
        rank = worse.get(bed)
        onset = (-3.0 if rank == 0 else rng.uniform(0.5, 3.0) + rank) if rank is not None else 0.0
        models.append(
            BedModel(
                bed=bed,
                room=(rooms or {}).get(bed, ""),
                patient=patient,
                baseline=_baseline(rng, age),
                start=start,
                seed=seed,
                ecg=rng.random() < 0.35,
                deteriorating=rank is not None,
                onset_hours=onset,
                course_hours=rng.uniform(9.0, 12.0),
                drift=drift,
            )
        )
    return models


def severity(model: BedModel, at: datetime) -> float:
    """How ill the model makes the patient at `at`: 0 (baseline) rising steadily to 1."""
    if not model.deteriorating:
        return 0.0
    hours = (at - model.start).total_seconds() / 3600
    return min(1.0, max(0.0, (hours - model.onset_hours) / model.course_hours))


def charted(model: BedModel, at: datetime) -> dict[str, str]:
    """Consciousness (ACVPU letter) and air/oxygen as the nurse would chart them at `at`."""
    s = severity(model, at)
    return {
        "consciousness": "C" if s >= CONFUSION_FROM else "A",
        "oxygen": "oxygen" if s >= OXYGEN_FROM else "air",
    }


def _circadian(at: datetime, peak_hour: float) -> float:
    local = (at.hour + at.minute / 60 + LOCAL_OFFSET_HOURS) % 24
    return math.cos(2 * math.pi * (local - peak_hour) / 24)


def true_values(model: BedModel, at: datetime) -> dict[str, float]:
    """The patient's physiological values at `at`, without noise or rounding."""
    hours = (at - model.start).total_seconds() / 3600
    s = severity(model, at)
    base = model.baseline
    values = {
        "resp_rate": base.resp_rate,
        "spo2": base.spo2,
        "pulse": base.pulse,
        "bp_sys": base.bp_sys,
        "bp_dia": base.bp_dia,
        "temperature": base.temperature,
    }
    for key in values:
        values[key] += sum(
            amp * math.sin(2 * math.pi * hours / period + phase)
            for amp, period, phase in model.drift[key]
        )
        values[key] += _DETERIORATION[key] * s
    values["temperature"] += 0.25 * _circadian(at, 18)
    values["pulse"] += 3.0 * _circadian(at, 16)
    values["bp_sys"] += 5.0 * _circadian(at, 15)
    values["bp_dia"] += 3.0 * _circadian(at, 15)
    if s >= OXYGEN_FROM:
        values["spo2"] += OXYGEN_SPO2_GAIN
    return values


#: What a monitor can show of each reading.
_LIMITS = {
    "resp_rate": (4, 60),
    "spo2": (60, 100),
    "pulse_rate": (25, 220),
    "heart_rate": (25, 220),
    "bp_sys": (50, 260),
    "bp_dia": (25, 160),
    "bp_mean": (30, 200),
    "temperature": (33.0, 42.5),
}


def _artefact(parameter: str, value: float, rng: random.Random) -> float:
    """A plausible-looking wrong value: probe off, motion, a cuff reading gone astray."""
    if parameter == "spo2":
        return rng.randint(62, 82)
    if parameter in ("pulse_rate", "heart_rate"):
        return round(value * rng.choice((0.5, 1.9)))
    if parameter == "resp_rate":
        return rng.choice((rng.randint(2, 5), rng.randint(38, 48)))
    if parameter == "temperature":
        return round(rng.uniform(33.0, 34.8), 1)
    return round(value * rng.uniform(0.55, 0.75))


def vital_set(
    model: BedModel,
    at: datetime,
    *,
    interval: timedelta = timedelta(hours=1),
    faults: bool = True,
    invalid_rate: float = 0.01,
    artefact_rate: float = 0.005,
    chart_rate: float = 0.5,
) -> VitalSet:
    """What `model`'s monitor (and chart) reports at `at` (trajectory time).

    Measured values: true values + noise at the monitor's resolution. With `faults`, each
    reading is invalid with probability `invalid_rate` (half OBX-11 `X`, half the
    sentinel) or an artefact with `artefact_rate`. Charted items come with probability
    `chart_rate`, and always in the first set (`at` < start + interval) or when they
    changed since the set one `interval` earlier."""
    rng = _rng(
        "set", model.seed, model.patient.patient_id, round((at - model.start).total_seconds())
    )
    truth = true_values(model, at)
    pulse = truth["pulse"] + rng.gauss(0, _NOISE["pulse"])
    sbp = truth["bp_sys"] + rng.gauss(0, _NOISE["bp_sys"])
    dbp = min(truth["bp_dia"] + rng.gauss(0, _NOISE["bp_dia"]), sbp - 15)
    measured: dict[str, float] = {
        "resp_rate": truth["resp_rate"] + rng.gauss(0, _NOISE["resp_rate"]),
        "spo2": truth["spo2"] + rng.gauss(0, _NOISE["spo2"]),
        "pulse_rate": pulse,
        "bp_sys": sbp,
        "bp_dia": dbp,
        "temperature": truth["temperature"] + rng.gauss(0, _NOISE["temperature"]),
    }
    if model.ecg:
        measured["heart_rate"] = pulse + rng.choice((-1, 0, 0, 1))
    readings: list[Reading] = []
    for parameter in (
        "heart_rate", "spo2", "pulse_rate", "resp_rate", "bp_sys", "bp_dia", "bp_mean",
        "temperature",
    ):  # fmt: skip
        if parameter == "bp_mean":
            raw = measured["bp_dia"] + (measured["bp_sys"] - measured["bp_dia"]) / 3
        elif parameter in measured:
            raw = measured[parameter]
        else:
            continue
        lo, hi = _LIMITS[parameter]
        metric = METRICS[parameter]
        value: float = round(min(hi, max(lo, raw)), metric.decimals)
        if metric.decimals == 0:
            value = int(value)
        roll = rng.random()
        if faults and roll < invalid_rate / 2:
            readings.append(Reading(parameter, None, "X", "invalid"))
        elif faults and roll < invalid_rate:
            readings.append(Reading(parameter, SENTINEL, "R", "sentinel"))
        elif faults and roll < invalid_rate + artefact_rate:
            readings.append(Reading(parameter, _artefact(parameter, value, rng), "R", "artefact"))
        else:
            readings.append(Reading(parameter, value, "R"))
    now_charted = charted(model, at)
    before = charted(model, at - interval)
    first = at < model.start + interval
    for parameter, answer in now_charted.items():
        if first or before[parameter] != answer or rng.random() < chart_rate:
            readings.append(Reading(parameter, answer, "F"))
    return VitalSet(model.bed, at, severity(model, at), tuple(readings))


# --- the messages -------------------------------------------------------------------------------


def hl7_time(value: datetime) -> str:
    """An HL7 DTM in UTC, to the second."""
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def escape(text: str) -> str:
    """`text` as HL7 field data (delimiters escaped, control characters as spaces)."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return "".join(c if c >= " " else " " for c in out)


def _segment(name: str, fields: Sequence[str]) -> str:
    return "|".join([name, *fields]).rstrip("|")


def _msh(*, site: str, message_type: str, control_id: str, sent_at: datetime) -> str:
    fields = [""] * 20
    fields[0] = "^~\\&"
    fields[1] = SENDING_APP
    fields[2] = escape(site)
    fields[3] = "LODS"
    fields[4] = escape(site)
    fields[5] = hl7_time(sent_at)
    fields[7] = message_type
    fields[8] = escape(control_id)
    fields[9] = "P"
    fields[10] = HL7_VERSION
    fields[13] = "AL"  # MSH-15 accept acknowledgement: always
    fields[14] = "NE"  # MSH-16 application acknowledgement: never
    fields[16] = "UNICODE UTF-8"  # MSH-18
    return "MSH|" + "|".join(fields).rstrip("|")


def _pid(patient: Patient) -> str:
    return _segment(
        "PID",
        [
            "",
            "",
            f"{escape(patient.patient_id)}^^^{escape(patient.issuer)}^MR",
            "",
            f"{escape(patient.family)}^{escape(patient.given)}",
            "",
            patient.birth_date.strftime("%Y%m%d"),
            patient.sex,
        ],
    )


def _location(ward: str, room: str, bed: str) -> str:
    return f"{escape(ward)}^{escape(room)}^{escape(bed)}"


def oru_r01(
    *,
    site: str,
    ward: str,
    model: BedModel,
    vitals: VitalSet,
    observed_at: datetime,
    control_id: str,
) -> str:
    """An IHE PCD-01 ORU^R01 carrying `vitals`, observed at `observed_at` (segments end in
    CR, no MLLP framing). Measured values: OBX NM with MDC code and unit, OBX-11 R (X when
    invalid, then no value); charted ones: OBX CWE with the LOINC code, OBX-11 F."""
    when = hl7_time(observed_at)
    lines = [
        _msh(site=site, message_type="ORU^R01^ORU_R01", control_id=control_id, sent_at=observed_at),
        _pid(model.patient),
        _segment("PV1", ["", "I", _location(ward, model.room, model.bed)]),
        _segment("OBR", ["1", "", "", MONITORING, "", "", when]),
    ]
    device = f"MON-{escape(ward)}-{escape(model.bed)}^{SENDING_APP}"
    for n, reading in enumerate(vitals.readings, start=1):
        fields = [""] * 18
        fields[0] = str(n)
        if reading.parameter in METRICS:
            metric = METRICS[reading.parameter]
            fields[1] = "NM"
            fields[2] = f"{metric.code}^{metric.name}^MDC"
            fields[3] = metric.sub_id
            if reading.value is not None:
                fields[4] = (
                    f"{reading.value:.{metric.decimals}f}"
                    if isinstance(reading.value, float)
                    else str(reading.value)
                )
            fields[5] = f"{metric.unit_code}^{metric.unit_name}^MDC"
            fields[17] = device
        else:
            code, name, answers = CHARTED[reading.parameter]
            answer = str(reading.value)
            fields[1] = "CWE"
            fields[2] = f"{code}^{name}^LN"
            fields[4] = f"{answer}^{answers[answer]}"
        fields[10] = reading.status
        fields[13] = when
        lines.append(_segment("OBX", fields))
    return "\r".join(lines) + "\r"


def adt_a01(
    *,
    site: str,
    ward: str,
    model: BedModel,
    admitted_at: datetime,
    control_id: str,
    sent_at: datetime,
) -> str:
    """An ADT^A01 admitting `model`'s patient to its bed (PV1-3 ward^room^bed, PV1-19 the
    visit number, PV1-44 the admit time)."""
    pv1 = [""] * 44
    pv1[1] = "I"
    pv1[2] = _location(ward, model.room, model.bed)
    pv1[18] = escape(model.patient.visit_number)
    pv1[43] = hl7_time(admitted_at)
    lines = [
        _msh(site=site, message_type="ADT^A01^ADT_A01", control_id=control_id, sent_at=sent_at),
        _segment("EVN", ["", hl7_time(sent_at)]),
        _pid(model.patient),
        _segment("PV1", pv1),
    ]
    return "\r".join(lines) + "\r"


def admitted_at(model: BedModel) -> datetime:
    """When the model's patient was admitted: up to three days before the start."""
    hours = _rng("admitted", model.seed, model.bed).uniform(1, 72)
    return model.start - timedelta(hours=round(hours, 2))


def ack_code(ack: hl7.Message) -> tuple[str, str]:
    """MSA-1 (the acknowledgement code) and MSA-2 (the control id it answers) of an ACK."""
    msa = ack.segment("MSA")
    return str(msa(1)), str(msa(2))


# --- sending ------------------------------------------------------------------------------------


@dataclass
class MonitorConfig:
    """What `run_monitors` simulates and where it sends it."""

    host: str
    port: int
    site: str
    ward: str
    beds: list[str]
    rooms: dict[str, str] = field(default_factory=dict)
    interval_minutes: float = 60.0
    #: Simulated minutes per wall minute; 0 sends without waiting.
    speed: float = 60.0
    deteriorating: int = 2
    seed: int = 7
    admit: bool = False
    connections: int = 1
    #: Stop after this many ORU messages (None: no limit).
    count: int | None = None
    #: Stop after this many wall seconds (None: no limit).
    duration: float | None = None
    faults: bool = True
    invalid_rate: float = 0.01
    artefact_rate: float = 0.005
    issuer: str = DEFAULT_ISSUER
    ack_timeout: float = 30.0
    #: Start of the simulated time (default: now).
    start: datetime | None = None


@dataclass
class Summary:
    """What was sent and how the receiver answered (MSA-1 counts)."""

    sent: int = 0
    admitted: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    #: Messages that got no ACK (timeout, connection lost).
    unanswered: int = 0
    errors: list[str] = field(default_factory=list)
    #: ORU messages that carried at least one invalid reading.
    with_invalid: int = 0
    #: OBX sent, and how many of them were invalid (X or a sentinel).
    readings: int = 0
    invalid_readings: int = 0

    def line(self) -> str:
        codes = ", ".join(f"{c} {self.acks[c]}" for c in ("AA", "AE", "AR"))
        other = sum(n for c, n in self.acks.items() if c not in ("AA", "AE", "AR"))
        extra = f", other {other}" if other else ""
        return (
            f"sent {self.sent} ORU^R01 ({self.with_invalid} with an invalid reading)"
            f" and {self.admitted} ADT^A01; ACK {codes}{extra}; no answer {self.unanswered}"
        )


class _Connection:
    """One MLLP connection that sends a message and waits for its ACK, reconnecting once
    when the connection was lost (the message is then sent again: at-least-once, and the
    receiver recognises the repeated MSH-10)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.streams: tuple[HL7StreamReader, HL7StreamWriter] | None = None

    async def close(self) -> None:
        streams, self.streams = self.streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError, ConnectionError):
                await streams[1].wait_closed()

    async def send(self, message: str) -> tuple[str, str]:
        """Send `message`; return (MSA-1, MSA-2) of its ACK. Raises OSError/TimeoutError."""
        for attempt in (1, 2):
            if self.streams is None:
                self.streams = await open_hl7_connection(
                    self.config.host, self.config.port, encoding="utf-8"
                )
            reader, writer = self.streams
            try:
                writer.writemessage(hl7.parse(message))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), self.config.ack_timeout)
                return ack_code(ack)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                if attempt == 2:
                    raise ConnectionError(f"connection lost: {exc}") from exc
        raise AssertionError("unreachable")


def _control_id(run: str, n: int) -> str:
    return f"{run}-{n:07d}"


async def _run_connection(
    index: int,
    config: MonitorConfig,
    models: list[BedModel],
    summary: Summary,
    started: float,
    run: str,
    report: Callable[[str], None] | None,
) -> None:
    n_beds = len(models)
    mine = [i for i in range(n_beds) if i % config.connections == index]
    if not mine:
        return
    conn = _Connection(config)
    interval = timedelta(minutes=config.interval_minutes)

    async def exchange(message: str, control_id: str, what: str) -> str | None:
        try:
            code, answered = await conn.send(message)
        except (OSError, TimeoutError, ConnectionError, hl7.ParseException) as exc:
            await conn.close()
            summary.unanswered += 1
            summary.errors.append(f"{what} {control_id}: {type(exc).__name__}: {exc}")
            return None
        summary.acks[code] += 1
        if answered != control_id:
            summary.errors.append(f"{what} {control_id}: ACK answers {answered!r}")
        return code

    try:
        if config.admit:
            for i in mine:
                model = models[i]
                now = datetime.now(UTC)
                control = _control_id(run, 9_000_000 + i)
                message = adt_a01(
                    site=config.site,
                    ward=config.ward,
                    model=model,
                    admitted_at=admitted_at(model),
                    control_id=control,
                    sent_at=now,
                )
                summary.admitted += 1
                code = await exchange(message, control, "ADT^A01")
                if report:
                    report(f"bed {model.bed}: admitted {model.patient.patient_id} → {code}")
        k = 0
        while True:
            for i in mine:
                g = k * n_beds + i  # the message's place in the whole ward's schedule
                if config.count is not None and g >= config.count:
                    return
                sim_minutes = (k + i / n_beds) * config.interval_minutes
                if config.speed > 0:
                    due = started + sim_minutes * 60 / config.speed
                    wait = due - time.monotonic()
                    if config.duration is not None and due - started >= config.duration:
                        return
                    if wait > 0:
                        await asyncio.sleep(wait)
                elif config.duration is not None and time.monotonic() - started >= config.duration:
                    return
                model = models[i]
                at = model.start + timedelta(minutes=sim_minutes)
                vitals = vital_set(
                    model,
                    at,
                    interval=interval,
                    faults=config.faults,
                    invalid_rate=config.invalid_rate,
                    artefact_rate=config.artefact_rate,
                )
                control = _control_id(run, g)
                message = oru_r01(
                    site=config.site,
                    ward=config.ward,
                    model=model,
                    vitals=vitals,
                    observed_at=datetime.now(UTC),
                    control_id=control,
                )
                summary.sent += 1
                invalid = sum(not r.valid for r in vitals.readings)
                summary.readings += len(vitals.readings)
                summary.invalid_readings += invalid
                summary.with_invalid += invalid > 0
                code = await exchange(message, control, "ORU^R01")
                if report:
                    report(_describe(vitals, code))
            k += 1
    finally:
        await conn.close()


def _describe(vitals: VitalSet, code: str | None) -> str:
    shown = {
        "resp_rate": "RR",
        "spo2": "SpO2",
        "pulse_rate": "P",
        "bp_sys": "SBP",
        "temperature": "T",
        "consciousness": "",
        "oxygen": "",
    }
    parts = []
    for r in vitals.readings:
        if r.parameter in shown:
            value = "—" if not r.valid else r.value
            parts.append(f"{shown[r.parameter]} {value}".strip())
    return f"bed {vitals.bed}: {' '.join(str(p) for p in parts)} → {code or 'no answer'}"


async def run_monitors_async(
    config: MonitorConfig,
    *,
    report: Callable[[str], None] | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Simulate the ward's monitors as configured; return the summary (`summary`, filled
    as it goes, when given) when done: count or duration reached. Raises OSError when the
    receiver cannot be reached at all."""
    if config.connections < 1:
        raise ValueError("connections must be at least 1")
    if config.interval_minutes <= 0:
        raise ValueError("interval must be positive")
    start = config.start or datetime.now(UTC)
    models = ward_models(
        site=config.site,
        ward=config.ward,
        beds=config.beds,
        start=start,
        deteriorating=config.deteriorating,
        seed=config.seed,
        rooms=config.rooms,
        issuer=config.issuer,
    )
    # Fail early and clearly when nothing listens.
    _, probe = await open_hl7_connection(config.host, config.port)
    probe.close()
    with contextlib.suppress(OSError, ConnectionError):
        await probe.wait_closed()
    summary = summary if summary is not None else Summary()
    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    await asyncio.gather(
        *(
            _run_connection(c, config, models, summary, started, run, report)
            for c in range(config.connections)
        )
    )
    return summary


def run_monitors(
    config: MonitorConfig,
    *,
    report: Callable[[str], None] | None = None,
    summary: Summary | None = None,
) -> Summary:
    """`run_monitors_async` for callers without an event loop (the CLI, tests)."""
    return asyncio.run(run_monitors_async(config, report=report, summary=summary))
