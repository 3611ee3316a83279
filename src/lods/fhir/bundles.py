"""FHIR R4 Bundles around the resources of `resources.py` (pure): a searchset for
`/fhir` searches, a transaction for pushing to another server, an OperationOutcome for
errors, and the CapabilityStatement of `/fhir/metadata`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from lods.fhir.resources import FHIR_VERSION, ID_PROVENANCE, Json, instant


def searchset(
    resources: Sequence[Json],
    *,
    base_url: str,
    total: int,
    self_url: str,
    next_url: str | None = None,
) -> Json:
    """A searchset Bundle; `base_url` is the FHIR base the full URLs hang off."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base_url.rstrip('/')}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


#: Namespace of the deterministic `urn:uuid:` full URLs of transaction entries.
_BUNDLE_NAMESPACE = uuid.UUID("8f0b6a52-3d47-4cf1-9d5e-6c1f1d7b2f10")


def _identity(resource: Json) -> tuple[str, str] | None:
    """The (system, value) a resource is matched by on the receiving server."""
    for ident in resource.get("identifier", []):
        system, value = ident.get("system"), ident.get("value")
        if system and value:
            return str(system), str(value)
    return None


def transaction(resources: Sequence[Json]) -> Json:
    """A transaction Bundle that creates or updates each resource on another FHIR server.

    Local ids (`report-3`) mean nothing there, so every entry is a conditional update on
    its identifier (`PUT DiagnosticReport?identifier=system|value`), references between
    entries point at their `urn:uuid:` full URLs, and a resend updates instead of
    duplicating. Provenance has no identifier; it is keyed by its own id under Lods'
    Provenance identifier system through a conditional create.
    """
    full_urls: dict[str, str] = {}
    entries: list[tuple[Json, str, str]] = []
    for resource in resources:
        kind, local = resource["resourceType"], resource["id"]
        identity = _identity(resource)
        if identity is None:
            identity = (ID_PROVENANCE, f"{kind}/{local}")
        key = f"{kind}|{identity[0]}|{identity[1]}"
        full_url = "urn:uuid:" + str(uuid.uuid5(_BUNDLE_NAMESPACE, key))
        full_urls[f"{kind}/{local}"] = full_url
        query = quote(f"{identity[0]}|{identity[1]}", safe="")
        entries.append((resource, full_url, f"{kind}?identifier={query}"))
    out: list[Json] = []
    for resource, full_url, url in entries:
        body = _rewrite_references(resource, full_urls)
        body.pop("id", None)
        if resource["resourceType"] == "Provenance":
            # Provenance.identifier does not exist in R4; a conditional create keyed on a
            # tag keeps a resend from duplicating it.
            meta = body.setdefault("meta", {})
            tag = {"system": ID_PROVENANCE, "code": f"Provenance/{resource['id']}"}
            meta["tag"] = [*meta.get("tag", []), tag]
            request = {
                "method": "POST",
                "url": "Provenance",
                "ifNoneExist": "_tag=" + quote(f"{ID_PROVENANCE}|{tag['code']}", safe=""),
            }
        else:
            request = {"method": "PUT", "url": url}
        out.append({"fullUrl": full_url, "resource": body, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


def _rewrite_references(value: Any, full_urls: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out: Json = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                base = item.split("/_history/")[0]
                out[key] = full_urls.get(base, item)
            else:
                out[key] = _rewrite_references(item, full_urls)
        return out
    if isinstance(value, list):
        return [_rewrite_references(v, full_urls) for v in value]
    return value


def operation_outcome(code: str, diagnostics: str, *, severity: str = "error") -> Json:
    """An OperationOutcome with one issue (`code` from the FHIR issue-type value set)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def capability_statement(*, software_version: str, base_url: str | None, now: datetime) -> Json:
    """What `/fhir` serves: read and search of results, JSON only."""

    def read(kind: str, profile_text: str) -> Json:
        return {
            "type": kind,
            "documentation": profile_text,
            "interaction": [{"code": "read"}],
            "versioning": "versioned" if kind == "DiagnosticReport" else "no-version",
            "readHistory": False,
            "updateCreate": False,
        }

    report = read(
        "DiagnosticReport",
        "AI results (preliminary, labelled AIAST) and clinicians' signed reports "
        "(final, amended). Shadow-mode AI output is never served.",
    )
    report["interaction"].append({"code": "search-type"})
    report["searchParam"] = [
        {
            "name": "patient",
            "type": "reference",
            "documentation": "The patient identifier value (Patient/<id> or <id>); "
            "`system|value` is accepted.",
        },
        {"name": "status", "type": "token", "documentation": "preliminary | final | amended"},
        {
            "name": "date",
            "type": "date",
            "documentation": "The study date; prefixes eq, ge, gt, le, lt; repeatable.",
        },
        {"name": "_count", "type": "number", "documentation": "Page size (at most 200)."},
    ]
    provenance = read("Provenance", "Who made each report: AI solution (Device), signer.")
    provenance["interaction"].append({"code": "search-type"})
    provenance["searchParam"] = [
        {"name": "target", "type": "reference", "documentation": "DiagnosticReport/<id>, ..."}
    ]
    statement: Json = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now),
        "publisher": "Lods",
        "kind": "instance",
        "software": {"name": "Lods", "version": software_version},
        "implementation": {"description": "Lods results: AI suggestions and signed reports"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "A Lods API token as `Authorization: Bearer <token>`, or a "
                    "Lods login session; roles radiologist, physician or admin. Every read "
                    "is recorded in the audit trail."
                },
                "resource": [
                    report,
                    read("Observation", "AI findings (AIAST) and clinicians' decisions."),
                    provenance,
                    read("Device", "An installed AI solution version."),
                    read("Practitioner", "A clinician who decided on or signed a report."),
                ],
            }
        ],
    }
    if base_url:
        statement["implementation"]["url"] = base_url
    return statement
