"""DICOMweb against a real `lods serve`: dicomweb-client (and plain HTTP) on loopback.

One server per module, filled once through STOW-RS; tests that store more use fresh UIDs,
so they do not disturb the searches of the others.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicom_builders import (
    image,
    multipart,
    part10,
    split_multipart_response,
    stow_type,
)
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame
from pydicom.uid import generate_uid
from sqlalchemy import func, select

import support
from lods.audit.models import AuditEvent
from lods.imaging.dicomweb_stow import as_part10, split_multipart
from lods.runtime import Runtime
from lods.sites.service import create_site

# Fixed UIDs: parametrised test ids must be the same in every xdist worker.
STUDY_A = "1.2.826.0.1.3680043.8.498.1001"
STUDY_B = "1.2.826.0.1.3680043.8.498.1002"
SERIES_A = "1.2.826.0.1.3680043.8.498.1003"


@dataclass
class Server:
    live: Any  # conftest.LiveServer
    runtime: Runtime
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.live.base_url + "/dicom-web"

    def client(self, user: str = "rita") -> DICOMwebClient:
        return DICOMwebClient(
            url=self.url, headers={"Authorization": f"Bearer {self.tokens[user]}"}
        )

    def get(self, path: str, user: str | None = "rita", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if user:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return httpx.get(self.url + path, headers=headers, timeout=30, **kwargs)

    def post(
        self, path: str, body: bytes, user: str | None = "rita", **kwargs: Any
    ) -> httpx.Response:
        headers = {"Content-Type": stow_type(), **kwargs.pop("headers", {})}
        if user:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60, **kwargs)

    def audit_count(self, action: str) -> int:
        with self.runtime.sessions() as db:
            return int(db.scalar(select(func.count()).where(AuditEvent.action == action)) or 0)


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A live server for the whole module (starting one per test would be slow)."""
    directory = tmp_path_factory.mktemp("dicomweb") / "live"
    directory.mkdir()
    live = support.LiveServer(
        data_dir=directory, database_url=f"sqlite:///{directory / 'lods.sqlite3'}"
    )
    runtime = Runtime.open(
        support.make_settings(directory, live.database_url, dicom_port=live.dicom_port)
    )
    support.add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        create_site(db, code="TEST", name="Test Hospital", actor="test")
    tokens = {name: support.bearer_token(runtime, name) for name in support.CAST}
    live.start()
    yield Server(live, runtime, tokens)
    live.stop()
    runtime.close()


@dataclass
class Stored:
    datasets: list[pydicom.Dataset]
    files: dict[str, bytes]  # SOP Instance UID -> Part-10 bytes as sent
    response: pydicom.Dataset


@pytest.fixture(scope="module")
def stored(server: Server) -> Stored:
    """Two studies sent through STOW-RS with dicomweb-client, plus a compressed image."""
    a1 = image(
        study_uid=STUDY_A,
        series_uid=SERIES_A,
        instance_number=1,
        WindowCenter=1000,
        WindowWidth=2000,
    )
    frames = np.stack([np.full((16, 16), v, dtype=np.uint16) for v in (100, 2000, 4000)])
    a2 = image(study_uid=STUDY_A, series_uid=SERIES_A, instance_number=2, pixels=frames)
    b1 = image(
        study_uid=STUDY_B,
        patient_id="P-B",
        patient_name="Doe^Jane",
        study_date="20230615",
        accession="ACC-B",
        modality="CT",
        description="CT abdomen",
        referring="Berg^Anna",
        sop_class="1.2.840.10008.5.1.4.1.1.2",
        RescaleIntercept=-1024,
        RescaleSlope=1,
    )
    compressed = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    datasets = [a1, a2, b1, compressed]
    response = server.client().store_instances(datasets)
    files = {str(ds.SOPInstanceUID): as_sent(ds) for ds in datasets}
    return Stored(datasets, files, response)


def as_sent(ds: pydicom.Dataset) -> bytes:
    """Return the file Lods keeps for a data set dicomweb-client stored.

    dicomweb-client writes the file meta without the 128-byte preamble; Lods adds only that.
    """
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    data = buffer.getvalue()
    return data if data[128:132] == b"DICM" else b"\0" * 128 + b"DICM" + data


