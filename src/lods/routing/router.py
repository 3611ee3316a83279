"""The router thread of `lods serve`: consumes "stable" study events as they appear."""

from __future__ import annotations

import logging

from lods.background import PollingThread
from lods.imaging.store import BlobStore
from lods.routing.service import decide, pending_events, read_facts, read_input
from lods.runtime import Runtime

log = logging.getLogger(__name__)


def route_pending(runtime: Runtime, store: BlobStore | None = None) -> int:
    """Route every pending event once; return how many were decided here."""
    store = store or BlobStore.from_settings(runtime.settings)
    with runtime.reading() as db:
        event_ids = pending_events(db)
    done = 0
    for event_id in event_ids:
        with runtime.reading() as db:
            study_input = read_input(db, event_id=event_id)
        if study_input is None:
            continue
        facts = read_facts(store, study_input.instances)  # file reads outside any transaction
        with runtime.sessions() as db, db.begin():
            decisions = decide(db, study_input=study_input, facts=facts)
        if decisions:
            done += 1
            log.info(
                "study %s routed: %s",
                study_input.study_id,
                ", ".join(f"{d.version_fk}:{d.outcome}" for d in decisions),
            )
    return done


class StudyRouter(PollingThread):
    """Polls for stable-study events every `interval` seconds; `start()` and `stop()`."""

    thread_name = "lods-router"

    def __init__(self, runtime: Runtime, *, interval: float = 0.2) -> None:
        super().__init__(interval=interval)
        self.runtime = runtime
        self.store = BlobStore.from_settings(runtime.settings)

    def poll_once(self) -> int:
        return route_pending(self.runtime, self.store)
