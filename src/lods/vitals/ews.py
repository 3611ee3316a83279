"""Table-driven early-warning scores: a score is a data file, this module only reads it.

A score table (YAML) names its parameters, the points each reading earns (`bands`),
how the points add up (`aggregate: sum`), the risk bands the total falls into (in
precedence order, each with a monitoring frequency and the response it asks for) and
which band rises raise an alert (`triggers`). NEWS2 ships as the first table
(`reference_solutions/news2/package/news2.yaml`); a region loads its own (e.g. a
TOKS-style score) as a new solution version without code changes.

Band semantics:

- A numeric parameter has a `resolution` (1 for a heart rate, 0.1 for a temperature);
  readings are rounded half-up to it before they are banded, and every range bound must
  lie on it. A band's `ranges` are inclusive `min`/`max` (either may be open); all the
  ranges of a parameter must cover every value exactly once — a gap or an overlap is a
  table error. A bounded scale (GCS 3–15) says so with `domain`: the bands cover just
  that, and a reading outside it is not scored. A coded parameter's bands list `values`
  (e.g. ACVPU letters), each value in one band only.
- A range may hold only `when` another (coded) parameter has one of some values, e.g.
  NEWS2 SpO2 scale 2 scores 93–94 % one point on oxygen but none on air. The cover rule
  is then checked once for each value of that parameter.
- `alternatives` replace a parameter's bands when a patient option says so, e.g.
  `{option: spo2_scale, equals: 2}` selects SpO2 scale 2.
- Adjusted thresholds: the patient option `threshold:<parameter>` (set by a clinician
  with author and reason, see `lods.vitals.options`) holds `{"bands": [...]}` in the same
  form; it replaces the parameter's bands (also an alternative's) when the table marks
  the parameter `adjustable`. An override that does not cover the parameter's values at
  its resolution leaves that parameter unscored (so no total is claimed) and says why.
- A parameter may read several source parameters (`sources: [heart_rate, pulse_rate]`):
  the newest valid reading of any of them counts. A reading older than the parameter's
  `freshness_minutes` does not count.

`evaluate(table, readings, options, now=...)` is pure and returns an `Evaluation`: the
points of each part, the total and band only when every required parameter scored
(`complete`), what is missing, and when the next set is due.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

#: Readings stamped further ahead of `now` than this are not trusted (a wrong clock).
FUTURE_TOLERANCE = timedelta(minutes=5)
THRESHOLD_PREFIX = "threshold:"
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INF = float("inf")
_EARLIEST = datetime.min.replace(tzinfo=UTC)


class TableError(ValueError):
    """The score table is invalid; `problems` names every fault in words."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept (scheme as in DICOM: "SCT" for SNOMED CT, "LN" for LOINC)."""

    scheme: str = Field(pattern=r"^[A-Z0-9]{2,16}$")
    value: str = Field(min_length=1, max_length=64)
    meaning: str = Field(min_length=1, max_length=200)


class Condition(_Strict):
    """The range holds only when coded parameter `parameter` reads one of `values`."""

    parameter: str
    values: list[str] = Field(min_length=1)


class Range(_Strict):
    min: Decimal | None = None
    max: Decimal | None = None
    when: Condition | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is above max {self.max}")
        return self

    def text(self) -> str:
        low = "" if self.min is None else f"{self.min}"
        high = "" if self.max is None else f"{self.max}"
        where = f" when {self.when.parameter} is {'/'.join(self.when.values)}" if self.when else ""
        if self.min is None and self.max is None:
            return "any value" + where
        if self.min is None:
            return f"≤{high}{where}"
        if self.max is None:
            return f"≥{low}{where}"
        return f"{low}–{high}{where}"


class Band(_Strict):
    """The points earned by readings in `ranges` (numeric) or with one of `values` (coded)."""

    points: int = Field(ge=0, le=100)
    ranges: list[Range] = []
    values: list[str] = []

    @model_validator(mode="after")
    def _one_kind(self) -> Band:
        if bool(self.ranges) == bool(self.values):
            raise ValueError("a band has either ranges (numeric) or values (coded)")
        return self


class Alternative(_Strict):
    """Bands used instead of the parameter's own when patient option `option` == `equals`."""

    key: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    label: str
    option: str
    equals: Any
    code: Code | None = None
    bands: list[Band] = Field(min_length=1)


