"""The imaging JSON API: the study list, one study, and intake statistics."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from dicom_builders import image, ingest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

import support
from lods.audit.models import AuditEvent
from lods.imaging.service import ingest_part10
from lods.imaging.store import BlobStore
from lods.runtime import Runtime
from lods.sites.service import create_site


@dataclass
class Catalogue:
    chest: str  # study UIDs
    abdomen: str
    knee: str


@pytest.fixture
def catalogue(app_runtime: Runtime) -> Catalogue:
    with app_runtime.sessions() as db, db.begin():
        aah = create_site(db, code="AAH", name="Aalborg", actor="test").id
        ouh = create_site(db, code="OUH", name="Odense", actor="test").id
    chest, abdomen, knee = generate_uid(), generate_uid(), generate_uid()
    series = generate_uid()
    for n in (1, 2):
        ds = image(study_uid=chest, series_uid=series, instance_number=n, accession="ACC-1")
        ingest(app_runtime, ds, site_id=aah)
    ingest(
        app_runtime,
        image(
            study_uid=abdomen,
            patient_id="P2",
            patient_name="Doe^Jane",
            study_date="20230615",
            accession="ACC-2",
            modality="CT",
        ),
        site_id=aah,
    )
    ingest(
        app_runtime,
        image(
            study_uid=knee,
            patient_id="P3",
            patient_name="Berg^Anna",
            study_date="20240301",
            accession="ACC-3",
            modality="DX",
        ),
        site_id=ouh,
    )
    with app_runtime.sessions() as db, db.begin():
        ingest_part10(
            db,
            store=BlobStore.from_settings(app_runtime.settings),
            data=b"junk" * 50,
            channel="stow",
            source="test",
            site_id=aah,
        )
    return Catalogue(chest, abdomen, knee)


@pytest.fixture
def api(request: pytest.FixtureRequest, client: TestClient, app_runtime: Runtime):

    def as_user(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {support.bearer_token(app_runtime, name)}"}

    return as_user


def _accessions(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["accession_number"] for item in response.json()["items"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["ACC-3", "ACC-1", "ACC-2"]),  # newest study date first
        ("?q=doe", ["ACC-2"]),
        ("?q=søren", ["ACC-1"]),
        ("?patient_id=P3", ["ACC-3"]),
        ("?patient_name=berg", ["ACC-3"]),
        ("?accession=ACC-2", ["ACC-2"]),
        ("?date_from=2024-01-01", ["ACC-3", "ACC-1"]),
        ("?date_from=2024-01-01&date_to=2024-02-01", ["ACC-1"]),
        ("?modality=CT", ["ACC-2"]),
        ("?site=OUH", ["ACC-3"]),
        ("?site=AAH&q=acc-1", ["ACC-1"]),
    ],
)
def test_study_list_search(client, api, catalogue, query, expected):
    assert _accessions(client.get(f"/api/studies{query}", headers=api("rita"))) == expected


def test_study_list_pages(client, api, catalogue):
    first = client.get("/api/studies?limit=2", headers=api("peter")).json()
    second = client.get("/api/studies?limit=2&offset=2", headers=api("peter")).json()
    assert first["total"] == second["total"] == 3
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    item = first["items"][0]
    assert item["site"] == "OUH" and item["modalities"] == ["DX"] and item["stable"] is False


@pytest.mark.parametrize(
    "query", ["?date_from=2024-02-01&date_to=2024-01-01", "?limit=0", "?date_from=yesterday"]
)
def test_study_list_refuses_bad_parameters(client, api, query):
    assert client.get(f"/api/studies{query}", headers=api("rita")).status_code == 422


def test_study_detail_has_series_and_instances(client, api, catalogue):
    response = client.get(f"/api/studies/{catalogue.chest}", headers=api("rita"))
    assert response.status_code == 200
    body = response.json()
    assert body["patient"]["name"] == "Østergård^Søren" and body["num_instances"] == 2
    (series,) = body["series"]
    assert [i["instance_number"] for i in series["instances"]] == [1, 2]
    assert series["instances"][0]["channel"] == "stow"
    assert client.get(f"/api/studies/{generate_uid()}", headers=api("rita")).status_code == 404


def test_study_views_are_audited(client, api, app_runtime, catalogue):
    client.get("/api/studies?q=doe", headers=api("peter"))
    client.get(f"/api/studies/{catalogue.abdomen}", headers=api("peter"))
    with app_runtime.sessions() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.actor == "peter")).all()
    actions = [(e.action, e.study_uid, e.patient_id) for e in events]
    assert ("study.list", None, None) in actions
    assert ("study.view", catalogue.abdomen, "P2") in actions


@pytest.mark.parametrize("path", ["/api/studies", "/api/studies/1.2.3"])
def test_study_api_needs_a_clinical_role(client, api, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers=api("nina")).status_code == 403
    assert client.get(path, headers=api("aud")).status_code == 403


def test_intake_statistics_and_rejections_for_administrators(client, api, catalogue):
    stats = client.get("/api/intake/stats", headers=api("ada"))
    assert stats.status_code == 200
    body = stats.json()
    assert body["received"] == {"stow": 4} and body["rejected"] == {"stow": 1}
    assert sum(body["rejected_by_status"].values()) == 1
    assert body["recent_rejections"][0]["reason"]
    rejections = client.get("/api/intake/rejections?channel=stow", headers=api("ada")).json()
    assert len(rejections) == 1 and rejections[0]["status_hex"].startswith("0x")
    assert client.get("/api/intake/rejections?channel=dicom", headers=api("ada")).json() == []
    for who in ("rita", "aud"):
        assert client.get("/api/intake/stats", headers=api(who)).status_code == 403
    assert client.get("/api/intake/rejections").status_code == 401
