"""ORU^R01 from a study's results: parses with python-hl7 and validates against the HL7
v2.5.1 message structure (hl7apy, strict), fields where STANDARDS.md puts them; and MLLP
sends to a real socket peer on loopback that answers AA, AE, AR, garbage or nothing."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from fhir_samples import PATIENT, STUDY, ai_only, signed
from lods.exports.errors import PermanentSendError, TransientSendError
from lods.exports.hl7 import escape, frame, oru_r01, send
from lods.fhir.values import StudyResults
from support import free_port

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def build(results: StudyResults, control_id: str = "LODS-1") -> str:
    return oru_r01(
        results,
        control_id=control_id,
        now=NOW,
        receiving_application="EPIC",
        receiving_facility="RM",
    )


def fields(message: hl7.Message, name: str) -> list[hl7.Segment]:
    return list(message.segments(name))


def obx_value(message: hl7.Message, segment: hl7.Segment) -> str:
    return str(message.unescape(str(segment(5))))


# --- building -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [ai_only, signed, lambda: signed(state="amended")])
def test_messages_validate_against_the_oru_r01_structure(make: Callable[[], StudyResults]) -> None:
    text = build(make())
    assert text.endswith("\r") and "\n" not in text
    parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate()
    assert parsed.name == "ORU_R01"
    assert [s.name for s in parsed.children][:1] == ["MSH"]


def test_msh_pid_pv1_fields() -> None:
    message = hl7.parse(build(signed()))
    assert [str(s[0]) for s in message][:4] == ["MSH", "PID", "PV1", "OBR"]
    msh = message.segment("MSH")
    assert str(msh(3)) == "LODS" and str(msh(4)) == STUDY.site_code
    assert str(msh(5)) == "EPIC" and str(msh(6)) == "RM"
    assert str(msh(7)) == "20260302100000+0000"
    assert str(msh(9)) == "ORU^R01^ORU_R01"
    assert str(msh(10)) == "LODS-1"
    assert str(msh(12)) == "2.5.1"
    assert str(msh(18)) == "UNICODE UTF-8"
    assert message["PID.F3.R1.C1"] == PATIENT.patient_id
    assert message["PID.F3.R1.C4.S2"] == "1.2.208.176.1.2"
    assert message["PID.F3.R1.C5"] == "MR"
    assert message["PID.F5.R1.C1"] == "Østergård"
    assert message["PID.F5.R1.C2"] == "Søren"
    assert message["PID.F7"] == "19500101"
    assert message["PID.F8"] == "M"
    assert message["PV1.F2"] == "U"


def test_ai_only_message_is_preliminary_and_names_the_solution() -> None:
    message = hl7.parse(build(ai_only()))
    [obr] = fields(message, "OBR")
    assert str(obr(3)) == STUDY.accession_number
    assert str(obr(18)) == STUDY.accession_number
    assert str(obr(4)).startswith("DX^Wrist DX")
    assert str(obr(7)) == "20260301"
    assert str(obr(24)) == "RAD"
    assert str(obr(25)) == "P"
    [note] = [s for s in fields(message, "NTE") if "AI suggestion" in str(s(3))]
    assert "not verified by a clinician" in str(note(3))
    obx = fields(message, "OBX")
    assert all(str(s(11)) == "P" for s in obx)
    assert (
        str(obx[0](3)).startswith("110180^Study Instance UID") and str(obx[0](5)) == STUDY.study_uid
    )
    scores = [s for s in obx if str(s(3)).startswith("125605004")]
    assert [str(s(2)) for s in scores] == ["NM", "NM"]
    assert [str(s(5)) for s in scores] == ["0.91", "0.62"]
    assert [str(s(4)) for s in scores] == ["1", "2"]
    assert all(str(s(18)) == "org.example.fracture@2.1.0^LODS" for s in scores)
    sites = [obx_value(message, s) for s in obx if str(s(3)).startswith("363698007")]
    assert sites == ["WRIST"]
    certainty = [str(s(5)) for s in obx if str(s(3)).startswith("AICERT")]
    assert certainty == ["sure^Sure^99LODS", "doubtful^Doubtful^99LODS"]


def test_signed_report_is_final_with_decisions_conclusion_and_text() -> None:
    message = hl7.parse(build(signed()))
    [obr] = fields(message, "OBR")
    assert str(obr(25)) == "F"
    assert str(obr(22)) == "20260301113000+0000"
    assert message["OBR.F32.R1.C1.S1"] == "rita"
    assert message["OBR.F32.R1.C1.S2"] == "Rita Radiolog"
    obx = fields(message, "OBX")
    assert all(str(s(11)) == "F" for s in obx)
    decisions = [
        (str(s(3)).split("^")[0], str(s(5)).split("^")[0]) for s in obx if str(s(2)) == "CWE"
    ]
    assert decisions == [
        ("125605004", "agree"),
        ("125605004", "disagree"),
        ("263204007", "added"),
        ("CONCL", "positive"),
    ]
    [text] = [s for s in obx if str(s(2)) == "TX"]
    assert str(text(3)).startswith("18782-3^")
    lines = [message.unescape(str(r)) for r in text(5)]
    assert lines == ["Distal radius fracture.", "No dislocation."]
    assert "Nutrient canal" in [str(s(3)) for s in fields(message, "NTE")]
    # No AI order in a signed report's message: the clinician's word only.
    assert all(len(s) <= 15 for s in obx)  # OBX-17/18 (AI method, solution) are not set


def test_amended_report_is_a_correction() -> None:
    message = hl7.parse(build(signed(state="amended")))
    assert str(message.segment("OBR")(25)) == "C"
    assert {str(s(11)) for s in fields(message, "OBX")} == {"C"}
    assert message["OBR.F32.R1.C1.S1"] == "ralf"


def test_delimiters_and_line_breaks_in_text_survive() -> None:
    base = signed()
    assert base.report is not None
    tricky = "A|B^C&D~E\\F\r\nsecond line\x0bwith a VT"
    results = dataclasses.replace(base, report=dataclasses.replace(base.report, text=tricky))
    text = build(results)
    assert "\x0b" not in text and "\x1c" not in text
    message = hl7.parse(text)
    [tx] = [s for s in fields(message, "OBX") if str(s(2)) == "TX"]
    assert [message.unescape(str(r)) for r in tx(5)] == ["A|B^C&D~E\\F", "second line with a VT"]
    assert escape("x|y") == "x\\F\\y"


def test_what_cannot_be_sent_is_refused() -> None:
    base = signed()
    assert base.report is not None
    with pytest.raises(ValueError, match="signer"):
        build(dataclasses.replace(base, report=dataclasses.replace(base.report, signer=None)))
    with pytest.raises(ValueError, match="draft"):
        build(dataclasses.replace(base, report=dataclasses.replace(base.report, state="draft")))
    with pytest.raises(ValueError, match="no result"):
        build(StudyResults(patient=PATIENT, study=STUDY))
    with pytest.raises(ValueError, match="control id"):
        build(ai_only(), control_id="X" * 21)


def test_the_same_input_gives_the_same_message() -> None:
    assert build(signed()) == build(signed())


# --- MLLP ---------------------------------------------------------------------------------------


Reply = Callable[[bytes], bytes | None]


class MllpPeer:
    """A one-thread MLLP listener on loopback: reads one framed message per connection
    and answers what `reply` returns (None: say nothing and keep the line open)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                data = b""
                conn.settimeout(5)
                while b"\x1c\x0d" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                answer = self.reply(data)
                if answer is None:
                    self.stop.wait(10)
                elif answer:
                    conn.sendall(answer)

    def __enter__(self) -> MllpPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


