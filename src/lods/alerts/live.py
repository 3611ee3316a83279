"""Live ward-board events inside one `lods serve` process: publish after commit, stream to
Server-Sent-Event subscribers.

Services call `publish_after_commit(db, ward_id, event)`: the event waits in the session
and goes out only if the transaction commits, so a board never shows what was rolled
back. Publishing is thread-safe (the MLLP listener, the MQTT client and the alert ticker
run in threads); each subscriber is an asyncio queue served on its own event loop.
Events carry no patient data, only what changed (kind, ward, bed, alert or score id):
the board re-reads what it shows through its authorised, audited read path.

Events from other processes (job workers) do not pass through here; the board's stream
also polls a cheap database fingerprint (see `lods.monitoring.board`) for those.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

#: Events a subscriber may fall behind by before the oldest are dropped (it then resyncs).
QUEUE_SIZE = 1000
_PENDING_KEY = "lods.live.pending"


@dataclass
class _Subscriber:
    ward_id: int | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any]]


class LiveHub:
    """Fan-out of ward events to the streams open in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []

    def publish(self, ward_id: int | None, payload: dict[str, Any]) -> None:
        """Deliver `payload` to every subscriber of `ward_id` (and of all wards)."""
        stamped = {**payload, "ward_id": ward_id, "published": time.time()}
        with self._lock:
            targets = [s for s in self._subscribers if s.ward_id in (None, ward_id)]
        for sub in targets:
            try:
                sub.loop.call_soon_threadsafe(_offer, sub.queue, stamped)
            except RuntimeError:  # its loop is closed: the stream has gone
                self._drop(sub)

    def open(self, ward_id: int | None) -> _Subscriber:
        """Start receiving events of `ward_id` (None: every ward) on the running loop;
        read them with `next_event`, and `close` when the stream ends."""
        sub = _Subscriber(ward_id, asyncio.get_running_loop(), asyncio.Queue(QUEUE_SIZE))
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def close(self, sub: _Subscriber) -> None:
        self._drop(sub)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)


def _offer(queue: asyncio.Queue[dict[str, Any]], payload: dict[str, Any]) -> None:
    if queue.full():
        queue.get_nowait()
        payload = {**payload, "resync": True}
    queue.put_nowait(payload)


async def next_event(sub: _Subscriber, timeout: float) -> dict[str, Any] | None:
    """The subscriber's next event, or None after `timeout` seconds without one."""
    try:
        return await asyncio.wait_for(sub.queue.get(), timeout)
    except TimeoutError:
        return None


#: The process's hub.
HUB = LiveHub()


def publish_after_commit(db: Session, ward_id: int | None, payload: dict[str, Any]) -> None:
    """Queue `payload` for `ward_id`; it is published when `db` commits (dropped on rollback)."""
    db.info.setdefault(_PENDING_KEY, []).append((ward_id, payload))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    for ward_id, payload in pending or ():
        HUB.publish(ward_id, payload)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
