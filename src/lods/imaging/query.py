"""Study, series and instance search: QIDO-RS matching keys parsed into SQL conditions.

The matching rules are PS3.4 C.2.2.2 as PS3.18 8.3.4 uses them: single value, universal
(an empty value matches everything), wildcard (`*` any run, `?` one character), range
(dates `a-b`, `a-`, `-b`) and UID list (comma or backslash separated) matching. Person
names are matched case-insensitively (Unicode-aware on every database), other strings
exactly, or case-insensitively when they carry wildcards, so a search behaves the same on
SQLite and PostgreSQL. Parsing and condition building are pure; the `search_*` functions
run a built query in the caller's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import String

from lods.imaging.models import Instance, Patient, Series, Study
from lods.sites.models import Site

Level = Literal["study", "series", "instance"]
Kind = Literal["text", "pn", "date", "uid", "int", "modalities"]
LEVEL_DEPTH: dict[str, int] = {"study": 0, "series": 1, "instance": 2}
#: The most results one QIDO request returns; more are announced with a Warning header.
MAX_LIMIT = 1000
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_DATE_RE = re.compile(r"^\d{8}$")
_CONTROL_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


class QueryError(ValueError):
    """A search request we cannot answer as asked; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class Attribute:
    """A DICOM attribute Lods indexes: where it lives and how it is matched."""

    keyword: str
    tag: str
    vr: str
    level: Level
    kind: Kind | None  # None: returned but not a matching key


ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        Attribute("SpecificCharacterSet", "00080005", "CS", "study", None),
        Attribute("StudyDate", "00080020", "DA", "study", "date"),
        Attribute("StudyTime", "00080030", "TM", "study", None),
        Attribute("AccessionNumber", "00080050", "SH", "study", "text"),
        Attribute("InstanceAvailability", "00080056", "CS", "study", None),
        Attribute("ModalitiesInStudy", "00080061", "CS", "study", "modalities"),
        Attribute("ReferringPhysicianName", "00080090", "PN", "study", "pn"),
        Attribute("RetrieveURL", "00081190", "UR", "study", None),
        Attribute("StudyDescription", "00081030", "LO", "study", "text"),
        Attribute("PatientName", "00100010", "PN", "study", "pn"),
        Attribute("PatientID", "00100020", "LO", "study", "text"),
        Attribute("IssuerOfPatientID", "00100021", "LO", "study", "text"),
        Attribute("PatientBirthDate", "00100030", "DA", "study", "date"),
        Attribute("PatientSex", "00100040", "CS", "study", "text"),
        Attribute("StudyInstanceUID", "0020000D", "UI", "study", "uid"),
        Attribute("StudyID", "00200010", "SH", "study", "text"),
        Attribute("NumberOfStudyRelatedSeries", "00201206", "IS", "study", None),
        Attribute("NumberOfStudyRelatedInstances", "00201208", "IS", "study", None),
        Attribute("Modality", "00080060", "CS", "series", "text"),
        Attribute("SeriesDescription", "0008103E", "LO", "series", "text"),
        Attribute("BodyPartExamined", "00180015", "CS", "series", "text"),
        Attribute("SeriesInstanceUID", "0020000E", "UI", "series", "uid"),
        Attribute("SeriesNumber", "00200011", "IS", "series", "int"),
        Attribute("NumberOfSeriesRelatedInstances", "00201209", "IS", "series", None),
        Attribute("SOPClassUID", "00080016", "UI", "instance", "uid"),
        Attribute("SOPInstanceUID", "00080018", "UI", "instance", "uid"),
        Attribute("AvailableTransferSyntaxUID", "00083002", "UI", "instance", None),
        Attribute("InstanceNumber", "00200013", "IS", "instance", "int"),
        Attribute("NumberOfFrames", "00280008", "IS", "instance", None),
        Attribute("Rows", "00280010", "US", "instance", None),
        Attribute("Columns", "00280011", "US", "instance", None),
    )
}
BY_TAG: dict[str, Attribute] = {a.tag: a for a in ATTRIBUTES.values()}

