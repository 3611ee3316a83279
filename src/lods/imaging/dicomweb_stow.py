"""STOW-RS (PS3.18 10.5): store Part-10 instances sent as multipart/related.

The request body is spooled to a temporary file (never held in memory, and capped by
`Settings.stow_max_bytes`), split into parts, and each part goes through the same intake
as C-STORE (`ingest_part10`, channel "stow"), committed one by one: a part answered as
stored is durable even if a later part fails. No database lock is held while the body
is being received.
"""

from __future__ import annotations

import io
import logging
import mmap
from dataclasses import dataclass
from pathlib import Path

import pydicom
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal
from lods.imaging.dicomjson import DICOM_JSON, StoredPart, stow_response
from lods.imaging.dicomweb_common import (
    DICOM,
    DicomwebSession,
    Writer,
    blob_store,
    parse_media_type,
    urls_for,
)
from lods.imaging.ingest import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, PREAMBLE, IntakeError
from lods.imaging.models import Instance
from lods.imaging.quarantine import reject
from lods.imaging.service import ingest_part10
from lods.sites.models import Site
from lods.sites.service import get_site_by_code, unassigned_site

log = logging.getLogger(__name__)
router = APIRouter()

#: DICOM status for a part Lods could not take in because of a fault of its own.
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Part:
    """One body part of a multipart message: its headers and where its content lies."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def split_multipart(body: bytes | mmap.mmap, boundary: str) -> list[Part]:
    """Return the parts of a multipart body (RFC 2046 5.1); ValueError when malformed."""
    delimiter = b"--" + boundary.encode("latin-1")
    position = body.find(delimiter)
    if position < 0 or (position > 0 and body[position - 2 : position] != b"\r\n"):
        raise ValueError("the body does not start with the multipart boundary")
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return parts
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise ValueError("a multipart boundary line is not terminated")
        header_start = line_end + 2
        if body[header_start : header_start + 2] == b"\r\n":
            header_end, content_start = header_start, header_start + 2
        else:
            header_end = body.find(b"\r\n\r\n", header_start)
            if header_end < 0:
                raise ValueError("a multipart part has no end of headers")
            content_start = header_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise ValueError("the multipart body is not closed by its final boundary")
        headers = _headers(bytes(body[header_start:header_end]))
        parts.append(Part(headers, content_start, content_end))
        position = content_end + 2


def as_part10(data: bytes) -> bytes:
    """Return a part as a Part-10 file, adding the preamble and `DICM` if only they are missing.

    Some clients (dicomweb-client among them) write the file meta without the 128-byte
    preamble; the data set and its meta are kept exactly as sent.
    """
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00" and data[4:6].isalpha():
        return PREAMBLE + data
    return data


def _check_request_type(content_type: str) -> str:
    """Return the boundary of a `multipart/related; type="application/dicom"` request."""
    media, params = parse_media_type(content_type)
    if media != "multipart/related" or params.get("type", "").lower() != DICOM:
        raise HTTPException(415, 'STOW-RS accepts multipart/related; type="application/dicom" only')
    boundary = params.get("boundary")
    if not boundary:
        raise HTTPException(400, "the multipart/related request has no boundary")
    return boundary


async def _spool(request: Request, target: Path, limit: int) -> None:
    """Write the request body to `target`; 413 when it grows past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the request is larger than the limit of {limit} bytes")
    size = 0
    with target.open("wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the request is larger than the limit of {limit} bytes")
            fh.write(chunk)


