"""The outbox sender: the loop that claims due rows, sends them and records the outcome, and
the polling thread `lods serve` runs it in.

Every `LODS_EXPORT_POLL_SECONDS` the thread runs one `deliver_due` pass with the registered
transports: rows whose sender died are released (their lease expired), then due rows are
claimed one at a time, sent with no database transaction open, and their outcome recorded
in a short transaction of its own. A destination that fails transiently is not tried again
in the same pass, so one PACS that is down does not make every row of it wait for its own
time-out. `stop()` lets the row in flight finish (a send is bounded by
`LODS_EXPORT_TIMEOUT_SECONDS`) and claims nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from lods.background import PollingThread
from lods.db import utcnow
from lods.exports import outbox
from lods.exports.errors import SendError
from lods.exports.outbox import Message, RetryPolicy
from lods.exports.transports import SendContext, Transport, dispatch
from lods.imaging.store import BlobStore
from lods.runtime import Runtime

log = logging.getLogger(__name__)

#: Sends one claimed message; raises `SendError` (anything else is treated as transient).
Deliver = Callable[[Message], None]


@dataclass
class PassReport:
    """What one `deliver_due` pass did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    #: Rows whose sender had died, put back (or failed, on their last attempt).
    released: int = 0

    @property
    def attempted(self) -> int:
        return self.sent + self.retrying + self.failed


def _attempt(deliver: Deliver, message: Message) -> BaseException | None:
    """Send `message`; return the error, None on success."""
    try:
        deliver(message)
    except SendError as exc:
        return exc
    except Exception as exc:
        log.exception("outbox row %d: the %s transport failed", message.id, message.transport)
        return exc
    return None


def _record(
    sessions: sessionmaker[Session],
    message: Message,
    error: BaseException | None,
    *,
    policy: RetryPolicy,
    now: datetime,
) -> str | None:
    """Record the attempt's outcome; return the row's new state (None: taken over)."""
    with sessions() as db, db.begin():
        if error is None:
            return outbox.SENT if outbox.mark_sent(db, message, now=now) else None
        return outbox.mark_failed_attempt(db, message, error, policy=policy, now=now)


def _log(message: Message, state: str | None, error: BaseException | None) -> None:
    where = f"outbox row {message.id} ({message.what} to {message.transport} {message.destination})"
    if state is None:
        log.warning("%s: attempt %d was taken over by another sender", where, message.attempt)
    elif state == outbox.PENDING:
        log.info("%s: attempt %d failed, will retry: %s", where, message.attempt, error)
    elif state == outbox.FAILED:
        log.warning("%s failed: %s", where, error)


def deliver_due(
    sessions: sessionmaker[Session],
    deliver: Deliver,
    *,
    policy: RetryPolicy,
    now: Callable[[], datetime] = utcnow,
    limit: int = 100,
    should_stop: Callable[[], bool] = lambda: False,
) -> PassReport:
    """Send due rows one by one until none is due, `limit` were tried or `should_stop()`.

    `now` is the clock (tests pass one they move by hand).
    """
    report = PassReport()
    with sessions() as db, db.begin():
        report.released = outbox.release_expired(db, policy=policy, now=now())
    skip: set[tuple[str, str]] = set()
    while report.attempted < limit and not should_stop():
        with sessions() as db, db.begin():
            message = outbox.claim_next(
                db, lease_seconds=policy.lease_seconds, now=now(), skip=skip
            )
        if message is None:
            break
        error = _attempt(deliver, message)
        state = _record(sessions, message, error, policy=policy, now=now())
        _log(message, state, error)
        if state == outbox.SENT:
            report.sent += 1
        elif state == outbox.PENDING:
            report.retrying += 1
            skip.add((message.transport, message.destination))
        elif state == outbox.FAILED:
            report.failed += 1
    return report


class ExportSender(PollingThread):
    """Delivers the outbox; one per `lods serve` (several are safe: claims are CAS)."""

    thread_name = "lods-export-sender"

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval: float | None = None,
        send: Transport = dispatch,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        settings = runtime.settings
        super().__init__(
            interval=interval if interval is not None else settings.export_poll_seconds
        )
        self.runtime = runtime
        self.policy = RetryPolicy.from_settings(settings)
        self.context = SendContext(
            settings=settings, store=BlobStore.from_settings(settings), sessions=runtime.sessions
        )
        self._send = send
        self._clock = clock

    def _deliver(self, message: Message) -> None:
        self._send(message, self.context)

    def poll_once(self) -> PassReport:
        """Deliver what is due now; return what happened."""
        return deliver_due(
            self.runtime.sessions,
            self._deliver,
            policy=self.policy,
            now=self._clock,
            should_stop=self._stop.is_set,
        )
