"""What a vital-sign code means: IEEE 11073 MDC codes (HL7 OBX-3 from bedside monitors) and
LOINC codes (nurse charting, FHIR) mapped to Lods' parameter keys, their UCUM units, the
device sentinel values that mean "no reading", and the limits beyond which a value is
physiologically impossible.

Facts from STANDARDS.md §3–4 (IHE PCD-01 / FHIR vital signs). A value that is a sentinel,
flagged invalid by the device, in an unexpected unit or outside the plausible range is
still stored, with `valid=False` and the reason, and never scored: the trail shows what the
monitor sent, the score uses only real readings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

# --- parameters -------------------------------------------------------------------------------

RESP_RATE = "resp_rate"
SPO2 = "spo2"
HEART_RATE = "heart_rate"
PULSE_RATE = "pulse_rate"
BP_SYS = "bp_sys"
BP_DIA = "bp_dia"
BP_MEAN = "bp_mean"
TEMPERATURE = "temperature"
CONSCIOUSNESS = "consciousness"
OXYGEN = "oxygen"

#: Parameters carried as numbers (value), and as codes (value_text).
NUMERIC_PARAMETERS = frozenset(
    {RESP_RATE, SPO2, HEART_RATE, PULSE_RATE, BP_SYS, BP_DIA, BP_MEAN, TEMPERATURE}
)
CODED_PARAMETERS = frozenset({CONSCIOUSNESS, OXYGEN})
PARAMETERS = NUMERIC_PARAMETERS | CODED_PARAMETERS

#: The LOINC code each parameter is stored (and served in FHIR) under.
LOINC_OF = {
    RESP_RATE: "9279-1",
    SPO2: "59408-5",
    HEART_RATE: "8867-4",
    PULSE_RATE: "8867-4",
    BP_SYS: "8480-6",
    BP_DIA: "8462-4",
    BP_MEAN: "8478-0",
    TEMPERATURE: "8310-5",
    CONSCIOUSNESS: "67775-7",
    OXYGEN: "3150-0",
}
#: The UCUM unit each numeric parameter is stored in.
UCUM_OF = {
    RESP_RATE: "/min",
    SPO2: "%",
    HEART_RATE: "/min",
    PULSE_RATE: "/min",
    BP_SYS: "mm[Hg]",
    BP_DIA: "mm[Hg]",
    BP_MEAN: "mm[Hg]",
    TEMPERATURE: "Cel",
    OXYGEN: "%",
}
DISPLAY = {
    RESP_RATE: "Respiratory rate",
    SPO2: "Oxygen saturation in Arterial blood by Pulse oximetry",
    HEART_RATE: "Heart rate",
    PULSE_RATE: "Heart rate",
    BP_SYS: "Systolic blood pressure",
    BP_DIA: "Diastolic blood pressure",
    BP_MEAN: "Mean blood pressure",
    TEMPERATURE: "Body temperature",
    CONSCIOUSNESS: "Level of responsiveness",
    OXYGEN: "Inhaled oxygen concentration",
}

#: FHIR blood-pressure panel (components 8480-6 / 8462-4).
BP_PANEL_LOINC = "85354-9"

# --- MDC (IEEE 11073-10101) -------------------------------------------------------------------


@dataclass(frozen=True)
class MdcCode:
    parameter: str
    reference_id: str


#: OBX-3 MDC code → parameter (STANDARDS.md §3 table).
MDC = {
    "147842": MdcCode(HEART_RATE, "MDC_ECG_HEART_RATE"),
    "149530": MdcCode(PULSE_RATE, "MDC_PULS_OXIM_PULS_RATE"),
    "150456": MdcCode(SPO2, "MDC_PULS_OXIM_SAT_O2"),
    "151562": MdcCode(RESP_RATE, "MDC_RESP_RATE"),
    "151578": MdcCode(RESP_RATE, "MDC_TTHOR_RESP_RATE"),
    "150021": MdcCode(BP_SYS, "MDC_PRESS_BLD_NONINV_SYS"),
    "150022": MdcCode(BP_DIA, "MDC_PRESS_BLD_NONINV_DIA"),
    "150023": MdcCode(BP_MEAN, "MDC_PRESS_BLD_NONINV_MEAN"),
    "150344": MdcCode(TEMPERATURE, "MDC_TEMP"),
    "150364": MdcCode(TEMPERATURE, "MDC_TEMP_BODY"),
}
#: Reference ids (OBX-3.2) → MDC code, for senders that fill only the mnemonic.
MDC_BY_REFERENCE = {c.reference_id: code for code, c in MDC.items()}

# --- LOINC ------------------------------------------------------------------------------------

#: LOINC code → parameter. 8867-4 is "Heart rate" whatever the device; 8889-8 is the pulse
#: rate by oximetry; 2708-6 is the older SpO2 code (FHIR's vital-signs profile uses it).
LOINC = {
    "9279-1": RESP_RATE,
    "59408-5": SPO2,
    "2708-6": SPO2,
    "8867-4": HEART_RATE,
    "8889-8": PULSE_RATE,
    "8480-6": BP_SYS,
    "8462-4": BP_DIA,
    "8478-0": BP_MEAN,
    "8310-5": TEMPERATURE,
    "67775-7": CONSCIOUSNESS,
    "3150-0": OXYGEN,
}

#: ACVPU: the letters and their LOINC answers (67775-7 has no "confused" answer; LOINC's
#: LA6560-2 "Confused" is used, as elsewhere) and SNOMED CT findings.
ACVPU = ("A", "C", "V", "P", "U")
ACVPU_DISPLAY = {
    "A": "Alert",
    "C": "New confusion",
    "V": "Responds to voice",
    "P": "Responds to pain",
    "U": "Unresponsive",
}
ACVPU_LOINC = {
    "A": "LA9340-6",
    "C": "LA6560-2",
    "V": "LA17108-4",
    "P": "LA17107-6",
    "U": "LA9343-0",
}
_ACVPU_ALIASES = {
    **{code: letter for letter, code in ACVPU_LOINC.items()},
    # SNOMED CT AVPU findings.
    "248234008": "A",
    "300202002": "V",
    "255373000": "V",
    "450847001": "P",
    "422768004": "U",
    # Words.
    "ALERT": "A",
    "CONFUSED": "C",
    "CONFUSION": "C",
    "NEW CONFUSION": "C",
    "VOICE": "V",
    "VERBAL": "V",
    "PAIN": "P",
    "PAINFUL": "P",
    "UNRESPONSIVE": "U",
}
_OXYGEN_ALIASES = {
    "AIR": "air",
    "ROOM AIR": "air",
    "RA": "air",
    "N": "air",
    "NO": "air",
    "OXYGEN": "oxygen",
    "O2": "oxygen",
    "SUPPLEMENTAL OXYGEN": "oxygen",
    "Y": "oxygen",
    "YES": "oxygen",
}
#: FiO2 (%) at or below this is room air.
ROOM_AIR_FIO2 = 21.0


def consciousness_letter(raw: str) -> str | None:
    """The ACVPU letter for a letter, word, LOINC answer or SNOMED code, or None."""
    value = raw.strip().upper()
    if value in ACVPU:
        return value
    return _ACVPU_ALIASES.get(value)


def oxygen_text(raw: str) -> str | None:
    """ "air" or "oxygen" for the ways a chart says it (or an FiO2 in %), or None."""
    value = raw.strip().upper()
    if value in _OXYGEN_ALIASES:
        return _OXYGEN_ALIASES[value]
    try:
        fio2 = float(value)
    except ValueError:
        return None
    if not math.isfinite(fio2) or not 0 < fio2 <= 100:
        return None
    return "air" if fio2 <= ROOM_AIR_FIO2 else "oxygen"


# --- units ------------------------------------------------------------------------------------


def _same(value: float) -> float:
    return value


def _fahrenheit(value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0


def _kpa(value: float) -> float:
    return value * 7.500615


#: Unit as sent (MDC unit code, MDC mnemonic, UCUM or common text; compared upper-case)
#: → (UCUM unit it is, conversion to the stored unit). An empty unit means "as stored".
_RATE = {"264864": "/min", "264928": "/min", "/MIN": "/min", "BPM": "/min", "{BEATS}/MIN": "/min"}
_RATE |= {"MDC_DIM_BEAT_PER_MIN": "/min", "MDC_DIM_RESP_PER_MIN": "/min", "{BREATHS}/MIN": "/min"}
_RATE |= {"1/MIN": "/min", "RPM": "/min", "BR/MIN": "/min"}
_PERCENT = {"262688": "%", "%": "%", "MDC_DIM_PERCENT": "%", "PERCENT": "%"}
_PRESSURE = {"266016": "mm[Hg]", "MM[HG]": "mm[Hg]", "MMHG": "mm[Hg]", "MDC_DIM_MMHG": "mm[Hg]"}
_CELSIUS = {"268192": "Cel", "CEL": "Cel", "DEGC": "Cel", "°C": "Cel", "C": "Cel"}
_CELSIUS |= {"MDC_DIM_DEGC": "Cel"}
_FAHRENHEIT = {"266560": "[degF]", "[DEGF]": "[degF]", "DEGF": "[degF]", "°F": "[degF]"}
_FAHRENHEIT |= {"F": "[degF]", "MDC_DIM_FAHR": "[degF]"}
_KILOPASCAL = {"KPA": "kPa", "MDC_DIM_KILO_PASCAL": "kPa"}

Converter = Callable[[float], float]


def _table(*groups: tuple[dict[str, str], Converter]) -> dict[str, Converter]:
    return {unit: converter for units, converter in groups for unit in units}


_UNITS: dict[str, dict[str, Converter]] = {
    RESP_RATE: _table((_RATE, _same)),
    HEART_RATE: _table((_RATE, _same)),
    PULSE_RATE: _table((_RATE, _same)),
    SPO2: _table((_PERCENT, _same)),
    OXYGEN: _table((_PERCENT, _same)),
    BP_SYS: _table((_PRESSURE, _same), (_KILOPASCAL, _kpa)),
    BP_DIA: _table((_PRESSURE, _same), (_KILOPASCAL, _kpa)),
    BP_MEAN: _table((_PRESSURE, _same), (_KILOPASCAL, _kpa)),
    TEMPERATURE: _table((_CELSIUS, _same), (_FAHRENHEIT, _fahrenheit)),
}


@lru_cache(maxsize=1024)
def _converter(parameter: str, unit: str) -> Converter | None:
    key = unit.strip().upper()
    return _same if not key else _UNITS.get(parameter, {}).get(key)


def unit_fits(parameter: str, unit: str) -> bool:
    """Whether `unit` (as `convert` takes it) is one the parameter can be given in."""
    return _converter(parameter, unit) is not None


def convert(parameter: str, value: float, unit: str) -> float | None:
    """`value` in the parameter's stored unit, converting from `unit` (an MDC unit code, a
    UCUM code or common text; "" means the stored unit); None when the unit does not fit
    the parameter."""
    converter = _converter(parameter, unit)
    return None if converter is None else converter(value)


# --- sentinels and plausibility --------------------------------------------------------------

#: IEEE 11073-20601 FLOAT-Type special values (24-bit mantissa, exponent 0) as monitors send
#: them in OBX-5, signed and unsigned: "no reading", never a measurement.
SENTINELS: dict[float, str] = {
    8388607.0: "NaN (not a number)",  # 0x7FFFFF
    8388608.0: "NRes (not at this resolution)",  # 0x800000
    -8388608.0: "NRes (not at this resolution)",
    8388606.0: "+INFINITY",  # 0x7FFFFE
    8388609.0: "reserved special value",  # 0x800001
    -8388607.0: "reserved special value",
    8388610.0: "-INFINITY",  # 0x800002
    -8388606.0: "-INFINITY",
    8388611.0: "reserved special value",
    8388612.0: "reserved special value",
}

#: Physiologically possible range per numeric parameter, in the stored unit (inclusive).
#: Wider than any clinical band: outside it the value is a device or transcription error.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    RESP_RATE: (0.0, 120.0),
    SPO2: (0.0, 100.0),
    HEART_RATE: (0.0, 350.0),
    PULSE_RATE: (0.0, 350.0),
    BP_SYS: (10.0, 350.0),
    BP_DIA: (5.0, 250.0),
    BP_MEAN: (5.0, 300.0),
    TEMPERATURE: (20.0, 46.0),
    OXYGEN: (0.0, 100.0),
}


def sentinel_reason(value: float) -> str | None:
    """Why `value` is a device sentinel ("no reading"), or None when it is a number."""
    if not math.isfinite(value):
        return "not a finite number"
    name = SENTINELS.get(value)
    return f"device sentinel {value:.0f} ({name})" if name else None


def implausible_reason(parameter: str, value: float) -> str | None:
    """Why `value` (in the stored unit) cannot be a real `parameter` reading, or None."""
    bounds = PLAUSIBLE.get(parameter)
    if bounds is None:
        return None
    low, high = bounds
    if low <= value <= high:
        return None
    unit = UCUM_OF.get(parameter, "")
    return f"implausible {parameter} {value:g}{unit} (possible {low:g}–{high:g}{unit})"


@dataclass(frozen=True)
class Reading:
    """One value checked against the parameter's rules, ready to store."""

    parameter: str
    loinc: str
    unit: str
    value: float | None
    value_text: str | None
    valid: bool
    invalid_reason: str | None