class Parameter(_Strict):
    key: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    label: str
    unit: str = ""
    kind: Literal["numeric", "coded"] = "numeric"
    #: Numeric parameters: readings are rounded to this step before banding.
    resolution: Decimal = Field(default=Decimal(1), gt=0)
    #: A bounded scale (e.g. GCS 3–15): the bands need cover only this range, and a
    #: reading outside it is not scored. Open (the whole number line) when absent.
    domain: Range | None = None
    #: The vital-sign parameters that supply it (default: its own key); newest wins.
    sources: list[str] = []
    #: A reading older than this does not count.
    freshness_minutes: int = Field(ge=1, le=7 * 24 * 60)
    code: Code | None = None
    bands: list[Band] = Field(min_length=1)
    alternatives: list[Alternative] = []
    #: Whether a clinician may replace the bands for one patient (`threshold:<key>`).
    adjustable: bool = False

    @property
    def source_keys(self) -> list[str]:
        return self.sources or [self.key]


class RiskBand(_Strict):
    key: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    label: str
    #: How the board shows it: green, yellow, amber, red.
    colour: Literal["green", "yellow", "amber", "red"] = "green"


class RiskWhen(_Strict):
    """All given conditions must hold: total within [total_min, total_max], and some
    single part scoring at least any_part_min."""

    total_min: int | None = None
    total_max: int | None = None
    any_part_min: int | None = None

    @model_validator(mode="after")
    def _something(self) -> RiskWhen:
        if self.total_min is None and self.total_max is None and self.any_part_min is None:
            raise ValueError("a risk rule needs total_min, total_max or any_part_min")
        return self

    def matches(self, total: int, top_part: int) -> bool:
        if self.total_min is not None and total < self.total_min:
            return False
        if self.total_max is not None and total > self.total_max:
            return False
        return self.any_part_min is None or top_part >= self.any_part_min


class RiskRule(_Strict):
    band: str
    when: RiskWhen
    #: A complete set is due again this many minutes after the last one.
    monitoring_minutes: int = Field(ge=1, le=7 * 24 * 60)
    #: The frequency in words, e.g. "Minimum 12-hourly".
    monitoring: str
    #: The clinical response the band asks for.
    response: str


class Trigger(_Strict):
    """A rise into band `to` raises an alert of `severity` for `audience`."""

    to: str
    severity: Literal["info", "warning", "urgent"]
    audience: list[str] = ["nurse", "physician"]
    title: str = ""