def _instance_path(ds: pydicom.Dataset) -> str:
    series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


# --- STOW-RS -------------------------------------------------------------------------------------


def test_stow_references_every_stored_instance(server, stored):
    referenced = stored.response.ReferencedSOPSequence
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced} == set(stored.files)
    assert "FailedSOPSequence" not in stored.response
    first = next(
        i for i in referenced if i.ReferencedSOPInstanceUID == stored.datasets[0].SOPInstanceUID
    )
    assert first.ReferencedSOPClassUID == stored.datasets[0].SOPClassUID
    assert first.RetrieveURL == server.url + _instance_path(stored.datasets[0])


def test_stow_with_some_bad_parts_answers_202_with_reasons(server):
    good = image(study_uid=generate_uid(), patient_id="P-STOW-1")
    response = server.post("/studies", multipart([part10(good), b"not dicom at all"]))
    assert response.status_code == 202
    ds = pydicom.Dataset.from_json(response.json())
    assert len(ds.ReferencedSOPSequence) == 1 and len(ds.FailedSOPSequence) == 1
    assert ds.FailedSOPSequence[0].FailureReason in (0xC000, 0xA900)


def test_stow_with_only_bad_parts_answers_409(server):
    no_uid = image(study_uid=generate_uid())
    del no_uid.SOPInstanceUID
    response = server.post("/studies", multipart([b"garbage", b"\x00" * 300]))
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 2


def test_stow_of_other_media_types_answers_415(server):
    headers = {"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'}
    assert server.post("/studies", b"--x--", headers=headers).status_code == 415
    assert (
        server.post("/studies", b"{}", headers={"Content-Type": "application/json"}).status_code
        == 415
    )


def test_stow_to_a_study_refuses_instances_of_another(server):
    target, other = generate_uid(), image(study_uid=generate_uid(), patient_id="P-STOW-2")
    response = server.post(f"/studies/{target}", multipart([part10(other)]))
    assert response.status_code == 409
    failed = pydicom.Dataset.from_json(response.json()).FailedSOPSequence[0]
    assert failed.FailureReason == 0xA900
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert server.get(f"/studies?StudyInstanceUID={other.StudyInstanceUID}").json() == []


def test_stow_into_a_named_site_and_unknown_site(server):
    ds = image(study_uid=generate_uid(), patient_id="P-STOW-3")
    assert server.post("/studies?site=NOPE", multipart([part10(ds)])).status_code == 400
    assert server.post("/studies?site=TEST", multipart([part10(ds)])).status_code == 200
    rows = server.get(f"/studies/{ds.StudyInstanceUID}/series")
    assert rows.status_code == 200 and len(rows.json()) == 1


def test_stow_needs_an_imaging_writer(server):
    body = multipart([part10(image(study_uid=generate_uid()))])
    assert server.post("/studies", body, user=None).status_code == 401
    assert server.post("/studies", body, user="peter").status_code == 403
    assert server.post("/studies", body, user="nina").status_code == 403


# --- QIDO-RS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"PatientID": "0101501234"}, {STUDY_A}),
        ({"PatientName": "*søren"}, {STUDY_A}),
        ({"PatientName": "østergård^søren"}, {STUDY_A}),
        ({"00100010": "doe^j*"}, {STUDY_B}),
        ({"StudyDate": "20240131"}, {STUDY_A}),
        ({"StudyDate": "20230101-20231231"}, {STUDY_B}),
        ({"StudyDate": "20240101-"}, {STUDY_A}),
        ({"StudyDate": "-20231231"}, {STUDY_B}),
        ({"AccessionNumber": "ACC-B"}, {STUDY_B}),
        ({"ModalitiesInStudy": "CT"}, {STUDY_B}),
        ({"StudyInstanceUID": f"{STUDY_A},{STUDY_B}"}, {STUDY_A, STUDY_B}),
        ({"ReferringPhysicianName": "Berg^Anna"}, {STUDY_B}),
        ({"StudyDescription": "Thorax*"}, {STUDY_A}),
        ({"PatientID": "0101501234", "fuzzymatching": "true"}, {STUDY_A}),
    ],
)
def test_search_for_studies_by_matching_key(server, stored, filters, expected):
    results = server.client().search_for_studies(search_filters=filters)
    found = {r["0020000D"]["Value"][0] for r in results}
    assert found & {STUDY_A, STUDY_B} == expected


