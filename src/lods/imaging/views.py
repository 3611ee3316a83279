"""Web pages: the study list (search, dates, site, paging) and a study with its images.

Images on the study page are WADO-RS rendered images (`/dicom-web/.../rendered`), loaded
with the browser's session cookie; every page view and every image request is audited.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from lods.audit.service import record
from lods.auth.deps import ImagingReader, SessionDep
from lods.findings.api import study_ai
from lods.imaging import browse
from lods.imaging.dicomweb_common import PREFIX
from lods.imaging.schemas import StudySearch
from lods.sites.service import list_sites
from lods.web.templating import render

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 25
MODALITIES = ("CR", "DX", "MG", "CT", "MR", "US", "NM", "PT", "XA", "RF", "OT", "SR")


def person_name(value: str) -> str:
    """Return a DICOM person name (`Family^Given^Middle^Prefix^Suffix`) for reading."""
    family, _, rest = value.partition("^")
    given = " ".join(p for p in rest.split("^")[:2] if p)
    return f"{family}, {given}" if family and given else (family or given or value)


def _search(params: dict[str, str], page: int) -> tuple[StudySearch, str | None]:
    """Return the search the form describes, or an empty one and the reason it is bad."""
    values = {k: v for k, v in params.items() if v}
    try:
        return StudySearch(**values, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE), None
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]) for e in exc.errors())
        return StudySearch(limit=PAGE_SIZE), reason


@router.get("/studies", response_class=HTMLResponse)
def study_list(
    request: Request,
    db: SessionDep,
    user: ImagingReader,
    q: Annotated[str, Query(max_length=200)] = "",
    date_from: str = "",
    date_to: str = "",
    site: Annotated[str, Query(max_length=32)] = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """Show the study list, newest first; htmx requests get only the results."""
    form = {"q": q, "date_from": date_from, "date_to": date_to, "site": site, "modality": modality}
    search, error = _search(form, page)
    found = browse.find_studies(
        db, study_filter=search.to_filter(), limit=search.limit, offset=search.offset
    )
    record(
        db,
        actor=user.username,
        action="study.list",
        source=user.source,
        detail={
            "filter": {k: v for k, v in form.items() if v},
            "page": page,
            "results": len(found.rows),
        },
    )
    context: dict[str, Any] = {
        "form": form,
        "error": error,
        "rows": found.rows,
        "total": found.total,
        "page": page,
        "pages": max(1, math.ceil(found.total / PAGE_SIZE)),
        "pn": person_name,
    }
    if request.headers.get("hx-request"):
        return render(request, "imaging/_study_rows.html", context)
    context.update(sites=list_sites(db), modalities=MODALITIES)
    return render(request, "imaging/studies.html", context)


def _viewer_data(detail: browse.StudyDetail) -> dict[str, Any]:
    """Return what the page's image viewer needs: series, instances and their URLs."""
    study_url = f"{PREFIX}/studies/{detail.study.study_uid}"
    series = []
    for s in detail.series:
        images = [i for i in s.instances if i.rows]
        if not images:
            continue
        series_url = f"{study_url}/series/{s.series.series_uid}"
        series.append(
            {
                "uid": s.series.series_uid,
                "modality": s.series.modality,
                "number": s.series.series_number,
                "description": s.series.description,
                "thumbnail": f"{series_url}/thumbnail",
                "instances": [
                    {
                        "uid": i.sop_instance_uid,
                        "url": f"{series_url}/instances/{i.sop_instance_uid}",
                        "frames": i.number_of_frames or 1,
                    }
                    for i in images
                ],
            }
        )
    return {"series": series}


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(
    study_uid: str, request: Request, db: SessionDep, user: ImagingReader
) -> HTMLResponse:
    """Show one study: header, the AI panel, series thumbnails and an image viewer."""
    detail = browse.get_study(db, study_uid=study_uid)
    if detail is None:
        return render(request, "imaging/study_missing.html", status_code=404)
    record(
        db,
        actor=user.username,
        action="study.view",
        source=user.source,
        study_uid=study_uid,
        patient_id=detail.patient.patient_id,
        detail={"via": "web"},
    )
    context = {
        "detail": detail,
        "viewer": _viewer_data(detail),
        "pn": person_name,
        # What each deployed solution did with the study; shadow output for AI owners only.
        "ai": study_ai(db, study_id=detail.study.id, roles=user.roles),
    }
    return render(request, "imaging/study.html", context)
