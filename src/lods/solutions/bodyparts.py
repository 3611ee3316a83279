"""Normalise Body Part Examined, laterality and view position to DICOM defined terms.

Modalities write these CS attributes in many ways: lower case, with hyphens ("C-SPINE"),
with the side in the body part ("L HAND", "RIGHT WRIST"), with the side in the view
("RMLO"), as bone names ("TIBIA"), or in Danish ("HÅNDLED"). The functions here map the
common variants onto one defined term so that intended-use criteria compare like with
like. Body parts follow DICOM PS3.16 Annex L (CID 4031), grouped the way solutions state
their intended use: bones map to their region (HUMERUS -> ARM, RADIUS/ULNA -> FOREARM,
TIBIA/FIBULA -> LEG, FEMUR -> THIGH) and the newer LOWERLEG/UPPERARM to LEG/ARM.

What is not recognised is returned upper-cased with its whitespace collapsed; nothing is
ever guessed. Every function is idempotent: normalising a normalised value changes nothing.
"""

from __future__ import annotations

import re
import unicodedata

#: Body Part Examined defined terms recognised as they are (DICOM PS3.16 Annex L).
BODY_PARTS: frozenset[str] = frozenset(
    {
        "ABDOMEN", "ABDOMENPELVIS", "ACJOINT", "ADRENAL", "ANKLE", "AORTA", "APPENDIX", "ARM",
        "AXILLA", "BACK", "BLADDER", "BRAIN", "BREAST", "BRONCHUS", "BUTTOCK", "CALCANEUS",
        "CALF", "CAROTID", "CEREBELLUM", "CERVIX", "CHEEK", "CHEST", "CHESTABDOMEN",
        "CHESTABDPELVIS", "CIRCLEOFWILLIS", "CLAVICLE", "COCCYX", "COLON", "CORNEA",
        "CORONARYARTERY", "CSPINE", "CTSPINE", "DUODENUM", "EAR", "ELBOW", "ESOPHAGUS",
        "EXTREMITY", "EYE", "EYELID", "FACE", "FINGER", "FOOT", "FOREARM", "GALLBLADDER",
        "HAND", "HEAD", "HEADNECK", "HEART", "HIP", "IAC", "ILEUM", "ILIUM", "JAW", "JEJUNUM",
        "KIDNEY", "KNEE", "LARYNX", "LEG", "LIVER", "LOWERLIMB", "LSPINE", "LSSPINE", "LUNG",
        "MANDIBLE", "MASTOID", "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK", "NECKCHEST",
        "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "NOSE", "ORBIT", "OVARY", "PANCREAS",
        "PAROTID", "PATELLA", "PELVIS", "PENIS", "PHARYNX", "PROSTATE", "RECTUM", "RIB",
        "SCALP", "SCAPULA", "SCLERA", "SCROTUM", "SELLA", "SESAMOID", "SHOULDER",
        "SIJOINT", "SKULL", "SPINE", "SPLEEN", "SSPINE", "STERNUM", "STOMACH",
        "SUBMANDIBULAR", "TESTIS", "THIGH", "THUMB", "THYMUS", "THYROID", "TLSPINE", "TMJ",
        "TOE", "TONGUE", "TRACHEA", "TRUNK", "TSPINE", "UPPERLIMB", "URETER", "URETHRA", "UTERUS",
        "VAGINA", "VULVA", "WHOLEBODY", "WRIST", "ZYGOMA",
    }
)  # fmt: skip