def test_study_results_carry_the_standard_attributes(server, stored):
    (result,) = server.client().search_for_studies(search_filters={"StudyInstanceUID": STUDY_A})
    ds = pydicom.Dataset.from_json(result)
    assert ds.NumberOfStudyRelatedSeries == 1 and ds.NumberOfStudyRelatedInstances == 2
    assert ds.ModalitiesInStudy == "CR" and ds.PatientName == "Østergård^Søren"
    assert ds.RetrieveURL == f"{server.url}/studies/{STUDY_A}"


def test_search_for_series_and_instances(server, stored):
    client = server.client()
    series = client.search_for_series(search_filters={"Modality": "CT"})
    assert STUDY_B in {s["0020000D"]["Value"][0] for s in series}
    (in_a,) = client.search_for_series(study_instance_uid=STUDY_A)
    assert in_a["0020000E"]["Value"] == [SERIES_A]
    assert in_a["00201209"]["Value"] == [2]
    instances = client.search_for_instances(
        study_instance_uid=STUDY_A, series_instance_uid=SERIES_A
    )
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2]
    a2 = stored.datasets[1]
    (one,) = client.search_for_instances(search_filters={"SOPInstanceUID": a2.SOPInstanceUID})
    assert one["00280008"]["Value"] == [3]
    by_class = client.search_for_instances(
        study_instance_uid=STUDY_B, search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}
    )
    assert len(by_class) == 1


def test_limit_offset_and_includefield(server, stored):
    client = server.client()
    filters = {"StudyInstanceUID": f"{STUDY_A},{STUDY_B}"}
    first = client.search_for_studies(search_filters=filters, limit=1)
    second = client.search_for_studies(search_filters=filters, limit=1, offset=1)
    assert len(first) == len(second) == 1 and first != second
    (with_field,) = client.search_for_studies(
        search_filters={"StudyInstanceUID": STUDY_B}, fields=["StudyDescription"]
    )
    assert with_field["00081030"]["Value"] == ["CT abdomen"]
    (everything,) = client.search_for_series(
        search_filters={"SeriesInstanceUID": SERIES_A}, fields=["all"]
    )
    assert everything["00180015"]["vr"] == "CS"  # BodyPartExamined, only with includefield


def test_search_without_matches_returns_an_empty_list(server, stored):
    assert server.client().search_for_studies(search_filters={"PatientID": "nobody"}) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("NotAnAttribute=1", "not a DICOM attribute"),
        ("StudyDate=31-01-2024", "not a DICOM date"),
        ("limit=many", "limit"),
    ],
)
def test_bad_searches_answer_400_with_a_reason(server, query, message):
    response = server.get(f"/studies?{query}")
    assert response.status_code == 400
    assert message in response.json()["detail"]


# --- WADO-RS -------------------------------------------------------------------------------------


def test_retrieved_instance_is_byte_identical(server, stored):
    original = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()
    sent = {"raw": original, **stored.files}
    assert server.post("/studies", multipart([original])).status_code == 200
    raw = pydicom.dcmread(io.BytesIO(original))
    for ds in [raw, *stored.datasets]:
        response = server.get(_instance_path(ds))
        assert response.status_code == 200
        content_type = response.headers["content-type"]
        assert content_type.startswith('multipart/related; type="application/dicom"')
        ((part_type, content),) = split_multipart_response(content_type, response.content)
        assert part_type.startswith("application/dicom; transfer-syntax=")
        assert content == sent["raw" if ds is raw else str(ds.SOPInstanceUID)]


def test_dicomweb_client_retrieves_instances_series_and_studies(server, stored):
    client = server.client()
    a1 = stored.datasets[0]
    got = client.retrieve_instance(a1.StudyInstanceUID, a1.SeriesInstanceUID, a1.SOPInstanceUID)
    assert got.SOPInstanceUID == a1.SOPInstanceUID and got.PixelData == a1.PixelData
    assert len(client.retrieve_series(STUDY_A, SERIES_A)) == 2
    assert {d.SOPInstanceUID for d in client.retrieve_study(STUDY_A)} == {
        d.SOPInstanceUID for d in stored.datasets[:2]
    }


