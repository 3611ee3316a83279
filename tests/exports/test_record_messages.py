"""A signed report reaches the patient record too: a FHIR transaction Bundle to the
configured FHIR endpoint and an HL7 ORU^R01 over MLLP, through the same outbox as the
DICOM exports — real loopback peers, one row per report version and destination."""

from __future__ import annotations

import json
from pathlib import Path

import hl7
from exports_support import reading_scene, sign_reading
from sqlalchemy import select
from test_fhir_push import FhirPeer
from test_hl7_oru import MllpPeer, ack

from lods.exports import service as exports_service
from lods.exports.models import OutboxItem
from lods.exports.sender import ExportSender
from lods.runtime import Runtime


def test_signing_sends_the_report_to_the_fhir_server_and_the_hl7_interface(
    runtime: Runtime, tmp_path: Path
) -> None:
    scene = reading_scene(runtime, tmp_path)  # no PACS at this site: record messages only
    report_id = sign_reading(scene)
    with FhirPeer() as fhir, MllpPeer(ack("AA")) as mllp:
        settings = runtime.settings.model_copy(
            update={"fhir_push_url": fhir.base_url, "hl7_oru_target": mllp.destination}
        )
        with runtime.sessions() as db, db.begin():
            first = exports_service.on_report_signed(db, report_id, settings)
            again = exports_service.on_report_signed(db, report_id, settings)
        assert len(first) == 2 and sorted(again) == sorted(first)  # idempotent
        report = ExportSender(runtime).poll_once()
        assert report is not None
        with runtime.sessions() as db:
            rows = db.scalars(select(OutboxItem).order_by(OutboxItem.id)).all()
            assert [(r.transport, r.state) for r in rows] == [("fhir", "sent"), ("hl7", "sent")]
        (posted,) = [r for r in fhir.received if r.method == "POST"]
        bundle = json.loads(posted.body)
        reports = [
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "DiagnosticReport"
        ]
        assert bundle["type"] == "transaction"
        assert any(r["status"] == "final" for r in reports)
        (framed,) = mllp.received
        message = hl7.parse(framed.strip(b"\x0b\x1c\x0d").decode())
        assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
        assert str(message.segment("MSH")[10]) == f"R{report_id}V1"
        assert str(message.segment("OBR")[25]) == "F"


def test_nothing_is_queued_for_the_record_when_no_endpoint_is_set(
    runtime: Runtime, tmp_path: Path
) -> None:
    scene = reading_scene(runtime, tmp_path)
    report_id = sign_reading(scene)
    with runtime.sessions() as db, db.begin():
        assert exports_service.on_report_signed(db, report_id, runtime.settings) == []