#: Variants (written without spaces, hyphens or underscores) and the defined term they mean.
_BODY_PART_SYNONYMS: dict[str, str] = {
    # English words and bone names
    "THORAX": "CHEST",
    "LUNGS": "CHEST",
    "LOWERLEG": "LEG",
    "TIBIA": "LEG",
    "FIBULA": "LEG",
    "TIBIAFIBULA": "LEG",
    "TIBFIB": "LEG",
    "CRUS": "LEG",
    "UPPERARM": "ARM",
    "HUMERUS": "ARM",
    "RADIUS": "FOREARM",
    "ULNA": "FOREARM",
    "RADIUSULNA": "FOREARM",
    "RADIUSANDULNA": "FOREARM",
    "LOWERARM": "FOREARM",
    "FEMUR": "THIGH",
    "UPPERLEG": "THIGH",
    "MAMMO": "BREAST",
    "MAMMA": "BREAST",
    "MAMMOGRAPHY": "BREAST",
    "MAMMOGRAM": "BREAST",
    "BREASTS": "BREAST",
    "HANDS": "HAND",
    "WRISTJOINT": "WRIST",
    "CARPUS": "WRIST",
    "ANKLEJOINT": "ANKLE",
    "ELBOWJOINT": "ELBOW",
    "KNEEJOINT": "KNEE",
    "HIPJOINT": "HIP",
    "SHOULDERJOINT": "SHOULDER",
    "FEET": "FOOT",
    "FINGERS": "FINGER",
    "TOES": "TOE",
    "RIBS": "RIB",
    "CERVICALSPINE": "CSPINE",
    "THORACICSPINE": "TSPINE",
    "LUMBARSPINE": "LSPINE",
    "LUMBOSACRALSPINE": "LSSPINE",
    "THORACOLUMBARSPINE": "TLSPINE",
    "CERVICOTHORACICSPINE": "CTSPINE",
    "WHOLESPINE": "SPINE",
    "SACRUM": "SSPINE",
    "CRANIUM": "SKULL",
    # Danish
    "HÅND": "HAND",
    "HAAND": "HAND",
    "HÆNDER": "HAND",
    "HAENDER": "HAND",
    "HÅNDLED": "WRIST",
    "HAANDLED": "WRIST",
    "ANKEL": "ANKLE",
    "FODLED": "ANKLE",
    "UNDERARM": "FOREARM",
    "OVERARM": "ARM",
    "UNDERBEN": "LEG",
    "LÅR": "THIGH",
    "LAAR": "THIGH",
    "BRYST": "BREAST",
    "MAMMOGRAFI": "BREAST",
    "FOD": "FOOT",
    "FØDDER": "FOOT",
    "FOEDDER": "FOOT",
    "KNÆ": "KNEE",
    "KNAE": "KNEE",
    "ALBUE": "ELBOW",
    "SKULDER": "SHOULDER",
    "HOFTE": "HIP",
    "BÆKKEN": "PELVIS",
    "BAEKKEN": "PELVIS",
    "KRANIE": "SKULL",
    "KRANIUM": "SKULL",
    "HOVED": "HEAD",
    "HALS": "NECK",
    "TOMMELFINGER": "THUMB",
    "TOMMEL": "THUMB",
    "TÅ": "TOE",
    "TAA": "TOE",
    "TÆER": "TOE",
    "TAEER": "TOE",
    "RYG": "BACK",
    "RYGSØJLE": "SPINE",
    "COLUMNA": "SPINE",
    "KRAVEBEN": "CLAVICLE",
    "SKULDERBLAD": "SCAPULA",
    "HÆLBEN": "CALCANEUS",
    "HAELBEN": "CALCANEUS",
    "KNÆSKAL": "PATELLA",
    "KNAESKAL": "PATELLA",
}

#: How a body part term reads in sentences; terms not listed read as their lower case.
BODY_PART_NAMES: dict[str, str] = {
    "ABDOMENPELVIS": "abdomen and pelvis",
    "ACJOINT": "acromioclavicular joint",
    "ARM": "upper arm",
    "CHESTABDOMEN": "chest and abdomen",
    "CHESTABDPELVIS": "chest, abdomen and pelvis",
    "CSPINE": "cervical spine",
    "CTSPINE": "cervico-thoracic spine",
    "HEADNECK": "head and neck",
    "IAC": "internal auditory canal",
    "LEG": "lower leg",
    "LOWERLIMB": "lower limb",
    "LSPINE": "lumbar spine",
    "LSSPINE": "lumbosacral spine",
    "NECKCHEST": "neck and chest",
    "NECKCHESTABDOMEN": "neck, chest and abdomen",
    "NECKCHESTABDPELV": "neck, chest, abdomen and pelvis",
    "SIJOINT": "sacroiliac joint",
    "SSPINE": "sacrum",
    "TLSPINE": "thoraco-lumbar spine",
    "TMJ": "temporomandibular joint",
    "TSPINE": "thoracic spine",
    "UPPERLIMB": "upper limb",
    "WHOLEBODY": "whole body",
}

#: Words that name a side, as modalities put them before or after the body part.
_SIDE_WORDS: frozenset[str] = frozenset(
    {
        "L", "R", "B", "LT", "RT", "LEFT", "RIGHT", "BOTH", "BIL", "BILAT", "BILATERAL",
        "SIN", "DX", "DXT", "VENSTRE", "HØJRE", "HOEJRE", "HOJRE", "BEGGE", "SIDE",
    }
)  # fmt: skip

_LATERALITY_SYNONYMS: dict[str, str] = {
    "L": "L",
    "LT": "L",
    "LEFT": "L",
    "SIN": "L",
    "SINISTER": "L",
    "SINISTRA": "L",
    "VENSTRE": "L",
    "R": "R",
    "RT": "R",
    "RIGHT": "R",
    "DX": "R",
    "DXT": "R",
    "DEXTER": "R",
    "DEXTRA": "R",
    "HØJRE": "R",
    "HOEJRE": "R",
    "HOJRE": "R",
    "B": "B",
    "BOTH": "B",
    "BIL": "B",
    "BILAT": "B",
    "BILATERAL": "B",
    "BEGGE": "B",
    "U": "U",
    "UNPAIRED": "U",
}