def test_retrieve_in_another_transfer_syntax_is_not_acceptable(server, stored):
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    response = server.get(_instance_path(stored.datasets[0]), headers={"Accept": accept})
    assert response.status_code == 406


def test_missing_objects_answer_404(server, stored):
    assert server.get(f"/studies/{generate_uid()}").status_code == 404
    assert server.get(f"/studies/{STUDY_A}/series/{generate_uid()}/metadata").status_code == 404


def test_metadata_parses_and_points_to_bulk_data(server, stored):
    client = server.client()
    metadata = client.retrieve_series_metadata(STUDY_A, SERIES_A)
    assert len(metadata) == 2
    a1 = stored.datasets[0]
    (first,) = [m for m in metadata if m["00080018"]["Value"][0] == a1.SOPInstanceUID]
    assert "InlineBinary" not in first["7FE00010"] and "Value" not in first["7FE00010"]
    ds = pydicom.Dataset.from_json(first, bulk_data_uri_handler=lambda *_: b"")
    assert ds.PatientName == a1.PatientName and ds.WindowCenter == 1000
    pixels = client.retrieve_bulkdata(first["7FE00010"]["BulkDataURI"])
    assert pixels == [a1.PixelData]


def test_uncompressed_frames_are_raw_pixel_bytes(server, stored):
    a2 = stored.datasets[1]
    frames = server.client().retrieve_instance_frames(
        a2.StudyInstanceUID, a2.SeriesInstanceUID, a2.SOPInstanceUID, frame_numbers=[3, 1]
    )
    length = 16 * 16 * 2
    assert frames == [a2.PixelData[2 * length :], a2.PixelData[:length]]


def test_compressed_frames_are_returned_as_stored_or_decoded(server, stored):
    ds = stored.datasets[3]
    client = server.client()
    args = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    (as_stored,) = client.retrieve_instance_frames(
        *args, frame_numbers=[1], media_types=("image/jp2",)
    )
    assert as_stored == get_frame(ds.PixelData, 0, number_of_frames=1)
    (anything,) = client.retrieve_instance_frames(*args, frame_numbers=[1])
    assert anything == as_stored
    (decoded,) = client.retrieve_instance_frames(
        *args, frame_numbers=[1], media_types=("application/octet-stream",)
    )
    assert decoded == ds.pixel_array.tobytes()
    ohif = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    response = server.get(_instance_path(ds) + "/frames/1", headers={"Accept": ohif})
    ((part_type, content),) = split_multipart_response(
        response.headers["content-type"], response.content
    )
    assert "transfer-syntax=1.2.840.10008.1.2.4.91" in part_type and content == as_stored
    assert server.get(_instance_path(ds) + "/frames/2").status_code == 404
    assert server.get(_instance_path(ds) + "/frames/0").status_code == 400


def test_rendered_images_honour_window_viewport_and_type(server, stored):
    a1, client = stored.datasets[0], server.client()
    args = (a1.StudyInstanceUID, a1.SeriesInstanceUID, a1.SOPInstanceUID)
    png = client.retrieve_instance_rendered(
        *args, media_types=("image/png",), params={"window": "2000,100", "viewport": "32,32"}
    )
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (32, 24)  # 64 x 48 kept at 4:3
    # Pixel values run 0..3071 along the rows; a narrow window at 2000 makes mostly black
    # above and white below, unlike the stored window (1000, 2000).
    with_default = Image.open(
        io.BytesIO(client.retrieve_instance_rendered(*args, media_types=("image/png",)))
    )
    assert np.asarray(picture).std() > 0 and not np.array_equal(
        np.asarray(with_default.resize((32, 24))), np.asarray(picture)
    )
    jpeg = server.get(
        _instance_path(a1) + "/rendered", params={"accept": "image/jpeg", "quality": "50"}
    )
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"


