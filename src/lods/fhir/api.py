"""FHIR R4 results at `/fhir`: read DiagnosticReport, Observation, Provenance, Device and
Practitioner; search DiagnosticReport (patient, status, date) and Provenance (target).

Who: a Lods API token (`Authorization: Bearer`) or a login session of a radiologist,
physician or admin — the people and systems that use results clinically. AI owners are
left out on purpose: they follow their solutions through their own views, and this is
the clinical results interface. `/fhir/metadata` needs a login like every other route
(Lods' policy, tested by walking every route); it carries no patient data, but Lods
issues its own tokens, so a client has nothing to discover before it holds one.

What: AI results of pilot and live deployments (preliminary, labelled AIAST) and signed
reports (final / amended). Shadow output never appears here, whatever the role; a draft
report never does either. Every read and search is audited with the patient and study
(`fhir.read`, `fhir.search`); errors are OperationOutcomes; JSON only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import date
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from lods import __version__
from lods.audit.service import record
from lods.auth.deps import (
    CurrentUser,
    Forbidden,
    NotAuthenticated,
    Principal,
    SessionDep,
    get_settings_dep,
    role_dependency,
)
from lods.auth.models import Role
from lods.db import utcnow
from lods.fhir import bundles as fb
from lods.fhir import resources as fr
from lods.fhir import store
from lods.fhir.values import StudyResults

#: The roles that may read results through FHIR.
FHIR_READERS = frozenset({Role.RADIOLOGIST, Role.PHYSICIAN, Role.ADMIN})
FhirReader = Annotated[Principal, Depends(role_dependency(*FHIR_READERS))]

DEFAULT_COUNT = 50
MAX_COUNT = 200
DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
SUPPORTED_DATE_PREFIXES = ("eq", "lt", "gt", "le", "ge")
REPORT_STATUSES = ("preliminary", "final", "amended")
#: Every DiagnosticReport status of R4; the ones Lods never uses simply match nothing.
ALL_REPORT_STATUSES = frozenset(
    {
        "registered",
        "partial",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "appended",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)


class FhirError(Exception):
    """Answered as an OperationOutcome with `status` and an issue of type `code`."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics


class FhirResponse(JSONResponse):
    media_type = fr.FHIR_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def outcome_response(
    status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None
) -> FhirResponse:
    return FhirResponse(
        fb.operation_outcome(code, diagnostics), status_code=status, headers=headers
    )