def check_numeric(parameter: str, value: float, unit: str = "") -> Reading:
    """A numeric reading in its stored unit, invalid (with the reason) when it is a
    sentinel, in a unit that does not fit, or physiologically impossible."""
    loinc, stored_unit = LOINC_OF[parameter], UCUM_OF.get(parameter, "")
    reason = sentinel_reason(value)
    if reason is not None:
        return Reading(parameter, loinc, stored_unit, None, None, False, reason)
    converted = convert(parameter, value, unit)
    if converted is None:
        reason = f"unit {unit!r} does not fit {parameter}"
        return Reading(parameter, loinc, stored_unit, value, None, False, reason)
    converted = round(converted, 3)
    reason = implausible_reason(parameter, converted)
    return Reading(parameter, loinc, stored_unit, converted, None, reason is None, reason)


@lru_cache(maxsize=1024)
def _numeric_rule(parameter: str, unit: str) -> tuple[Converter, float, float] | None:
    """(conversion, lowest, highest plausible value) for a numeric `parameter` given in
    `unit`; None when the unit does not fit."""
    converter = _converter(parameter, unit)
    if converter is None:
        return None
    low, high = PLAUSIBLE.get(parameter, (-math.inf, math.inf))
    return converter, low, high


def valid_number(parameter: str, raw: str, unit: str = "") -> float | None:
    """The value `check_value(parameter, raw, unit)` stores when it finds a numeric
    parameter's text `raw` valid, without building the `Reading`; None in every other case
    (not a number, sentinel, unit, implausible: `check_value` says why). The intake's fast
    path, for the common valid reading."""
    rule = _numeric_rule(parameter, unit)
    if rule is None:
        return None
    try:
        number = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number in SENTINELS:
        return None
    converter, low, high = rule
    converted = round(converter(number), 3)
    return converted if low <= converted <= high else None


