"""Imaging intake: store a received instance durably, then index it; refuse bad input.

Policy (copied to ARCHITECTURE.md):

- **Bytes as received.** A C-STORE data set is stored as a Part-10 file: preamble, a
  deterministic file meta written by Lods (FileMetaInformationVersion, MediaStorage SOP
  Class/Instance UID, TransferSyntaxUID, Lods' ImplementationClassUID/VersionName) and the
  data set bytes exactly as they arrived. A Part-10 input (STOW-RS, import) is stored as
  the file it is. Pixel data is never decoded on the way in; only the header is read.
- **Two hashes.** `Instance.sha256` is the SHA-256 of the stored file and its address in
  the blob store; `Instance.dataset_sha256` is the SHA-256 of the data set bytes after
  the file meta and decides whether two receptions are "the same instance".
- **Durable before success.** The file is fsync'd into the blob store (written to a
  temporary file, renamed to its address, directory fsync'd) before the index row is
  written; the caller commits the row and only then answers success. A crash between
  the two leaves an unreferenced blob, never a row without its file. The DICOM node
  streams large data sets to disk while they arrive (`lods.imaging.scp`); what is
  stored is byte for byte the same as when written from memory.
- **Repeats.** The same SOP Instance UID with identical data set bytes is a no-op
  success (no new row). With different bytes, the new reception becomes version n+1 and
  the current one; the previous row gets `superseded_at` and its blob is kept, so what
  was received (and perhaps already read by an AI or a clinician) stays retrievable.
  Study/series counters count current instances only.
- **Refusals.** Bad input (unreadable structure, missing identifying UIDs, a data set
  whose SOP Class/Instance UID differs from the request or file meta) is answered with a
  DICOM failure status, recorded as an `IntakeRejection` row, logged, and its bytes kept
  in the quarantine folder with a JSON sidecar. Disk or database failures answer 0xA700
  (out of resources) so the sender retries later.
- **Patients.** A patient is (PatientID, IssuerOfPatientID); an empty PatientID is its
  own bucket, as the sender gave no identity. A study keeps the patient and site it was
  first received with; demographics are refreshed when a new study arrives.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lods.db import utcnow
from lods.imaging.ingest import (
    DUPLICATE,
    NEW_VERSION,
    REJECTED,
    STORED,
    SUCCESS,
    IngestResult,
    InstanceHeader,
    IntakeError,
    check_identity,
    file_meta,
    read_header,
    split_part10,
)
from lods.imaging.models import Instance, Patient, Series, Study
from lods.imaging.quarantine import disk_error, reject
from lods.imaging.store import BlobRef, BlobStore, Staged

log = logging.getLogger(__name__)

__all__ = [
    "DUPLICATE",
    "NEW_VERSION",
    "REJECTED",
    "STORED",
    "IngestResult",
    "Prepared",
    "index_instance",
    "ingest_dataset",
    "ingest_part10",
    "prepare_dataset",
    "prepare_part10",
]


@dataclass(frozen=True)
class Prepared:
    """A received instance whose header is read and whose file is durably stored."""

    header: InstanceHeader
    blob: BlobRef
    dataset_sha256: str
    transfer_syntax_uid: str


# Preparing: parse and store, before any database work ----------------------------------


def prepare_dataset(
    *,
    store: BlobStore,
    dataset: bytes | memoryview,
    transfer_syntax_uid: str,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    staged: Staged | None = None,
) -> Prepared:
    """Return the C-STORE data set read and stored as a Part-10 file; `IntakeError` if bad.

    `staged` is the same data set already streamed to disk behind a file meta (see
    `BlobWriter`); it is used when that meta is exactly the one Lods writes for this
    data set, and deleted otherwise.
    """
    try:
        header = read_header(dataset, transfer_syntax_uid)
        check_identity(header, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                       declared_by="the request")  # fmt: skip
    except BaseException:
        if staged is not None:
            staged.path.unlink(missing_ok=True)
        raise
    meta = file_meta(sop_class_uid=header.sop_class_uid, sop_instance_uid=header.sop_instance_uid,
                     transfer_syntax_uid=transfer_syntax_uid)  # fmt: skip
    if staged is not None:
        if staged.prefix == meta and staged.body_size == len(dataset):
            blob = store.commit(staged.path, sha256=staged.sha256)
            return Prepared(header, blob, staged.body_sha256, transfer_syntax_uid)
        log.warning("streamed copy of %s did not match; storing it again", header.sop_instance_uid)
        staged.path.unlink(missing_ok=True)
    blob, dataset_sha256 = store.put_hashed([meta, dataset], body_from=len(meta))
    return Prepared(header, blob, dataset_sha256, transfer_syntax_uid)


def prepare_part10(*, store: BlobStore, data: bytes | memoryview) -> Prepared:
    """Return a Part-10 file read and stored as received; `IntakeError` if bad."""
    part10 = split_part10(data)
    dataset = memoryview(data)[part10.dataset_offset :]
    header = read_header(dataset, part10.transfer_syntax_uid)
    check_identity(
        header,
        sop_class_uid=part10.sop_class_uid,
        sop_instance_uid=part10.sop_instance_uid,
        declared_by="the file meta",
    )
    blob, dataset_sha256 = store.put_hashed([data], body_from=part10.dataset_offset)
    return Prepared(header, blob, dataset_sha256, part10.transfer_syntax_uid)


# Indexing -----------------------------------------------------------------------------------

# Statements of the per-instance path, built once (building them costs more than running).
_CURRENT = (
    select(Instance.id, Instance.version, Instance.dataset_sha256, Instance.series_fk)
    .where(Instance.sop_instance_uid == bindparam("uid"), Instance.superseded_at.is_(None))
    .order_by(Instance.version.desc())
    .limit(1)
)
_LOCK_SOP_INSTANCE = select(func.pg_advisory_xact_lock(func.hashtext(bindparam("uid"))))
_STUDY_ID = select(Study.id).where(Study.study_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(Instance).returning(Instance.id)
_COUNT_SERIES = (
    update(Series)
    .where(Series.id == bindparam("pk"))
    .values(num_instances=Series.num_instances + bindparam("n"))
)
_FEED_STUDY_NEW_SERIES = (
    update(Study)
    .where(Study.id == bindparam("pk"))
    .values(
        num_instances=Study.num_instances + bindparam("n"),
        num_series=Study.num_series + 1,
        modalities=bindparam("merged"),
        last_received_at=bindparam("now"),
        stable_at=None,
    )
)
_FEED_STUDY = (
    update(Study)
    .where(Study.id == bindparam("pk"))
    .values(
        num_instances=Study.num_instances + bindparam("n"),
        last_received_at=bindparam("now"),
        stable_at=None,
    )
)


@functools.cache
def _get_or_create_statements(dialect: str, model: Any, key: tuple[str, ...]) -> tuple[Any, Any]:
    """Return (select id by key, insert-or-nothing returning id) for a model and dialect."""
    query = select(model.id).where(*(getattr(model, k) == bindparam(f"key_{k}") for k in key))
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    create = insert_(model).on_conflict_do_nothing(index_elements=list(key)).returning(model.id)
    return query, create


def _get_or_create(
    db: Connection, model: Any, key: dict[str, Any], values: dict[str, Any], *, likely_new: bool
) -> tuple[int, bool]:
    """Return (id, created) of the row with unique `key`, inserting it when absent.

    `likely_new` tries the insert first (one statement when it is indeed new).
    """
    query, create = _get_or_create_statements(db.dialect.name, model, tuple(key))
    by_key = {f"key_{k}": v for k, v in key.items()}
    if not likely_new and (pk := db.scalar(query, by_key)) is not None:
        return int(pk), False
    if (pk := db.scalar(create, {**key, **values})) is not None:
        return int(pk), True
    # It exists: we did not look first, or another transaction created it meanwhile.
    if (existing := db.scalar(query, by_key)) is None:
        raise RuntimeError(f"{model.__name__} {key} vanished while being created")
    return int(existing), False


def _lock_sop_instance(db: Connection, sop_instance_uid: str) -> None:
    # SQLite transactions already hold the write lock (BEGIN IMMEDIATE); PostgreSQL needs
    # receptions of the same instance serialised to number versions without a race.
    if db.dialect.name == "postgresql":
        db.execute(_LOCK_SOP_INSTANCE, {"uid": sop_instance_uid})


def _study(db: Connection, h: InstanceHeader, *, site_id: int, now: Any) -> tuple[int, bool]:
    """Return (id, created) of the study, creating it and its patient when new."""
    study_pk = db.scalar(_STUDY_ID, {"uid": h.study_uid})
    if study_pk is not None:
        return int(study_pk), False
    demographics = {"name": h.patient_name, "birth_date": h.birth_date, "sex": h.sex}
    patient_key = {"patient_id": h.patient_id, "issuer": h.issuer}
    patient_pk, new_patient = _get_or_create(db, Patient, patient_key, demographics,
                                             likely_new=False)  # fmt: skip
    values = {
        "patient_fk": patient_pk, "site_id": site_id, "accession_number": h.accession_number,
        "study_id": h.study_id, "study_date": h.study_date, "study_time": h.study_time,
        "description": h.study_description, "referring_physician": h.referring_physician,
        "first_received_at": now, "last_received_at": now,
    }  # fmt: skip
    pk, created = _get_or_create(db, Study, {"study_uid": h.study_uid}, values, likely_new=True)
    if created and not new_patient and (fresh := {k: v for k, v in demographics.items() if v}):
        # A new study carries the newest demographics of a known patient.
        db.execute(update(Patient).where(Patient.id == patient_pk).values(**fresh))
    return pk, created


def _series(
    db: Connection, h: InstanceHeader, *, study_pk: int, new_study: bool
) -> tuple[int, bool]:
    """Return (id, created) of the series; a new one starts counting this instance."""
    values = {
        "study_fk": study_pk, "modality": h.modality, "series_number": h.series_number,
        "description": h.series_description, "body_part": h.body_part, "num_instances": 1,
    }  # fmt: skip
    key = {"series_uid": h.series_uid}
    return _get_or_create(db, Series, key, values, likely_new=new_study)


def _merged_modalities(db: Connection, study_pk: int, modality: str) -> str:
    """Return the study's modalities with `modality` added (locking the study row)."""
    current = db.scalar(select(Study.modalities).where(Study.id == study_pk).with_for_update())
    present = {m for m in (current or "").split("\\") if m} | ({modality} if modality else set())
    return "\\".join(sorted(present))[:64]


