"""Synthetic but plausible medical images for demos, tests and benchmarks: never real patients.

Everything here is deterministic by seed, so a test, a demo and a benchmark can name the
images they use by a number.
"""

from lods.synth.xray import (
    BODY_PARTS,
    MODALITIES,
    SyntheticPatient,
    make_study,
    render_radiograph,
    synthetic_patient,
    write_studies,
)

__all__ = [
    "BODY_PARTS",
    "MODALITIES",
    "SyntheticPatient",
    "make_study",
    "render_radiograph",
    "synthetic_patient",
    "write_studies",
]
