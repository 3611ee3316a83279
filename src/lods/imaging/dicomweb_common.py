"""What the DICOMweb routes share: sessions and roles, media types, multipart, URLs, audit.

DICOMweb routes manage their own transactions: the principal is resolved and that
transaction committed at once, and each route commits its audit event *before* patient
data leaves the server. So the trail never misses a delivered answer, and no database
lock is held while a client downloads a study or uploads one (on SQLite a write
transaction would block the DICOM intake meanwhile).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.deps import (
    CLINICAL_IMAGING_READERS,
    IMAGING_WRITERS,
    Forbidden,
    NotAuthenticated,
    Principal,
    get_runtime,
    resolve_principal,
)
from lods.imaging.dicomjson import Urls
from lods.imaging.store import BlobStore

PREFIX = "/dicom-web"
CHUNK = 1 << 20
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Patient data is never kept in caches: each view reaches the server and is audited.
NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: `multipart/related; type="..."; transfer-syntax=...`."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str | None:
        """Return the `type` parameter of a multipart range (the media type of each part)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split_params(text: str) -> list[str]:
    """Return `;`-separated fields of a header value, keeping quoted strings whole."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return [f.strip() for f in fields if f.strip()]


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Return the media type (lower case) and its parameters of a Content-Type value."""
    media, *params = _split_params(value) or [""]
    parsed: dict[str, str] = {}
    for param in params:
        name, _, raw = param.partition("=")
        parsed[name.strip().lower()] = raw.strip().strip('"')
    return media.strip().lower(), parsed


def _split_ranges(header: str) -> list[str]:
    ranges: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            ranges.append("".join(current))
            current = []
        else:
            current.append(char)
    ranges.append("".join(current))
    return [r for r in (x.strip() for x in ranges) if r]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Return the ranges of an Accept header, most wanted first (empty when absent)."""
    ranked: list[tuple[float, int, MediaRange]] = []
    for position, item in enumerate(_split_ranges(header or "")):
        media, params = parse_media_type(item)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, MediaRange(media, params, quality)))
    return [r for _q, _p, r in sorted(ranked, key=lambda t: (t[0], t[1]))]


def is_wildcard(media_range: MediaRange) -> bool:
    """Return True for `*/*`, or a multipart range whose parts may be anything."""
    if media_range.media_type == "*/*":
        return True
    return media_range.media_type == "multipart/related" and media_range.part_type in (
        None,
        "*",
        "*/*",
    )


def wants_json(accept: str | None) -> bool:
    """Return True when an Accept header allows DICOM JSON (or says nothing)."""
    ranges = parse_accept(accept)
    ok = {"application/dicom+json", "application/json", "application/*", "*/*"}
    return not ranges or any(r.media_type in ok for r in ranges)


# --- multipart/related ---------------------------------------------------------------------------


def new_boundary() -> str:
    """Return a fresh multipart boundary that cannot occur in a part by chance."""
    return f"lods-{os.urandom(16).hex()}"


def multipart_type(part_type: str, boundary: str) -> str:
    """Return the Content-Type of a multipart/related body of `part_type` parts."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def multipart_body(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """Yield a multipart/related body from (Content-Type, content chunks) parts."""
    for content_type, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def file_chunks(path: Path) -> Iterator[bytes]:
    """Yield a file's bytes in 1 MiB chunks (so large files are streamed, not loaded)."""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


# --- sessions and roles --------------------------------------------------------------------------


def dicomweb_session(request: Request) -> Iterator[Session]:
    """Yield a session whose transactions the route commits itself (closing rolls back)."""
    with get_runtime(request).sessions() as db:
        yield db


DicomwebSession = Annotated[Session, Depends(dicomweb_session)]


def _principal_with(roles: frozenset[Any]) -> Callable[[Request, Session], Principal]:
    def check(request: Request, db: DicomwebSession) -> Principal:
        principal = resolve_principal(request, db)
        db.commit()  # keeps a token's last use; ends the transaction before the work
        if principal is None:
            raise NotAuthenticated()
        if not principal.has_any(roles):
            raise Forbidden(roles)
        request.state.principal = principal
        return principal

    return check


#: Who may search and retrieve (bearer token or session), and who may store.
Reader = Annotated[Principal, Depends(_principal_with(CLINICAL_IMAGING_READERS))]
Writer = Annotated[Principal, Depends(_principal_with(IMAGING_WRITERS))]


# --- request context -----------------------------------------------------------------------------


def base_url(request: Request) -> str:
    """Return the URL clients reach this server at, without a trailing slash.

    `Settings.public_url` when set (behind a reverse proxy); else the request's own URL.
    A Host header without a port (dicomweb-client sends one) gets the port the request
    arrived on, unless that is the scheme's default.
    """
    public: str | None = request.app.state.runtime.settings.public_url
    if public:
        return public.rstrip("/")
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and server[1] not in (None, 80, 443):
        url = url.replace(port=server[1])
    return str(url).rstrip("/")


def urls_for(request: Request) -> Urls:
    """Return the URL builder for this server's DICOMweb root."""
    return Urls(base_url(request) + PREFIX)


def blob_store(request: Request) -> BlobStore:
    """Return the installation's blob store (one per app, made on first use)."""
    store: BlobStore | None = getattr(request.app.state, "blob_store", None)
    if store is None:
        store = BlobStore.from_settings(request.app.state.runtime.settings)
        request.app.state.blob_store = store
    return store


def audit_and_commit(
    db: Session,
    user: Principal,
    *,
    action: str,
    study_uid: str | None = None,
    patient_id: str | None = None,
    object_ref: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record one audit event for this request and commit, before any data is sent."""
    record(
        db,
        actor=user.username,
        action=action,
        patient_id=patient_id,
        study_uid=study_uid,
        object_ref=object_ref,
        source=user.source,
        detail=detail,
    )
    db.commit()


def not_found(what: str) -> HTTPException:
    """Return the 404 for a study, series, instance or frame that does not exist."""
    return HTTPException(status_code=404, detail=f"{what} not found")


def not_acceptable(message: str) -> HTTPException:
    """Return the 406 for an Accept header Lods cannot satisfy."""
    return HTTPException(status_code=406, detail=message)
