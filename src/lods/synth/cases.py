"""Labelled sets of synthetic limb radiographs, with and without fractures, for training
and scoring fracture detectors.

`iter_xray_cases` yields the cases in memory; `write_xray_cases` writes them as DICOM
files under `out/<case_id>/` with `labels.json` and `labels.csv` beside them:

    labels.json = {"kind": "xray", "generator": "lods.synth.xray", "seed": S, "count": N,
                   "prevalence": P, "cases": [{"case_id": "X00001", "study_uid": ...,
                   "patient_id": ..., "age": 45, "sex": "F", "body_part": "WRIST",
                   "modality": "DX", "label": 1, "finding": "oblique" (or null),
                   "boxes": [{"sop_instance_uid": ..., "box": [x0, y0, x1, y1],
                              "finding": "oblique"}],
                   "files": ["X00001/1.dcm", ...]}]}
    labels.csv: case_id,study_uid,label,age,sex,body_part,modality,finding

A box is in the stored image's pixels: columns x0 to x1 − 1, rows y0 to y1 − 1. Of N
cases round(P·N) are positive, their kinds taken in turn from the five fracture types
(buckle fractures in children only); body part, modality, age and sex vary.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lods.synth.fractures import FRACTURE_TYPES, patient_age, patient_sex, random_fracture
from lods.synth.xray import BODY_PARTS, Case, make_case

GENERATOR = "lods.synth.xray"
CSV_COLUMNS = ("case_id", "study_uid", "label", "age", "sex", "body_part", "modality", "finding")
#: The share of DX (rather than CR) studies.
_DX_SHARE = 0.6
#: How often a fracture is redrawn when it falls outside a view's exposed field.
_ATTEMPTS = 20


def _kinds(*, count: int, seed: int, prevalence: float) -> list[str | None]:
    """Return each case's fracture kind (None: negative): round(P·N) positives, shuffled."""
    rng = np.random.default_rng([seed, 0x9A7])
    positives = round(prevalence * count)
    kinds = [FRACTURE_TYPES[k % len(FRACTURE_TYPES)] for k in range(positives)]
    plan: list[str | None] = [*kinds, *([None] * (count - positives))]
    return [plan[i] for i in rng.permutation(count)]


def _case(seed: int, index: int, kind: str | None, *, size: int | None) -> Case:
    """Return case `index` of the set drawn from `seed`."""
    rng = np.random.default_rng([seed, index, 0xCA5E])
    body_part = BODY_PARTS[int(rng.integers(len(BODY_PARTS)))]
    modality = "DX" if rng.random() < _DX_SHARE else "CR"
    age = patient_age(rng, kind)
    sex = patient_sex(rng, age)
    case_id = f"X{index + 1:05d}"
    case_seed = seed * 1_000_003 + index
    if kind is None:
        return make_case(
            case_seed,
            body_part=body_part,
            modality=modality,
            age=age,
            sex=sex,
            case_id=case_id,
            size=size,
        )
    for _ in range(_ATTEMPTS):
        fracture = random_fracture(rng, kind=kind, body_part=body_part)
        try:
            return make_case(
                case_seed,
                body_part=body_part,
                modality=modality,
                age=age,
                sex=sex,
                fracture=fracture,
                case_id=case_id,
                size=size,
            )
        except ValueError:
            continue  # it fell outside the collimated field of a view: break another place
    raise RuntimeError(f"no fracture of case {case_id} lies inside every view")


def iter_xray_cases(
    *, count: int, seed: int, prevalence: float = 0.5, size: int | None = None
) -> Iterator[Case]:
    """Yield `count` labelled cases drawn from `seed`, as `write_xray_cases` writes them.

    Images are `size`² pixels, or of varying sizes from 1024² to 2048² when None.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError("prevalence is a fraction in [0, 1]")
    for index, kind in enumerate(_kinds(count=count, seed=seed, prevalence=prevalence)):
        yield _case(seed, index, kind, size=size)


def case_record(case: Case, files: list[str]) -> dict[str, Any]:
    """Return the `labels.json` entry of `case`, whose files are `files` (relative)."""
    return {
        "case_id": case.case_id,
        "study_uid": case.study_uid,
        "patient_id": case.patient_id,
        "age": case.age,
        "sex": case.sex,
        "body_part": case.body_part,
        "modality": case.modality,
        "label": case.label,
        "finding": case.finding,
        "boxes": [
            {"sop_instance_uid": uid, "box": list(box), "finding": case.finding}
            for uid, box in case.boxes.items()
        ],
        "files": files,
    }


def write_xray_cases(
    out: Path, *, count: int, seed: int, prevalence: float = 0.5, size: int | None = None
) -> Path:
    """Write `count` labelled cases under `out` (see the module) and return `labels.json`."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for case in iter_xray_cases(count=count, seed=seed, prevalence=prevalence, size=size):
        folder = out / case.case_id
        folder.mkdir(exist_ok=True)
        files = []
        for number, ds in enumerate(case.datasets, start=1):
            ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
            files.append(f"{case.case_id}/{number}.dcm")
        records.append(case_record(case, files))
    labels = out / "labels.json"
    document = {
        "kind": "xray",
        "generator": GENERATOR,
        "seed": seed,
        "count": count,
        "prevalence": prevalence,
        "cases": records,
    }
    labels.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in records:
            writer.writerow(
                [
                    *(r[column] for column in CSV_COLUMNS[:-1]),
                    r["finding"] or "",
                ]
            )
    return labels
