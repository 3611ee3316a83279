"""The alert ticker `lods serve` runs: repeats and escalations of unacknowledged alerts,
and reminders for overdue early-warning observations.

Every `LODS_ALERT_TICK_SECONDS` one pass reads the clock once and, in one short
transaction, calls `lods.alerts.service.tick` (due repeats; escalation to all staff on
the ward) and `lods.vitals.scoring.check_overdue` (observation sets late by their band's
monitoring frequency). The clock is injectable, so a test drives a pass at any time it
likes without sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from lods.alerts import service
from lods.background import PollingThread
from lods.db import utcnow
from lods.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    notified: int
    overdue: int


class AlertTicker(PollingThread):
    thread_name = "lods-alert-ticker"

    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(interval=runtime.settings.alert_tick_seconds)
        self.runtime = runtime
        self.clock = clock

    def poll_once(self) -> TickReport:
        """One pass at the clock's time: repeat/escalate due alerts, check overdue sets."""
        from lods.vitals import scoring

        settings = self.runtime.settings
        now = self.clock()
        with self.runtime.sessions() as db, db.begin():
            notified = service.tick(db, now=now, webhook=settings.notify_webhook_url)
            overdue = scoring.check_overdue(db, now=now, settings=settings)
        if notified:
            log.info("alerts: %d notification(s) repeated or escalated", len(notified))
        return TickReport(notified=len(notified), overdue=overdue)
