"""JSON API of the audit trail, for auditors only: search, verify, export.

Reading the trail is itself audited: a search as `audit.read`, a verification as
`audit.verify`, an export as `audit.export`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from lods.audit import service
from lods.audit.schemas import (
    EXPORT_MEDIA_TYPES,
    AuditEventOut,
    AuditPage,
    EventQuery,
    ExportFormat,
    ProblemOut,
    VerifyOut,
    export_lines,
)
from lods.auth.deps import AuditorUser, RuntimeDep, SessionDep
from lods.db import utcnow

router = APIRouter(prefix="/api/audit", tags=["audit"])


@router.get("/events", response_model=AuditPage)
def list_events(
    db: SessionDep,
    auditor: AuditorUser,
    query: Annotated[EventQuery, Query()],
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    """Return matching audit events, newest first, one page at a time."""
    filters = query.to_filter()
    events, total = service.list_events(db, filters=filters, limit=limit, offset=offset)
    service.record(
        db,
        actor=auditor.username,
        action="audit.read",
        source=auditor.source,
        detail={"filters": filters.described(), "offset": offset, "returned": len(events)},
    )
    return AuditPage(
        total=total, limit=limit, offset=offset, events=[AuditEventOut.of(e) for e in events]
    )


@router.get("/verify", response_model=VerifyOut)
def verify(db: SessionDep, runtime: RuntimeDep, auditor: AuditorUser) -> VerifyOut:
    """Return whether the hash chain is intact, and every problem found if it is not."""
    count, problems = service.verify_audited(
        db, engine=runtime.engine, actor=auditor.username, source=auditor.source
    )
    return VerifyOut(ok=not problems, events=count, problems=[ProblemOut.of(p) for p in problems])


@router.get("/export")
def export(
    db: SessionDep,
    runtime: RuntimeDep,
    auditor: AuditorUser,
    query: Annotated[EventQuery, Query()],
    format: Annotated[ExportFormat, Query()] = "jsonl",
) -> StreamingResponse:
    """Stream matching events in chain order as JSON Lines or CSV, for download."""
    filters = query.to_filter()
    service.record(
        db,
        actor=auditor.username,
        action="audit.export",
        source=auditor.source,
        detail={"filters": filters.described(), "format": format},
    )
    # Commit now: the export is on record before any of it leaves, and a long download
    # does not hold the request's transaction (on SQLite, the write lock) open.
    db.commit()

    def lines() -> Iterator[str]:
        with service.unlocked_reader(runtime.engine) as reader:
            yield from export_lines(service.iter_events(reader, filters=filters), fmt=format)

    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines(),
        media_type=EXPORT_MEDIA_TYPES[format],
        headers={
            "Content-Disposition": f'attachment; filename="lods-audit-{stamp}.{format}"',
            "Cache-Control": "no-store",
        },
    )