def check_coded(parameter: str, raw: str) -> Reading:
    """A coded reading (consciousness ACVPU, oxygen air/oxygen), invalid when unknown."""
    loinc = LOINC_OF[parameter]
    if parameter == CONSCIOUSNESS:
        letter = consciousness_letter(raw)
        if letter is None:
            return Reading(parameter, loinc, "", None, raw[:32], False, f"unknown ACVPU {raw!r}")
        return Reading(parameter, loinc, "", None, letter, True, None)
    if parameter == OXYGEN:
        text = oxygen_text(raw)
        if text is None:
            reason = f"unknown oxygen value {raw!r} (air or oxygen)"
            return Reading(parameter, loinc, "", None, raw[:32], False, reason)
        number: float | None
        try:
            number = float(raw)
        except ValueError:
            number = None
        return Reading(
            parameter, loinc, "%" if number is not None else "", number, text, True, None
        )
    raise ValueError(f"{parameter} is not a coded parameter")


def check_value(parameter: str, raw: float | str, unit: str = "") -> Reading:
    """Check any entered value: numbers for numeric parameters (text that is a number is
    accepted), codes for coded ones."""
    if parameter not in PARAMETERS:
        raise ValueError(f"unknown vital-sign parameter {parameter!r}")
    if parameter in CODED_PARAMETERS:
        return check_coded(parameter, str(raw))
    if isinstance(raw, bool):
        raise ValueError(f"{parameter} must be a number")
    if isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            loinc, stored_unit = LOINC_OF[parameter], UCUM_OF.get(parameter, "")
            reason = f"not a number: {raw[:40]!r}"
            return Reading(parameter, loinc, stored_unit, None, raw[:32], False, reason)
    else:
        number = float(raw)
    return check_numeric(parameter, number, unit)
