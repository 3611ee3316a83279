"""Web pages of the clinical review: the acute X-ray worklist, the emergency department's
view and the review screen of one study.

The review screen is rendered with the study's whole review state (the same model as
`GET /api/review/studies/{uid}`) and driven by `static/review.js`, which claims the study
for a radiologist, and sends every decision, the draft, signing and amendments through
`/api/review` with the CSRF header. Each page view is audited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from lods.auth.deps import SessionDep
from lods.db import utcnow
from lods.imaging import browse
from lods.imaging.views import person_name
from lods.review.api import (
    ReviewViewer,
    WorklistViewer,
    audit_list,
    audit_view,
)
from lods.review.readmodel import ADDED_CODES, ed_entries, review_state, waiting_parts
from lods.review.worklist import acute_worklist, recent_fingerprint, recent_studies
from lods.sites.models import Site
from lods.sites.service import get_site_by_code, list_sites
from lods.web.i18n import catalog, translate
from lods.web.templating import render, request_language

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
ED_HOURS = (2, 6, 12, 24, 48)
#: Message ids the review screen's script uses, without this prefix.
JS_PREFIX = "review.js."


def _site(db: Session, code: str) -> tuple[Site | None, bool]:
    """The site chosen by `?site=CODE`, and whether the code was unknown."""
    if not code:
        return None, False
    site = get_site_by_code(db, code=code)
    return site, site is None


def waiting_text(lang: str, waiting: timedelta) -> str:
    parts = waiting_parts(waiting)
    if parts["d"]:
        return translate(lang, "review.waiting.days", **parts)
    if parts["h"]:
        return translate(lang, "review.waiting.hours", **parts)
    return translate(lang, "review.waiting.minutes", **parts)


@router.get("/review", response_class=HTMLResponse)
def worklist_page(
    request: Request,
    db: SessionDep,
    user: WorklistViewer,
    site: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> HTMLResponse:
    """The acute X-ray worklist: most urgent AI result first, then longest waiting."""
    chosen, unknown = _site(db, site)
    rows = (
        []
        if unknown
        else acute_worklist(
            db,
            site_id=chosen.id if chosen else None,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
    )
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    audit_list(db, user, "worklist.view", {"site": site, "page": page, "via": "web"}, len(rows))
    lang = request_language(request)
    return render(
        request,
        "review/worklist.html",
        {
            "rows": rows,
            "sites": list_sites(db),
            "site": site,
            "unknown_site": unknown,
            "page": page,
            "more": more,
            "pn": person_name,
            "waiting": lambda w: waiting_text(lang, w),
            "me": user.user_id,
        },
    )


@router.get("/review/ed", response_class=HTMLResponse)
def ed_page(
    request: Request,
    db: SessionDep,
    user: ReviewViewer,
    site: Annotated[str, Query(max_length=32)] = "",
    hours: Annotated[int, Query(ge=1, le=168)] = 12,
) -> HTMLResponse:
    """The emergency department's view: recent studies with the AI's preliminary answer
    (labelled as not verified) and the final report once signed."""
    chosen, unknown = _site(db, site)
    rows = (
        []
        if unknown
        else recent_studies(db, site_id=chosen.id if chosen else None, hours=float(hours))
    )
    entries = ed_entries(db, rows)
    audit_list(db, user, "ed.view", {"site": site, "hours": hours, "via": "web"}, len(rows))
    lang = request_language(request)
    return render(
        request,
        "review/ed.html",
        {
            "entries": entries,
            "sites": list_sites(db),
            "site": site,
            "unknown_site": unknown,
            "hours": hours,
            "hour_choices": ED_HOURS if hours in ED_HOURS else (*ED_HOURS, hours),
            "fingerprint": ""
            if unknown
            else recent_fingerprint(db, site_id=chosen.id if chosen else None, hours=hours),
            "pn": person_name,
            "waiting": lambda w: waiting_text(lang, w),
        },
    )


@router.get("/review/studies/{study_uid}", response_class=HTMLResponse)
def review_page(
    study_uid: str, request: Request, db: SessionDep, user: ReviewViewer
) -> HTMLResponse:
    """The review screen: viewer, AI panel with a decision per finding, and the report."""
    detail = browse.get_study(db, study_uid=study_uid)
    if detail is None:
        return render(request, "imaging/study_missing.html", status_code=404)
    audit_view(db, user, detail, "review")
    state = review_state(db, detail, user, now=utcnow())
    lang = request_language(request)
    texts = {
        key[len(JS_PREFIX) :]: translate(lang, key)
        for key in catalog("en")
        if key.startswith(JS_PREFIX)
    }
    return render(
        request,
        "review/study.html",
        {
            "detail": detail,
            "state": state,
            "state_json": state.model_dump(mode="json"),
            "texts": texts,
            "codes": ADDED_CODES,
            "pn": person_name,
            "waiting": waiting_text(lang, utcnow() - detail.study.first_received_at),
        },
    )