def test_frames_render_individually_and_thumbnails_are_small(server, stored):
    a2 = stored.datasets[1]
    params = {"accept": "image/png", "window": "2000,1000"}
    for number, brightness in ((1, 0), (2, 128), (3, 255)):  # frames of 100, 2000, 4000
        frame = server.get(_instance_path(a2) + f"/frames/{number}/rendered", params=params)
        assert abs(np.asarray(Image.open(io.BytesIO(frame.content))).mean() - brightness) < 2
    assert server.get(_instance_path(a2) + "/frames/4/rendered").status_code == 404
    for path in (
        f"/studies/{STUDY_A}/thumbnail",
        f"/studies/{STUDY_A}/series/{SERIES_A}/thumbnail",
    ):
        thumb = server.get(path)
        assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 200


def test_bad_rendering_parameters_answer_400_or_406(server, stored):
    path = _instance_path(stored.datasets[0]) + "/rendered"
    assert server.get(path, params={"window": "40"}).status_code == 400
    assert server.get(path, params={"viewport": "0,0"}).status_code == 400
    assert server.get(path, headers={"Accept": "image/gif"}).status_code == 406


# --- who may, and the trail ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/studies",
        f"/studies/{STUDY_A}",
        f"/studies/{STUDY_A}/metadata",
        "/instances",
        f"/studies/{STUDY_A}/series/{SERIES_A}/thumbnail",
    ],
)
def test_reads_are_refused_without_a_clinical_role(server, stored, path):
    assert server.get(path, user=None).status_code == 401
    assert server.get(path, user=None, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert server.get(path, user="nina").status_code == 403
    assert server.get(path, user="aud").status_code == 403


def test_searches_and_retrievals_are_audited_per_request(server, stored):
    searches, retrievals = (
        server.audit_count("dicomweb.search"),
        server.audit_count("dicomweb.retrieve"),
    )
    server.client("peter").search_for_studies(search_filters={"PatientID": "0101501234"})
    server.client("peter").retrieve_study(STUDY_A)
    assert server.audit_count("dicomweb.search") == searches + 1
    assert server.audit_count("dicomweb.retrieve") == retrievals + 1  # one per request
    with server.runtime.sessions() as db:
        event = db.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "dicomweb.retrieve")
            .order_by(AuditEvent.seq.desc())
        ).first()
        assert event is not None
        assert (event.actor, event.study_uid, event.patient_id) == ("peter", STUDY_A, "0101501234")


# --- the request body, without a server ------------------------------------------------------


def test_multipart_bodies_split_with_preamble_and_without_part_headers():
    body = (
        b"preamble\r\n--b\r\nContent-Type: application/dicom\r\n\r\nONE"
        b"\r\n--b\r\n\r\nTWO\r\n--b--\r\n"
    )
    parts = split_multipart(body, "b")
    assert [body[p.start : p.end] for p in parts] == [b"ONE", b"TWO"]
    assert parts[0].content_type == "application/dicom" and parts[1].content_type == ""
    with pytest.raises(ValueError, match="final boundary"):
        split_multipart(b"--b\r\n\r\nunterminated", "b")
    with pytest.raises(ValueError, match="does not start"):
        split_multipart(b"no boundary here", "b")


def test_file_meta_without_preamble_becomes_a_part10_file():
    with_preamble = part10(image())
    assert as_part10(with_preamble) == with_preamble
    assert as_part10(with_preamble[128:][4:]) == with_preamble  # meta and data set as sent
    assert as_part10(b"garbage") == b"garbage"


def test_stow_larger_than_the_limit_answers_413(request, client, app_runtime):
    app_runtime.settings.stow_max_bytes = 2000
    token = support.bearer_token(app_runtime, "rita")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": stow_type()}
    body = multipart([part10(image())])  # 64 x 48 x 2 bytes of pixels alone
    declared = client.post("/dicom-web/studies", content=body, headers=headers)
    assert declared.status_code == 413
    chunked = client.post(
        "/dicom-web/studies", content=iter([body[:1500], body[1500:]]), headers=headers
    )
    assert chunked.status_code == 413
    app_runtime.settings.stow_max_bytes = 10_000_000
    assert client.post("/dicom-web/studies", content=body, headers=headers).status_code == 200