def _count(
    db: Connection,
    *,
    study_pk: int,
    series_pk: int,
    instances: int,
    new_series: bool,
    new_study: bool,
    modality: str,
    now: Any,
) -> None:
    """Add `instances` to the series and study counters and mark the study as just fed."""
    if instances and not new_series:  # a new series was created counting it
        db.execute(_COUNT_SERIES, {"pk": series_pk, "n": instances})
    if not new_series:
        db.execute(_FEED_STUDY, {"pk": study_pk, "n": instances, "now": now})
        return
    merged = modality[:64] if new_study else _merged_modalities(db, study_pk, modality)
    db.execute(_FEED_STUDY_NEW_SERIES, {"pk": study_pk, "n": instances, "now": now,
                                        "merged": merged})  # fmt: skip


def _move_out(db: Connection, *, series_pk: int) -> None:
    """Take a superseded instance out of its (different) series' and study's counters."""
    study_pk = db.scalar(select(Series.study_fk).where(Series.id == series_pk))
    db.execute(
        update(Series).where(Series.id == series_pk).values(num_instances=Series.num_instances - 1)
    )
    db.execute(
        update(Study).where(Study.id == study_pk).values(num_instances=Study.num_instances - 1)
    )


def _insert_instance(
    db: Connection,
    prepared: Prepared,
    *,
    version: int,
    series_pk: int,
    channel: str,
    source: str,
    now: Any,
) -> int:
    h = prepared.header
    values = {
        "sop_instance_uid": h.sop_instance_uid,
        "version": version,
        "series_fk": series_pk,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": prepared.transfer_syntax_uid[:64],
        "instance_number": h.instance_number,
        "rows": h.rows,
        "columns": h.columns,
        "number_of_frames": h.number_of_frames,
        "sha256": prepared.blob.sha256,
        "dataset_sha256": prepared.dataset_sha256,
        "size": prepared.blob.size,
        "received_at": now,
        "channel": channel,
        "source": source[:255],
    }
    return int(db.execute(_INSERT_INSTANCE, values).scalar_one())


