"""The quarantine: bytes Lods refused, kept with a JSON sidecar that says why, and counted.

Each rejected object becomes `quarantine_dir/<YYYYMMDD>/<time>-<random>.<ext>` holding the
bytes exactly as received (`.dcm` for a Part-10 file, `.raw` for a C-STORE data set whose
transfer syntax is in the sidecar), and `<same name>.json` with the channel, sender,
status, reason and what the request declared. Nothing in Lods reads these files back;
they are evidence for the person who sorts out the sender.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lods.db import utcnow
from lods.imaging.ingest import OUT_OF_RESOURCES, REJECTED, IngestResult, IntakeError
from lods.imaging.models import IntakeRejection

log = logging.getLogger(__name__)


def _write_durably(path: Path, parts: Sequence[bytes | memoryview]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as fh:
        for part in parts:
            fh.write(part)
        fh.flush()
        os.fsync(fh.fileno())


def quarantine(
    directory: Path,
    *,
    parts: Sequence[bytes | memoryview],
    part10: bool,
    channel: str,
    source: str,
    status: int,
    reason: str,
    sop_instance_uid: str | None = None,
    declared: dict[str, Any] | None = None,
) -> Path:
    """Return the path of the quarantined copy of `parts`, written with its sidecar."""
    now = utcnow()
    day_dir = Path(directory) / now.strftime("%Y%m%d")
    day_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{now.strftime('%H%M%S.%f')}-{os.urandom(4).hex()}"
    data_path = day_dir / f"{stem}.{'dcm' if part10 else 'raw'}"
    _write_durably(data_path, parts)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    sidecar = {
        "received_at": now.isoformat(),
        "channel": channel,
        "source": source,
        "status": f"0x{status:04X}",
        "reason": reason,
        "sop_instance_uid": sop_instance_uid,
        "size": sum(len(p) for p in parts),
        "sha256": digest.hexdigest(),
        "file": data_path.name,
        "declared": declared or {},
    }
    json_path = day_dir / f"{stem}.json"
    _write_durably(json_path, [json.dumps(sidecar, indent=2, sort_keys=True).encode()])
    return data_path


def reject(
    db: Session,
    *,
    quarantine_dir: Path,
    error: IntakeError,
    parts: list[bytes | memoryview],
    part10: bool,
    channel: str,
    source: str,
    declared: dict[str, Any] | None = None,
) -> IngestResult:
    """Return the refusal of one object: quarantined, logged and counted (caller commits).

    With no `parts` (nothing worth keeping, e.g. the disk is full) nothing is quarantined;
    a quarantine that fails is logged and the refusal is still counted.
    """
    path: Path | None = None
    if parts:
        try:
            path = quarantine(
                quarantine_dir, parts=parts, part10=part10, channel=channel, source=source,
                status=error.status, reason=error.reason,
                sop_instance_uid=error.sop_instance_uid, declared=declared,
            )  # fmt: skip
        except OSError:
            log.exception("could not quarantine a refused object from %s", source)
    log.warning("refused %s object from %s (SOP Instance %s): 0x%04X %s", channel, source,
                error.sop_instance_uid, error.status, error.reason)  # fmt: skip
    rejection = IntakeRejection(
        channel=channel, source=source[:255], sop_instance_uid=_short_uid(error),
        status=error.status, reason=error.reason,
        quarantine_path=str(path) if path is not None else None,
    )  # fmt: skip
    db.add(rejection)
    return IngestResult(REJECTED, error.status, error.reason,
                        sop_instance_uid=error.sop_instance_uid)  # fmt: skip


def _short_uid(error: IntakeError) -> str | None:
    uid = error.sop_instance_uid
    return uid[:64] if uid else None


def disk_error(exc: OSError) -> IntakeError:
    """Return the refusal for a failed write to the blob store (out of resources)."""
    log.error("blob store write failed: %s", exc)
    return IntakeError(OUT_OF_RESOURCES, f"cannot store the object: {exc.strerror or exc}")
