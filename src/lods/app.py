"""The FastAPI application: JSON API under /api, DICOMweb under /dicom-web, the web UI."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from swagger_ui_bundle import swagger_ui_path

from lods import __version__
from lods.alerts import api as alerts_api
from lods.alerts import views as alerts_views
from lods.audit import api as audit_api
from lods.audit import views as audit_views
from lods.auth import api as auth_api
from lods.auth import views as auth_views
from lods.auth.deps import CurrentUser, Forbidden, NotAuthenticated
from lods.exports import api as exports_api
from lods.exports import views as exports_views
from lods.falls import api as falls_api
from lods.falls import views as falls_views
from lods.fhir import api as fhir_api
from lods.findings import api as findings_api
from lods.imaging import api as imaging_api
from lods.imaging import dicomweb
from lods.imaging import views as imaging_views
from lods.jobs import api as jobs_api
from lods.jobs import views as jobs_views
from lods.monitoring import api as monitoring_api
from lods.monitoring import views as monitoring_views
from lods.review import api as review_api
from lods.review import screening_views
from lods.review import views as review_views
from lods.runtime import Runtime
from lods.sensors import api as sensors_api
from lods.sites import api as sites_api
from lods.sites import views as sites_views
from lods.solutions import api as solutions_api
from lods.solutions import views as solutions_views
from lods.validation import api as validation_api
from lods.validation import views as validation_views
from lods.vitals import api as vitals_api
from lods.vitals import fhir_intake, fhir_scores
from lods.web.templating import STATIC_DIR

#: Every router of the app, in one explicit list.
ROUTERS = [
    auth_views.router,
    auth_api.router,
    audit_views.router,
    audit_api.router,
    sites_views.router,
    sites_api.router,
    imaging_views.router,
    imaging_api.router,
    findings_api.router,
    solutions_views.router,
    solutions_api.router,
    validation_views.router,
    validation_api.router,
    jobs_views.router,
    jobs_api.router,
    alerts_views.router,
    alerts_api.router,
    exports_views.router,
    exports_api.router,
    review_views.router,
    review_api.router,
    screening_views.router,
    screening_views.api_router,
    # Before fhir_api: its /fhir/Observation/{id} and catch-all would answer ews-<id>.
    fhir_scores.router,
    # Before fhir_api too: its catch-all answers every POST under /fhir with 405.
    fhir_intake.router,
    fhir_api.router,
    vitals_api.router,
    sensors_api.router,
    falls_api.router,
    falls_views.router,
    monitoring_views.router,
    monitoring_api.router,
]

_MACHINE_PREFIXES = ("/api", "/dicom-web", "/fhir")


def _wants_html(request: Request) -> bool:
    if request.url.path.startswith(_MACHINE_PREFIXES):
        return False
    return "text/html" in request.headers.get("accept", "")


def create_app(runtime: Runtime) -> FastAPI:
    """Return the Lods web application bound to `runtime` (settings and database)."""
    app = FastAPI(
        title="Lods",
        version=__version__,
        description="Certified clinical AI in everyday hospital use, under clinicians' control.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, _exc: NotAuthenticated) -> Response:
        if request.headers.get("hx-request") == "true":
            # An htmx fragment request after the session ended: send the page to login.
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        if _wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        return JSONResponse(
            {"detail": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="lods"'},
        )

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if _wants_html(request):
            return HTMLResponse(
                "<!doctype html><title>403</title><h1>403 Forbidden</h1>"
                "<p>Your role does not give access to this page.</p>",
                status_code=403,
            )
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        """Liveness and database reachability, for load balancers; no patient data."""
        with runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi_json(_user: CurrentUser) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/docs", include_in_schema=False)
    def openapi_docs(_user: CurrentUser) -> HTMLResponse:
        # Served from the installed swagger-ui-bundle: hospital networks often block CDNs.
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="Lods API",
            swagger_js_url="/api/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/api/docs-assets/swagger-ui.css",
            swagger_favicon_url="/api/docs-assets/favicon-32x32.png",
        )

    for router in ROUTERS:
        app.include_router(router)
    for router in dicomweb.ROUTERS:
        app.include_router(router, prefix=dicomweb.PREFIX, tags=["DICOMweb"])
    if runtime.settings.dicomweb_cors_origins:
        # A viewer such as OHIF served from another origin calls DICOMweb with a bearer
        # token; cookies are never sent cross-origin, so session-based CSRF is unaffected.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.settings.dicomweb_cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Warning"],
            max_age=600,
        )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/api/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    return app