def ack(code: str, text: str = "", *, control_id: str | None = None) -> Reply:
    """A reply that acknowledges with `code`, built with python-hl7's create_ack."""

    def reply(data: bytes) -> bytes:
        message = hl7.parse(data.strip(b"\x0b\x1c\x0d").decode())
        answer = message.create_ack(code, message_id="ACK1")
        if text:
            answer.segment("MSA").assign_field(text, 3)
            answer.append(answer.create_segment([answer.create_field(["ERR"])]))
            answer.segment("ERR").assign_field("207^Application internal error^HL70357", 3)
        if control_id is not None:
            answer.segment("MSA").assign_field(control_id, 2)
        return frame(str(answer))

    return reply


@pytest.fixture
def message() -> str:
    return build(signed(), control_id="LODS-42")


def test_aa_delivers_with_mllp_framing(message: str) -> None:
    with MllpPeer(ack("AA")) as peer:
        send(peer.destination, message, timeout=5)
    [data] = peer.received
    assert data.startswith(b"\x0b") and data.endswith(b"\x1c\x0d")
    assert data[1:-2].decode("utf-8") == message


@pytest.mark.parametrize("code", ["AE", "AR"])
def test_ae_and_ar_are_permanent_with_the_peer_text(message: str, code: str) -> None:
    with MllpPeer(ack(code, "Unknown patient")) as peer, pytest.raises(PermanentSendError) as info:
        send(peer.destination, message, timeout=5)
    assert code in str(info.value)
    assert "Unknown patient" in str(info.value)
    assert "Application internal error" in str(info.value)


def test_a_silent_peer_is_transient_after_the_timeout(message: str) -> None:
    with MllpPeer(lambda _data: None) as peer:
        started = time.monotonic()
        with pytest.raises(TransientSendError, match="no ACK"):
            send(peer.destination, message, timeout=0.5)
        assert time.monotonic() - started < 3


def test_a_peer_that_hangs_up_is_transient(message: str) -> None:
    with MllpPeer(lambda _data: b"") as peer, pytest.raises(TransientSendError, match="closed"):
        send(peer.destination, message, timeout=5)


def test_a_refused_connection_is_transient(message: str) -> None:
    with pytest.raises(TransientSendError, match="not reached"):
        send(f"127.0.0.1:{free_port()}", message, timeout=2)


def test_an_ack_for_another_message_is_transient(message: str) -> None:
    with MllpPeer(ack("AA", control_id="OTHER")) as peer, pytest.raises(TransientSendError):
        send(peer.destination, message, timeout=5)


def test_an_answer_that_is_not_an_ack_is_permanent(message: str) -> None:
    garbage = frame("HTTP/1.1 400 Bad Request")
    with MllpPeer(lambda _data: garbage) as peer, pytest.raises(PermanentSendError):
        send(peer.destination, message, timeout=5)


def test_a_bad_destination_is_permanent(message: str) -> None:
    for destination in ("nohost", "127.0.0.1:", "127.0.0.1:99999"):
        with pytest.raises(PermanentSendError):
            send(destination, message, timeout=1)
