"""The study list and the study page in the browser's view (server-rendered HTML)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from dicom_builders import image, ingest, rgb_image
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select, update

import support
from lods.audit.models import AuditEvent
from lods.db import utcnow
from lods.imaging.models import Study
from lods.imaging.views import PAGE_SIZE, person_name
from lods.runtime import Runtime
from lods.sites.service import create_site


@pytest.fixture
def login(request: pytest.FixtureRequest, client: TestClient):

    def as_user(name: str) -> TestClient:
        assert support.login(client, name).status_code == 303
        return client

    return as_user


@pytest.fixture
def sites(app_runtime: Runtime) -> dict[str, int]:
    with app_runtime.sessions() as db, db.begin():
        return {
            code: create_site(db, code=code, name=name, actor="test").id
            for code, name in (("AAH", "Aalborg"), ("OUH", "Odense"))
        }


def _rows(html: str) -> list[str]:
    return re.findall(r'data-study-uid="([^"]+)"', html)


def test_study_list_shows_studies_newest_first_with_their_state(app_runtime, sites, login):
    old, new = generate_uid(), generate_uid()
    ingest(app_runtime, image(study_uid=old, study_date="20200101"), site_id=sites["AAH"])
    ingest(app_runtime, image(study_uid=new, study_date="20240101"), site_id=sites["OUH"])
    with app_runtime.sessions() as db, db.begin():
        db.execute(update(Study).where(Study.study_uid == old).values(stable_at=utcnow()))
    page = login("rita").get("/studies")
    assert page.status_code == 200
    assert _rows(page.text) == [new, old]
    assert page.text.count('class="badge stable"') == 1
    assert page.text.count('class="badge receiving"') == 1
    assert "Østergård, Søren" in page.text and "Odense" in page.text


def test_study_list_filters_by_text_date_modality_and_site(app_runtime, sites, login):
    a, b, c = generate_uid(), generate_uid(), generate_uid()
    ingest(
        app_runtime,
        image(study_uid=a, patient_name="Doe^Jane", patient_id="P-A"),
        site_id=sites["AAH"],
    )
    ingest(
        app_runtime, image(study_uid=b, study_date="20230101", modality="CT"), site_id=sites["AAH"]
    )
    ingest(app_runtime, image(study_uid=c, accession="ACC-C"), site_id=sites["OUH"])
    client = login("peter")
    assert _rows(client.get("/studies?q=doe").text) == [a]
    assert _rows(client.get("/studies?q=p-a").text) == [a]
    assert _rows(client.get("/studies?q=acc-c").text) == [c]
    assert _rows(client.get("/studies?date_to=2023-12-31").text) == [b]
    assert _rows(client.get("/studies?modality=CT").text) == [b]
    assert sorted(_rows(client.get("/studies?site=AAH").text)) == sorted([a, b])
    bad = client.get("/studies?date_from=2024-02-01&date_to=2024-01-01")
    assert bad.status_code == 200 and 'role="alert"' in bad.text
    assert len(_rows(bad.text)) == 3  # an invalid filter shows everything, and says so


def test_htmx_requests_get_only_the_results(app_runtime, sites, login):
    ingest(app_runtime, image(), site_id=sites["AAH"])
    part = login("rita").get("/studies?q=søren", headers={"HX-Request": "true"})
    assert part.status_code == 200
    assert "<html" not in part.text and len(_rows(part.text)) == 1


def test_study_list_pages(app_runtime, sites, login):
    for n in range(PAGE_SIZE + 2):
        ingest(
            app_runtime,
            image(patient_id=f"P{n:03d}", study_date=f"2024{1 + n // 28:02d}{1 + n % 28:02d}"),
            site_id=sites["AAH"],
        )
    client = login("rita")
    first, second = client.get("/studies").text, client.get("/studies?page=2").text
    assert len(_rows(first)) == PAGE_SIZE and len(_rows(second)) == 2
    assert not set(_rows(first)) & set(_rows(second))
    assert "page=2" in first and "Page 1 of 2" in first


def test_study_page_shows_the_patient_and_a_viewer_of_rendered_images(app_runtime, sites, login):
    study, series = generate_uid(), generate_uid()
    first = image(study_uid=study, series_uid=series, instance_number=1)
    ingest(app_runtime, first, site_id=sites["AAH"])
    ingest(
        app_runtime,
        image(study_uid=study, series_uid=series, instance_number=2),
        site_id=sites["AAH"],
    )
    ingest(app_runtime, rgb_image(study_uid=study), site_id=sites["AAH"])
    client = login("rita")
    page = client.get(f"/studies/{study}")
    assert page.status_code == 200
    assert "Østergård, Søren" in page.text and "0101501234" in page.text and "Aalborg" in page.text
    viewer = json.loads(re.search(r"const data = (\{.*?\});\n", page.text).group(1))
    assert len(viewer["series"]) == 2
    cr = next(s for s in viewer["series"] if s["uid"] == series)
    assert [i["uid"] for i in cr["instances"]] == [first.SOPInstanceUID, cr["instances"][1]["uid"]]
    # The page's images come from WADO-RS with the browser's session cookie.
    rendered = client.get(cr["instances"][0]["url"] + "/rendered?accept=image/png&viewport=512,512")
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(rendered.content)).size == (512, 384)
    thumb = client.get(cr["thumbnail"])
    assert thumb.status_code == 200 and np.asarray(Image.open(io.BytesIO(thumb.content))).size


def test_unknown_study_is_404(login):
    response = login("rita").get(f"/studies/{generate_uid()}")
    assert response.status_code == 404 and "/studies" in response.text


def test_page_views_are_audited(app_runtime, sites, login):
    study = generate_uid()
    ingest(app_runtime, image(study_uid=study), site_id=sites["AAH"])
    client = login("otto")
    client.get("/studies?q=søren")
    client.get(f"/studies/{study}")
    with app_runtime.sessions() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.actor == "otto")).all()
    listed = [e for e in events if e.action == "study.list"]
    viewed = [e for e in events if e.action == "study.view"]
    assert len(listed) == 1 and json.loads(listed[0].detail)["filter"] == {"q": "søren"}
    assert [(e.study_uid, e.patient_id) for e in viewed] == [(study, "0101501234")]


@pytest.mark.parametrize("path", ["/studies", "/studies/1.2.826.0.1.3680043.8.498.2001"])
def test_study_pages_need_a_clinical_role(client, login, path):
    anonymous = client.get(path, headers={"Accept": "text/html"}, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    assert login("nina").get(path).status_code == 403
    assert login("aud").get(path).status_code == 403


def test_study_list_speaks_danish(login):
    page = login("rita").get("/studies", headers={"Accept-Language": "da"})
    assert "Undersøgelser" in page.text and "Alle hospitaler" in page.text


@pytest.mark.parametrize(
    ("dicom", "shown"),
    [("Doe^Jane", "Doe, Jane"), ("Doe^Jane^Marie^Dr", "Doe, Jane Marie"), ("Doe", "Doe"), ("", "")],
)
def test_person_names_read_family_name_first(dicom, shown):
    assert person_name(dicom) == shown
