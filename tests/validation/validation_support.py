"""Helpers for the validation tests: a labelled case set of bright-square DX images."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from lods.runtime import Runtime
from lods.solutions import service
from support_solutions import write_dx_image

#: (case id, bright square on the image, label, body part, age, sex).
#: XV005 is labelled positive but shows no square (a miss); XV010 shows a square but is
#: labelled negative (a false alarm); XV012 is a chest image (outside the intended use).
CASES: tuple[tuple[str, bool, int, str, int, str], ...] = (
    ("XV001", True, 1, "HAND", 45, "F"),
    ("XV002", True, 1, "HAND", 71, "M"),
    ("XV003", True, 1, "HAND", 30, "F"),
    ("XV004", True, 1, "HAND", 55, "M"),
    ("XV005", False, 1, "HAND", 62, "F"),
    ("XV006", False, 0, "HAND", 45, "F"),
    ("XV007", False, 0, "HAND", 25, "M"),
    ("XV008", False, 0, "HAND", 80, "F"),
    ("XV009", False, 0, "HAND", 52, "M"),
    ("XV010", True, 0, "HAND", 40, "F"),
    ("XV011", False, 0, "HAND", 33, "M"),
    ("XV012", True, 1, "CHEST", 50, "F"),
)


@dataclass(frozen=True)
class CaseSet:
    cases_dir: Path
    labels_json: Path
    labels_csv: Path
    study_uids: dict[str, str]

    def labels_sha256(self) -> str:
        return hashlib.sha256(self.labels_json.read_bytes()).hexdigest()


def write_case_set(folder: Path) -> CaseSet:
    """Write the DICOM cases (one folder per case) and labels.json / labels.csv."""
    cases_dir = folder / "cases"
    entries = []
    study_uids: dict[str, str] = {}
    csv_lines = ["case_id,study_uid,label,age,sex,body_part"]
    for case_id, bright, label, body_part, age, sex in CASES:
        study_uid = generate_uid()
        study_uids[case_id] = study_uid
        write_dx_image(
            cases_dir / case_id / "1.dcm",
            study_uid=study_uid,
            body_part=body_part,
            bright=bright,
            patient_id=f"P{case_id}",
            patient_age=f"{age:03d}Y",
            sex=sex,
        )
        entries.append(
            {
                "case_id": case_id,
                "study_uid": study_uid,
                "label": label,
                "age": age,
                "sex": sex,
                "body_part": "WRIST" if body_part == "HAND" and age > 70 else body_part,
                "finding": "spot" if label else None,
                "boxes": [[150, 60, 206, 116]] if label and bright else [],
                "files": [f"{case_id}/1.dcm"],
            }
        )
        csv_lines.append(f"{case_id},{study_uid},{label},{age},{sex},{body_part}")
    labels_json = folder / "labels.json"
    labels_json.write_text(json.dumps({"kind": "xray", "cases": entries}, indent=1))
    labels_csv = folder / "labels.csv"
    labels_csv.write_text("\n".join(csv_lines) + "\n")
    return CaseSet(cases_dir, labels_json, labels_csv, study_uids)


def install(rt: Runtime, package: Path) -> int:
    """Install a package (not approved); return the version id."""
    with rt.sessions() as db, db.begin():
        return service.install(db, settings=rt.settings, path=package, actor="test").id
