"""Push a study's FHIR results to another FHIR server as one transaction Bundle.

`bundle_for_report` (pure) turns a study's results into the JSON text the outbox stores;
`send` POSTs it to the destination's base URL. The Bundle updates each resource by its
identifier (see `lods.fhir.resources.transaction`), so at-least-once delivery never
duplicates: a resend after a lost answer, or after an amendment, updates in place.

Failures, as the outbox needs them: no connection, a time-out, 408, 429 or any 5xx →
`TransientSendError` (the server may take it later); any other 4xx (or a redirect, which
means the configured URL is wrong) → `PermanentSendError` with the server's
OperationOutcome text.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from lods.exports.errors import PermanentSendError, TransientSendError
from lods.fhir import bundles as fb
from lods.fhir import resources as fr
from lods.fhir import store
from lods.fhir.values import StudyResults

#: The most of an error answer read and quoted.
MAX_ERROR_BYTES = 64 * 1024
#: 4xx answers that mean "not now" rather than "never".
TRANSIENT_CLIENT_ERRORS = frozenset({408, 425, 429})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would repeat a POST as a GET without its body
    and report the GET's success."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def bundle_for_report(results: StudyResults) -> str:
    """The transaction Bundle (JSON text) of everything about the study that may leave
    Lods: its current AI reports (preliminary, AIAST) and its signed report, if any, with
    their Observations, Provenance, Devices and Practitioners."""
    bundle = fb.transaction(fr.study_resources(results))
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def bundle_for_study(db: Session, study_id: int) -> str | None:
    """`bundle_for_report` of a study read from the database; None when there is no such
    study or nothing of it may leave Lods (no clinical AI result, no signed report)."""
    results = store.load_study_results(db, study_id)
    if results is None or not (results.current_ai_results or results.report is not None):
        return None
    return bundle_for_report(results)


def outcome_text(body: bytes) -> str:
    """The issues of an OperationOutcome as one line; the start of the body otherwise."""
    text = body[:MAX_ERROR_BYTES].decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:500]
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        issues = []
        for issue in parsed.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            words = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            head = "/".join(str(issue.get(k)) for k in ("severity", "code") if issue.get(k))
            issues.append(f"{head}: {words}".strip(": ") if head else str(words))
        if issues:
            return "; ".join(issues)[:1000]
    return " ".join(text.split())[:500]


def send(destination: str, payload: str, *, timeout: float) -> None:
    """POST the transaction Bundle `payload` to the FHIR base URL `destination`.

    Returns when the server answered 2xx; raises TransientSendError or
    PermanentSendError (see the module text).
    """
    post(
        destination.rstrip("/"),
        payload,
        timeout=timeout,
        peer="FHIR server",
        headers={
            "Content-Type": f"{fr.FHIR_JSON}; charset=utf-8",
            "Accept": fr.FHIR_JSON,
            "Prefer": "return=minimal",
        },
    )


def post(url: str, payload: str, *, timeout: float, peer: str, headers: dict[str, str]) -> None:
    """POST `payload` to an http(s) `url`; return on 2xx, else raise TransientSendError
    (not reached, 5xx, 408/425/429) or PermanentSendError (other answers)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PermanentSendError(f"{url!r} is not an http(s) URL of a {peer}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=payload.encode("utf-8"), method="POST", headers=headers
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(MAX_ERROR_BYTES)
            status = int(response.status)
            body = b""
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(MAX_ERROR_BYTES)
        except (OSError, http.client.HTTPException):
            body = b""
    except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientSendError(f"{peer} {url} not reached: {reason}") from exc
    if 200 <= status < 300:
        return
    detail = outcome_text(body) if body else ""
    message = f"{peer} {url} answered {status}" + (f": {detail}" if detail else "")
    if status >= 500 or status in TRANSIENT_CLIENT_ERRORS:
        raise TransientSendError(message)
    raise PermanentSendError(message)
