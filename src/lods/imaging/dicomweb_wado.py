"""WADO-RS (PS3.18 10.4): instances as stored, metadata, bulk data, frames and rendered images.

Instances are returned exactly as received (the stored Part-10 file, byte for byte) in
their stored transfer syntax; Lods does not transcode, so asking for another transfer
syntax explicitly gets 406. Frames are returned as stored (one encapsulated frame with
its image media type, or native bytes as application/octet-stream), or decoded to
Explicit VR Little Endian when a client only accepts that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from lods.auth.deps import Principal
from lods.imaging import render as rnd
from lods.imaging.browse import InstanceRow, current_instances
from lods.imaging.dicomjson import DICOM_JSON, find_bulk_element, metadata, read_metadata
from lods.imaging.dicomweb_common import (
    DICOM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    NO_STORE,
    OCTET_STREAM,
    DicomwebSession,
    MediaRange,
    Reader,
    audit_and_commit,
    blob_store,
    file_chunks,
    is_wildcard,
    multipart_body,
    multipart_type,
    new_boundary,
    not_acceptable,
    not_found,
    parse_accept,
    urls_for,
)

log = logging.getLogger(__name__)
router = APIRouter()

#: The media type of a compressed frame, by transfer syntax (PS3.18 table 8.7.3-5).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
THUMBNAIL = rnd.Viewport(200, 200)


# --- finding what was asked for ------------------------------------------------------------------


def _rows(
    db: Session, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[InstanceRow]:
    rows = current_instances(
        db, study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid
    )
    if not rows:
        raise not_found("instance" if sop_uid else "series" if series_uid else "study")
    return rows


def _finish(
    db: Session,
    user: Principal,
    rows: list[InstanceRow],
    resource: str,
    **detail: Any,
) -> None:
    """Audit one retrieval of `rows` and end the transaction before data is sent."""
    first = rows[0]
    series = {r.series.series_uid for r in rows if r.series is not None}
    audit_and_commit(
        db,
        user,
        action="dicomweb.retrieve",
        study_uid=first.study.study_uid,
        patient_id=first.patient.patient_id,
        object_ref=next(iter(series)) if len(series) == 1 else None,
        detail={"resource": resource, "instances": len(rows), **detail},
    )


def _path(request: Request, row: InstanceRow) -> Path:
    assert row.instance is not None
    path = blob_store(request).path_for(row.instance.sha256)
    if not path.is_file():
        log.error("blob %s of instance %s is missing", row.instance.sha256, row.instance.id)
        raise HTTPException(500, "a stored file is missing; the administrator has been told")
    return path


# --- instances as stored -------------------------------------------------------------------------


def _accepts_stored(ranges: list[MediaRange], syntaxes: set[str]) -> bool:
    """Return True when the Accept ranges allow application/dicom in the stored syntaxes."""
    if not ranges:
        return True
    for r in ranges:
        if r.media_type == "*/*":
            return True
        if r.media_type != "multipart/related" or r.part_type not in (None, "*", "*/*", DICOM):
            continue
        if r.transfer_syntax in (None, "*") or syntaxes == {r.transfer_syntax}:
            return True
    return False


def _retrieve(request: Request, db: Session, user: Principal, rows: list[InstanceRow]) -> Response:
    syntaxes = {r.instance.transfer_syntax_uid for r in rows if r.instance is not None}
    if not _accepts_stored(parse_accept(request.headers.get("accept")), syntaxes):
        raise not_acceptable(
            'instances are returned as multipart/related; type="application/dicom" in the '
            f"transfer syntax they were received in ({', '.join(sorted(syntaxes))}); "
            "Lods does not transcode"
        )
    files = [(r.instance.transfer_syntax_uid, _path(request, r)) for r in rows if r.instance]
    _finish(db, user, rows, "instances")
    boundary = new_boundary()
    parts = ((f"{DICOM}; transfer-syntax={ts}", file_chunks(path)) for ts, path in files)
    return StreamingResponse(
        multipart_body(parts, boundary),
        media_type=multipart_type(DICOM, boundary),
        headers=NO_STORE,
    )


@router.get("/studies/{study_uid}")
def retrieve_study(study_uid: str, request: Request, db: DicomwebSession, user: Reader) -> Response:
    """Retrieve every current instance of a study."""
    return _retrieve(request, db, user, _rows(db, study_uid))


@router.get("/studies/{study_uid}/series/{series_uid}")
def retrieve_series(
    study_uid: str, series_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> Response:
    """Retrieve every current instance of a series."""
    return _retrieve(request, db, user, _rows(db, study_uid, series_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}")
def retrieve_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Retrieve one instance, byte-identical to what was received."""
    return _retrieve(request, db, user, _rows(db, study_uid, series_uid, sop_uid))