class FhirRoute(APIRoute):
    """Answers every error of a `/fhir` route — login, role, not found, bad search — with
    an OperationOutcome instead of the app's plain JSON errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except NotAuthenticated:
                return outcome_response(
                    401,
                    "login",
                    "authentication required",
                    headers={"WWW-Authenticate": 'Bearer realm="lods"'},
                )
            except Forbidden as exc:
                return outcome_response(403, "forbidden", str(exc))
            except FhirError as exc:
                return outcome_response(exc.status, exc.code, exc.diagnostics)

        return fhir_handler


router = APIRouter(
    prefix="/fhir", tags=["FHIR"], route_class=FhirRoute, default_response_class=FhirResponse
)


def base_url(request: Request) -> str:
    public = get_settings_dep(request).public_url
    root = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return root + "/fhir"


def _not_found(kind: str, logical_id: str) -> FhirError:
    return FhirError(404, "not-found", f"{kind}/{logical_id} is not known")


def _load(db: Session, study_id: int | None, kind: str, logical_id: str) -> StudyResults:
    results = store.load_study_results(db, study_id) if study_id is not None else None
    if results is None:
        raise _not_found(kind, logical_id)
    return results


def _audit(
    db: Session,
    user: Principal,
    action: str,
    *,
    object_ref: str,
    results: StudyResults | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    record(
        db,
        actor=user.username,
        action=action,
        source=user.source,
        patient_id=results.patient.patient_id if results else None,
        study_uid=results.study.study_uid if results else None,
        object_ref=object_ref,
        detail={"via": user.via, **(detail or {})},
    )


# --- metadata -----------------------------------------------------------------------------------


@router.get("/metadata")
def metadata(request: Request, _user: CurrentUser) -> FhirResponse:
    """The CapabilityStatement: what this FHIR endpoint serves (no patient data)."""
    return FhirResponse(
        fb.capability_statement(
            software_version=__version__, base_url=base_url(request), now=utcnow()
        )
    )


# --- DiagnosticReport ---------------------------------------------------------------------------


def _diagnostic_report(db: Session, logical_id: str) -> tuple[dict[str, Any], StudyResults]:
    kind = "DiagnosticReport"
    ai_key = fr.parse_id(logical_id, "ai-")
    if ai_key is not None:
        results = _load(db, store.study_of_ai_result(db, ai_key), kind, logical_id)
        for result in results.ai_results:
            if result.key == ai_key:
                return fr.ai_diagnostic_report(results, result), results
        raise _not_found(kind, logical_id)
    report_key = fr.parse_id(logical_id, "report-")
    if report_key is not None:
        results = _load(db, store.study_of_report(db, report_key), kind, logical_id)
        if results.report is not None and results.report.key == report_key:
            return fr.report_diagnostic_report(results), results
    raise _not_found(kind, logical_id)


@router.get("/DiagnosticReport/{logical_id}")
def read_diagnostic_report(logical_id: str, db: SessionDep, user: FhirReader) -> FhirResponse:
    resource, results = _diagnostic_report(db, logical_id)
    _audit(
        db,
        user,
        "fhir.read",
        object_ref=f"DiagnosticReport/{logical_id}",
        results=results,
        detail={"status": resource["status"]},
    )
    return FhirResponse(resource)


def _date_bound(raw: str) -> store.DateBound:
    prefix, value = "eq", raw.strip()
    if value[:2] in DATE_PREFIXES:
        prefix, value = value[:2], value[2:]
    if prefix not in SUPPORTED_DATE_PREFIXES:
        raise FhirError(400, "not-supported", f"date prefix {prefix!r} is not supported")
    day = value.split("T", 1)[0]
    try:
        parts = [int(p) for p in day.split("-")]
        if len(parts) == 1 and len(day) == 4:
            start, end = date(parts[0], 1, 1), date(parts[0], 12, 31)
        elif len(parts) == 2 and len(day) == 7:
            start = date(parts[0], parts[1], 1)
            following = date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
            end = date.fromordinal(following.toordinal() - 1)
        elif len(parts) == 3 and len(day) == 10:
            start = end = date(parts[0], parts[1], parts[2])
        else:
            raise ValueError(day)
    except ValueError:
        raise FhirError(400, "invalid", f"date {raw!r} is not a FHIR date") from None
    return store.DateBound(op=prefix, start=start, end=end)


def _values(request: Request, *names: str) -> list[str]:
    """All values of the named parameters, comma-separated lists split (OR)."""
    out: list[str] = []
    for name in names:
        for raw in request.query_params.getlist(name):
            out += [v.strip() for v in raw.split(",") if v.strip()]
    return out


def _count(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError(400, "invalid", f"{name} must be a whole number")
    return min(int(raw), most)


@router.get("/DiagnosticReport")
def search_diagnostic_reports(request: Request, db: SessionDep, user: FhirReader) -> FhirResponse:
    """Search by `patient` (identifier value, or `system|value`), `status`, `date` (the
    study date; eq/ge/gt/le/lt, repeatable); paged with `_count` and `_offset`."""
    patients = _values(request, "patient", "subject", "patient:identifier", "patient.identifier")
    patient_ids: list[str] | None = None
    patient_system: str | None = None
    if patients:
        patient_ids = []
        for raw in patients:
            value = raw.removeprefix("Patient/")
            if "|" in value:
                system, _, value = value.partition("|")
                if patient_system not in (None, system):
                    raise FhirError(400, "not-supported", "one patient identifier system only")
                patient_system = system or None
            patient_ids.append(value)
    statuses = _values(request, "status")
    unknown = [s for s in statuses if s not in ALL_REPORT_STATUSES]
    if unknown:
        raise FhirError(400, "code-invalid", f"unknown DiagnosticReport status {unknown[0]!r}")
    dates = [_date_bound(raw) for raw in request.query_params.getlist("date")]
    count = _count(request, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _count(request, "_offset", 0, 10**9)
    hits = store.search_reports(
        db,
        patient_ids=patient_ids,
        patient_system=patient_system,
        statuses=statuses or None,
        dates=dates,
    )
    page = hits[offset : offset + count]
    loaded: dict[int, StudyResults] = {}
    found: list[dict[str, Any]] = []
    for hit in page:
        if hit.study_id not in loaded:
            results = store.load_study_results(db, hit.study_id)
            if results is None:
                continue
            loaded[hit.study_id] = results
        results = loaded[hit.study_id]
        if hit.kind == "ai":
            for result in results.ai_results:
                if result.key == hit.key:
                    found.append(fr.ai_diagnostic_report(results, result))
        elif results.report is not None:
            found.append(fr.report_diagnostic_report(results))
    query = request.url.query
    for results in loaded.values():
        _audit(
            db,
            user,
            "fhir.search",
            object_ref="DiagnosticReport",
            results=results,
            detail={"query": query, "total": len(hits)},
        )
    if not loaded:
        _audit(
            db,
            user,
            "fhir.search",
            object_ref="DiagnosticReport",
            detail={"query": query, "total": len(hits)},
        )
    base = base_url(request)
    self_url = f"{base}/DiagnosticReport" + (f"?{query}" if query else "")
    next_url = None
    if offset + count < len(hits):
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]
        params.append(("_offset", str(offset + count)))
        next_url = f"{base}/DiagnosticReport?" + "&".join(
            f"{_quote(k)}={_quote(v)}" for k, v in params
        )
    return FhirResponse(
        fb.searchset(found, base_url=base, total=len(hits), self_url=self_url, next_url=next_url)
    )


def _quote(value: str) -> str:
    return quote(value, safe=":|,-.")


# --- Observation --------------------------------------------------------------------------------


def _observation(db: Session, logical_id: str) -> tuple[dict[str, Any], StudyResults]:
    kind = "Observation"
    finding_key = fr.parse_id(logical_id, "ai-finding-")
    if finding_key is not None:
        results = _load(db, store.study_of_ai_finding(db, finding_key), kind, logical_id)
        for result in results.ai_results:
            for finding in result.findings:
                if finding.key == finding_key:
                    return fr.ai_finding_observation(results, result, finding), results
        raise _not_found(kind, logical_id)
    result_key = fr.parse_id(logical_id, "ai-result-")
    if result_key is not None:
        results = _load(db, store.study_of_ai_result(db, result_key), kind, logical_id)
        for result in results.ai_results:
            if result.key == result_key:
                return fr.ai_result_observation(results, result), results
        raise _not_found(kind, logical_id)
    decision_key = fr.parse_id(logical_id, "decision-")
    if decision_key is not None:
        results = _load(db, store.study_of_decision(db, decision_key), kind, logical_id)
        for decision in results.decisions:
            if decision.key == decision_key:
                return fr.decision_observation(results, decision), results
    raise _not_found(kind, logical_id)


@router.get("/Observation/{logical_id}")
def read_observation(logical_id: str, db: SessionDep, user: FhirReader) -> FhirResponse:
    resource, results = _observation(db, logical_id)
    _audit(db, user, "fhir.read", object_ref=f"Observation/{logical_id}", results=results)
    return FhirResponse(resource)


# --- Provenance ---------------------------------------------------------------------------------


def _study_provenances(results: StudyResults) -> list[dict[str, Any]]:
    provenances = [fr.ai_provenance(results, r) for r in results.ai_results]
    if results.report is not None:
        provenances += fr.report_provenances(results)
    return provenances


def _provenance(db: Session, logical_id: str) -> tuple[dict[str, Any], StudyResults]:
    kind = "Provenance"
    study_id: int | None = None
    ai_key = fr.parse_id(logical_id, "ai-")
    report = fr.parse_report_provenance_id(logical_id)
    if ai_key is not None:
        study_id = store.study_of_ai_result(db, ai_key)
    elif report is not None:
        study_id = store.study_of_report(db, report[0])
    results = _load(db, study_id, kind, logical_id)
    for provenance in _study_provenances(results):
        if provenance["id"] == logical_id:
            return provenance, results
    raise _not_found(kind, logical_id)


@router.get("/Provenance/{logical_id}")
def read_provenance(logical_id: str, db: SessionDep, user: FhirReader) -> FhirResponse:
    resource, results = _provenance(db, logical_id)
    _audit(db, user, "fhir.read", object_ref=f"Provenance/{logical_id}", results=results)
    return FhirResponse(resource)


def _target_study(db: Session, target: str) -> int | None:
    """The study a report or observation reference belongs to (None when unknown)."""
    kind, _, logical_id = target.partition("/")
    logical_id = logical_id.split("/_history/")[0]
    if kind == "DiagnosticReport":
        ai_key = fr.parse_id(logical_id, "ai-")
        if ai_key is not None:
            return store.study_of_ai_result(db, ai_key)
        report_key = fr.parse_id(logical_id, "report-")
        return store.study_of_report(db, report_key) if report_key is not None else None
    if kind == "Observation":
        finding_key = fr.parse_id(logical_id, "ai-finding-")
        if finding_key is not None:
            return store.study_of_ai_finding(db, finding_key)
        result_key = fr.parse_id(logical_id, "ai-result-")
        if result_key is not None:
            return store.study_of_ai_result(db, result_key)
        decision_key = fr.parse_id(logical_id, "decision-")
        return store.study_of_decision(db, decision_key) if decision_key is not None else None
    return None


@router.get("/Provenance")
def search_provenance(request: Request, db: SessionDep, user: FhirReader) -> FhirResponse:
    """Provenance of the given `target` (DiagnosticReport/<id> or Observation/<id>)."""
    base = base_url(request)
    targets = [t.removeprefix(base + "/") for t in _values(request, "target")]
    if not targets:
        raise FhirError(400, "required", "search Provenance by target")
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    audited: dict[int, StudyResults] = {}
    for target in targets:
        study_id = _target_study(db, target)
        if study_id is None:
            continue
        results = audited.get(study_id) or store.load_study_results(db, study_id)
        if results is None:
            continue
        audited[study_id] = results
        wanted = target.split("/_history/")[0]
        for provenance in _study_provenances(results):
            refs = {t["reference"].split("/_history/")[0] for t in provenance["target"]}
            if wanted in refs and provenance["id"] not in seen:
                seen.add(provenance["id"])
                found.append(provenance)
    query = request.url.query
    for results in audited.values():
        _audit(
            db,
            user,
            "fhir.search",
            object_ref="Provenance",
            results=results,
            detail={"query": query, "total": len(found)},
        )
    if not audited:
        _audit(db, user, "fhir.search", object_ref="Provenance", detail={"query": query})
    return FhirResponse(
        fb.searchset(
            found,
            base_url=base,
            total=len(found),
            self_url=f"{base}/Provenance?{query}",
        )
    )


# --- Device and Practitioner ------------------------------------------------------------------


@router.get("/Device/{logical_id}")
def read_device(logical_id: str, db: SessionDep, user: FhirReader) -> FhirResponse:
    key = fr.parse_id(logical_id, "solution-")
    solution = store.solution(db, key) if key is not None else None
    if solution is None:
        raise _not_found("Device", logical_id)
    _audit(db, user, "fhir.read", object_ref=f"Device/{logical_id}")
    return FhirResponse(fr.device(solution))


@router.get("/Practitioner/{logical_id}")
def read_practitioner(logical_id: str, db: SessionDep, user: FhirReader) -> FhirResponse:
    key = fr.parse_id(logical_id, "user-")
    person = store.practitioner(db, key) if key is not None else None
    if person is None:
        raise _not_found("Practitioner", logical_id)
    _audit(db, user, "fhir.read", object_ref=f"Practitioner/{logical_id}")
    return FhirResponse(fr.practitioner(person))


@router.get("/{path:path}")
def unknown(path: str, _user: FhirReader) -> FhirResponse:
    """Anything else under /fhir: an OperationOutcome rather than a bare 404."""
    raise FhirError(404, "not-supported", f"{path} is not served by this FHIR endpoint")


@router.api_route("/{path:path}", methods=["POST", "PUT", "PATCH", "DELETE"])
def read_only(path: str, _user: FhirReader) -> FhirResponse:
    """Writes: Lods serves results read-only (they are made by review and sign-off)."""
    raise FhirError(405, "not-supported", "this FHIR endpoint is read-only")
