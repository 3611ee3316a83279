"""Stable studies: a study nobody has sent to for `stable_seconds` is marked stable.

DICOM has no "study complete" message (IHE AI Results: receivers can only go by time),
so `StableStudyWatcher` polls: a study whose `last_received_at` is older than the quiet
period and whose `stable_at` is NULL gets `stable_at` and a `StudyEvent(kind="stable")`
holding its instance count at that moment. Every new or changed instance clears
`stable_at` (see `lods.imaging.service`), so a study that receives more images later
becomes stable again and a second "stable" event is recorded; the router decides per its
policy whether that re-runs its jobs (it sees the new instance count). Duplicates do
not wake a study.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lods.background import PollingThread
from lods.db import utcnow
from lods.imaging.models import Study, StudyEvent
from lods.runtime import Runtime

log = logging.getLogger(__name__)

STABLE = "stable"


def stable_candidates(db: Session, *, quiet_seconds: float, now: datetime, limit: int) -> list[int]:
    """Studies not yet stable whose last instance came `quiet_seconds` or more ago."""
    cutoff = now - timedelta(seconds=quiet_seconds)
    return list(
        db.scalars(
            select(Study.id)
            .where(Study.stable_at.is_(None), Study.last_received_at <= cutoff)
            .order_by(Study.last_received_at)
            .limit(limit)
        )
    )


def mark_stable_studies(
    db: Session, *, quiet_seconds: float, now: datetime | None = None, limit: int = 500
) -> list[int]:
    """Return the ids of studies newly marked stable, recording a "stable" event for each.

    The update re-checks `stable_at IS NULL` and the quiet period per row, so an
    instance committed concurrently either lands before (the study is not yet quiet)
    or after (it clears `stable_at` again and the study will be stable once more).
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_seconds)
    candidates = stable_candidates(db, quiet_seconds=quiet_seconds, now=now, limit=limit)
    marked: list[int] = []
    for study_id in candidates:
        row = db.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.stable_at.is_(None),
                Study.last_received_at <= cutoff,
            )
            .values(stable_at=now)
            .returning(Study.num_instances)
        ).first()
        if row is None:
            continue
        db.add(StudyEvent(study_fk=study_id, kind=STABLE, created_at=now, num_instances=row[0]))
        marked.append(study_id)
    return marked


class StableStudyWatcher(PollingThread):
    """A background thread that marks quiet studies stable; `start()` and `stop()`."""

    thread_name = "lods-stable-watcher"

    def __init__(self, runtime: Runtime, *, interval: float | None = None) -> None:
        self.runtime = runtime
        quiet = runtime.settings.stable_seconds
        super().__init__(
            interval=interval if interval is not None else min(1.0, max(0.05, quiet / 4))
        )

    def poll_once(self) -> list[int]:
        """Return the studies marked stable by one committed pass."""
        quiet = self.runtime.settings.stable_seconds
        with self.runtime.reading() as db:  # most passes find nothing: no write lock then
            if not stable_candidates(db, quiet_seconds=quiet, now=utcnow(), limit=1):
                return []
        with self.runtime.sessions() as db, db.begin():
            marked = mark_stable_studies(db, quiet_seconds=self.runtime.settings.stable_seconds)
        if marked:
            log.info("studies stable: %s", marked)
        return marked