class ScoreTable(_Strict):
    name: str = Field(min_length=1, max_length=40)
    version: str = Field(min_length=1, max_length=40)
    title: str = ""
    total_code: Code | None = None
    parameters: list[Parameter] = Field(min_length=1)
    aggregate: Literal["sum"] = "sum"
    #: Lowest first: a later band is "higher" (a rise may raise an alert).
    risk_bands: list[RiskBand] = Field(min_length=1)
    #: In precedence order: the first rule that matches gives the band.
    risk_rules: list[RiskRule] = Field(min_length=1)
    triggers: list[Trigger] = []
    #: Parameters needed for a total (default: all).
    required: list[str] | None = None
    #: The bands compiled for scoring, by id() of each band list the table owns.
    _compiled: dict[int, tuple[list[Band], _Compiled]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ScoreTable:
        problems = table_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        for p in self.parameters:
            for bands in [p.bands, *(a.bands for a in p.alternatives)]:
                self._compiled[id(bands)] = (bands, _compile(bands, p.resolution))
        return self

    def parameter(self, key: str) -> Parameter:
        for item in self.parameters:
            if item.key == key:
                return item
        raise KeyError(key)

    @property
    def required_keys(self) -> list[str]:
        return (
            list(self.required) if self.required is not None else [p.key for p in self.parameters]
        )

    @property
    def max_total(self) -> int:
        return sum(_max_points(p) for p in self.parameters)

    def band_rank(self, key: str | None) -> int:
        """Position of band `key` (lowest 0); -1 for None or an unknown key."""
        for index, band in enumerate(self.risk_bands):
            if band.key == key:
                return index
        return -1

    def risk_band(self, key: str) -> RiskBand:
        return self.risk_bands[self.band_rank(key)]


def _max_points(parameter: Parameter) -> int:
    sets = [parameter.bands, *(a.bands for a in parameter.alternatives)]
    return max(b.points for bands in sets for b in bands)


# --- validation -------------------------------------------------------------------------


def _steps(value: Decimal, resolution: Decimal) -> int | None:
    """`value` in whole steps of `resolution`, or None when it is not on the grid."""
    quotient = value / resolution
    return int(quotient) if quotient == quotient.to_integral_value() else None


def band_problems(
    where: str,
    bands: list[Band],
    *,
    kind: str,
    resolution: Decimal,
    coded_values: Mapping[str, list[str]],
    domain: Range | None = None,
) -> list[str]:
    """Every fault of one set of bands: wrong kind, off-grid bounds, gaps and overlaps.

    `coded_values` gives the values of each coded parameter a `when` may name; `domain`
    bounds the values the bands must cover (default: all)."""
    problems: list[str] = []
    if kind == "coded":
        seen: dict[str, int] = {}
        for band in bands:
            if band.ranges:
                problems.append(f"{where}: a coded parameter's bands list values, not ranges")
            for value in band.values:
                norm = value.strip().casefold()
                if norm in seen:
                    problems.append(
                        f"{where}: value {value!r} scores both {seen[norm]} and {band.points}"
                    )
                seen[norm] = band.points
        return problems
    ranges: list[tuple[Range, int]] = []
    for band in bands:
        if band.values:
            problems.append(f"{where}: a numeric parameter's bands list ranges, not values")
        for item in band.ranges:
            for bound in (item.min, item.max):
                if bound is not None and _steps(bound, resolution) is None:
                    problems.append(f"{where}: bound {bound} is not on the resolution {resolution}")
            if item.when is not None and item.when.parameter not in coded_values:
                problems.append(
                    f"{where}: 'when' names {item.when.parameter!r}, "
                    "which is not a coded parameter of the table"
                )
            ranges.append((item, band.points))
    if problems:
        return problems
    conditions = sorted({r.when.parameter for r, _ in ranges if r.when is not None})
    contexts: list[dict[str, str]] = [{}]
    for name in conditions:
        contexts = [{**c, name: v} for c in contexts for v in coded_values[name]]
    for context in contexts:
        applicable = [(r, p) for r, p in ranges if _holds(r.when, context)]
        label = where + "".join(f" ({k} {v})" for k, v in context.items())
        problems.extend(_cover_problems(label, applicable, resolution, domain))
    return problems


def _holds(when: Condition | None, context: Mapping[str, str]) -> bool:
    if when is None:
        return True
    value = context.get(when.parameter)
    return value is not None and value.casefold() in {v.strip().casefold() for v in when.values}


def _cover_problems(
    where: str, ranges: list[tuple[Range, int]], resolution: Decimal, domain: Range | None
) -> list[str]:
    """Gaps and overlaps among `ranges`, which must cover every value of `domain` (all
    values when None) exactly once."""

    def low(r: Range) -> float:
        return -_INF if r.min is None else float(_grid(r.min, resolution))

    def high(r: Range) -> float:
        return _INF if r.max is None else float(_grid(r.max, resolution))

    start = low(domain) if domain is not None else -_INF
    end = high(domain) if domain is not None else _INF
    inside = [(r, p) for r, p in ranges if high(r) >= start and low(r) <= end]
    if not inside:
        return [f"{where}: no band covers any value"]
    ordered = sorted(inside, key=lambda rp: (low(rp[0]), high(rp[0])))
    problems: list[str] = []
    first = ordered[0][0]
    if low(first) > start:
        problems.append(f"{where}: values below {first.min} score nothing (gap)")
    reach, reach_range, reach_points = high(first), first, ordered[0][1]
    for item, points in ordered[1:]:
        if low(item) <= reach:
            problems.append(
                f"{where}: {reach_range.text()} ({reach_points} points) and {item.text()} "
                f"({points} points) overlap"
            )
        elif low(item) > reach + 1:
            problems.append(
                f"{where}: values between {reach_range.max} and {item.min} score nothing (gap)"
            )
        if high(item) > reach:
            reach, reach_range, reach_points = high(item), item, points
    if reach < end:
        problems.append(f"{where}: values above {reach_range.max} score nothing (gap)")
    return problems


def _grid(value: Decimal, resolution: Decimal) -> int:
    steps = _steps(value, resolution)
    if steps is None:
        raise ValueError(f"{value} is not on the resolution {resolution}")
    return steps


def _coded_values(table: ScoreTable) -> dict[str, list[str]]:
    return {
        p.key: [v for b in p.bands for v in b.values] for p in table.parameters if p.kind == "coded"
    }


def table_problems(table: ScoreTable) -> list[str]:
    """Every fault of a parsed table beyond field types, in words."""
    problems: list[str] = []
    keys = [p.key for p in table.parameters]
    if len(set(keys)) != len(keys):
        problems.append("parameter keys must be unique")
    coded = _coded_values(table)
    for p in table.parameters:
        if p.kind == "coded" and p.adjustable:
            problems.append(f"{p.key}: only numeric parameters can be adjustable")
        if p.domain is not None:
            if p.kind == "coded" or p.domain.when is not None:
                problems.append(f"{p.key}: a domain is a plain numeric range")
                continue
            bounds = [b for b in (p.domain.min, p.domain.max) if b is not None]
            if any(_steps(b, p.resolution) is None for b in bounds):
                problems.append(f"{p.key}: domain bounds must lie on the resolution")
                continue
        sets = [(p.key, p.bands), *((f"{p.key}.{a.key}", a.bands) for a in p.alternatives)]
        for where, bands in sets:
            problems.extend(
                band_problems(
                    where,
                    bands,
                    kind=p.kind,
                    resolution=p.resolution,
                    coded_values=coded,
                    domain=p.domain,
                )
            )
    band_keys = [b.key for b in table.risk_bands]
    if len(set(band_keys)) != len(band_keys):
        problems.append("risk band keys must be unique")
    for rule in table.risk_rules:
        if rule.band not in band_keys:
            problems.append(f"risk rule names unknown band {rule.band!r}")
    for trigger in table.triggers:
        if trigger.to not in band_keys:
            problems.append(f"trigger names unknown band {trigger.to!r}")
    for key in table.required or []:
        if key not in keys:
            problems.append(f"required names unknown parameter {key!r}")
    if not problems:
        total_only = [r for r in table.risk_rules if r.when.any_part_min is None]
        uncovered = [
            t
            for t in range(table.max_total + 1)
            if not any(r.when.matches(t, 0) for r in total_only)
        ]
        if uncovered:
            problems.append(f"no risk rule gives a band for totals {uncovered}")
    return problems


def table_from_dict(data: Mapping[str, Any]) -> ScoreTable:
    """Validate a table; raise `TableError` naming each problem."""
    try:
        return ScoreTable.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field (check the spelling)"
            elif err["type"] == "missing":
                message = "is required"
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {message}" if where else message)
        raise TableError(problems) from exc


def parse_table(text: str | bytes) -> ScoreTable:
    try:
        # LibYAML's safe loader when present: a table is parsed once per process anyway.
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise TableError([f"the score table is not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise TableError(["a score table is a mapping of fields"])
    return table_from_dict(data)


def load_table(path: Path) -> ScoreTable:
    return parse_table(path.read_bytes())


def parse_override(value: Any) -> list[Band]:
    """The bands of a `threshold:<parameter>` option value `{"bands": [...]}`."""
    if not isinstance(value, Mapping) or not isinstance(value.get("bands"), list):
        raise TableError(['an adjusted threshold is {"bands": [{points, ranges}, ...]}'])
    bands: list[Band] = []
    problems: list[str] = []
    for index, raw in enumerate(value["bands"]):
        try:
            bands.append(Band.model_validate(raw))
        except ValidationError as exc:
            problems += [
                f"bands.{index}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            ]
    if not bands and not problems:
        problems.append("an adjusted threshold needs at least one band")
    if problems:
        raise TableError(problems)
    return bands


def override_problems(value: Any, *, resolution: Decimal | None = None) -> list[str]:
    """Faults of an adjusted-threshold value on its own (no table at hand): the resolution
    defaults to the finest step its bounds use; `when` conditions may name air/oxygen."""
    try:
        bands = parse_override(value)
    except TableError as exc:
        return exc.problems
    if resolution is None:
        exponents = [
            -b.as_tuple().exponent  # type: ignore[operator]
            for band in bands
            for r in band.ranges
            for b in (r.min, r.max)
            if b is not None
        ]
        resolution = Decimal(1).scaleb(-max([0, *exponents]))
    conditions = {r.when.parameter for band in bands for r in band.ranges if r.when}
    coded = {name: ["air", "oxygen"] if name == "oxygen" else [] for name in conditions}
    return band_problems(
        "adjusted threshold", bands, kind="numeric", resolution=resolution, coded_values=coded
    )


# --- evaluation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One vital-sign value: numeric `value` or coded `text`."""

    parameter: str
    value: float | None = None
    text: str | None = None
    observed_at: datetime | None = None
    id: int | None = None
    valid: bool = True


@dataclass(frozen=True)
class Part:
    """One parameter's contribution: its points, or None with the `problem`."""

    key: str
    label: str
    points: int | None
    value: float | str | None = None
    source: str | None = None
    observation_id: int | None = None
    observed_at: datetime | None = None
    #: The alternative used (e.g. "scale2"), or None for the parameter's own bands.
    variant: str | None = None
    code: Code | None = None
    #: Author and reason of an adjusted threshold in force.
    adjusted: dict[str, Any] | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        observed = self.observed_at
        code = self.code
        if (
            observed is not None
            and code is not None
            and self.source is not None
            and self.observation_id is not None
            and self.variant is None
            and self.adjusted is None
            and self.problem is None
        ):  # the usual part, in one go (same keys, same order)
            return {
                "label": self.label,
                "value": self.value,
                "points": self.points,
                "source": self.source,
                "observation": self.observation_id,
                "observed_at": (
                    observed if observed.tzinfo else observed.replace(tzinfo=UTC)
                ).isoformat(),
                "code": _code_json(code),
            }
        out: dict[str, Any] = {"label": self.label, "value": self.value, "points": self.points}
        if (source := self.source) is not None:
            out["source"] = source
        if (observation := self.observation_id) is not None:
            out["observation"] = observation
        if (observed := self.observed_at) is not None:
            out["observed_at"] = (
                observed if observed.tzinfo else observed.replace(tzinfo=UTC)
            ).isoformat()
        if (variant := self.variant) is not None:
            out["variant"] = variant
        if (code := self.code) is not None:
            out["code"] = _code_json(code)
        if (adjusted := self.adjusted) is not None:
            out["adjusted"] = adjusted
        if (problem := self.problem) is not None:
            out["problem"] = problem
        return out


@dataclass(frozen=True)
class Evaluation:
    score_name: str
    table_version: str
    parts: dict[str, Part]
    total: int | None
    band: str | None
    missing: list[str]
    complete: bool
    next_due_minutes: int | None
    band_label: str | None = None
    colour: str | None = None
    monitoring: str | None = None
    response: str | None = None
    #: The newest reading of the set.
    observed_at: datetime | None = None
    #: Parameters whose newest reading was too old, with its time.
    stale: dict[str, datetime] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a `RunResult.details` and the stored score."""
        return {
            "score_name": self.score_name,
            "table_version": self.table_version,
            "parts": {k: p.as_dict() for k, p in self.parts.items()},
            "total": self.total,
            "band": self.band,
            "band_label": self.band_label,
            "colour": self.colour,
            "missing": list(self.missing),
            "complete": self.complete,
            "next_due_minutes": self.next_due_minutes,
            "monitoring": self.monitoring,
            "response": self.response,
            "observed_at": _iso(self.observed_at) if self.observed_at else None,
            "stale": {k: _iso(v) for k, v in self.stale.items()},
            "problems": list(self.problems),
        }


@functools.lru_cache(maxsize=256)
def _code_dict(code: Code) -> dict[str, Any]:
    """A table's code as JSON, dumped once (the tables' codes are few and frozen)."""
    return code.model_dump()


#: {id(code): (code, its JSON)}: `_code_dict` without hashing the (pydantic) code.
_CODE_JSON: dict[int, tuple[Code, dict[str, Any]]] = {}


def _code_json(code: Code) -> dict[str, Any]:
    """A fresh copy of `code` as JSON."""
    held = _CODE_JSON.get(id(code))
    if held is None or held[0] is not code:
        if len(_CODE_JSON) >= 256:
            _CODE_JSON.clear()
        held = _CODE_JSON[id(code)] = (code, _code_dict(code))
    return dict(held[1])


def _iso(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def reading_from_dict(data: Mapping[str, Any]) -> Reading:
    """A reading from its JSON form (`parameter`, `value`, `value_text`, `observed_at`...)."""
    observed = data.get("observed_at")
    if isinstance(observed, str):
        observed = datetime.fromisoformat(observed)
    value = data.get("value")
    return Reading(
        parameter=str(data["parameter"]),
        value=float(value) if value is not None else None,
        text=data.get("value_text"),
        observed_at=observed,
        id=data.get("id"),
        valid=bool(data.get("valid", True)),
    )


def as_readings(readings: Iterable[Reading] | Mapping[str, Any]) -> list[Reading]:
    """Readings as given, or a `{parameter: value}` mapping (numbers or codes, no time)."""
    if isinstance(readings, Mapping):
        return [
            Reading(parameter=k, text=v)
            if isinstance(v, str)
            else Reading(parameter=k, value=float(v))
            for k, v in readings.items()
        ]
    return [r if isinstance(r, Reading) else reading_from_dict(r) for r in readings]


def _select_bands(
    parameter: Parameter, options: Mapping[str, Any]
) -> tuple[list[Band], str | None, Code | None]:
    for alt in parameter.alternatives:
        if alt.option in options and options[alt.option] == alt.equals:
            return alt.bands, alt.key, alt.code or parameter.code
    return parameter.bands, None, parameter.code


#: A numeric range in steps of the resolution: (low, high, points, when parameter, when values).
_StepRange = tuple[int | None, int | None, int, str | None, frozenset[str]]


@dataclass(frozen=True)
class _Compiled:
    """Bands ready for scoring: coded values casefolded, numeric bounds in whole steps."""

    coded: dict[str, int]
    ranges: tuple[_StepRange, ...]


def _compile(bands: list[Band], resolution: Decimal) -> _Compiled:
    coded = {v.strip().casefold(): b.points for b in bands for v in b.values}
    ranges = tuple(
        (
            None if r.min is None else _grid(r.min, resolution),
            None if r.max is None else _grid(r.max, resolution),
            b.points,
            r.when.parameter if r.when else None,
            frozenset(v.strip().casefold() for v in r.when.values) if r.when else frozenset(),
        )
        for b in bands
        for r in b.ranges
    )
    return _Compiled(coded, ranges)


def _compiled(
    owned: dict[int, tuple[list[Band], _Compiled]], bands: list[Band], resolution: Decimal
) -> _Compiled:
    """The table's own bands (`owned`) compiled once; an adjusted threshold's each time."""
    held = owned.get(id(bands))
    if held is not None and held[0] is bands:
        return held[1]
    return _compile(bands, resolution)


def _override(
    parameter: Parameter, options: Mapping[str, Any], table: ScoreTable
) -> tuple[list[Band] | None, dict[str, Any] | None, str | None]:
    """(bands, author/reason, problem) of an adjusted threshold in force for `parameter`."""
    value = options.get(THRESHOLD_PREFIX + parameter.key)
    if value is None:
        return None, None, None
    adjusted = {
        k: value[k]
        for k in ("set_by", "set_at", "reason", "option_id")
        if isinstance(value, Mapping) and k in value
    }
    if not parameter.adjustable:
        return None, None, f"{table.name} does not allow adjusted thresholds for {parameter.key}"
    try:
        bands = parse_override(value)
    except TableError as exc:
        return [], adjusted, "adjusted threshold unusable: " + "; ".join(exc.problems)
    problems = band_problems(
        f"adjusted {parameter.key}",
        bands,
        kind=parameter.kind,
        resolution=parameter.resolution,
        coded_values=_coded_values(table),
        domain=parameter.domain,
    )
    if problems:
        return [], adjusted, "adjusted threshold unusable: " + "; ".join(problems)
    return bands, adjusted, None


class _ParameterPlan:
    """One parameter ready for `evaluate`: its sources, freshness window and own bands
    compiled, resolved once per table."""

    __slots__ = (
        "bands",
        "code",
        "coded",
        "key",
        "label",
        "own",
        "parameter",
        "resolution",
        "rounded",
        "sources",
        "window",
    )

    def __init__(self, parameter: Parameter, owned: dict[int, tuple[list[Band], _Compiled]]):
        self.parameter = parameter
        self.key = parameter.key
        self.label = parameter.label
        self.coded = parameter.kind == "coded"
        self.sources = tuple(parameter.source_keys)
        self.window = timedelta(minutes=parameter.freshness_minutes)
        self.bands = parameter.bands
        self.code = parameter.code
        self.own = _compiled(owned, parameter.bands, parameter.resolution)
        self.resolution = parameter.resolution
        #: {repr of a value: (steps, value as scored, problem)}: the rounding of
        #: `_points`, which depends on nothing else (see `_rounded`).
        self.rounded: dict[str, tuple[int | None, float | None, str | None]] = {}


class _Plan:
    """A table ready for `evaluate`."""

    __slots__ = ("coded", "owned", "parameters", "required", "rules")

    def __init__(self, table: ScoreTable) -> None:
        self.owned = table._compiled
        self.parameters = tuple(_ParameterPlan(p, self.owned) for p in table.parameters)
        self.coded = frozenset(p.key for p in table.parameters if p.kind == "coded")
        self.required = tuple(table.required_keys)
        self.rules = tuple((r.when, r, table.risk_band(r.band)) for r in table.risk_rules)


#: {id(table): (table, its plan)}, made on first use (a process holds a few tables).
_PLANS: dict[int, tuple[ScoreTable, _Plan]] = {}
_PLANS_HELD = 64


_ROUNDED_HELD = 4096
_NOT_A_NUMBER: tuple[None, None, str] = (None, None, "the value is not a number")


def _plan(table: ScoreTable) -> _Plan:
    held = _PLANS.get(id(table))
    if held is not None and held[0] is table:
        return held[1]
    plan = _Plan(table)
    if len(_PLANS) >= _PLANS_HELD:
        _PLANS.clear()
    _PLANS[id(table)] = (table, plan)
    return plan


def _rounded(item: _ParameterPlan, value: Any) -> tuple[int | None, float | None, str | None]:
    """(steps of the resolution, the value as scored, a problem) of a numeric reading, as
    `_points` scores it: `Decimal(repr(value))` rounded half-up, so the outcome
    depends on `repr(value)` alone and is kept per parameter."""
    try:
        text = repr(value)
    except (InvalidOperation, ValueError):
        return _NOT_A_NUMBER
    held = item.rounded.get(text)
    if held is not None:
        return held
    resolution = item.resolution
    try:
        rounded = Decimal(text).quantize(resolution, ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        result: tuple[int | None, float | None, str | None] = _NOT_A_NUMBER
    else:
        steps = _grid(rounded, resolution)  # raises for NaN (not held)
        scored = float(rounded)
        domain = item.parameter.domain
        problem = None
        if domain is not None and (
            (domain.min is not None and rounded < domain.min)
            or (domain.max is not None and rounded > domain.max)
        ):
            problem = f"{scored:g} is outside the scale {domain.text()}"
        result = (steps, scored, problem)
    if len(item.rounded) >= _ROUNDED_HELD:
        item.rounded.clear()
    item.rounded[text] = result
    return result


#: A reading inside `evaluate`: (parameter, value, text, observed_at, id).
_Row = tuple[Any, Any, Any, Any, Any]


def _rows(readings: Iterable[Reading] | Mapping[str, Any]) -> list[_Row]:
    """The valid readings as `_Row`s; the same conversions, in the same order (and so
    the same errors), as `as_readings`."""
    if isinstance(readings, Mapping):
        return [(r.parameter, r.value, r.text, None, None) for r in as_readings(readings)]
    rows: list[_Row] = []
    fromisoformat = datetime.fromisoformat
    for r in readings:
        if isinstance(r, Reading):
            if r.valid:
                rows.append((r.parameter, r.value, r.text, r.observed_at, r.id))
            continue
        observed = r.get("observed_at")
        if isinstance(observed, str):
            observed = fromisoformat(observed)
        value = r.get("value")
        parameter = str(r["parameter"])
        if value is not None:
            value = float(value)
        text = r.get("value_text")
        ident = r.get("id")
        if bool(r.get("valid", True)):
            rows.append((parameter, value, text, observed, ident))
    return rows


def _newest_row(
    item: _ParameterPlan, by_source: Mapping[str, list[_Row]], now: datetime | None
) -> tuple[_Row | None, datetime | None]:
    """(newest fresh valid reading of any source, time of a newer-but-stale one if none)."""
    sources = item.sources
    if len(sources) == 1:
        candidates = by_source.get(sources[0], ())
    else:
        candidates = [r for key in sources for r in by_source.get(key, ())]
    if len(candidates) > 1:
        candidates = sorted(
            candidates,
            key=lambda r: _aware(r[3]) if r[3] else _EARLIEST,
            reverse=True,
        )
    if now is None:
        return (candidates[0] if candidates else None), None
    stale_at = None
    for reading in candidates:
        observed = reading[3]
        if observed is None:
            return reading, None
        age = now - _aware(observed)
        if age > item.window:
            stale_at = stale_at or _aware(observed)
            continue
        if age < -FUTURE_TOLERANCE:
            continue
        return reading, None
    return None, stale_at


def _points(
    compiled: _Compiled, item: _ParameterPlan, reading: _Row, context: Mapping[str, str]
) -> tuple[int | None, float | str | None, str | None]:
    """(points, the value as scored, problem) of `reading` under `compiled`."""
    if item.coded:
        text = (reading[2] or "").strip()
        if not text:
            return None, None, "a coded value is expected"
        points = compiled.coded.get(text.casefold())
        if points is None:
            return None, text, f"{text!r} is not a value of the table"
        return points, text, None
    if reading[1] is None:
        return None, reading[2], "a number is expected"
    steps, scored, problem = _rounded(item, reading[1])
    if steps is None or problem is not None:
        return None, scored, problem
    needs: set[str] | None = None
    for low, high, points, when, values in compiled.ranges:
        if when is not None:
            held = context.get(when)
            if held is None:
                if needs is None:
                    needs = set()
                needs.add(when)
                continue
            if held not in values:
                continue
        if (low is None or steps >= low) and (high is None or steps <= high):
            return points, scored, None
    if needs:
        return None, scored, f"scoring {scored:g} needs {', '.join(sorted(needs))}"
    return None, scored, f"{scored:g} is outside every band"


def evaluate(
    table: ScoreTable,
    readings: Iterable[Reading] | Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> Evaluation:
    """Score `readings` with `table` under the patient `options` in force.

    With `now`, a reading counts only within its parameter's freshness window (and not
    from the future); without it, every reading counts. The total and band are given
    only when every required parameter scored."""
    options = options or {}
    rows = _rows(readings)
    now = _aware(now) if now is not None else None
    plan = _plan(table)
    by_source: dict[str, list[_Row]] = {}
    for row in rows:
        held = by_source.get(row[0])
        if held is None:
            by_source[row[0]] = [row]
        else:
            held.append(row)
    chosen: list[tuple[_ParameterPlan, _Row]] = []
    stale: dict[str, datetime] = {}
    for item in plan.parameters:
        reading, stale_at = _newest_row(item, by_source, now)
        if reading is not None:
            chosen.append((item, reading))
        elif stale_at is not None:
            stale[item.key] = stale_at
    coded = plan.coded
    context = {
        item.key: (reading[2] or "").strip().casefold()
        for item, reading in chosen
        if item.key in coded and reading[2]
    }
    parts: dict[str, Part] = {}
    problems: list[str] = []
    owned = plan.owned
    for item, reading in chosen:
        parameter = item.parameter
        if options:
            bands, variant, code = _select_bands(parameter, options)
            override, adjusted, problem = _override(parameter, options, table)
            if override is not None:
                bands = override
            elif problem is not None:
                problems.append(problem)
                problem = None
        else:
            bands, variant, code = item.bands, None, item.code
            adjusted = problem = None
        points: int | None = None
        value: float | str | None = reading[1] if reading[1] is not None else reading[2]
        if problem is None:
            compiled = item.own if bands is item.bands else _compiled(owned, bands, item.resolution)
            points, value, problem = _points(compiled, item, reading, context)
        part = Part(
            key=item.key,
            label=item.label,
            points=points,
            value=value,
            source=reading[0],
            observation_id=reading[4],
            observed_at=reading[3],
            variant=variant,
            code=code,
            adjusted=adjusted,
            problem=problem,
        )
        parts[item.key] = part
    newest: datetime | None = None
    for part in parts.values():
        if part.observed_at is not None:
            observed = _aware(part.observed_at)
            if newest is None or observed > newest:
                newest = observed
    missing = [k for k in plan.required if k not in parts or parts[k].points is None]
    if missing:
        return Evaluation(
            table.name,
            table.version,
            parts,
            None,
            None,
            missing,
            False,
            None,
            observed_at=newest,
            stale=stale,
            problems=problems,
        )
    total = 0
    top = 0
    for part in parts.values():
        if part.points is not None:
            total += part.points
            if part.points > top:
                top = part.points
    found = next((r for r in plan.rules if r[0].matches(total, top)), None)
    if found is None:  # table_problems guarantees a rule for every total
        raise AssertionError(f"no risk rule for total {total}")
    _, rule, band = found
    return Evaluation(
        table.name,
        table.version,
        parts,
        total,
        band.key,
        missing,
        True,
        rule.monitoring_minutes,
        band_label=band.label,
        colour=band.colour,
        monitoring=rule.monitoring,
        response=rule.response,
        observed_at=newest,
        stale=stale,
        problems=problems,
    )


def band_rise(table: ScoreTable, previous: str | None, current: str | None) -> Trigger | None:
    """The trigger a move from band `previous` (None: no earlier complete score) to
    `current` fires: only a rise, and only into a band the table has a trigger for."""
    if current is None or table.band_rank(current) <= table.band_rank(previous):
        return None
    return next((t for t in table.triggers if t.to == current), None)
