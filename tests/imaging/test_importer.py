"""`lods import`: a folder tree of DICOM files through the same intake as a send."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from lods.audit.models import AuditEvent
from lods.imaging.importer import import_path
from lods.imaging.models import Instance, IntakeRejection, Study
from lods.runtime import Runtime
from lods.sites.models import UNASSIGNED_SITE_CODE, Site


def _tree(dicom: Any, root: Path) -> int:
    """Write 2 studies (5 files) in nested folders plus 2 non-DICOM files; return DICOM count."""
    dicom.make_study(root / "a", series=1, per_series=2)
    dicom.make_study(root / "b" / "deeper", series=1, per_series=3)
    (root / "README.txt").write_text("not DICOM")
    (root / "b" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    return 5


def test_import_stores_a_folder_recursively_and_skips_non_dicom(
    runtime: Runtime, site_id: int, dicom: Any, files_dir: Path
) -> None:
    expected = _tree(dicom, files_dir)
    report = import_path(runtime, files_dir, site_code="RH")
    assert (report.stored, report.skipped, report.rejected) == (expected, 2, 0)
    with runtime.sessions() as db:
        instances = db.scalars(select(Instance)).all()
        assert len(instances) == expected and {i.channel for i in instances} == {"import"}
        assert {s.site_id for s in db.scalars(select(Study))} == {site_id}
        audited = db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "study.received")
        )
        assert audited == 2


def test_import_twice_counts_the_second_as_already_present(
    runtime: Runtime, site_id: int, dicom: Any, files_dir: Path
) -> None:
    expected = _tree(dicom, files_dir)
    import_path(runtime, files_dir, site_code="RH")
    again = import_path(runtime, files_dir, site_code="RH")
    assert (again.stored, again.duplicates) == (0, expected)
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == expected


def test_import_without_a_site_lands_in_unassigned(
    runtime: Runtime, dicom: Any, files_dir: Path
) -> None:
    dicom.save(dicom.make_dataset(), files_dir / "one.dcm")
    assert import_path(runtime, files_dir / "one.dcm").stored == 1
    with runtime.sessions() as db:
        study = db.scalar(select(Study))
        assert study is not None
        site = db.get(Site, study.site_id)
        assert site is not None and site.code == UNASSIGNED_SITE_CODE


def test_import_with_an_unknown_site_code_is_refused(
    runtime: Runtime, dicom: Any, files_dir: Path
) -> None:
    with pytest.raises(ValueError, match="NOPE"):
        import_path(runtime, files_dir, site_code="NOPE")


def test_import_refuses_and_counts_a_broken_dicom_file(
    runtime: Runtime, site_id: int, dicom: Any, files_dir: Path
) -> None:
    good = dicom.part10(dicom.make_dataset())
    (files_dir / "broken.dcm").write_bytes(good[:-500])
    (files_dir / "good.dcm").write_bytes(good)
    report = import_path(runtime, files_dir, site_code="RH")
    assert (report.stored, report.rejected) == (1, 1)
    with runtime.sessions() as db:
        [rejection] = db.scalars(select(IntakeRejection)).all()
        assert rejection.channel == "import" and rejection.source.endswith("broken.dcm")


def test_cli_import_reports_counts_and_fails_on_refusals(
    tmp_path: Path, dicom: Any, files_dir: Path
) -> None:
    data_dir = tmp_path / "cli"
    env = dict(os.environ, LODS_DATA_DIR=str(data_dir), LODS_SECRET_KEY="test")
    env.pop("LODS_DATABASE_URL", None)
    _tree(dicom, files_dir)
    done = subprocess.run(
        [sys.executable, "-m", "lods", "import", str(files_dir)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stored 5" in done.stdout and "not DICOM 2" in done.stdout
    (files_dir / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    done = subprocess.run(
        [sys.executable, "-m", "lods", "import", str(files_dir)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "already present 5" in done.stdout and "rejected 1" in done.stdout
