"""The one alert lifecycle: raised → notified → repeated / escalated → acknowledged →
resolved, with who and when at each step, audited, on the board's live hub and in the
notification outbox — driven by a controlled clock (no sleeping)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from lods.alerts import live, service
from lods.alerts.models import Alert
from lods.alerts.ticker import AlertTicker
from lods.audit.models import AuditEvent
from lods.exports.models import OutboxItem
from lods.exports.sender import ExportSender
from lods.runtime import Runtime
from lods.sites import service as sites

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
HOOK = "http://127.0.0.1:9/nurse-call"


def ward_and_bed(rt: Runtime) -> tuple[int, int]:
    with rt.sessions() as db, db.begin():
        site = sites.create_site(db, code="north", name="North Hospital", actor="ada")
        ward = sites.add_department(
            db, site_id=site.id, code="W7", name="Geriatric ward 7", kind="ward", actor="ada"
        )
        bed = sites.add_bed(db, ward_id=ward.id, code="12", room="R3", actor="ada")
        return ward.id, bed.id


def raise_fall_alarm(rt: Runtime, ward_id: int, bed_id: int, *, webhook: str | None = HOOK) -> int:
    with rt.sessions() as db, db.begin():
        alert = service.raise_alert(
            db,
            kind="fall.alarm",
            subject=f"fall:{bed_id}",
            title="Fall detected, room R3 bed 12",
            severity="urgent",
            audience=("nurse", "physician"),
            ward_id=ward_id,
            bed_id=bed_id,
            notify=True,
            repeat_seconds=120,
            escalate_after=1,
            webhook=webhook,
            now=T0,
        )
        return alert.id


def steps(rt: Runtime, alert_id: int) -> list[tuple[str, str]]:
    with rt.sessions() as db:
        return [(e.step, e.actor) for e in service.history(db, alert_id=alert_id)]


def notifications(rt: Runtime) -> list[dict[str, object]]:
    with rt.sessions() as db:
        rows = db.scalars(select(OutboxItem).order_by(OutboxItem.id))
        return [json.loads(r.payload or "{}") for r in rows if r.transport == "webhook"]


def tick_at(rt: Runtime, seconds: float) -> list[int]:
    with rt.sessions() as db, db.begin():
        due = service.tick(db, now=T0 + timedelta(seconds=seconds), webhook=HOOK)
        return [a.id for a in due]


def test_a_fall_alarm_is_notified_at_once_to_the_bed_team(runtime: Runtime) -> None:
    ward_id, bed_id = ward_and_bed(runtime)
    alert_id = raise_fall_alarm(runtime, ward_id, bed_id)
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None
        assert (alert.state, alert.notifications, alert.escalation_level) == ("notified", 1, 0)
        assert alert.notified_at == T0 and alert.next_notify_at == T0 + timedelta(seconds=120)
    assert steps(runtime, alert_id) == [("raised", "system"), ("notified", "system")]
    (sent,) = notifications(runtime)
    assert sent["recipients"] == "bed-team" and sent["step"] == "notified"
    assert (sent["ward"], sent["room"], sent["bed"]) == ("W7", "R3", "12")
    assert "patient" not in json.dumps(sent).lower()


def test_an_unacknowledged_alarm_repeats_every_two_minutes_and_escalates_to_the_ward(
    runtime: Runtime,
) -> None:
    ward_id, bed_id = ward_and_bed(runtime)
    alert_id = raise_fall_alarm(runtime, ward_id, bed_id)
    assert tick_at(runtime, 119) == []
    assert tick_at(runtime, 120) == [alert_id]
    assert tick_at(runtime, 121) == []
    assert tick_at(runtime, 240) == [alert_id]
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None
        assert (alert.notifications, alert.escalation_level) == (3, 1)
        assert alert.escalated_at == T0 + timedelta(seconds=120)
    assert [s for s, _ in steps(runtime, alert_id)] == [
        "raised",
        "notified",
        "escalated",
        "repeated",
    ]
    assert [n["recipients"] for n in notifications(runtime)] == ["bed-team", "ward-all", "ward-all"]
    assert [n["notification"] for n in notifications(runtime)] == [1, 2, 3]


def test_acknowledging_stops_the_repeats_and_resolving_keeps_who_and_when(
    runtime: Runtime,
) -> None:
    ward_id, bed_id = ward_and_bed(runtime)
    alert_id = raise_fall_alarm(runtime, ward_id, bed_id)
    tick_at(runtime, 120)
    with runtime.sessions() as db, db.begin():
        service.acknowledge(db, alert_id=alert_id, actor="nina", now=T0 + timedelta(seconds=150))
    assert tick_at(runtime, 600) == []
    with runtime.sessions() as db, db.begin():
        service.resolve(
            db,
            alert_id=alert_id,
            actor="nina",
            resolution="Found on the floor, no injury",
            outcome="fall",
            now=T0 + timedelta(seconds=400),
        )
    with runtime.sessions() as db:
        alert = db.get(Alert, alert_id)
        assert alert is not None
        assert (alert.state, alert.acknowledged_by, alert.resolved_by, alert.outcome) == (
            "resolved",
            "nina",
            "nina",
            "fall",
        )
        assert alert.acknowledged_at == T0 + timedelta(seconds=150)
        actions = list(
            db.scalars(
                select(AuditEvent.action).where(AuditEvent.object_ref == f"alert:{alert_id}")
            )
        )
    assert steps(runtime, alert_id)[-2:] == [("acknowledged", "nina"), ("resolved", "nina")]
    assert actions == [
        "alert.raise",
        "alert.notify",
        "alert.escalate",
        "alert.acknowledge",
        "alert.resolve",
    ]


def test_steps_out_of_order_are_refused(runtime: Runtime) -> None:
    ward_id, bed_id = ward_and_bed(runtime)
    alert_id = raise_fall_alarm(runtime, ward_id, bed_id)
    with runtime.sessions() as db, db.begin():
        service.resolve(db, alert_id=alert_id, actor="nina", resolution="False alarm")
    with runtime.sessions() as db, db.begin(), pytest.raises(service.IllegalAlertTransition):
        service.acknowledge(db, alert_id=alert_id, actor="nina")
    with runtime.sessions() as db, db.begin(), pytest.raises(service.AlertError):
        service.resolve(db, alert_id=alert_id, actor="nina", resolution="  ")


def test_raising_the_same_open_alarm_again_counts_an_occurrence(runtime: Runtime) -> None:
    ward_id, bed_id = ward_and_bed(runtime)
    first = raise_fall_alarm(runtime, ward_id, bed_id)
    second = raise_fall_alarm(runtime, ward_id, bed_id)
    assert first == second
    with runtime.sessions() as db:
        alert = db.get(Alert, first)
        assert alert is not None and alert.occurrences == 2 and alert.notifications == 1


def test_without_a_nurse_call_webhook_nothing_is_queued(runtime: Runtime) -> None:
    ward_id, bed_id = ward_and_bed(runtime)
    raise_fall_alarm(runtime, ward_id, bed_id, webhook=None)
    assert notifications(runtime) == []


def test_the_board_hears_of_a_step_only_once_it_is_committed(sqlite_runtime: Runtime) -> None:
    rt = sqlite_runtime
    ward_id, bed_id = ward_and_bed(rt)

    def raise_then_roll_back() -> None:
        with rt.sessions() as db:
            service.raise_alert(
                db,
                kind="ews.band",
                subject="ews:1",
                title="NEWS2 high",
                ward_id=ward_id,
                bed_id=bed_id,
                notify=True,
                now=T0,
            )
            db.rollback()

    async def scenario() -> tuple[dict[str, object] | None, dict[str, object] | None]:
        sub = live.HUB.open(ward_id)
        try:
            await asyncio.to_thread(raise_then_roll_back)
            rolled_back = await live.next_event(sub, 0.2)
            await asyncio.to_thread(raise_fall_alarm, rt, ward_id, bed_id)
            committed = await live.next_event(sub, 5)
            return rolled_back, committed
        finally:
            live.HUB.close(sub)

    rolled_back, committed = asyncio.run(scenario())
    assert rolled_back is None
    assert committed is not None
    assert (committed["type"], committed["step"], committed["bed_id"]) == (
        "alert",
        "raised",
        bed_id,
    )
    assert committed["ward_id"] == ward_id and "title" not in committed


class NurseCall:
    """A nurse-call system's webhook on loopback that records what it receives."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict[str, object]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                peer.received.append(json.loads(body))
                self.send_response(peer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/page"


@pytest.fixture
def nurse_call() -> Iterator[NurseCall]:
    peer = NurseCall()
    peer.thread.start()
    yield peer
    peer.server.shutdown()
    peer.server.server_close()


def test_the_outbox_delivers_notifications_to_the_nurse_call_system(
    sqlite_runtime: Runtime, nurse_call: NurseCall
) -> None:
    rt = sqlite_runtime
    ward_id, bed_id = ward_and_bed(rt)
    raise_fall_alarm(rt, ward_id, bed_id, webhook=nurse_call.url)
    report = ExportSender(rt, clock=lambda: T0 + timedelta(seconds=1)).poll_once()
    assert report.sent == 1
    assert [(m["kind"], m["bed"], m["recipients"]) for m in nurse_call.received] == [
        ("fall.alarm", "12", "bed-team")
    ]


def test_a_refusing_nurse_call_system_fails_the_row_for_an_admin_to_see(
    sqlite_runtime: Runtime, nurse_call: NurseCall
) -> None:
    rt = sqlite_runtime
    nurse_call.status = 400
    ward_id, bed_id = ward_and_bed(rt)
    raise_fall_alarm(rt, ward_id, bed_id, webhook=nurse_call.url)
    report = ExportSender(rt, clock=lambda: T0 + timedelta(seconds=1)).poll_once()
    assert report.failed == 1
    with rt.sessions() as db:
        (row,) = db.scalars(select(OutboxItem).where(OutboxItem.transport == "webhook"))
        assert row.state == "failed" and "400" in (row.last_error or "")


def test_the_ticker_pass_repeats_due_alarms_at_its_clock(sqlite_runtime: Runtime) -> None:
    rt = sqlite_runtime
    ward_id, bed_id = ward_and_bed(rt)
    alert_id = raise_fall_alarm(rt, ward_id, bed_id)
    ticker = AlertTicker(rt, clock=lambda: T0 + timedelta(minutes=2))
    assert ticker.poll_once().notified == 1
    assert [s for s, _ in steps(rt, alert_id)][-1] == "escalated"
