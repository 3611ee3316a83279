"""The board's live stream: Server-Sent Events of one ward.

Each event the services publish (`lods.alerts.live`) goes out as `event: <type>` with the
payload (ids only, no patient data) as JSON. Between events the stream compares the
ward's database fingerprint every `CHECK_SECONDS`, so changes made by other processes
(job workers, the CLI, another server) reach the board too, as `event: resync`; a
comment `: ping` every `PING_SECONDS` keeps proxies from closing an idle stream. Every
`RECHECK_LOGIN_SECONDS` the stream checks that the login it was opened with is still
valid (not logged out, expired or stripped of its role) and ends when it is not.

Database work runs in the thread pool, never on the event loop. Streams of one ward
share the fingerprint they read for `CHECK_SECONDS`, so a hundred open boards cost one
query per ward every few seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from lods.alerts.live import HUB, next_event
from lods.auth.deps import get_runtime, resolve_principal
from lods.auth.models import Role
from lods.monitoring.board import board_fingerprint

CHECK_SECONDS = 2.0
PING_SECONDS = 15.0
RECHECK_LOGIN_SECONDS = 60.0
#: The browser waits this long before reconnecting a dropped stream.
RETRY_MILLISECONDS = 3000


def sse(event: str, data: dict[str, Any]) -> str:
    """One Server-Sent Event: its type and its JSON data line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


class FingerprintCache:
    """The last fingerprint read per ward, shared by the streams of this process."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, int], tuple[float, str]] = {}

    def get(self, request: Request, ward_id: int) -> str:
        """The ward's fingerprint, read again when the cached one is older than `max_age`
        (runs in a worker thread)."""
        runtime = get_runtime(request)
        key = (id(runtime), ward_id)
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(key)
        if cached is not None and now - cached[0] < self.max_age:
            return cached[1]
        with runtime.sessions() as db, db.begin():
            value = board_fingerprint(db, ward_id=ward_id)
        with self._lock:
            self._seen[key] = (time.monotonic(), value)
        return value


FINGERPRINTS = FingerprintCache(max_age=CHECK_SECONDS * 0.75)


def _login_still_valid(request: Request, roles: frozenset[Role]) -> bool:
    with get_runtime(request).sessions() as db, db.begin():
        principal = resolve_principal(request, db)
    return principal is not None and principal.has_any(roles)


async def ward_events(
    request: Request,
    ward_id: int,
    *,
    roles: frozenset[Role],
    fingerprint: str,
) -> AsyncIterator[str]:
    """The stream of `ward_id` until the client goes or its login ends. `fingerprint` is
    the ward's fingerprint when the stream was opened."""
    sub = HUB.open(ward_id)
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n: connected\n\n"
        baseline = fingerprint
        heard = False  # events delivered since the last fingerprint check
        last_check = last_ping = last_login = time.monotonic()
        while not await request.is_disconnected():
            wait = max(0.05, min(1.0, last_check + CHECK_SECONDS - time.monotonic()))
            payload = await next_event(sub, wait)
            if payload is not None:
                heard = True
                yield sse(str(payload.get("type", "message")), payload)
                if payload.get("resync"):  # the hub dropped events for this stream
                    yield sse("resync", {"ward_id": ward_id, "reason": "overflow"})
            now = time.monotonic()
            if now - last_check >= CHECK_SECONDS:
                last_check = now
                current = await run_in_threadpool(FINGERPRINTS.get, request, ward_id)
                if heard:
                    # The client re-reads the board after every event anyway; compare
                    # again in the next quiet interval (against the old baseline).
                    heard = False
                elif current != baseline:
                    baseline = current
                    yield sse("resync", {"ward_id": ward_id, "reason": "changed"})
            if now - last_ping >= PING_SECONDS:
                last_ping = now
                yield ": ping\n\n"
            if now - last_login >= RECHECK_LOGIN_SECONDS:
                last_login = now
                if not await run_in_threadpool(_login_still_valid, request, roles):
                    yield sse("logout", {"ward_id": ward_id})
                    break
    finally:
        HUB.close(sub)
