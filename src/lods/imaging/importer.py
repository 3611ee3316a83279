"""`lods import PATH`: take in a file or a folder tree of DICOM files, as if they were sent.

Every Part-10 file goes through the same intake as STOW-RS (`ingest_part10`, channel
"import"), one committed transaction per file. Files that are not DICOM Part-10 (no
"DICM" at byte 128: text, images, DICOMDIR-less junk) are skipped quietly and counted;
DICOM files that fail the intake checks are refused, quarantined and counted like any
other refusal. The studies land in the site named by `site_code`, else in "unassigned".
Audit: one `study.received` event per study and import run, actor `import:<OS user>`.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lods.audit.service import record
from lods.imaging.ingest import DUPLICATE, NEW_VERSION, REJECTED, STORED, is_part10
from lods.imaging.service import ingest_part10
from lods.imaging.store import BlobStore
from lods.runtime import Runtime
from lods.sites.service import get_site_by_code, unassigned_site

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What an import did, file by file counted by outcome."""

    stored: int = 0
    duplicates: int = 0
    new_versions: int = 0
    rejected: int = 0
    skipped: int = 0
    studies: set[str] = field(default_factory=set)

    def count(self, outcome: str) -> None:
        """Add one file with `outcome` ("stored", "duplicate", "new_version", "rejected")."""
        attribute = {
            STORED: "stored",
            DUPLICATE: "duplicates",
            NEW_VERSION: "new_versions",
            REJECTED: "rejected",
        }[outcome]
        setattr(self, attribute, getattr(self, attribute) + 1)


def iter_files(path: Path) -> Iterator[Path]:
    """Yield `path` itself when it is a file, else every file below it in sorted order."""
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if child.is_file() and not child.is_symlink():
            yield child


def _read_part10(path: Path) -> bytes | None:
    """Return the bytes of a Part-10 file; None for anything else or an unreadable file."""
    try:
        with path.open("rb") as fh:
            if not is_part10(fh.read(132)):
                return None
            fh.seek(0)
            return fh.read()
    except OSError as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


def _site_id(runtime: Runtime, site_code: str | None) -> int:
    with runtime.sessions() as db, db.begin():
        if site_code is None:
            return unassigned_site(db).id
        site = get_site_by_code(db, code=site_code)
        if site is None:
            raise ValueError(f"no site with code {site_code!r}")
        return site.id


def import_path(runtime: Runtime, path: Path, *, site_code: str | None = None) -> ImportReport:
    """Return the report of importing `path` (a file or a folder, recursively)."""
    site_id = _site_id(runtime, site_code)
    store = BlobStore.from_settings(runtime.settings)
    actor = f"import:{getpass.getuser()}"
    report = ImportReport()
    for file in iter_files(Path(path)):
        data = _read_part10(file)
        if data is None:
            report.skipped += 1
            continue
        with runtime.sessions() as db, db.begin():
            result = ingest_part10(
                db,
                store=store,
                data=file,
                channel="import",
                source=str(file)[-255:],
                site_id=site_id,
            )
            if result.outcome in (STORED, NEW_VERSION) and result.study_uid not in report.studies:
                record(
                    db,
                    actor=actor,
                    action="study.received",
                    patient_id=result.patient_id or None,
                    study_uid=result.study_uid,
                    object_ref=f"study:{result.study_uid}",
                    detail={"channel": "import", "path": str(path)},
                )
        if result.study_uid and result.outcome in (STORED, NEW_VERSION):
            report.studies.add(result.study_uid)
        report.count(result.outcome)
    log.info("import of %s: %s", path, report)
    return report
