"""The ward's fall figures page, `/wards/{ward_id}/falls`: falls per 1,000 bed-days before
and after the falls solution, sensor alarms per bed-day, PPV of fall alarms, response
times — each with the counts behind it — for a date range. Counts only, no patient data;
for nurses, physicians, AI owners and administrators."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from lods.auth.deps import SessionDep
from lods.falls.api import FigureReader, figure_window
from lods.monitoring.falls import ward_fall_figures
from lods.sites.models import Department
from lods.sites.service import BED_KINDS
from lods.web.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/wards/{ward_id}/falls", response_class=HTMLResponse)
def fall_figures_page(
    ward_id: int,
    request: Request,
    db: SessionDep,
    _user: FigureReader,
    start: Annotated[str | None, Query(max_length=40)] = None,
    end: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    """Show the ward's fall figures for the chosen dates (default: the last 365 days)."""
    ward = db.get(Department, ward_id)
    if ward is None or ward.kind not in BED_KINDS:
        return render(request, "falls/figures.html", {"missing": True}, status_code=404)
    try:
        begin, stop = figure_window(start or None, end or None)
    except ValueError as exc:
        begin, stop = figure_window(None, None)
        error: str | None = str(exc)
    else:
        error = None
    figures = ward_fall_figures(db, ward_id=ward.id, start=begin, end=stop)
    return render(
        request,
        "falls/figures.html",
        {
            "ward": ward,
            "figures": figures,
            "start": begin.date().isoformat(),
            # The form shows the inclusive last day.
            "end": (stop - timedelta(days=1)).date().isoformat(),
            "error": error,
        },
        status_code=422 if error else 200,
    )
