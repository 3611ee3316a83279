"""Normalising Body Part Examined, laterality and view position to DICOM defined terms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lods.solutions.bodyparts import (
    BODY_PARTS,
    VIEW_POSITIONS,
    body_part_name,
    laterality_name,
    normalise_body_part,
    normalise_laterality,
    normalise_view_position,
)

_VARIANTS = [
    "hand",
    " Wrist ",
    "C-SPINE",
    "l_spine",
    "L HAND",
    "RIGHT WRIST",
    "Lower Leg",
    "TIB FIB",
    "HÅNDLED",
    "R MLO",
    "left",
    "Venstre",
    "lateral",
    "L-MLO",
]
_TEXT = st.one_of(
    st.text(max_size=24),
    st.sampled_from(_VARIANTS),
    st.lists(st.sampled_from([*_VARIANTS, "L", "R", "-", " ", "_"]), max_size=4).map("".join),
)


@pytest.mark.parametrize(
    ("raw", "term"),
    [
        ("HAND", "HAND"),
        ("  hand ", "HAND"),
        ("C-SPINE", "CSPINE"),
        ("c spine", "CSPINE"),
        ("L_SPINE", "LSPINE"),
        ("L-SPINE", "LSPINE"),
        ("T SPINE", "TSPINE"),
        ("THORAX", "CHEST"),
        ("Lower leg", "LEG"),
        ("LOWER_LEG", "LEG"),
        ("LOWERLEG", "LEG"),
        ("TIBIA", "LEG"),
        ("FIBULA", "LEG"),
        ("TIB FIB", "LEG"),
        ("TIB/FIB", "LEG"),
        ("MAMMO", "BREAST"),
        ("MAMMA", "BREAST"),
        ("UPPER ARM", "ARM"),
        ("HUMERUS", "ARM"),
        ("RADIUS", "FOREARM"),
        ("ULNA", "FOREARM"),
        ("FINGER", "FINGER"),
        ("THUMB", "THUMB"),
        ("Wrist joint", "WRIST"),
        ("Ankle joint", "ANKLE"),
    ],
)
def test_body_part_variants_map_to_the_defined_term(raw: str, term: str) -> None:
    assert normalise_body_part(raw) == term


@pytest.mark.parametrize(
    ("raw", "term"),
    [
        ("HÅND", "HAND"),
        ("hånd", "HAND"),
        ("HAAND", "HAND"),
        ("HÅNDLED", "WRIST"),
        ("ANKEL", "ANKLE"),
        ("FODLED", "ANKLE"),
        ("UNDERARM", "FOREARM"),
        ("UNDERBEN", "LEG"),
        ("BRYST", "BREAST"),
        ("KNÆ", "KNEE"),
        ("H\u00c5ND", "HAND"),
        ("HA\u030aND", "HAND"),  # Å as A + combining ring: the same word
    ],
)
def test_danish_body_part_words_map_to_the_defined_term(raw: str, term: str) -> None:
    assert normalise_body_part(raw) == term


@pytest.mark.parametrize(
    ("raw", "term"),
    [
        ("L HAND", "HAND"),
        ("R HAND", "HAND"),
        ("RIGHT WRIST", "WRIST"),
        ("WRIST LEFT", "WRIST"),
        ("LT ANKLE", "ANKLE"),
        ("HÅND VENSTRE", "HAND"),
        ("HØJRE UNDERBEN", "LEG"),
        ("BILATERAL BREAST", "BREAST"),
        ("LHAND", "HAND"),
        ("RKNEE", "KNEE"),
    ],
)
def test_a_side_written_into_the_body_part_is_dropped(raw: str, term: str) -> None:
    assert normalise_body_part(raw) == term


def test_the_lumbar_spine_is_not_mistaken_for_a_left_spine() -> None:
    assert normalise_body_part("L SPINE") == "LSPINE"
    assert normalise_body_part("LSPINE") == "LSPINE"


@pytest.mark.parametrize(
    ("raw", "kept"), [("xyz", "XYZ"), ("  big   toe  ", "BIG TOE"), ("L", "L")]
)
def test_unknown_body_parts_are_upper_cased_and_never_guessed(raw: str, kept: str) -> None:
    assert normalise_body_part(raw) == kept


def test_blank_and_missing_values_normalise_to_empty() -> None:
    for normalise in (normalise_body_part, normalise_laterality, normalise_view_position):
        assert normalise(None) == ""
        assert normalise("   ") == ""
        assert normalise("\x00") == ""


def test_every_defined_term_normalises_to_itself() -> None:
    for term in BODY_PARTS:
        assert normalise_body_part(term) == term
    for view in VIEW_POSITIONS:
        assert normalise_view_position(view) == view
    for side in "LRBU":
        assert normalise_laterality(side) == side


@pytest.mark.parametrize(
    ("raw", "side"),
    [
        ("L", "L"),
        ("left", "L"),
        ("Venstre", "L"),
        ("SIN", "L"),
        ("r", "R"),
        ("RIGHT", "R"),
        ("Højre", "R"),
        ("HOEJRE", "R"),
        ("DX", "R"),
        ("bilateral", "B"),
        ("BOTH", "B"),
        ("U", "U"),
        ("sideways", "SIDEWAYS"),
    ],
)
def test_laterality_variants_map_to_l_r_b_or_u(raw: str, side: str) -> None:
    assert normalise_laterality(raw) == side


@pytest.mark.parametrize(
    ("raw", "view"),
    [
        ("pa", "PA"),
        ("LATERAL", "LAT"),
        ("Lateral", "LAT"),
        ("antero-posterior", "AP"),
        ("postero-anterior", "PA"),
        ("L-MLO", "MLO"),
        ("RMLO", "MLO"),
        ("R MLO", "MLO"),
        ("LCC", "CC"),
        ("RIGHT CC", "CC"),
        ("LLM", "LM"),
        ("cranio-caudal", "CC"),
        ("medio-lateral oblique", "MLO"),
        ("OBLIQUE VIEW", "OBLIQUE VIEW"),
    ],
)
def test_view_position_variants_map_to_the_defined_term(raw: str, view: str) -> None:
    assert normalise_view_position(raw) == view


@pytest.mark.parametrize("view", ["LL", "RL", "LLO", "RLO", "LLD", "RLD", "LM", "ML"])
def test_views_that_start_with_a_side_letter_keep_it_when_it_is_part_of_the_term(
    view: str,
) -> None:
    assert normalise_view_position(view) == view


def test_body_parts_read_as_plain_words() -> None:
    assert body_part_name("LEG") == "lower leg"
    assert body_part_name("ARM") == "upper arm"
    assert body_part_name("CSPINE") == "cervical spine"
    assert body_part_name("HAND") == "hand"
    assert body_part_name("tibia") == "lower leg"


def test_sides_read_as_plain_words() -> None:
    assert [laterality_name(s) for s in ("L", "R", "B", "venstre")] == [
        "left",
        "right",
        "both sides",
        "left",
    ]


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_normalising_twice_changes_nothing(raw: str) -> None:
    for normalise in (normalise_body_part, normalise_laterality, normalise_view_position):
        once = normalise(raw)
        assert normalise(once) == once


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_normalised_values_are_upper_case_and_stripped(raw: str) -> None:
    for normalise in (normalise_body_part, normalise_laterality, normalise_view_position):
        value = normalise(raw)
        assert value == value.strip()
        assert value == value.upper()


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(BODY_PARTS - {"LSPINE", "SPINE"})),
    st.sampled_from(["", "L ", "R ", "LEFT ", "RIGHT ", "VENSTRE "]),
    st.sampled_from(["", " L", " R", " LEFT", " HØJRE"]),
    st.booleans(),
)
def test_a_defined_term_with_any_side_and_case_normalises_to_itself(
    term: str, prefix: str, suffix: str, lower: bool
) -> None:
    raw = f"{prefix}{term}{suffix}"
    assert normalise_body_part(raw.lower() if lower else raw) == term
