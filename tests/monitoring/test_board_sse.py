"""The board's live stream against a real HTTP server (uvicorn on a loopback port, in this
process so that what the test raises through the services reaches the same live hub):
events as they are committed, a resync when the database changes behind the hub's back,
pings, the end of the stream when the client goes or its login ends, and one audit
event per stream opened."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from board_support import (
    NOW,
    ThreadServer,
    Ward,
    add_readings,
    admit,
    fall_alarm,
    make_ward,
    thread_server,
)
from sqlalchemy import select, update

from lods.alerts.live import HUB
from lods.app import create_app
from lods.audit.models import AuditEvent
from lods.auth.models import UserSession
from lods.db import utcnow
from lods.monitoring import stream
from lods.runtime import Runtime
from support import PASSWORD, auth

DEADLINE = 10.0


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)


class EventReader:
    """Reads a Server-Sent-Events response in a thread; the test waits for what it
    expects with a deadline (never a fixed sleep)."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        self.client, self.path = client, path
        self.items: queue.Queue[Event | None] = queue.Queue()
        self.status: int | None = None
        self.seen: list[Event] = []
        self.response: httpx.Response | None = None
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(DEADLINE), "the stream did not answer"

    def _run(self) -> None:
        try:
            with self.client.stream("GET", self.path, timeout=httpx.Timeout(5, read=None)) as r:
                self.status, self.response = r.status_code, r
                self.opened.set()
                kind, data = "message", ""
                for line in r.iter_lines():
                    if line.startswith(":"):
                        self.items.put(Event("comment", {"text": line[1:].strip()}))
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif not line and data:
                        self.items.put(Event(kind, json.loads(data)))
                        kind, data = "message", ""
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test
        finally:
            self.opened.set()
            self.items.put(None)

    def wait_for(self, wanted: Callable[[Event], bool]) -> Event:
        deadline = time.monotonic() + DEADLINE
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the expected event did not come"
            item = self.items.get(timeout=left)
            assert item is not None, "the stream ended first"
            self.seen.append(item)
            if wanted(item):
                return item

    def wait_closed(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while self.items.get(timeout=max(0.01, deadline - time.monotonic())) is not None:
            assert time.monotonic() < deadline, "the stream did not end"

    def close(self) -> None:
        """Hang up as a browser does: the connection goes (closing the response from
        another thread would leave the reader blocked on its socket)."""
        assert self.response is not None
        network = self.response.extensions["network_stream"]
        network.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        self.thread.join(DEADLINE)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def fast_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the fingerprint, ping and the login every few tenths of a second."""
    monkeypatch.setattr(stream, "CHECK_SECONDS", 0.3)
    monkeypatch.setattr(stream, "PING_SECONDS", 0.3)
    monkeypatch.setattr(stream, "RECHECK_LOGIN_SECONDS", 0.3)
    monkeypatch.setattr(stream.FINGERPRINTS, "max_age", 0.1)


@pytest.fixture
def server(app_runtime: Runtime) -> Iterator[ThreadServer]:
    with thread_server(create_app(app_runtime)) as running:
        yield running


@contextmanager
def logged_in(server: ThreadServer, username: str) -> Iterator[httpx.Client]:
    """A browser-like client logged in through the real login form."""
    with httpx.Client(base_url=server.base_url, follow_redirects=False) as client:
        client.get("/login")
        client.post(
            "/login",
            data={
                "username": username,
                "password": PASSWORD,
                "csrf_token": client.cookies["lods_csrf"],
                "next": "/",
            },
        )
        assert "lods_session" in client.cookies
        yield client


def test_an_alert_committed_in_the_server_reaches_the_open_stream(
    app_runtime: Runtime, server: ThreadServer, fast_stream: None
) -> None:
    ward: Ward = make_ward(app_runtime)
    admit(app_runtime, ward, "1", patient_id="P-1", name="Secret^Sara")
    with logged_in(server, "nina") as client:
        reader = EventReader(client, f"/wards/{ward.id}/events")
        assert reader.status == 200
        assert reader.response is not None
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        reader.wait_for(lambda e: e.type == "comment" and e.data["text"] == "connected")
        before = time.time()
        alarm = fall_alarm(app_runtime, ward, "1")
        event = reader.wait_for(lambda e: e.type == "alert" and e.data["step"] == "raised")
        assert event.data["alert_id"] == alarm and event.data["ward_id"] == ward.id
        assert event.data["bed_id"] == ward.beds["1"] and event.data["kind"] == "fall.alarm"
        assert event.data["published"] >= before
        assert "Secret" not in json.dumps(event.data)  # ids only, no patient data
        reader.wait_for(lambda e: e.type == "alert" and e.data["step"] == "notified")
        reader.wait_for(lambda e: e.type == "comment" and e.data["text"] == "ping")
        reader.close()
        wait_until(lambda: HUB.subscriber_count == 0)  # the server let go of the stream
    with app_runtime.sessions() as db:
        opened = db.scalars(select(AuditEvent).where(AuditEvent.action == "ward.stream.open")).all()
        assert [(e.actor, e.object_ref) for e in opened] == [("nina", f"ward:{ward.id}")]


def test_a_change_made_elsewhere_arrives_as_a_resync(
    app_runtime: Runtime, server: ThreadServer, fast_stream: None
) -> None:
    ward = make_ward(app_runtime)
    enc, _ = admit(app_runtime, ward, "1", patient_id="P-1")
    other = make_ward(app_runtime, code="MED2", beds=(("1", "A"),))
    with logged_in(server, "peter") as client:
        reader = EventReader(client, f"/wards/{ward.id}/events")
        reader.wait_for(lambda e: e.type == "comment" and e.data["text"] == "connected")
        # Rows written without the hub hearing of it, as another process would.
        add_readings(app_runtime, enc, {"spo2": 91.0}, at=NOW)
        event = reader.wait_for(lambda e: e.type == "resync")
        assert event.data == {"ward_id": ward.id, "reason": "changed"}
        # Another ward's alarm is not this stream's business.
        mark = len(reader.seen)
        admit(app_runtime, other, "1", patient_id="P-2")
        fall_alarm(app_runtime, other, "1")
        reader.wait_for(lambda e: e.type == "comment" and e.data["text"] == "ping")
        reader.wait_for(lambda e: e.type == "comment" and e.data["text"] == "ping")
        assert [e.type for e in reader.seen[mark:] if e.type != "comment"] == []
        reader.close()


def test_the_stream_ends_when_the_login_does(
    app_runtime: Runtime, server: ThreadServer, fast_stream: None
) -> None:
    ward = make_ward(app_runtime)
    with logged_in(server, "nina") as client:
        reader = EventReader(client, f"/wards/{ward.id}/events")
        reader.wait_for(lambda e: e.type == "comment" and e.data["text"] == "connected")
        with app_runtime.sessions() as db, db.begin():
            db.execute(update(UserSession).values(revoked_at=utcnow()))
        reader.wait_for(lambda e: e.type == "logout")
        reader.wait_closed()
        wait_until(lambda: HUB.subscriber_count == 0)


def test_who_may_open_the_stream(app_runtime: Runtime, server: ThreadServer) -> None:
    ward = make_ward(app_runtime)
    # A generous timeout: the first request to a fresh server on a loaded machine is slow.
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        path = f"/wards/{ward.id}/events"
        assert client.get(path).status_code == 401
        assert client.get(path, headers=auth(app_runtime, "rita")).status_code == 403
        assert client.get(path, headers=auth(app_runtime, "aud")).status_code == 403
        missing = client.get(f"/wards/{ward.id + 50}/events", headers=auth(app_runtime, "nina"))
        assert missing.status_code == 404
    # An administrator may follow the stream (ids only) with a bearer token, as the bench does.
    with httpx.Client(base_url=server.base_url, headers=auth(app_runtime, "ada")) as client:
        reader = EventReader(client, f"/wards/{ward.id}/events")
        assert reader.status == 200
        reader.close()
        wait_until(lambda: HUB.subscriber_count == 0)
