"""Results reach a real PACS: Debian's Orthanc, started on loopback by the test, receives
the VERIFIED SR and the burned-in captures by C-STORE (pynetdicom) after a sign-off; while
it is down the outbox retries with back-off and nothing is lost; a send Orthanc can never
accept fails for good and shows on the admin page. Checked through Orthanc's REST API."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from exports_support import Clock, Orthanc, reading_scene, sign_reading
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from lods.app import create_app
from lods.exports import outbox, service
from lods.exports.models import OutboxItem
from lods.exports.outbox import Message
from lods.exports.sender import ExportSender
from lods.exports.transports import SendContext, dispatch
from lods.imaging.store import BlobStore
from lods.runtime import Runtime
from support import login

pytestmark = pytest.mark.peers

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    pacs.start()
    yield pacs
    pacs.stop()


class Counting:
    """The real transport registry, counting the sends that succeeded per outbox row."""

    def __init__(self) -> None:
        self.delivered: Counter[int] = Counter()

    def __call__(self, message: Message, context: SendContext) -> None:
        dispatch(message, context)
        self.delivered[message.id] += 1


def _pacs(pacs: Orthanc) -> list[tuple[str, str, int]]:
    return [(pacs.ae_title, "127.0.0.1", pacs.dicom_port)]


def _rows(rt: Runtime) -> list[OutboxItem]:
    with rt.sessions() as db:
        return list(db.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def _signed_and_queued(rt: Runtime, tmp_path: Path, pacs: Orthanc) -> list[int]:
    scene = reading_scene(rt, tmp_path, pacs=_pacs(pacs))
    report_id = sign_reading(scene)
    with rt.sessions() as db, db.begin():
        return service.on_report_signed(db, report_id, rt.settings)


def _uid_of(rt: Runtime, row: OutboxItem) -> str:
    assert row.payload_sha256 is not None
    path = BlobStore.from_settings(rt.settings).path_for(row.payload_sha256)
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_after_sign_off_the_sr_and_captures_are_in_orthanc(
    sqlite_runtime: Runtime, tmp_path: Path, orthanc: Orthanc
) -> None:
    rt = sqlite_runtime
    queued = _signed_and_queued(rt, tmp_path, orthanc)
    assert len(queued) == 3  # the verified SR and two captures
    sender = ExportSender(rt, send=Counting())
    report = sender.poll_once()
    assert (report.sent, report.retrying, report.failed) == (3, 0, 0)
    rows = _rows(rt)
    assert {r.state for r in rows} == {"sent"}
    (sr_row,) = [r for r in rows if r.what == "sr-verified"]
    (sr,) = orthanc.find(_uid_of(rt, sr_row))
    tags = orthanc.tags(sr["ID"])
    assert tags["SOPClassUID"] == COMPREHENSIVE_3D_SR
    assert tags["VerificationFlag"] == "VERIFIED"
    assert tags["CompletionFlag"] == "COMPLETE"
    for row in (r for r in rows if r.what == "sc"):
        (capture,) = orthanc.find(_uid_of(rt, row))
        capture_tags = orthanc.tags(capture["ID"])
        assert capture_tags["SOPClassUID"] == SECONDARY_CAPTURE
        assert capture_tags["BurnedInAnnotation"] == "YES"
        assert capture_tags["StudyInstanceUID"] == tags["StudyInstanceUID"]


def test_while_the_pacs_is_down_sends_wait_and_then_arrive_exactly_once(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_runtime
    pacs = Orthanc(tmp_path / "pacs")
    pacs.start()
    try:
        queued = _signed_and_queued(rt, tmp_path, pacs)
        pacs.kill()  # the PACS goes down before anything was sent
        clock, counting = Clock(), Counting()
        sender = ExportSender(rt, send=counting, clock=clock)
        base = timedelta(seconds=rt.settings.export_backoff_seconds)
        for _ in queued:
            # One try per pass at the dead PACS; its other rows wait for the next pass.
            report = sender.poll_once()
            assert (report.sent, report.retrying, report.failed) == (0, 1, 0)
        assert sender.poll_once().attempted == 0  # none is due before its back-off
        for row in _rows(rt):
            assert (row.state, row.attempts) == ("pending", 1)
            assert "not reachable" in (row.last_error or "")
            assert row.next_attempt_at == clock() + base
        clock.now += base
        assert sender.poll_once().retrying == 1
        (again,) = [r for r in _rows(rt) if r.attempts == 2]
        assert again.next_attempt_at == clock() + 2 * base  # the back-off doubles
        assert all(r.state == "pending" for r in _rows(rt))  # nothing lost, nothing failed
        pacs.start()
        clock.advance(rt.settings.export_backoff_max_seconds)
        for _ in range(3):
            sender.poll_once()
        rows = _rows(rt)
        assert {r.state for r in rows} == {"sent"}
        assert dict(counting.delivered) == {item: 1 for item in queued}  # exactly once
        clock.advance(rt.settings.export_backoff_max_seconds * 10)
        assert sender.poll_once().attempted == 0
        stored = pacs.get("/instances")
        assert len(stored) == len(queued)
        for row in rows:
            assert len(pacs.find(_uid_of(rt, row))) == 1
    finally:
        pacs.stop()


def _unacceptable_payload(rt: Runtime) -> str:
    """A Part-10 file of a private SOP class no PACS knows."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.826.0.1.3680043.8.498.1.99"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "X"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return BlobStore.from_settings(rt.settings).put_bytes(buffer.getvalue()).sha256


def test_a_send_orthanc_will_never_accept_fails_and_shows_on_the_admin_page(
    sqlite_runtime: Runtime, tmp_path: Path, orthanc: Orthanc
) -> None:
    rt = sqlite_runtime
    scene = reading_scene(rt, tmp_path, pacs=_pacs(orthanc))
    with rt.sessions() as db, db.begin():
        item = outbox.enqueue(
            db,
            transport="dicom",
            destination=str(scene.node_ids[0]),
            what="sr-verified",
            dedupe_key="unacceptable",
            payload_sha256=_unacceptable_payload(rt),
            study_id=scene.study_id,
        )
    report = ExportSender(rt).poll_once()
    assert report.failed == 1
    (row,) = _rows(rt)
    assert (row.id, row.state, row.attempts) == (item, "failed", 1)
    assert "does not accept" in (row.last_error or "")
    with TestClient(create_app(rt), base_url="http://testserver") as client:
        assert login(client, "ada").status_code == 303
        page = client.get("/exports?state=failed")
        assert page.status_code == 200
        assert f'id="export-{item}"' in page.text
        assert "does not accept" in page.text
        assert f'action="/exports/{item}/retry"' in page.text
        assert "ORTHANC" in page.text  # the destination by its AE title
        api = client.get("/api/exports", params={"state": "failed"}).json()
        assert [x["id"] for x in api["items"]] == [item]
        assert api["counts"]["failed"] == 1
