"""The screening list and its reads: `/review/screening` (HTML) and
`/api/review/screening` (JSON).

The reading strategy itself is `review.screening`; here it is shown and obeyed: a blind
second reader sees neither the AI score nor the first read, a reader who has read an exam
cannot read it again, and discordant reads wait for a consensus read. Radiologists read;
admins may watch the list. Listing is audited (`screening.list`), reads by the service.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, role_dependency
from lods.auth.models import Role
from lods.imaging.models import Study
from lods.imaging.views import person_name
from lods.review import screening
from lods.review.screening import ScreeningRow
from lods.review.service import ReviewError
from lods.review.views import waiting_text
from lods.sites.service import get_site_by_code, list_sites
from lods.web.templating import render, request_language

router = APIRouter(include_in_schema=False)
api_router = APIRouter(prefix="/api/review/screening", tags=["review"])

ListViewer = Annotated[Principal, Depends(role_dependency(Role.RADIOLOGIST, Role.ADMIN))]
Reader = Annotated[Principal, Depends(role_dependency(Role.RADIOLOGIST))]


class ScreeningRowOut(BaseModel):
    study_uid: str
    patient_id: str
    patient_name: str
    waiting_minutes: int
    #: None when this reader reads blind (or the exam has no AI score yet).
    ai_score: float | None
    state: str
    reads_done: int
    reads_needed: int
    outcome: str | None

    @classmethod
    def of(cls, row: ScreeningRow) -> ScreeningRowOut:
        return cls(
            study_uid=row.study_uid,
            patient_id=row.patient_id,
            patient_name=row.patient_name,
            waiting_minutes=int(row.waiting.total_seconds() // 60),
            ai_score=row.ai_score,
            state=row.state.value,
            reads_done=row.reads_done,
            reads_needed=row.reads_needed,
            outcome=row.outcome,
        )


class StateOut(BaseModel):
    state: str
    outcome: str | None


class ReadIn(BaseModel):
    outcome: Literal["recall", "no_recall"]
    comment: str = Field("", max_length=2000)


def _site_id(db: Session, code: str) -> int | None:
    if not code:
        return None
    site = get_site_by_code(db, code=code)
    if site is None:
        raise HTTPException(404, f"no site {code}")
    return site.id


def _study_id(db: Session, study_uid: str) -> int:
    study_id = db.scalar(select(Study.id).where(Study.study_uid == study_uid))
    if study_id is None:
        raise HTTPException(404, "no such study")
    return study_id


def _rows(db: Session, user: Principal, site: str) -> list[ScreeningRow]:
    rows = screening.screening_worklist(db, user, site_id=_site_id(db, site))
    record(
        db,
        actor=user.username,
        action="screening.list",
        source=user.source,
        detail={"site": site or None, "rows": len(rows)},
    )
    return rows


def _act(
    db: Session, user: Principal, study_uid: str, kind: str, outcome: str, comment: str
) -> None:
    study_id = _study_id(db, study_uid)
    step = screening.record_read if kind == "read" else screening.record_consensus
    try:
        step(db, study_id=study_id, user=user, outcome=outcome, comment=comment)
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@api_router.get("", response_model=list[ScreeningRowOut])
def screening_list(db: SessionDep, user: ListViewer, site: str = "") -> list[ScreeningRowOut]:
    """Open screening exams: highest AI score first, then the longest waiting."""
    return [ScreeningRowOut.of(r) for r in _rows(db, user, site)]


def _state(db: Session, study_uid: str) -> StateOut:
    status = screening.status(db, _study_id(db, study_uid))
    return StateOut(state=status.state.value, outcome=status.outcome)


@api_router.post("/{study_uid}/read", response_model=StateOut)
def read(
    study_uid: str, body: ReadIn, db: SessionDep, user: Reader, _csrf: CsrfProtected
) -> StateOut:
    """Your independent read: recall or no recall."""
    _act(db, user, study_uid, "read", body.outcome, body.comment)
    return _state(db, study_uid)


@api_router.post("/{study_uid}/consensus", response_model=StateOut)
def consensus(
    study_uid: str, body: ReadIn, db: SessionDep, user: Reader, _csrf: CsrfProtected
) -> StateOut:
    """Settle two discordant reads."""
    _act(db, user, study_uid, "consensus", body.outcome, body.comment)
    return _state(db, study_uid)


@router.get("/review/screening", response_class=HTMLResponse)
def screening_page(
    request: Request, db: SessionDep, user: ListViewer, site: str = ""
) -> HTMLResponse:
    rows = _rows(db, user, site)
    lang = request_language(request)
    return render(
        request,
        "review/screening.html",
        {
            "rows": rows,
            "sites": list_sites(db),
            "site": site,
            "unknown_site": False,
            "pn": person_name,
            "waiting": lambda w: waiting_text(lang, w),
        },
    )


@router.post("/review/screening/{study_uid}/{kind}", response_model=None)
def screening_form(
    study_uid: str,
    kind: Literal["read", "consensus"],
    db: SessionDep,
    user: Reader,
    _csrf: CsrfProtected,
    outcome: Annotated[Literal["recall", "no_recall"], Form()],
    comment: Annotated[str, Form(max_length=2000)] = "",
    site: Annotated[str, Form()] = "",
) -> Response:
    _act(db, user, study_uid, kind, outcome, comment)
    target = "/review/screening" + (f"?site={site}" if site else "")
    return RedirectResponse(target, status_code=303)