@dataclass
class _Stow:
    """Everything one STOW-RS request needs while it stores its parts."""

    request: Request
    db: Session
    user: Principal
    site: Site
    study_uid: str | None

    def peek(self, data: bytes) -> tuple[str | None, str | None, str | None]:
        """Return (SOP Class, SOP Instance, Study Instance UID) if the header is readable."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:  # the intake itself explains unreadable data
            return None, None, None
        uids = (ds.get("SOPClassUID"), ds.get("SOPInstanceUID"), ds.get("StudyInstanceUID"))
        return tuple(str(u) if u else None for u in uids)  # type: ignore[return-value]

    def refuse(self, data: bytes, status: int, reason: str, sop_uid: str | None) -> None:
        settings = self.request.app.state.runtime.settings
        error = IntakeError(status, reason, sop_instance_uid=sop_uid)
        reject(
            self.db,
            quarantine_dir=settings.quarantine_dir,
            error=error,
            parts=[data],
            part10=True,
            channel="stow",
            source=self.user.username,
        )
        self.db.commit()

    def store(self, part_type: str, data: bytes) -> StoredPart:
        """Return the outcome of taking in one part (committed before returning)."""
        sop_class, sop_uid, study_uid = self.peek(data)
        media, _params = parse_media_type(part_type or DICOM)
        if media != DICOM:
            self.refuse(data, CANNOT_UNDERSTAND, f"a part of type {media!r} is not DICOM", sop_uid)
            return StoredPart(sop_class, sop_uid, failure_reason=CANNOT_UNDERSTAND)
        if self.study_uid and study_uid and study_uid != self.study_uid:
            reason = f"the instance belongs to study {study_uid}, not {self.study_uid}"
            self.refuse(data, DATASET_DOES_NOT_MATCH, reason, sop_uid)
            return StoredPart(sop_class, sop_uid, failure_reason=DATASET_DOES_NOT_MATCH)
        result = ingest_part10(
            self.db,
            store=blob_store(self.request),
            data=data,
            channel="stow",
            source=self.user.username,
            site_id=self.site.id,
        )
        self.db.commit()
        if not result.ok:
            return StoredPart(
                sop_class, result.sop_instance_uid or sop_uid, failure_reason=result.dicom_status
            )
        instance = self.db.get(Instance, result.instance_id)
        if instance is None:
            raise RuntimeError(f"instance {result.instance_id} vanished after it was stored")
        url = urls_for(self.request).instance(
            result.study_uid or "", instance.series.series_uid, instance.sop_instance_uid
        )
        return StoredPart(
            instance.sop_class_uid,
            instance.sop_instance_uid,
            retrieve_url=url,
            study_uid=result.study_uid,
        )

    def store_safely(self, part_type: str, data: bytes) -> StoredPart:
        """Return the outcome of one part; an unexpected fault fails that part only."""
        try:
            return self.store(part_type, data)
        except Exception:
            log.exception("STOW-RS part from %s could not be stored", self.user.username)
            self.db.rollback()
            return StoredPart(None, None, failure_reason=PROCESSING_FAILURE)


def _resolve_site(db: Session, code: str | None) -> Site:
    if code:
        site = get_site_by_code(db, code=code)
        if site is None:
            raise HTTPException(400, f"there is no site with code {code!r}")
        return site
    return unassigned_site(db)


def _store_all(stow: _Stow, spool: Path) -> list[StoredPart]:
    with spool.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
        boundary = _check_request_type(stow.request.headers.get("content-type", ""))
        try:
            parts = split_multipart(body, boundary)
        except ValueError as exc:
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        if not parts:
            raise HTTPException(400, "the request holds no instances")
        return [stow.store_safely(p.content_type, as_part10(body[p.start : p.end])) for p in parts]


def _finish(stow: _Stow, results: list[StoredPart]) -> None:
    stored = [r for r in results if r.failure_reason is None]
    study_uids = {r.study_uid for r in stored if r.study_uid}
    record(
        stow.db,
        actor=stow.user.username,
        action="dicomweb.store",
        outcome="success" if len(stored) == len(results) else "partial" if stored else "failure",
        study_uid=next(iter(study_uids)) if len(study_uids) == 1 else None,
        source=stow.user.source,
        detail={
            "stored": len(stored),
            "failed": len(results) - len(stored),
            "site": stow.site.code,
            "studies": sorted(study_uids),
        },
    )
    stow.db.commit()


async def _stow(
    request: Request, db: Session, user: Principal, study_uid: str | None
) -> JSONResponse:
    _check_request_type(request.headers.get("content-type", ""))
    site = await run_in_threadpool(_resolve_site, db, request.query_params.get("site"))
    # End the transaction the authentication opened: no lock while the body arrives.
    await run_in_threadpool(db.commit)
    settings = request.app.state.runtime.settings
    spool = blob_store(request).new_tmp_path(".stow")
    try:
        await _spool(request, spool, settings.stow_max_bytes)
        stow = _Stow(request, db, user, site, study_uid)
        results = await run_in_threadpool(_store_all, stow, spool)
        await run_in_threadpool(_finish, stow, results)
    finally:
        spool.unlink(missing_ok=True)
    failed = sum(r.failure_reason is not None for r in results)
    status = 200 if failed == 0 else 409 if failed == len(results) else 202
    study_url = urls_for(request).study(study_uid) if study_uid else None
    body = stow_response(results, study_url=study_url)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


@router.post("/studies")
async def store_instances(
    request: Request, db: DicomwebSession, user: Writer, _csrf: CsrfProtected
) -> JSONResponse:
    """Store instances (of any studies)."""
    return await _stow(request, db, user, None)


@router.post("/studies/{study_uid}")
async def store_study_instances(
    study_uid: str, request: Request, db: DicomwebSession, user: Writer, _csrf: CsrfProtected
) -> JSONResponse:
    """Store instances that must all belong to study `study_uid`."""
    return await _stow(request, db, user, study_uid)
