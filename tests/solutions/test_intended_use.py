"""The intended-use matcher: which studies and images a solution may read, and why not."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
)

from lods.solutions.intended_use import (
    CRITERIA,
    ImageFacts,
    MatchResult,
    StudyFacts,
    Unmet,
    describe,
    image_facts_from_dataset,
    match,
    patient_age_years,
    study_facts_from_datasets,
)
from lods.solutions.manifest import InputKind, IntendedUse
from lods.synth.xray import make_study, synthetic_patient

LIMBS = ["HAND", "WRIST", "FOREARM", "ANKLE", "LEG"]
SUMMARY = "Flags suspected fractures on limb radiographs for the reporting radiologist."


def fracture_use(**changes: Any) -> IntendedUse:
    """A limb fracture solution restricted on every criterion the matcher knows."""
    data: dict[str, Any] = {
        "summary": SUMMARY,
        "input_kind": "dicom-study",
        "modalities": ["DX", "CR"],
        "sop_classes": [DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage],
        "body_parts": LIMBS,
        "view_positions": ["PA", "AP", "LAT"],
        "lateralities": ["L", "R"],
        "age": {"min_years": 2},
        "sexes": ["F", "M"],
        "min_rows": 512,
        "min_columns": 512,
        "max_pixel_spacing_mm": 0.5,
        "exclusions": [
            {
                "field": "series_description",
                "any_of": ["implant"],
                "reason": "images showing orthopaedic implants are outside the intended use",
            }
        ],
    }
    data.update(changes)
    return IntendedUse.model_validate(data)


def good_image(uid: str = "1.2.3.1", **changes: Any) -> ImageFacts:
    """An image that fits `fracture_use()` on every criterion."""
    image = ImageFacts(
        sop_instance_uid=uid,
        series_uid="1.2.3",
        modality="DX",
        sop_class_uid=DigitalXRayImageStorageForPresentation,
        body_part="WRIST",
        view_position="PA",
        laterality="R",
        rows=2048,
        columns=1536,
        pixel_spacing_mm=0.15,
        image_type=("ORIGINAL", "PRIMARY"),
        series_description="WRIST PA",
        study_description="XR WRIST RIGHT",
        manufacturer="Lods synthetic",
    )
    return replace(image, **changes)


def study(*images: ImageFacts, age: float | None = 40.0, sex: str = "F") -> StudyFacts:
    return StudyFacts(
        input_kind=InputKind.DICOM_STUDY, images=images, patient_age_years=age, patient_sex=sex
    )


def criteria(result: MatchResult) -> list[str]:
    return [u.criterion for u in result.unmet]


# --- matching ---------------------------------------------------------------------------


def test_a_study_that_fits_every_criterion_matches_with_all_its_images() -> None:
    result = match(fracture_use(), study(good_image("1.1"), good_image("1.2", view_position="LAT")))
    assert result.matched
    assert result.eligible == ("1.1", "1.2")
    assert result.unmet == ()
    assert result.ignored == ()
    assert result.reasons == []


def test_images_outside_the_intended_use_are_left_out_of_a_matched_study_with_reasons() -> None:
    chest = good_image("1.9", body_part="CHEST")
    result = match(fracture_use(), study(good_image("1.1"), chest))
    assert result.matched
    assert result.eligible == ("1.1",)
    assert result.ignored == (
        (
            "1.9",
            (
                Unmet(
                    "body_part",
                    "body part CHEST is outside the intended use "
                    "(hand, wrist, forearm, ankle, lower leg)",
                ),
            ),
        ),
    )


def test_body_parts_of_every_image_are_named_once_each_when_none_is_eligible() -> None:
    images = [
        good_image("1.1", body_part="CHEST"),
        good_image("1.2", body_part="SKULL"),
        good_image("1.3", body_part="CHEST"),
    ]
    result = match(fracture_use(), study(*images))
    assert not result.matched
    assert result.eligible == ()
    assert result.reasons == [
        "body part CHEST, SKULL is outside the intended use "
        "(hand, wrist, forearm, ankle, lower leg)"
    ]


def test_every_unmet_criterion_is_listed_in_criteria_order() -> None:
    image = good_image(modality="CT", sop_class_uid=CTImageStorage, body_part="HEAD", rows=256)
    result = match(fracture_use(), study(image, age=None, sex="O"))
    assert criteria(result) == ["modality", "sop_class", "body_part", "age", "sex", "matrix"]
    assert result.reasons == [
        "modality CT is outside the intended use (DX, CR)",
        "SOP class CT Image Storage is outside the intended use "
        "(Digital X-Ray Image Storage - For Presentation, Computed Radiography Image Storage)",
        "body part HEAD is outside the intended use (hand, wrist, forearm, ankle, lower leg)",
        "patient age is not recorded",
        "patient sex other is outside the intended use (female, male)",
        "image size 256 × 1536 pixels is below the minimum (512 × 512 pixels (rows × columns))",
    ]


def test_missing_header_values_count_as_outside_the_intended_use() -> None:
    blank = ImageFacts(sop_instance_uid="1.1")
    result = match(fracture_use(), study(blank))
    assert not result.matched
    assert result.reasons == [
        "modality is not recorded in the images",
        "SOP class is not recorded in the images",
        "body part is not recorded in the images",
        "view position is not recorded in the images",
        "laterality is not recorded in the images",
        "image size is not recorded in the images",
        "pixel spacing is not recorded in the images",
    ]


def test_a_criterion_both_violated_and_missing_is_reported_both_ways() -> None:
    images = [good_image("1.1", body_part="CHEST"), good_image("1.2", body_part="")]
    result = match(fracture_use(), study(*images))
    assert criteria(result) == ["body_part", "body_part"]
    assert result.reasons[1] == "body part is not recorded in the images"


def test_a_study_without_images_does_not_match() -> None:
    result = match(fracture_use(), study())
    assert result.unmet == (Unmet("no_images", "the study holds no images"),)


def test_body_parts_views_and_sides_are_compared_after_normalising_both_sides() -> None:
    use = fracture_use(
        body_parts=["lower leg", "Håndled"], view_positions=["lateral"], lateralities=["left"]
    )
    image = good_image(body_part="TIB FIB", view_position="LAT", laterality="Venstre")
    assert match(use, study(image)).matched
    assert match(
        use, study(good_image(body_part="L WRIST", view_position="Lateral", laterality="L"))
    ).matched


def test_age_bounds_are_inclusive_and_a_whole_year_maximum_takes_that_whole_year() -> None:
    use = fracture_use(age={"min_years": 18, "max_years": 69})
    assert match(use, study(good_image(), age=18.0)).matched
    assert match(use, study(good_image(), age=69.0)).matched
    assert match(use, study(good_image(), age=69.9)).matched
    assert not match(use, study(good_image(), age=17.99)).matched
    too_old = match(use, study(good_image(), age=70.0))
    assert too_old.reasons == [
        "patient age 70 years is outside the intended use (patients aged 18 to 69 years)"
    ]


def test_infant_ages_are_told_in_months_and_days() -> None:
    use = fracture_use(age={"min_years": 2})
    assert match(use, study(good_image(), age=0.75)).reasons == [
        "patient age 9 months is outside the intended use (patients aged 2 years or older)"
    ]
    assert (
        match(use, study(good_image(), age=10 / 365.2425))
        .reasons[0]
        .startswith("patient age 10 days")
    )


def test_sex_restriction_needs_a_recorded_sex() -> None:
    use = fracture_use(sexes=["F"])
    assert match(use, study(good_image(), sex="F")).matched
    assert match(use, study(good_image(), sex="")).reasons == ["patient sex is not recorded"]
    assert match(use, study(good_image(), sex="M")).reasons == [
        "patient sex male is outside the intended use (women only)"
    ]


def test_a_finer_pixel_spacing_fits_and_a_coarser_one_does_not() -> None:
    use = fracture_use()
    assert match(use, study(good_image(pixel_spacing_mm=0.5))).matched
    assert match(use, study(good_image(pixel_spacing_mm=0.7))).reasons == [
        "pixel spacing 0.7 mm is coarser than the maximum (0.5 mm)"
    ]


def test_only_rows_may_be_restricted() -> None:
    use = fracture_use(min_rows=1000, min_columns=None)
    assert match(use, study(good_image(rows=1000, columns=10))).matched
    assert match(use, study(good_image(rows=999, columns=None))).reasons == [
        "image size 999 × None pixels is below the minimum (1000 rows)"
    ]


def test_a_wrong_input_kind_is_named() -> None:
    facts = replace(study(good_image()), input_kind=InputKind.VITALS)
    result = match(fracture_use(), facts)
    assert result.unmet == (
        Unmet(
            "input_kind", "the input is vital signs, but the solution reads a DICOM imaging study"
        ),
    )


def test_vitals_solutions_check_only_input_kind_age_and_sex() -> None:
    use = IntendedUse(
        summary="Early warning score for adult inpatients.",
        input_kind=InputKind.VITALS,
        age={"min_years": 18},
        sexes=["F", "M", "O"],
    )
    vitals = StudyFacts(input_kind=InputKind.VITALS, patient_age_years=50, patient_sex="O")
    assert match(use, vitals) == MatchResult(True, (), (), ())
    assert criteria(match(use, replace(vitals, patient_age_years=None))) == ["age"]
    assert criteria(match(use, replace(vitals, input_kind=InputKind.DICOM_STUDY))) == ["input_kind"]


# --- exclusions -------------------------------------------------------------------------


def _excluding(field: str, *values: str) -> IntendedUse:
    return fracture_use(
        exclusions=[{"field": field, "any_of": list(values), "reason": f"{field} is excluded"}]
    )


@pytest.mark.parametrize(
    ("field", "patterns", "changes", "applies"),
    [
        ("series_description", ["implant"], {"series_description": "Wrist PA IMPLANT"}, True),
        ("series_description", ["implant"], {"series_description": "WRIST PA"}, False),
        ("series_description", ["*cast"], {"series_description": "wrist in cast"}, True),
        ("series_description", ["*cast"], {"series_description": "cast removed"}, False),
        ("image_type", ["DERIVED"], {"image_type": ("derived", "SECONDARY")}, True),
        ("image_type", ["DERIV?D"], {"image_type": ("DERIVED",)}, True),
        ("image_type", ["DERIVED"], {"image_type": ("ORIGINAL", "PRIMARY")}, False),
        ("image_type", ["*"], {"image_type": ()}, False),
        ("manufacturer", ["acme"], {"manufacturer": "ACME Medical"}, True),
        ("modality", ["D?"], {"modality": "DX"}, True),
        ("modality", ["D"], {"modality": "DX"}, False),
        ("body_part", ["L HAND"], {"body_part": "HAND"}, True),
        ("body_part", ["HAN*"], {"body_part": "hand"}, True),
        ("view_position", ["lateral"], {"view_position": "LAT"}, True),
        ("laterality", ["left"], {"laterality": "L"}, True),
        ("laterality", ["left"], {"laterality": "R"}, False),
        ("sop_class_uid", ["1.2.840.10008.5.1.4.1.1.1.*"], {}, True),
        ("study_description", ["[wrist]"], {"study_description": "XR [WRIST]"}, True),
    ],
)
def test_exclusions_match_values_case_insensitively_with_wildcards(
    field: str, patterns: list[str], changes: dict[str, Any], applies: bool
) -> None:
    result = match(_excluding(field, *patterns), study(good_image(**changes)))
    assert result.matched is not applies
    if applies:
        assert result.reasons == [f"{field} is excluded"]


def test_several_images_hitting_one_exclusion_give_one_reason() -> None:
    images = [good_image(f"1.{i}", series_description="implant") for i in range(3)]
    result = match(fracture_use(), study(*images))
    assert result.reasons == ["images showing orthopaedic implants are outside the intended use"]


# --- required views (4-view mammography) -------------------------------------------------


MAMMO_VIEWS = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


def screening_use() -> IntendedUse:
    return IntendedUse(
        summary="Scores screening mammograms for the likelihood of cancer.",
        input_kind=InputKind.DICOM_STUDY,
        modalities=["MG"],
        body_parts=["BREAST"],
        view_positions=["CC", "MLO"],
        lateralities=["L", "R"],
        required_views=[{"laterality": s, "view_position": v} for s, v in MAMMO_VIEWS],
        age={"min_years": 50, "max_years": 69},
        sexes=["F"],
        exclusions=[
            {
                "field": "series_description",
                "any_of": ["implant"],
                "reason": "breasts with implants are outside the intended use",
            }
        ],
    )


def mammogram(*views: tuple[str, str], **changes: Any) -> StudyFacts:
    images = [
        ImageFacts(
            sop_instance_uid=f"2.{index}",
            modality="MG",
            sop_class_uid=DigitalMammographyXRayImageStorageForPresentation,
            body_part="BREAST",
            laterality=side,
            view_position=view,
        )
        for index, (side, view) in enumerate(views)
    ]
    return StudyFacts(
        input_kind=InputKind.DICOM_STUDY,
        images=tuple(replace(image, **changes) for image in images),
        patient_age_years=55,
        patient_sex="F",
    )


def test_a_four_view_mammogram_matches() -> None:
    result = match(screening_use(), mammogram(*MAMMO_VIEWS))
    assert result.matched
    assert result.eligible == ("2.0", "2.1", "2.2", "2.3")


def test_a_mammogram_missing_a_view_names_that_view() -> None:
    result = match(screening_use(), mammogram(("L", "CC"), ("L", "MLO"), ("R", "CC")))
    assert result.unmet == (Unmet("required_views", "the R MLO view is missing"),)


def test_a_required_view_present_only_in_an_excluded_image_says_why() -> None:
    facts = mammogram(*MAMMO_VIEWS)
    implant = replace(facts.images[3], series_description="R MLO implant displaced")
    result = match(screening_use(), replace(facts, images=(*facts.images[:3], implant)))
    assert result.reasons == [
        "the R MLO view is outside the intended use: "
        "breasts with implants are outside the intended use"
    ]


def test_views_with_the_side_written_into_the_view_position_count() -> None:
    views = [(side, f"{side}-{view}") for side, view in MAMMO_VIEWS]
    assert match(screening_use(), mammogram(*views)).matched


def test_an_extra_spot_view_is_ignored_with_its_reason() -> None:
    facts = mammogram(*MAMMO_VIEWS, ("L", "SPOT"))
    result = match(screening_use(), facts)
    assert result.matched
    assert result.ignored == (
        (
            "2.4",
            (Unmet("view_position", "view position SPOT is outside the intended use (CC, MLO)"),),
        ),
    )


def test_describe_states_the_intended_use_in_plain_words() -> None:
    assert describe(screening_use()) == [
        "Input: a DICOM imaging study",
        "Modalities: MG",
        "Body parts: breast",
        "Views: CC, MLO",
        "Laterality: left, right",
        "Needs all four views: L CC, L MLO, R CC, R MLO",
        "Patients aged 50 to 69 years",
        "Women only",
        "Excluded: breasts with implants are outside the intended use",
    ]


def test_describe_names_every_imaging_restriction() -> None:
    lines = describe(fracture_use(age={"min_years": 0.5}))
    assert lines == [
        "Input: a DICOM imaging study",
        "Modalities: DX, CR",
        "SOP classes: Digital X-Ray Image Storage - For Presentation, "
        "Computed Radiography Image Storage",
        "Body parts: hand, wrist, forearm, ankle, lower leg",
        "Views: PA, AP, LAT",
        "Laterality: left, right",
        "Patients aged 6 months or older",
        "Patient sex: female, male",
        "Images of at least 512 × 512 pixels (rows × columns)",
        "Pixel spacing 0.5 mm or finer",
        "Excluded: images showing orthopaedic implants are outside the intended use",
    ]


def test_describe_of_an_unrestricted_vitals_solution_names_only_its_input() -> None:
    use = IntendedUse(summary="Trend alerts for ward vitals.", input_kind=InputKind.VITALS)
    assert describe(use) == ["Input: vital signs"]


# --- reading headers --------------------------------------------------------------------


def _dataset(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_image_facts_are_read_and_normalised_from_the_header() -> None:
    ds = _dataset(
        SOPInstanceUID="1.2.3.4",
        SeriesInstanceUID="1.2.3",
        SOPClassUID=DigitalXRayImageStorageForPresentation,
        Modality="dx",
        BodyPartExamined="L HAND",
        ViewPosition="lateral",
        ImageLaterality="L",
        Laterality="R",
        Rows=2000,
        Columns=1500,
        PixelSpacing=["0.1", "0.14"],
        ImagerPixelSpacing=["0.2", "0.2"],
        ImageType=["ORIGINAL", "PRIMARY", ""],
        SeriesDescription="Hand lat ",
        StudyDescription="XR HAND",
        Manufacturer="ACME",
        NumberOfFrames=3,
    )
    assert image_facts_from_dataset(ds) == ImageFacts(
        sop_instance_uid="1.2.3.4",
        series_uid="1.2.3",
        modality="DX",
        sop_class_uid=DigitalXRayImageStorageForPresentation,
        body_part="HAND",
        view_position="LAT",
        laterality="L",
        rows=2000,
        columns=1500,
        pixel_spacing_mm=0.14,
        image_type=("ORIGINAL", "PRIMARY", ""),
        series_description="Hand lat",
        study_description="XR HAND",
        manufacturer="ACME",
        number_of_frames=3,
    )


def test_image_facts_fall_back_to_series_laterality_and_imager_spacing() -> None:
    ds = _dataset(SOPInstanceUID="1.1", Laterality="R", ImagerPixelSpacing=["0.2", "0.25"])
    facts = image_facts_from_dataset(ds)
    assert facts.laterality == "R"
    assert facts.pixel_spacing_mm == 0.25
    assert facts.number_of_frames == 1
    assert (facts.body_part, facts.view_position, facts.rows) == ("", "", None)


def test_image_facts_fall_back_to_coded_anatomy_and_view() -> None:
    anatomy = _dataset(CodeValue="30021000", CodingSchemeDesignator="SCT", CodeMeaning="Lower leg")
    view = _dataset(CodeValue="399067008", CodingSchemeDesignator="SCT", CodeMeaning="lateral")
    ds = _dataset(SOPInstanceUID="1.1", AnatomicRegionSequence=[anatomy], ViewCodeSequence=[view])
    facts = image_facts_from_dataset(ds)
    assert (facts.body_part, facts.view_position) == ("LEG", "LAT")


def test_an_empty_header_gives_blank_facts() -> None:
    assert image_facts_from_dataset(Dataset()) == ImageFacts(sop_instance_uid="")


@pytest.mark.parametrize(
    ("age", "years"),
    [("034Y", 34.0), ("006M", 0.5), ("052W", 52 * 7 / 365.2425), ("010D", 10 / 365.2425)],
)
def test_age_is_read_from_patient_age(age: str, years: float) -> None:
    ds = _dataset(PatientAge=age, PatientBirthDate="19000101", StudyDate="20240101")
    assert patient_age_years(ds) == pytest.approx(years)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_age_is_computed_from_birth_date_when_patient_age_is_absent_or_invalid() -> None:
    assert patient_age_years(_dataset(PatientBirthDate="20060301", StudyDate="20240301")) == 18.0
    assert patient_age_years(
        _dataset(PatientAge="abc", PatientBirthDate="20060301", StudyDate="20240229")
    ) == pytest.approx(17.997, abs=1e-3)


def test_the_study_date_is_preferred_then_acquisition_then_content_date() -> None:
    born = {"PatientBirthDate": "20000101"}
    assert patient_age_years(_dataset(**born, StudyDate="20100101", ContentDate="20200101")) == 10
    assert patient_age_years(_dataset(**born, AcquisitionDate="20200101")) == 20
    assert patient_age_years(_dataset(**born, ContentDate="20300101")) == 30


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"PatientBirthDate": "20000101"},
        {"PatientBirthDate": "20200101", "StudyDate": "20100101"},
        {"PatientBirthDate": "18000101", "StudyDate": "20240101"},
        {"PatientAge": "999Y"},
        {"PatientBirthDate": "20001345", "StudyDate": "20240101"},
    ],
)
def test_unknown_or_implausible_ages_are_none(attributes: dict[str, str]) -> None:
    assert patient_age_years(_dataset(**attributes)) is None


def test_a_leap_day_birthday_counts_from_the_first_of_march() -> None:
    day_before = patient_age_years(_dataset(PatientBirthDate="20040229", StudyDate="20220228"))
    assert day_before is not None and day_before < 18
    assert patient_age_years(_dataset(PatientBirthDate="20040229", StudyDate="20220301")) == 18


@settings(max_examples=100, deadline=None)
@given(
    st.dates(min_value=date(1880, 1, 1), max_value=date(2024, 12, 31)),
    st.integers(min_value=0, max_value=365 * 140),
)
def test_age_from_birth_date_agrees_with_completed_years(born: date, days: int) -> None:
    day = born + timedelta(days=days)
    completed = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    ds = _dataset(PatientBirthDate=born.strftime("%Y%m%d"), StudyDate=day.strftime("%Y%m%d"))
    age = patient_age_years(ds)
    assert age is not None
    if (born.month, born.day) != (2, 29):
        assert math.floor(age) == completed
    assert 0 <= age - math.floor(age) < 1
    with_age = _dataset(PatientAge=f"{completed:03d}Y")
    assert patient_age_years(with_age) == completed


def test_study_facts_take_the_first_known_age_and_an_agreed_sex() -> None:
    first = _dataset(SOPInstanceUID="1.1", PatientSex="F")
    second = _dataset(SOPInstanceUID="1.2", PatientSex="F", PatientAge="040Y")
    facts = study_facts_from_datasets([first, second])
    assert facts.input_kind is InputKind.DICOM_STUDY
    assert [image.sop_instance_uid for image in facts.images] == ["1.1", "1.2"]
    assert (facts.patient_age_years, facts.patient_sex) == (40.0, "F")


def test_conflicting_sexes_count_as_not_recorded() -> None:
    datasets = [_dataset(PatientSex="F"), _dataset(PatientSex="M"), _dataset(PatientSex="")]
    assert study_facts_from_datasets(datasets).patient_sex == ""
    assert study_facts_from_datasets([_dataset(PatientSex="X")]).patient_sex == ""


def test_a_synthetic_limb_study_matches_a_limb_fracture_solution() -> None:
    patient = synthetic_patient(1, seed=7)
    datasets = make_study(7, body_part="LEG", modality="CR", patient=patient, size=256, views=2)
    use = fracture_use(min_rows=256, min_columns=256, max_pixel_spacing_mm=None, age=None)
    result = match(use, study_facts_from_datasets(datasets))
    assert result.matched, result.reasons
    assert set(result.eligible) == {str(ds.SOPInstanceUID) for ds in datasets}


# --- properties -------------------------------------------------------------------------


@st.composite
def fitting_images(draw: st.DrawFn, uid: str = "1.2.3.1") -> ImageFacts:
    """An image that fits `fracture_use()`, written in any of the accepted variants."""
    body = draw(st.sampled_from([*LIMBS, "l hand", "Lower Leg", "TIBIA", "HÅNDLED", "RADIUS"]))
    return good_image(
        uid,
        modality=draw(st.sampled_from(["DX", "CR"])),
        sop_class_uid=draw(
            st.sampled_from(
                [DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage]
            )
        ),
        body_part=body,
        view_position=draw(st.sampled_from(["PA", "AP", "LAT", "lateral"])),
        laterality=draw(st.sampled_from(["L", "R", "left", "Højre"])),
        rows=draw(st.integers(512, 8192)),
        columns=draw(st.integers(512, 8192)),
        pixel_spacing_mm=draw(st.floats(0.01, 0.5)),
        series_description=draw(st.sampled_from(["", "WRIST PA", "follow-up"])),
    )


_AGES = st.floats(min_value=2, max_value=120)
_SEXES = st.sampled_from(["F", "M"])


@settings(max_examples=100, deadline=None)
@given(fitting_images(), _AGES, _SEXES)
def test_an_image_built_to_fit_every_criterion_matches(
    image: ImageFacts, age: float, sex: str
) -> None:
    result = match(fracture_use(), study(image, age=age, sex=sex))
    assert result.matched, result.reasons
    assert result.eligible == (image.sop_instance_uid,)
    assert result.ignored == ()


#: For each criterion: ways to break it on the only image or its study.
_VIOLATIONS: dict[str, list[dict[str, Any]]] = {
    "input_kind": [{"input_kind": InputKind.VITALS}, {"input_kind": InputKind.SENSOR_EVENTS}],
    "modality": [{"modality": "CT"}, {"modality": "MG"}, {"modality": ""}],
    "sop_class": [{"sop_class_uid": CTImageStorage}, {"sop_class_uid": ""}],
    "body_part": [{"body_part": "CHEST"}, {"body_part": "SKULL"}, {"body_part": ""}],
    "view_position": [{"view_position": "LL"}, {"view_position": ""}],
    "laterality": [{"laterality": "B"}, {"laterality": "U"}, {"laterality": ""}],
    "age": [{"patient_age_years": 1.5}, {"patient_age_years": None}],
    "sex": [{"patient_sex": "O"}, {"patient_sex": ""}],
    "matrix": [{"rows": 511}, {"columns": 100}, {"rows": None}, {"columns": None}],
    "pixel_spacing": [{"pixel_spacing_mm": 0.51}, {"pixel_spacing_mm": None}],
    "exclusion": [{"series_description": "Wrist with IMPLANT"}],
}
_STUDY_FIELDS = {"input_kind", "patient_age_years", "patient_sex"}


@settings(max_examples=100, deadline=None)
@given(
    fitting_images(),
    _AGES,
    _SEXES,
    st.sampled_from(sorted(_VIOLATIONS)).flatmap(
        lambda name: st.tuples(st.just(name), st.sampled_from(_VIOLATIONS[name]))
    ),
)
def test_breaking_one_criterion_names_exactly_that_criterion(
    image: ImageFacts, age: float, sex: str, violation: tuple[str, dict[str, Any]]
) -> None:
    criterion, change = violation
    image_changes = {k: v for k, v in change.items() if k not in _STUDY_FIELDS}
    study_changes = {k: v for k, v in change.items() if k in _STUDY_FIELDS}
    facts = replace(study(replace(image, **image_changes), age=age, sex=sex), **study_changes)
    result = match(fracture_use(), facts)
    assert not result.matched
    assert result.eligible == ()
    assert {u.criterion for u in result.unmet} == {criterion}
    assert len(result.unmet) == 1


@st.composite
def mixed_studies(draw: st.DrawFn) -> StudyFacts:
    """Studies of fitting and broken images, with or without a known age."""
    count = draw(st.integers(0, 5))
    images = []
    for index in range(count):
        image = draw(fitting_images(uid=f"1.2.3.{index}"))
        if draw(st.booleans()):
            criterion = draw(
                st.sampled_from(sorted(set(_VIOLATIONS) - {"input_kind", "age", "sex"}))
            )
            image = replace(image, **draw(st.sampled_from(_VIOLATIONS[criterion])))
        images.append(image)
    age = draw(st.one_of(st.none(), st.floats(0, 120)))
    return study(*images, age=age, sex=draw(st.sampled_from(["F", "M", "O", ""])))


@settings(max_examples=100, deadline=None)
@given(mixed_studies(), st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_the_order_of_the_images(
    facts: StudyFacts, random: Any
) -> None:
    shuffled = list(facts.images)
    random.shuffle(shuffled)
    use = fracture_use()
    assert match(use, replace(facts, images=tuple(shuffled))) == match(use, facts)


@settings(max_examples=100, deadline=None)
@given(mixed_studies())
def test_match_results_are_consistent(facts: StudyFacts) -> None:
    result = match(fracture_use(), facts)
    uids = {image.sop_instance_uid for image in facts.images}
    assert (result.unmet == ()) is result.matched
    assert result.reasons == [u.text for u in result.unmet]
    assert set(result.eligible) <= uids
    assert list(result.eligible) == sorted(set(result.eligible))
    assert result.matched is (len(result.eligible) > 0)
    ignored = {uid for uid, _ in result.ignored}
    assert not ignored & set(result.eligible)
    if result.matched:
        assert ignored | set(result.eligible) == uids
        assert all(reasons for _, reasons in result.ignored)
    else:
        assert result.ignored == ()
    order = [CRITERIA.index(u.criterion) for u in result.unmet]
    assert order == sorted(order)
    assert all(u.text for u in result.unmet)