def _outcome(
    outcome: str,
    h: InstanceHeader,
    *,
    instance_id: int,
    version: int,
    study_pk: int | None = None,
    series_pk: int | None = None,
) -> IngestResult:
    return IngestResult(
        outcome, SUCCESS, sop_instance_uid=h.sop_instance_uid, study_uid=h.study_uid,
        instance_id=instance_id, version=version, patient_id=h.patient_id,
        study_pk=study_pk, series_pk=series_pk,
    )  # fmt: skip


def index_instance(
    db: Session,
    *,
    prepared: Prepared,
    channel: str,
    source: str,
    site_id: int,
    known_series: Mapping[tuple[str, str], tuple[int, int]] | None = None,
) -> IngestResult:
    """Return the outcome of recording a prepared instance in the index (caller commits).

    `known_series` maps (study UID, series UID) to (study id, series id) for series the
    caller saw committed (from earlier results), which saves two lookups per instance.
    """
    h = prepared.header
    conn = db.connection()
    _lock_sop_instance(conn, h.sop_instance_uid)
    current = conn.execute(_CURRENT, {"uid": h.sop_instance_uid}).first()
    if current is not None and current.dataset_sha256 == prepared.dataset_sha256:
        return _outcome(DUPLICATE, h, instance_id=current.id, version=current.version)
    now = utcnow()
    known = (known_series or {}).get((h.study_uid, h.series_uid))
    if known is not None:
        (study_pk, series_pk), new_study, new_series = known, False, False
    else:
        study_pk, new_study = _study(conn, h, site_id=site_id, now=now)
        series_pk, new_series = _series(conn, h, study_pk=study_pk, new_study=new_study)
    version = 1 if current is None else current.version + 1
    if current is not None:
        conn.execute(update(Instance).where(Instance.id == current.id).values(superseded_at=now))
    instance_id = _insert_instance(conn, prepared, version=version, series_pk=series_pk,
                                   channel=channel, source=source, now=now)  # fmt: skip
    moved = current is not None and current.series_fk != series_pk
    if current is not None and moved:
        _move_out(conn, series_pk=current.series_fk)
    _count(conn, study_pk=study_pk, series_pk=series_pk,
           instances=1 if current is None or moved else 0, new_series=new_series,
           new_study=new_study, modality=h.modality, now=now)  # fmt: skip
    return _outcome(STORED if current is None else NEW_VERSION, h, instance_id=instance_id,
                    version=version, study_pk=study_pk, series_pk=series_pk)  # fmt: skip


