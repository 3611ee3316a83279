"""JSON API of the outbox under /api/exports: counts, the rows, and retrying a failed one.

For administrators. A retry is audited (`export.retry`) with the user's name and address.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.auth.csrf import CsrfProtected
from lods.auth.deps import AdminUser, SessionDep
from lods.exports import outbox
from lods.exports.models import OutboxItem
from lods.imaging.models import Study
from lods.sites.models import DicomNode

router = APIRouter(prefix="/api/exports", tags=["exports"])

ExportState = Literal["pending", "sending", "sent", "failed"]


class ExportOut(BaseModel):
    """One outbox row: what goes where, how it went, and why it failed (if it did)."""

    id: int
    transport: str
    destination: str
    #: The destination in words (for DICOM: AE title, host and port of the node).
    destination_label: str
    what: str
    state: str
    attempts: int
    study_uid: str | None
    report_id: int | None
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None


class ExportPage(BaseModel):
    counts: dict[str, int]
    items: list[ExportOut]
    limit: int
    offset: int


def _dicom_labels(db: Session, items: Sequence[OutboxItem]) -> dict[str, str]:
    ids = {int(i.destination) for i in items if i.transport == "dicom" and i.destination.isdigit()}
    if not ids:
        return {}
    nodes = db.scalars(select(DicomNode).where(DicomNode.id.in_(sorted(ids))))
    return {
        str(n.id): f"{n.ae_title} ({n.host or '?'}:{n.port or '?'})"
        + ("" if n.is_active else " — inactive")
        for n in nodes
    }


def describe(db: Session, items: Sequence[OutboxItem]) -> list[ExportOut]:
    """Return the rows as the admin page and the API show them."""
    study_ids = sorted({i.study_fk for i in items if i.study_fk is not None})
    studies = (
        {
            row.id: row.study_uid
            for row in db.execute(select(Study.id, Study.study_uid).where(Study.id.in_(study_ids)))
        }
        if study_ids
        else {}
    )
    labels = _dicom_labels(db, items)
    return [
        ExportOut(
            id=i.id,
            transport=i.transport,
            destination=i.destination,
            destination_label=labels.get(i.destination, i.destination)
            if i.transport == "dicom"
            else i.destination,
            what=i.what,
            state=i.state,
            attempts=i.attempts,
            study_uid=studies.get(i.study_fk) if i.study_fk is not None else None,
            report_id=i.report_fk,
            created_at=i.created_at,
            next_attempt_at=i.next_attempt_at,
            sent_at=i.sent_at,
            last_error=i.last_error,
        )
        for i in items
    ]


def _one(db: Session, item_id: int) -> ExportOut:
    item = outbox.get_item(db, item_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no outbox row {item_id}")
    return describe(db, [item])[0]


@router.get("", response_model=ExportPage)
def list_exports(
    db: SessionDep,
    _user: AdminUser,
    state: Annotated[
        list[ExportState] | None, Query(description="Only rows in these states")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ExportPage:
    """Counts per state, and the rows (newest first), optionally only some states."""
    items = outbox.list_items(db, states=list(state) if state else None, limit=limit, offset=offset)
    return ExportPage(
        counts=outbox.counts(db), items=describe(db, items), limit=limit, offset=offset
    )


@router.get("/{item_id}", response_model=ExportOut)
def get_export(item_id: int, db: SessionDep, _user: AdminUser) -> ExportOut:
    """One outbox row."""
    return _one(db, item_id)


@router.post("/{item_id}/retry", response_model=ExportOut)
def retry_export(item_id: int, db: SessionDep, user: AdminUser, _csrf: CsrfProtected) -> ExportOut:
    """Queue a failed send again, due now, attempts reset (409 unless it failed)."""
    current = _one(db, item_id)
    if not outbox.retry(db, item_id, actor=user.username, source=user.source):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"outbox row {item_id} is {current.state}; only failed sends are retried",
        )
    return _one(db, item_id)
