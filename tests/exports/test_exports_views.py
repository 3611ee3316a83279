"""The outbox page and API for admins: every send with its state, attempts and last error;
a failed send can be retried, and the retry is audited. A PACS that says the data is bad
(a real C-STORE to a pynetdicom SCP answering 0xA900) fails the send for good, shows it on
the page, and a retry after the fix delivers it."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from lods.audit.models import AuditEvent
from lods.exports import outbox
from lods.exports.models import OutboxItem
from lods.exports.sender import ExportSender
from lods.imaging.store import BlobStore
from lods.runtime import Runtime
from lods.sites.service import add_dicom_node, create_site
from support import auth, csrf, free_port, login

HTML = {"accept": "text/html"}


@dataclass
class Outbox:
    sent: int
    failed: int
    pending: int


def _add(rt: Runtime, key: str, **values: object) -> int:
    with rt.sessions() as db, db.begin():
        item = outbox.enqueue(
            db,
            transport="hl7",
            destination="ehr.example:2575",
            what="hl7-oru",
            dedupe_key=key,
            payload="MSH|^~\\&|LODS",
        )
        row = db.get(OutboxItem, item)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
        return item


@pytest.fixture
def filled(app_runtime: Runtime) -> Outbox:
    return Outbox(
        sent=_add(app_runtime, "a", state="sent", attempts=1),
        failed=_add(app_runtime, "b", state="failed", attempts=1, last_error="AR: unknown patient"),
        pending=_add(app_runtime, "c", attempts=2, last_error="connection refused"),
    )


def as_user(client: TestClient, name: str) -> TestClient:
    client.cookies.clear()
    assert login(client, name).status_code == 303
    return client


def _count_of(html: str, state: str) -> int:
    found = re.search(rf'data-state="{state}"[^>]*>\s*<span class="count">(\d+)</span>', html)
    assert found, state
    return int(found.group(1))


def _row(rt: Runtime, item: int) -> OutboxItem:
    with rt.sessions() as db:
        row = db.get(OutboxItem, item)
        assert row is not None
        return row


def test_the_outbox_page_is_for_admins(client: TestClient, filled: Outbox) -> None:
    for name in ("rita", "peter", "otto", "aud"):
        as_user(client, name)
        assert client.get("/exports", headers=HTML).status_code == 403
        refused = client.post(f"/exports/{filled.failed}/retry", data={"csrf_token": csrf(client)})
        assert refused.status_code == 403
        assert 'href="/exports"' not in client.get("/").text
    page = as_user(client, "ada").get("/exports")
    assert page.status_code == 200 and 'href="/exports"' in page.text
    client.cookies.clear()
    assert client.get("/exports", headers=HTML, follow_redirects=False).status_code == 303


def test_the_page_shows_states_attempts_and_errors(client: TestClient, filled: Outbox) -> None:
    page = as_user(client, "ada").get("/exports").text
    assert page.count('<tr id="export-') == 3
    assert (_count_of(page, "sent"), _count_of(page, "failed"), _count_of(page, "pending")) == (
        1,
        1,
        1,
    )
    assert "AR: unknown patient" in page and "connection refused" in page
    assert "ehr.example:2575" in page
    failed = client.get("/exports?state=failed").text
    assert failed.count('<tr id="export-') == 1
    assert f'action="/exports/{filled.failed}/retry"' in failed
    pending = client.get("/exports?state=pending").text
    assert "/retry" not in pending  # only failed sends have a retry button
    assert client.get("/exports?state=bogus").text.count('<tr id="export-') == 3


def test_retry_from_the_page_requeues_and_is_audited(
    client: TestClient, app_runtime: Runtime, filled: Outbox
) -> None:
    as_user(client, "ada").get("/exports")
    retried = client.post(
        f"/exports/{filled.failed}/retry",
        data={"csrf_token": csrf(client), "state": "failed"},
        follow_redirects=False,
    )
    assert retried.status_code == 303
    assert retried.headers["location"] == (
        f"/exports?state=failed&done=retried#export-{filled.failed}"
    )
    row = _row(app_runtime, filled.failed)
    assert (row.state, row.attempts) == ("pending", 0)
    assert "The send was queued again." in client.get(retried.headers["location"]).text
    with app_runtime.sessions() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.retry")).one()
    assert (event.actor, event.object_ref) == ("ada", f"outbox:{filled.failed}")
    again = client.post(f"/exports/{filled.failed}/retry", data={"csrf_token": csrf(client)})
    assert again.status_code == 409 and "Only failed sends can be retried." in again.text
    missing = client.post("/exports/9999/retry", data={"csrf_token": csrf(client)})
    assert missing.status_code == 404
    assert client.post(f"/exports/{filled.sent}/retry", data={}).status_code == 403  # no CSRF


def test_exports_api(client: TestClient, app_runtime: Runtime, filled: Outbox) -> None:
    assert client.get("/api/exports").status_code == 401
    assert client.get("/api/exports", headers=auth(app_runtime, "otto")).status_code == 403
    ada = auth(app_runtime, "ada")
    page = client.get("/api/exports", headers=ada).json()
    assert page["counts"] == {"pending": 1, "sending": 0, "sent": 1, "failed": 1}
    assert [x["id"] for x in page["items"]] == [filled.pending, filled.failed, filled.sent]
    failed = client.get("/api/exports?state=failed", headers=ada).json()["items"]
    assert [(x["id"], x["last_error"], x["attempts"]) for x in failed] == [
        (filled.failed, "AR: unknown patient", 1)
    ]
    assert client.get("/api/exports?state=lost", headers=ada).status_code == 422
    retried = client.post(f"/api/exports/{filled.failed}/retry", headers=ada)
    assert retried.status_code == 200
    assert (retried.json()["state"], retried.json()["attempts"]) == ("pending", 0)
    conflict = client.post(f"/api/exports/{filled.sent}/retry", headers=ada)
    assert conflict.status_code == 409 and "sent" in conflict.json()["detail"]
    assert client.post("/api/exports/9999/retry", headers=ada).status_code == 404
    assert client.get(f"/api/exports/{filled.sent}", headers=ada).json()["state"] == "sent"


# --- a PACS that refuses the data ----------------------------------------------------------------


@dataclass
class StatusScp:
    """A real DICOM storage SCP on loopback that answers every C-STORE with `status`."""

    status: int = 0xA900
    port: int = field(default_factory=free_port)
    received: list[str] = field(default_factory=list)

    def handle(self, event: evt.Event) -> Dataset:
        answer = Dataset()
        answer.Status = self.status
        if self.status == 0x0000:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        else:
            answer.ErrorComment = "Data set does not match SOP class"
        return answer


@pytest.fixture
def refusing_pacs() -> Iterator[StatusScp]:
    scp = StatusScp()
    ae = AE(ae_title="PICKYPACS")
    ae.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_STORE, scp.handle)]
    )
    yield scp
    server.shutdown()


def _capture(rt: Runtime) -> str:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return BlobStore.from_settings(rt.settings).put_bytes(buffer.getvalue()).sha256


def test_a_pacs_refusing_the_data_fails_the_send_for_good_until_an_admin_retries(
    client: TestClient, app_runtime: Runtime, refusing_pacs: StatusScp
) -> None:
    rt = app_runtime
    with rt.sessions() as db, db.begin():
        site = create_site(db, code="HAV", name="Havnby", actor="test")
        node = add_dicom_node(
            db,
            site_id=site.id,
            ae_title="PICKYPACS",
            kind="pacs",
            host="127.0.0.1",
            port=refusing_pacs.port,
            actor="test",
        )
        item = outbox.enqueue(
            db,
            transport="dicom",
            destination=str(node.id),
            what="sc",
            dedupe_key="picky",
            payload_sha256=_capture(rt),
        )
    sender = ExportSender(rt)
    assert sender.poll_once().failed == 1
    row = _row(rt, item)
    assert (row.state, row.attempts) == ("failed", 1)
    assert "0xA900" in (row.last_error or "") and "does not match" in (row.last_error or "")
    assert sender.poll_once().attempted == 0  # not retried by itself

    page = as_user(client, "ada").get("/exports?state=failed").text
    assert f'id="export-{item}"' in page and "0xA900" in page
    assert "PICKYPACS (127.0.0.1:" in page
    refusing_pacs.status = 0x0000  # the PACS administrator fixed their side
    retried = client.post(f"/exports/{item}/retry", data={"csrf_token": csrf(client)})
    assert retried.status_code == 200
    assert sender.poll_once().sent == 1
    assert _row(rt, item).state == "sent" and len(refusing_pacs.received) == 1


def test_a_pacs_out_of_resources_is_retried(app_runtime: Runtime, refusing_pacs: StatusScp) -> None:
    rt = app_runtime
    refusing_pacs.status = 0xA700
    with rt.sessions() as db, db.begin():
        site = create_site(db, code="HAV", name="Havnby", actor="test")
        node = add_dicom_node(
            db,
            site_id=site.id,
            ae_title="PICKYPACS",
            kind="pacs",
            host="127.0.0.1",
            port=refusing_pacs.port,
            actor="test",
        )
        item = outbox.enqueue(
            db,
            transport="dicom",
            destination=str(node.id),
            what="sc",
            dedupe_key="busy",
            payload_sha256=_capture(rt),
        )
    assert ExportSender(rt).poll_once().retrying == 1
    row = _row(rt, item)
    assert (row.state, row.attempts) == ("pending", 1) and "0xA700" in (row.last_error or "")