# Entry points -------------------------------------------------------------------------------


def _take_in(
    db: Session,
    prepare: Callable[[], Prepared],
    *,
    store: BlobStore,
    parts: list[bytes | memoryview],
    part10: bool,
    channel: str,
    source: str,
    site_id: int,
    declared: dict[str, Any] | None = None,
) -> IngestResult:
    """Return the outcome of preparing then indexing one object, or of refusing it."""
    try:
        prepared = prepare()
    except (IntakeError, OSError) as exc:
        refused = exc if isinstance(exc, IntakeError) else disk_error(exc)
        if refused.sop_instance_uid is None and declared:
            refused.sop_instance_uid = declared.get("sop_instance_uid")
        kept = parts if isinstance(exc, IntakeError) else []
        return reject(
            db,
            quarantine_dir=store.quarantine_dir,
            error=refused,
            parts=kept,
            part10=part10,
            channel=channel,
            source=source,
            declared=declared,
        )
    return index_instance(db, prepared=prepared, channel=channel, source=source, site_id=site_id)


def ingest_part10(
    db: Session,
    *,
    store: BlobStore,
    data: bytes | Path,
    channel: str,
    source: str,
    site_id: int,
) -> IngestResult:
    """Return the outcome of taking in one Part-10 file (STOW-RS, import); caller commits.

    The file is stored as received. Call with a session whose transaction has not yet
    touched the database, so the write lock is not held while the file is fsync'd; answer
    success only after committing. A refusal adds an `IntakeRejection` row to commit too.
    """
    raw = data.read_bytes() if isinstance(data, Path) else data
    return _take_in(
        db,
        lambda: prepare_part10(store=store, data=raw),
        store=store,
        parts=[raw],
        part10=True,
        channel=channel,
        source=source,
        site_id=site_id,
    )


def ingest_dataset(
    db: Session,
    *,
    store: BlobStore,
    dataset: bytes | memoryview,
    transfer_syntax_uid: str,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    channel: str,
    source: str,
    site_id: int,
) -> IngestResult:
    """Return the outcome of taking in one C-STORE data set (without file meta); caller commits.

    `sop_class_uid`/`sop_instance_uid` are what the request declared (Affected SOP Class
    and Instance UID); the data set must agree with them. The DICOM node itself calls
    `prepare_dataset` and `index_instance` separately, to retry the indexing alone.
    """
    declared = {
        "transfer_syntax_uid": transfer_syntax_uid,
        "sop_class_uid": sop_class_uid,
        "sop_instance_uid": sop_instance_uid,
    }

    def prepare() -> Prepared:
        return prepare_dataset(
            store=store,
            dataset=dataset,
            transfer_syntax_uid=transfer_syntax_uid,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
        )

    return _take_in(
        db,
        prepare,
        store=store,
        parts=[dataset],
        part10=False,
        channel=channel,
        source=source,
        site_id=site_id,
        declared=declared,
    )
