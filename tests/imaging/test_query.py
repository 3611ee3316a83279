"""QIDO-RS matching: parsing query parameters, and the SQL they become (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy.orm import Session

from lods.imaging import browse
from lods.imaging.models import Instance, Patient, Series, Study
from lods.imaging.query import (
    MAX_LIMIT,
    QueryError,
    StudyFilter,
    conditions,
    date_range,
    filter_conditions,
    like_pattern,
    parse_qido,
)
from lods.runtime import Runtime
from lods.sites.service import create_site

# --- parsing -------------------------------------------------------------------------------------


def test_keys_are_accepted_by_keyword_or_tag():
    by_keyword = parse_qido("study", [("PatientID", "P1")])
    by_tag = parse_qido("study", [("00100020", "P1")])
    assert by_keyword.matches == by_tag.matches
    assert by_keyword.matches[0].attribute.keyword == "PatientID"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("NoSuchThing", "x")], "not a DICOM attribute"),
        ([("PatientWeight", "70")], "not a supported matching key"),
        ([("SOPInstanceUID", "1.2")], "not a matching key for study"),
        ([("StudyDate", "2024-01-31")], "not a DICOM date"),
        ([("StudyDate", "20240231")], "not a valid date"),
        ([("StudyDate", "20240201-20240101")], "ends before it starts"),
        ([("StudyInstanceUID", "1.2.abc")], "not a valid UID"),
        ([("limit", "-1")], "non-negative integer"),
        ([("offset", "ten")], "non-negative integer"),
        ([("fuzzymatching", "maybe")], "true or false"),
        ([("PatientID", "A"), ("PatientID", "B")], "more than once"),
    ],
)
def test_bad_queries_are_refused_with_a_reason(params, message):
    with pytest.raises(QueryError, match=message):
        parse_qido("study", params)


def test_empty_value_is_universal_matching():
    query = parse_qido("study", [("PatientName", ""), ("includefield", "00081030")])
    assert query.matches == ()
    assert "StudyDescription" in query.return_keywords()


def test_limit_is_capped_and_offset_kept():
    query = parse_qido("study", [("limit", str(MAX_LIMIT * 10)), ("offset", "30")])
    assert (query.limit, query.offset) == (MAX_LIMIT, 30)


def test_includefield_all_and_unknown_fields():
    assert parse_qido("series", [("includefield", "all")]).include_all
    query = parse_qido("study", [("includefield", "StudyDescription,PatientWeight")])
    assert query.include == ("StudyDescription",)
    assert query.not_returned == ("PatientWeight",)


def test_repeated_uid_keys_make_one_list():
    query = parse_qido("study", [("StudyInstanceUID", "1.2"), ("StudyInstanceUID", "1.3")])
    assert query.matches[0].value == "1.2,1.3"


def test_series_results_carry_study_attributes():
    keywords = parse_qido("series", []).return_keywords()
    assert {"StudyInstanceUID", "PatientID", "SeriesInstanceUID", "Modality"} <= set(keywords)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240131", (date(2024, 1, 31), date(2024, 1, 31))),
        ("20240101-20240131", (date(2024, 1, 1), date(2024, 1, 31))),
        ("20240101-", (date(2024, 1, 1), None)),
        ("-20240131", (None, date(2024, 1, 31))),
    ],
)
def test_date_ranges(value, expected):
    assert date_range(value) == expected


def test_like_pattern_escapes_sql_wildcards():
    assert like_pattern("a%b_c*d?") == "a\\%b\\_c%d_"


# --- matching in the database --------------------------------------------------------------------


def _add(db: Session, site_id: int, n: int, **fields: object) -> Instance:
    patient = Patient(
        patient_id=str(fields.get("patient_id", f"P{n}")),
        name=str(fields.get("name", f"Doe^John{n}")),
        birth_date=date(1950, 1, 1),
        sex="M",
    )
    study = Study(
        study_uid=f"1.2.826.0.1.{n}",
        patient=patient,
        site_id=site_id,
        accession_number=f"ACC{n}",
        study_date=fields.get("study_date", date(2024, 1, n)),
        description=str(fields.get("description", "Thorax")),
        referring_physician=str(fields.get("referring", "Hansen^Ole")),
        modalities=str(fields.get("modality", "CR")),
        num_series=1,
        num_instances=1,
    )
    series = Series(
        series_uid=f"1.2.826.0.2.{n}", study=study, modality=str(fields.get("modality", "CR"))
    )
    instance = Instance(
        sop_instance_uid=f"1.2.826.0.3.{n}",
        series=series,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256="0" * 64,
        dataset_sha256="0" * 64,
        size=1,
        channel="dicom",
    )
    db.add_all([patient, study, series, instance])
    db.flush()
    return instance


@pytest.fixture
def catalogue(runtime: Runtime) -> Runtime:
    with runtime.sessions() as db, db.begin():
        site = create_site(db, code="AAH", name="Aalborg", actor="test")
        _add(db, site.id, 1, name="ØSTERGÅRD^SØREN", patient_id="0101501234")
        _add(db, site.id, 2, name="Doe^Jane", modality="CT", description="CT abdomen")
        _add(db, site.id, 3, name="Doe^John", referring="Berg^Anna")
        _add(db, site.id, 4, name="Smith^A_b%", study_date=None)
    return runtime


def _study_numbers(runtime: Runtime, level: str, params: list[tuple[str, str]]) -> list[int]:
    query = parse_qido(level, params)  # type: ignore[arg-type]
    with runtime.sessions() as db, db.begin():
        page = browse.search(
            db, level=query.level, where=conditions(query), limit=query.limit, offset=query.offset
        )
        return sorted(int(r.study.study_uid.rsplit(".", 1)[1]) for r in page.rows)


@pytest.mark.parametrize(
    ("level", "params", "expected"),
    [
        ("study", [("PatientName", "*søren")], [1]),
        ("study", [("PatientName", "søren*")], []),
        ("study", [("PatientName", "østergård^søren")], [1]),
        ("study", [("PatientName", "doe*")], [2, 3]),
        ("study", [("PatientName", "D?e^J*")], [2, 3]),
        ("study", [("PatientName", "*a_b%*")], [4]),
        ("study", [("PatientName", "Smith^Axb*")], []),
        ("study", [("PatientID", "0101501234")], [1]),
        ("study", [("00100020", "0101501234")], [1]),
        ("study", [("AccessionNumber", "ACC3")], [3]),
        ("study", [("StudyDate", "20240102")], [2]),
        ("study", [("StudyDate", "20240102-20240103")], [2, 3]),
        ("study", [("StudyDate", "20240102-")], [2, 3]),
        ("study", [("StudyDate", "-20240101")], [1]),
        ("study", [("ModalitiesInStudy", "CT")], [2]),
        ("study", [("ModalitiesInStudy", "CT\\CR")], [1, 2, 3, 4]),
        ("study", [("StudyInstanceUID", "1.2.826.0.1.1,1.2.826.0.1.4")], [1, 4]),
        ("study", [("ReferringPhysicianName", "berg^anna")], [3]),
        ("study", [("StudyDescription", "CT*")], [2]),
        ("study", [("fuzzymatching", "true"), ("PatientID", "P2")], [2]),
        ("series", [("SeriesInstanceUID", "1.2.826.0.2.3")], [3]),
        ("series", [("Modality", "CT")], [2]),
        ("instance", [("SOPInstanceUID", "1.2.826.0.3.4")], [4]),
        ("instance", [("SOPClassUID", "1.2.840.10008.5.1.4.1.1.1")], [1, 2, 3, 4]),
        ("instance", [("PatientName", "doe^jane")], [2]),
    ],
)
def test_matching_keys_select_the_right_studies(catalogue, level, params, expected):
    assert _study_numbers(catalogue, level, params) == expected


def test_limit_and_offset_page_through_newest_first(catalogue):
    first = _study_numbers(catalogue, "study", [("limit", "2")])
    second = _study_numbers(catalogue, "study", [("limit", "2"), ("offset", "2")])
    assert sorted(first + second) == [1, 2, 3, 4]
    with catalogue.sessions() as db, db.begin():
        page = browse.search(db, level="study", where=[], limit=3)
        assert page.more
        # Newest study date first; the study without a date comes last.
        assert [r.study.study_uid[-1] for r in page.rows] == ["3", "2", "1"]


def test_study_filter_finds_words_sites_and_dates(catalogue):
    def found(study_filter: StudyFilter) -> list[str]:
        with catalogue.sessions() as db, db.begin():
            result = browse.find_studies(db, study_filter=study_filter, limit=10, offset=0)
            assert result.total == len(result.rows)
            return sorted(r.study.accession_number for r in result.rows)

    assert found(StudyFilter(text="søren")) == ["ACC1"]
    assert found(StudyFilter(text="doe acc2")) == ["ACC2"]
    assert found(StudyFilter(site="AAH")) == ["ACC1", "ACC2", "ACC3", "ACC4"]
    assert found(StudyFilter(site="NOPE")) == []
    assert found(StudyFilter(date_from=date(2024, 1, 2), date_to=date(2024, 1, 2))) == ["ACC2"]
    assert found(StudyFilter(modality="ct")) == ["ACC2"]
    assert filter_conditions(StudyFilter()) == []