# --- metadata and bulk data ----------------------------------------------------------------------


def _metadata(request: Request, db: Session, user: Principal, rows: list[InstanceRow]) -> Response:
    paths = [(row, _path(request, row)) for row in rows]
    _finish(db, user, rows, "metadata")
    urls = urls_for(request)
    body = []
    for row, path in paths:
        assert row.instance is not None and row.series is not None
        ds, pixel_tag = read_metadata(path)
        base = urls.instance(
            row.study.study_uid, row.series.series_uid, row.instance.sop_instance_uid
        )
        body.append(
            metadata(
                ds,
                pixel_tag=pixel_tag,
                bulk_url=f"{base}/bulk",
                transfer_syntax_uid=row.instance.transfer_syntax_uid,
            )
        )
    return JSONResponse(body, media_type=DICOM_JSON, headers=NO_STORE)


@router.get("/studies/{study_uid}/metadata")
def study_metadata(study_uid: str, request: Request, db: DicomwebSession, user: Reader) -> Response:
    """Return the metadata of every current instance of a study."""
    return _metadata(request, db, user, _rows(db, study_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/metadata")
def series_metadata(
    study_uid: str, series_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> Response:
    """Return the metadata of every current instance of a series."""
    return _metadata(request, db, user, _rows(db, study_uid, series_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata")
def instance_metadata(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Return the metadata of one instance."""
    return _metadata(request, db, user, _rows(db, study_uid, series_uid, sop_uid))


def _wants_single_part(accept: str | None) -> bool:
    ranges = parse_accept(accept)
    return bool(ranges) and ranges[0].media_type == OCTET_STREAM


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/{path:path}")
def bulk_data(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    path: str,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Return one bulk data value that a metadata BulkDataURI points at."""
    rows = _rows(db, study_uid, series_uid, sop_uid)
    file_path = _path(request, rows[0])
    _finish(db, user, rows, "bulkdata", path=path)
    try:
        value = find_bulk_element(pydicom.dcmread(file_path), path).value
    except KeyError:
        raise not_found("bulk data") from None
    data = value if isinstance(value, bytes) else str(value).encode()
    if _wants_single_part(request.headers.get("accept")):
        return Response(data, media_type=OCTET_STREAM, headers=NO_STORE)
    boundary = new_boundary()
    body = b"".join(multipart_body([(OCTET_STREAM, [data])], boundary))
    return Response(body, media_type=multipart_type(OCTET_STREAM, boundary), headers=NO_STORE)


# --- frames --------------------------------------------------------------------------------------


def parse_frame_list(value: str) -> list[int]:
    """Return 1-based frame numbers of a `frames/1,2,3` path segment; 400 when malformed."""
    try:
        frames = [int(v) for v in value.split(",")]
    except ValueError:
        raise HTTPException(400, "frames are given as 1-based numbers, e.g. 1,2,3") from None
    if not frames or min(frames) < 1:
        raise HTTPException(400, "frame numbers start at 1")
    return frames


def frame_plan(ranges: list[MediaRange], stored_ts: str) -> tuple[str, str, bool] | None:
    """Return (part media type, transfer syntax, decode?) for frames, or None if unacceptable.

    Native frames are passed through as application/octet-stream in Explicit VR Little
    Endian; compressed ones in their own syntax when the client accepts it, else decoded.
    """
    encapsulated = pydicom.uid.UID(stored_ts).is_encapsulated
    native = (OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, False)
    own_type = FRAME_MEDIA_TYPES.get(stored_ts, OCTET_STREAM)
    if not ranges:
        return (own_type, stored_ts, False) if encapsulated else native
    for r in ranges:
        ts = r.transfer_syntax
        if is_wildcard(r) and ts in (None, "*", stored_ts):
            return (own_type, stored_ts, False) if encapsulated else native
        if r.media_type != "multipart/related":
            continue
        if not encapsulated:
            if r.part_type == OCTET_STREAM and ts in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
                return native
            continue
        if ts in ("*", stored_ts) and r.part_type in (OCTET_STREAM, own_type):
            return r.part_type or own_type, stored_ts, False
        if ts is None and r.part_type == own_type:
            return own_type, stored_ts, False
        if r.part_type == OCTET_STREAM and ts in (None, EXPLICIT_VR_LITTLE_ENDIAN):
            return OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, True
    return None


def _frame_payloads(ds: Dataset, frames: list[int], decode: bool) -> list[bytes]:
    count = rnd.number_of_frames(ds)
    missing = [f for f in frames if f > count]
    if missing or rnd.pixel_keyword(ds) is None:
        raise not_found(f"frame {missing[0] if missing else 1}")
    try:
        return [
            rnd.decoded_frame(ds, f - 1) if decode else rnd.stored_frame(ds, f - 1) for f in frames
        ]
    except rnd.RenderError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}")
def retrieve_frames(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Return the requested frames' pixel data, one multipart part per frame."""
    frames = parse_frame_list(frame_list)
    rows = _rows(db, study_uid, series_uid, sop_uid)
    assert rows[0].instance is not None
    plan = frame_plan(
        parse_accept(request.headers.get("accept")), rows[0].instance.transfer_syntax_uid
    )
    if plan is None:
        raise not_acceptable("the frames are not available in the media type asked for")
    file_path = _path(request, rows[0])
    _finish(db, user, rows, "frames", frames=frames)
    part_type, ts, decode = plan
    payloads = _frame_payloads(pydicom.dcmread(file_path), frames, decode)
    boundary = new_boundary()
    content_type = f"{part_type}; transfer-syntax={ts}"
    body = b"".join(multipart_body(((content_type, [p]) for p in payloads), boundary))
    return Response(body, media_type=multipart_type(part_type, boundary), headers=NO_STORE)


# --- rendered images and thumbnails --------------------------------------------------------------


def _render_params(request: Request, *, thumbnail: bool) -> dict[str, Any]:
    params = request.query_params
    media_type = rnd.choose_rendered_type(params.get("accept") or request.headers.get("accept"))
    if media_type is None:
        raise not_acceptable("rendered images are available as image/jpeg or image/png")
    try:
        window = rnd.parse_window(params["window"]) if params.get("window") else None
        viewport = rnd.parse_viewport(params["viewport"]) if params.get("viewport") else None
        quality = rnd.parse_quality(params["quality"]) if params.get("quality") else 90
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if thumbnail and viewport is None:
        viewport = THUMBNAIL
    return {"window": window, "viewport": viewport, "media_type": media_type, "quality": quality}


def _rendered(
    request: Request,
    db: Session,
    user: Principal,
    rows: list[InstanceRow],
    *,
    frame: int = 1,
    thumbnail: bool = False,
) -> Response:
    options = _render_params(request, thumbnail=thumbnail)
    row = rows[len(rows) // 2] if thumbnail else rows[0]
    file_path = _path(request, row)
    _finish(db, user, [row], "thumbnail" if thumbnail else "rendered", frame=frame)
    try:
        image = rnd.render(pydicom.dcmread(file_path), frame=frame - 1, **options)
    except rnd.NoSuchFrame as exc:
        raise HTTPException(404, str(exc)) from None
    except rnd.RenderError as exc:
        raise HTTPException(422, str(exc)) from None
    return Response(image, media_type=options["media_type"], headers=NO_STORE)


def _image_rows(db: Session, study_uid: str, series_uid: str | None = None) -> list[InstanceRow]:
    rows = [r for r in _rows(db, study_uid, series_uid) if r.instance and r.instance.rows]
    if not rows:
        raise not_found("image")
    return rows


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered")
def instance_rendered(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Return the instance's first frame rendered as JPEG or PNG."""
    return _rendered(request, db, user, _rows(db, study_uid, series_uid, sop_uid))


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered")
def frame_rendered(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame: int,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Return one frame (1-based) rendered as JPEG or PNG."""
    if frame < 1:
        raise HTTPException(400, "frame numbers start at 1")
    return _rendered(request, db, user, _rows(db, study_uid, series_uid, sop_uid), frame=frame)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/thumbnail")
def instance_thumbnail(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    request: Request,
    db: DicomwebSession,
    user: Reader,
) -> Response:
    """Return a small rendering of the instance."""
    rows = _rows(db, study_uid, series_uid, sop_uid)
    return _rendered(request, db, user, rows, thumbnail=True)


@router.get("/studies/{study_uid}/series/{series_uid}/thumbnail")
def series_thumbnail(
    study_uid: str, series_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> Response:
    """Return a small rendering of the series' middle image."""
    return _rendered(request, db, user, _image_rows(db, study_uid, series_uid), thumbnail=True)


@router.get("/studies/{study_uid}/thumbnail")
def study_thumbnail(
    study_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> Response:
    """Return a small rendering of an image of the study."""
    rows = _image_rows(db, study_uid)
    first_series = rows[0].series
    rows = [r for r in rows if r.series is first_series]
    return _rendered(request, db, user, rows, thumbnail=True)
