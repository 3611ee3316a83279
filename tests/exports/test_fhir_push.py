"""Pushing a transaction Bundle to a real HTTP server on loopback: 2xx delivers, 5xx and
no answer are transient, 4xx is permanent with the server's OperationOutcome text."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fhir.resources.R4B.bundle import Bundle

from lods.exports.errors import PermanentSendError, TransientSendError
from lods.exports.fhir_push import bundle_for_report, outcome_text, send
from lods.fhir.values import (
    AiFinding,
    AiResult,
    Code,
    PatientInfo,
    SolutionInfo,
    StudyInfo,
    StudyResults,
)
from support import free_port

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Observation.code is required"}
    ],
}


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"resourceType":"Bundle","type":"transaction-response"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FhirPeer:
    """A tiny FHIR endpoint on loopback that answers what the test tells it to."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.received: list[Received] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                peer.received.append(
                    Received(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                self._answer()

            def do_GET(self) -> None:
                peer.received.append(Received("GET", self.path, {}, b""))
                self._answer()

            def _answer(self) -> None:
                answer = peer.answer
                if answer.delay:
                    time.sleep(answer.delay)
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/fhir+json")
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (time-out test)
                    self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def __enter__(self) -> FhirPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer() -> Iterator[FhirPeer]:
    with FhirPeer() as running:
        yield running


def results() -> StudyResults:
    solution = SolutionInfo(7, "org.example.fracture", "2.1.0", "Fracture AI", "Example Medical")
    finding = AiFinding(11, Code("SCT", "125605004", "Fracture of bone"), "Fracture", 0.91, "sure")
    ai = AiResult(
        key=5,
        solution=solution,
        outcome="positive",
        text="Fracture",
        score=0.91,
        certainty="sure",
        created_at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
        mode="live",
        findings=(finding,),
    )
    return StudyResults(
        patient=PatientInfo("0101501234", name="Østergård^Søren"),
        study=StudyInfo("1.2.826.0.1.3680043.8.498.3001", study_date=date(2026, 3, 1)),
        ai_results=(ai,),
    )


def test_bundle_for_report_is_a_fhir_transaction() -> None:
    payload = bundle_for_report(results())
    bundle = json.loads(payload)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    kinds = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert kinds == ["Device", "DiagnosticReport", "Observation", "Observation", "Provenance"]
    assert "Østergård" in payload  # UTF-8, not \\u escapes
    assert bundle_for_report(results()) == payload  # deterministic: a resend is identical


def test_2xx_delivers(peer: FhirPeer) -> None:
    payload = bundle_for_report(results())
    send(peer.base_url, payload, timeout=5)
    [request] = peer.received
    assert request.method == "POST"
    assert request.path == "/fhir"
    assert request.headers["content-type"].startswith("application/fhir+json")
    assert request.headers["accept"] == "application/fhir+json"
    assert request.body.decode() == payload


def test_503_is_transient(peer: FhirPeer) -> None:
    peer.answer = Answer(status=503, body=json.dumps(OUTCOME).encode())
    with pytest.raises(TransientSendError, match="503"):
        send(peer.base_url, "{}", timeout=5)


def test_429_is_transient(peer: FhirPeer) -> None:
    peer.answer = Answer(status=429, body=b"slow down")
    with pytest.raises(TransientSendError, match="429"):
        send(peer.base_url, "{}", timeout=5)


def test_400_is_permanent_with_the_operation_outcome(peer: FhirPeer) -> None:
    peer.answer = Answer(status=400, body=json.dumps(OUTCOME).encode())
    with pytest.raises(PermanentSendError) as info:
        send(peer.base_url, "{}", timeout=5)
    assert "400" in str(info.value)
    assert "error/invalid: Observation.code is required" in str(info.value)


def test_a_redirect_is_not_followed_and_is_permanent(peer: FhirPeer) -> None:
    peer.answer = Answer(status=302, body=b"", headers={"Location": "/elsewhere"})
    with pytest.raises(PermanentSendError, match="302"):
        send(peer.base_url, "{}", timeout=5)
    assert [r.method for r in peer.received] == ["POST"]


def test_no_listener_is_transient() -> None:
    with pytest.raises(TransientSendError, match="not reached"):
        send(f"http://127.0.0.1:{free_port()}/fhir", "{}", timeout=5)


def test_a_silent_server_times_out_as_transient(peer: FhirPeer) -> None:
    peer.answer = Answer(delay=2.0)
    started = time.monotonic()
    with pytest.raises(TransientSendError):
        send(peer.base_url, "{}", timeout=0.5)
    assert time.monotonic() - started < 1.9


def test_a_destination_that_is_not_http_is_permanent() -> None:
    with pytest.raises(PermanentSendError):
        send("ftp://127.0.0.1/fhir", "{}", timeout=1)


def test_outcome_text_falls_back_to_the_body() -> None:
    assert outcome_text(b"<html>\n  Bad gateway </html>") == "<html> Bad gateway </html>"
    assert outcome_text(json.dumps(OUTCOME).encode()).endswith("Observation.code is required")