#: Mammography views; a leading L or R on these is the side, not part of the view.
MAMMOGRAPHY_VIEWS: frozenset[str] = frozenset(
    {"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "CV", "AT"}
)

#: View Position defined terms (DX/CR, PS3.3 C.8.11.5) and the mammography views.
VIEW_POSITIONS: frozenset[str] = frozenset(
    {"AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LAT"} | MAMMOGRAPHY_VIEWS
)

_VIEW_SYNONYMS: dict[str, str] = {
    "LATERAL": "LAT",
    "LATERALVIEW": "LAT",
    "SIDEVIEW": "LAT",
    "LAT": "LAT",
    "ANTEROPOSTERIOR": "AP",
    "ANTERIORPOSTERIOR": "AP",
    "POSTEROANTERIOR": "PA",
    "POSTERIORANTERIOR": "PA",
    "CRANIOCAUDAL": "CC",
    "CRANIOCAUDALVIEW": "CC",
    "MEDIOLATERALOBLIQUE": "MLO",
    "MEDIOLATERAL": "ML",
    "LATEROMEDIAL": "LM",
    "LATEROMEDIALOBLIQUE": "LMO",
    "EXAGGERATEDCRANIOCAUDALLATERAL": "XCCL",
    "EXAGGERATEDCRANIOCAUDALMEDIAL": "XCCM",
    "LEFTLATERAL": "LL",
    "RIGHTLATERAL": "RL",
    "LEFTLATERALDECUBITUS": "LLD",
    "RIGHTLATERALDECUBITUS": "RLD",
    "LEFTLATERALOBLIQUE": "LLO",
    "RIGHTLATERALOBLIQUE": "RLO",
}

_SEPARATORS = re.compile(r"[\s\-_/.,:;()+&]+")


def _clean(value: object) -> str:
    """Return `value` as NFC text, upper-cased, stripped, inner whitespace collapsed."""
    if value is None:
        return ""
    text = unicodedata.normalize("NFC", str(value).replace("\x00", " "))
    return unicodedata.normalize("NFC", " ".join(text.upper().split()))


def _tokens(cleaned: str) -> list[str]:
    return [token for token in _SEPARATORS.split(cleaned) if token]


def _body_part_term(compact: str) -> str | None:
    if compact in BODY_PARTS:
        return compact
    return _BODY_PART_SYNONYMS.get(compact)


def _strip_sides(tokens: list[str]) -> list[str]:
    start, end = 0, len(tokens)
    while start < end and tokens[start] in _SIDE_WORDS:
        start += 1
    while end > start and tokens[end - 1] in _SIDE_WORDS:
        end -= 1
    return tokens[start:end]


def normalise_body_part(value: object) -> str:
    """Return the Body Part Examined defined term for `value` ("" when blank).

    "c-spine" -> CSPINE, "L HAND" -> HAND, "Lower leg" -> LEG, "HÅNDLED" -> WRIST.
    Unknown values come back upper-cased and stripped, never replaced by a guess.
    """
    cleaned = _clean(value)
    tokens = _tokens(cleaned)
    if not tokens:
        return cleaned
    term = _body_part_term("".join(tokens))
    if term is not None:
        return term
    core = _strip_sides(tokens)
    if core and core != tokens:
        term = _body_part_term("".join(core))
        if term is not None:
            return term
    if len(tokens) == 1 and len(cleaned) > 1 and cleaned[0] in "LR":
        # "LHAND", "RKNEE": a side letter glued to a known term.
        term = _body_part_term(cleaned[1:])
        if term is not None:
            return term
    return cleaned


def body_part_name(term: str) -> str:
    """Return how the body part reads in a sentence: LEG -> "lower leg", HAND -> "hand"."""
    normalised = normalise_body_part(term)
    return BODY_PART_NAMES.get(normalised, normalised.lower())


def normalise_laterality(value: object) -> str:
    """Return L, R, B or U for the side in `value` ("" when blank).

    "left", "Venstre", "SIN" -> L; "RIGHT", "Højre", "DX" -> R; "bilateral" -> B.
    Unknown values come back upper-cased and stripped.
    """
    cleaned = _clean(value)
    compact = "".join(_tokens(cleaned))
    return _LATERALITY_SYNONYMS.get(compact, cleaned)


def laterality_name(code: str) -> str:
    """Return the side in words: L -> "left", R -> "right", B -> "both sides"."""
    names = {"L": "left", "R": "right", "B": "both sides", "U": "unpaired"}
    normalised = normalise_laterality(code)
    return names.get(normalised, normalised)


def normalise_view_position(value: object) -> str:
    """Return the View Position defined term for `value` ("" when blank).

    "lateral" -> LAT, "postero-anterior" -> PA, "L-MLO"/"RMLO"/"R CC" -> MLO/MLO/CC
    (the side belongs in laterality). Unknown values come back upper-cased and stripped.
    """
    cleaned = _clean(value)
    compact = "".join(_tokens(cleaned))
    if not compact:
        return cleaned
    if compact in VIEW_POSITIONS:
        return compact
    if compact in _VIEW_SYNONYMS:
        return _VIEW_SYNONYMS[compact]
    for side in ("LEFT", "RIGHT", "L", "R"):
        rest = compact.removeprefix(side)
        if rest != compact and rest in MAMMOGRAPHY_VIEWS:
            return rest
        if rest != compact and _VIEW_SYNONYMS.get(rest) in MAMMOGRAPHY_VIEWS:
            return _VIEW_SYNONYMS[rest]
    return cleaned