#: Attributes every result of a level carries (PS3.18 table 10.6.3-3..5), when known.
DEFAULT_RETURN: dict[str, tuple[str, ...]] = {
    "study": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "RetrieveURL",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "Modality",
        "SeriesDescription",
        "RetrieveURL",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ),
    "instance": (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "RetrieveURL",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
    ),
}

_COLUMNS: dict[str, Any] = {
    "StudyDate": Study.study_date,
    "AccessionNumber": Study.accession_number,
    "ReferringPhysicianName": Study.referring_physician,
    "StudyDescription": Study.description,
    "PatientName": Patient.name,
    "PatientID": Patient.patient_id,
    "IssuerOfPatientID": Patient.issuer,
    "PatientBirthDate": Patient.birth_date,
    "PatientSex": Patient.sex,
    "StudyInstanceUID": Study.study_uid,
    "StudyID": Study.study_id,
    "Modality": Series.modality,
    "SeriesDescription": Series.description,
    "BodyPartExamined": Series.body_part,
    "SeriesInstanceUID": Series.series_uid,
    "SeriesNumber": Series.series_number,
    "SOPClassUID": Instance.sop_class_uid,
    "SOPInstanceUID": Instance.sop_instance_uid,
    "InstanceNumber": Instance.instance_number,
}


