"""QIDO-RS (PS3.18 10.6): search for studies, series and instances in DICOM JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from lods.auth.deps import Principal
from lods.imaging.browse import scope_conditions, search
from lods.imaging.dicomjson import DICOM_JSON, row_values, search_result
from lods.imaging.dicomweb_common import (
    NO_STORE,
    DicomwebSession,
    Reader,
    audit_and_commit,
    urls_for,
    wants_json,
)
from lods.imaging.query import Level, QueryError, conditions, parse_qido

router = APIRouter()


def _audit_detail(level: Level, request: Request, results: int) -> dict[str, Any]:
    return {"level": level, "query": str(request.url.query), "results": results}


def _single_patient(patient_ids: set[str]) -> str | None:
    return next(iter(patient_ids)) if len(patient_ids) == 1 else None


def _qido(
    request: Request,
    db: Session,
    user: Principal,
    level: Level,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> JSONResponse:
    """Return the QIDO-RS answer for `level`, optionally scoped to a study or series."""
    if not wants_json(request.headers.get("accept")):
        raise HTTPException(406, "search results are available as application/dicom+json")
    try:
        query = parse_qido(level, request.query_params.multi_items())
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    where = conditions(query) + scope_conditions(study_uid=study_uid, series_uid=series_uid)
    page = search(db, level=level, where=where, limit=query.limit, offset=query.offset)
    urls, keywords = urls_for(request), query.return_keywords()
    body = [search_result(row_values(row, urls), keywords) for row in page.rows]
    audit_and_commit(
        db,
        user,
        action="dicomweb.search",
        study_uid=study_uid,
        object_ref=series_uid,
        patient_id=_single_patient({row.patient.patient_id for row in page.rows}),
        detail=_audit_detail(level, request, len(body)),
    )
    warnings = []
    if page.more:
        warnings.append('299 lods "There are additional results that can be requested"')
    if query.not_returned:
        fields = ", ".join(query.not_returned)
        warnings.append(f'299 lods "The fields {fields} could not be returned"')
    headers = {**NO_STORE, "Warning": ", ".join(warnings)} if warnings else NO_STORE
    return JSONResponse(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies")
def search_studies(request: Request, db: DicomwebSession, user: Reader) -> JSONResponse:
    """Search for studies."""
    return _qido(request, db, user, "study")


@router.get("/series")
def search_series(request: Request, db: DicomwebSession, user: Reader) -> JSONResponse:
    """Search for series in all studies."""
    return _qido(request, db, user, "series")


@router.get("/instances")
def search_instances(request: Request, db: DicomwebSession, user: Reader) -> JSONResponse:
    """Search for instances in all studies."""
    return _qido(request, db, user, "instance")


@router.get("/studies/{study_uid}/series")
def search_study_series(
    study_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> JSONResponse:
    """Search for series of one study."""
    return _qido(request, db, user, "series", study_uid=study_uid)


@router.get("/studies/{study_uid}/instances")
def search_study_instances(
    study_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> JSONResponse:
    """Search for instances of one study."""
    return _qido(request, db, user, "instance", study_uid=study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances")
def search_series_instances(
    study_uid: str, series_uid: str, request: Request, db: DicomwebSession, user: Reader
) -> JSONResponse:
    """Search for instances of one series."""
    return _qido(request, db, user, "instance", study_uid=study_uid, series_uid=series_uid)