@dataclass(frozen=True)
class Match:
    """One matching key and its (non-empty) value, as given."""

    attribute: Attribute
    value: str


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO-RS request at one level."""

    level: Level
    matches: tuple[Match, ...] = ()
    limit: int = MAX_LIMIT
    offset: int = 0
    include_all: bool = False
    #: Extra attributes asked for with `includefield` that we can return.
    include: tuple[str, ...] = ()
    #: `includefield` attributes we do not index and so cannot return (a Warning says so).
    not_returned: tuple[str, ...] = ()

    def return_keywords(self) -> tuple[str, ...]:
        """Return the keywords each result carries: defaults, matching keys, includes."""
        levels = [lv for lv, depth in LEVEL_DEPTH.items() if depth <= LEVEL_DEPTH[self.level]]
        if self.include_all:
            wanted = [a.keyword for a in ATTRIBUTES.values() if a.level in levels]
        else:
            wanted = [k for lv in levels for k in DEFAULT_RETURN[lv]]
            wanted += [m.attribute.keyword for m in self.matches] + list(self.include)
        wanted.append("SpecificCharacterSet")
        return tuple(dict.fromkeys(wanted))


# --- parsing -------------------------------------------------------------------------------------


def resolve_attribute(name: str) -> Attribute | str:
    """Return the indexed attribute `name` (keyword or tag) means, or its DICOM keyword.

    A name that is neither a DICOM keyword nor a tag raises QueryError.
    """
    from pydicom.datadict import dictionary_keyword, tag_for_keyword

    if name in ATTRIBUTES:
        return ATTRIBUTES[name]
    if _TAG_RE.match(name):
        tag = name.upper()
        if tag in BY_TAG:
            return BY_TAG[tag]
        try:
            return dictionary_keyword(int(tag, 16)) or tag
        except KeyError:
            return tag
    if tag_for_keyword(name) is not None:
        return name
    raise QueryError(f"{name!r} is not a DICOM attribute keyword or tag")


def _parse_int(name: str, value: str, *, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}") from None
    if number < 0:
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return min(number, maximum) if maximum is not None else number


def parse_date(value: str) -> date:
    """Return the date of a DICOM DA value `YYYYMMDD` or raise QueryError."""
    if not _DATE_RE.match(value):
        raise QueryError(f"{value!r} is not a DICOM date (YYYYMMDD)")
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise QueryError(f"{value!r} is not a valid date") from None


def date_range(value: str) -> tuple[date | None, date | None]:
    """Return (first, last) of a DA match: `d`, `a-b`, `a-` or `-b`; raise QueryError."""
    if "-" not in value:
        day = parse_date(value)
        return day, day
    first, _, last = value.partition("-")
    if not first and not last:
        raise QueryError("a date range needs at least one end")
    low = parse_date(first) if first else None
    high = parse_date(last) if last else None
    if low and high and low > high:
        raise QueryError(f"date range {value!r} ends before it starts")
    return low, high


def split_list(value: str) -> list[str]:
    """Return the items of a list value separated by commas or backslashes."""
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _check_value(attribute: Attribute, value: str) -> None:
    if attribute.kind == "date":
        date_range(value)
    elif attribute.kind == "int":
        _parse_int(attribute.keyword, value)
    elif attribute.kind == "uid":
        for uid in split_list(value):
            if len(uid) > 64 or not _UID_RE.match(uid):
                raise QueryError(f"{attribute.keyword}: {uid!r} is not a valid UID")
    elif len(value) > 200:
        raise QueryError(f"{attribute.keyword}: the value is too long")


def _matching_key(level: Level, name: str, value: str) -> Match | None:
    resolved = resolve_attribute(name)
    if isinstance(resolved, str) or resolved.kind is None:
        keyword = resolved if isinstance(resolved, str) else resolved.keyword
        raise QueryError(f"{keyword} is not a supported matching key")
    if LEVEL_DEPTH[resolved.level] > LEVEL_DEPTH[level]:
        raise QueryError(f"{resolved.keyword} is not a matching key for {level} searches")
    if value == "":
        return None  # universal matching: return the attribute, match everything
    _check_value(resolved, value)
    return Match(resolved, value)


def _includes(level: Level, values: list[str]) -> tuple[bool, list[str], list[str]]:
    include: list[str] = []
    missing: list[str] = []
    for item in (v for value in values for v in value.split(",")):
        name = item.strip()
        if name.lower() == "all":
            return True, [], []
        if not name:
            continue
        resolved = resolve_attribute(name)
        if isinstance(resolved, Attribute) and LEVEL_DEPTH[resolved.level] <= LEVEL_DEPTH[level]:
            include.append(resolved.keyword)
        else:
            missing.append(resolved if isinstance(resolved, str) else resolved.keyword)
    return False, include, missing


def parse_qido(level: Level, params: Iterable[tuple[str, str]]) -> QidoQuery:
    """Return the query that QIDO-RS parameters `params` (name, value pairs) ask for."""
    matches: dict[str, Match] = {}
    include_values: list[str] = []
    limit, offset = MAX_LIMIT, 0
    for name, value in params:
        value = value.strip()
        if name == "limit":
            limit = _parse_int("limit", value, maximum=MAX_LIMIT)
        elif name == "offset":
            offset = _parse_int("offset", value)
        elif name == "includefield":
            include_values.append(value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false", ""):
                raise QueryError("fuzzymatching must be true or false")
        else:
            match = _matching_key(level, name, value)
            if match is None:
                continue
            keyword = match.attribute.keyword
            if keyword in matches:
                if match.attribute.kind != "uid":
                    raise QueryError(f"{keyword} is given more than once")
                match = Match(match.attribute, matches[keyword].value + "," + match.value)
            matches[keyword] = match
    include_all, include, missing = _includes(level, include_values)
    return QidoQuery(
        level=level,
        matches=tuple(matches.values()),
        limit=limit,
        offset=offset,
        include_all=include_all,
        include=tuple(include),
        not_returned=tuple(missing),
    )


# --- conditions ----------------------------------------------------------------------------------


class casefold(FunctionElement[str]):  # noqa: N801 - reads as a SQL function
    """Lower-case a string in SQL, Unicode-aware (SQLite's own lower() is ASCII only)."""

    type = String()
    inherit_cache = True


@compiles(casefold)
def _casefold_default(element: casefold, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(casefold, "sqlite")
def _casefold_sqlite(element: casefold, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lods_casefold({compiler.process(element.clauses, **kw)})"


def prepare_session(db: Session) -> None:
    """Make the SQL functions conditions use available on this session's connection."""
    if db.get_bind().dialect.name == "sqlite":
        raw = db.connection().connection.driver_connection
        raw.create_function(  # type: ignore[union-attr]
            "lods_casefold",
            1,
            lambda s: s.lower() if isinstance(s, str) else s,
            deterministic=True,
        )


def has_wildcard(value: str) -> bool:
    """Return True when a matching value uses `*` or `?` wildcards."""
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """Return the SQL LIKE pattern (escape `\\`) for a DICOM wildcard value."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def text_condition(column: Any, value: str, *, ignore_case: bool) -> ColumnElement[bool]:
    """Return the condition for single-value or wildcard matching of a string column."""
    if has_wildcard(value):
        if value.strip("*") == "":
            return column.is_not(None)
        return casefold(column).like(like_pattern(value.lower()), escape="\\")
    if ignore_case:
        return casefold(column) == value.lower()
    condition: ColumnElement[bool] = column == value
    return condition


def date_condition(column: Any, value: str) -> ColumnElement[bool]:
    """Return the condition for single-date or range matching of a date column."""
    low, high = date_range(value)
    parts = []
    if low is not None:
        parts.append(column >= low)
    if high is not None:
        parts.append(column <= high)
    return and_(*parts)


def modalities_condition(values: Sequence[str]) -> ColumnElement[bool]:
    """Return the condition "the study has a series of one of these modalities"."""
    return exists(select(Series.id).where(Series.study_fk == Study.id, Series.modality.in_(values)))


def match_condition(match: Match) -> ColumnElement[bool]:
    """Return the SQL condition of one matching key."""
    kind, value = match.attribute.kind, match.value
    if kind == "modalities":
        return modalities_condition(split_list(value))
    column = _COLUMNS[match.attribute.keyword]
    if kind == "date":
        return date_condition(column, value)
    if kind == "uid" or (match.attribute.keyword == "Modality" and not has_wildcard(value)):
        in_list: ColumnElement[bool] = column.in_(split_list(value))
        return in_list
    if kind == "int":
        equal: ColumnElement[bool] = column == int(value)
        return equal
    return text_condition(column, value, ignore_case=kind == "pn")


def conditions(query: QidoQuery) -> list[ColumnElement[bool]]:
    """Return the SQL conditions of every matching key of `query`."""
    return [match_condition(m) for m in query.matches]


# --- the study list's filter (web UI and JSON API) -----------------------------------------------


@dataclass(frozen=True)
class StudyFilter:
    """What a person searches the study list by; empty fields match everything."""

    text: str = ""  # words, each found in the patient name, patient ID or accession
    patient_id: str = ""
    patient_name: str = ""
    accession: str = ""
    date_from: date | None = None
    date_to: date | None = None
    modality: str = ""
    site: str = ""  # site code


def _contains(column: Any, word: str) -> ColumnElement[bool]:
    return casefold(column).like(f"%{like_pattern(word.lower())}%", escape="\\")


def filter_conditions(f: StudyFilter) -> list[ColumnElement[bool]]:
    """Return the SQL conditions of a study-list filter (a study-level search)."""
    where: list[ColumnElement[bool]] = []
    for word in f.text.split():
        where.append(
            _contains(Patient.name, word)
            | _contains(Patient.patient_id, word)
            | _contains(Study.accession_number, word)
        )
    if f.patient_id:
        where.append(text_condition(Patient.patient_id, f.patient_id, ignore_case=False))
    if f.patient_name:
        name = f.patient_name if has_wildcard(f.patient_name) else f"*{f.patient_name}*"
        where.append(text_condition(Patient.name, name, ignore_case=True))
    if f.accession:
        where.append(text_condition(Study.accession_number, f.accession, ignore_case=False))
    if f.date_from is not None:
        where.append(Study.study_date >= f.date_from)
    if f.date_to is not None:
        where.append(Study.study_date <= f.date_to)
    if f.modality:
        where.append(modalities_condition(split_list(f.modality.upper())))
    if f.site:
        where.append(Study.site_id.in_(select(Site.id).where(Site.code == f.site)))
    return where
