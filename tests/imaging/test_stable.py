"""Stable-study detection: a quiet study gets `stable_at` and one "stable" event per quiet spell."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from lods.imaging.models import Study, StudyEvent
from lods.imaging.service import ingest_part10
from lods.imaging.stable import StableStudyWatcher, mark_stable_studies
from lods.imaging.store import BlobStore
from lods.runtime import Runtime


def _send(runtime: Runtime, store: BlobStore, site_id: int, data: bytes) -> str:
    with runtime.sessions() as db, db.begin():
        result = ingest_part10(
            db, store=store, data=data, channel="import", source="test", site_id=site_id
        )
    assert result.ok
    return result.outcome


def _last_received(runtime: Runtime) -> datetime:
    with runtime.sessions() as db:
        value = db.scalar(select(Study.last_received_at))
    assert value is not None
    return value


def _mark(runtime: Runtime, now: datetime) -> list[int]:
    with runtime.sessions() as db, db.begin():
        return mark_stable_studies(db, quiet_seconds=60, now=now)


def _events(runtime: Runtime) -> list[tuple[str, int]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(StudyEvent).order_by(StudyEvent.id))
        return [(e.kind, e.num_instances) for e in rows]


def test_quiet_study_is_marked_stable_with_an_event(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    for seed in range(3):
        _send(
            runtime,
            store,
            site_id,
            dicom.part10(dicom.make_dataset(study_uid=study_uid, seed=seed)),
        )
    quiet_since = _last_received(runtime)
    assert _mark(runtime, quiet_since + timedelta(seconds=59)) == []
    [study_id] = _mark(runtime, quiet_since + timedelta(seconds=61))
    with runtime.sessions() as db:
        study = db.get(Study, study_id)
        assert study is not None and study.stable_at == quiet_since + timedelta(seconds=61)
    assert _events(runtime) == [("stable", 3)]


def test_stable_study_is_not_marked_twice(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    _send(runtime, store, site_id, dicom.part10(dicom.make_dataset()))
    later = _last_received(runtime) + timedelta(minutes=5)
    assert len(_mark(runtime, later)) == 1
    assert _mark(runtime, later + timedelta(minutes=5)) == []
    assert _events(runtime) == [("stable", 1)]


def test_later_instance_clears_stable_and_the_study_becomes_stable_again(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    study_uid = "1.2.826.0.1.3680043.8.498.2"
    _send(runtime, store, site_id, dicom.part10(dicom.make_dataset(study_uid=study_uid, seed=1)))
    _mark(runtime, _last_received(runtime) + timedelta(minutes=2))
    _send(runtime, store, site_id, dicom.part10(dicom.make_dataset(study_uid=study_uid, seed=2)))
    with runtime.sessions() as db:
        assert db.scalar(select(Study.stable_at)) is None
    assert len(_mark(runtime, _last_received(runtime) + timedelta(minutes=2))) == 1
    assert _events(runtime) == [("stable", 1), ("stable", 2)]


def test_repeated_identical_instance_does_not_wake_a_stable_study(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    data = dicom.part10(dicom.make_dataset())
    _send(runtime, store, site_id, data)
    _mark(runtime, _last_received(runtime) + timedelta(minutes=2))
    assert _send(runtime, store, site_id, data) == "duplicate"
    with runtime.sessions() as db:
        assert db.scalar(select(Study.stable_at)) is not None


def test_watcher_marks_a_quiet_study_in_the_background(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    assert runtime.settings.stable_seconds == 1.0
    watcher = StableStudyWatcher(runtime, interval=0.05)
    watcher.start()
    try:
        _send(runtime, store, site_id, dicom.part10(dicom.make_dataset()))
        deadline = time.monotonic() + 30
        while not _events(runtime):
            assert time.monotonic() < deadline, "the watcher never marked the study stable"
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert _events(runtime) == [("stable", 1)]
    with runtime.sessions() as db:
        study = db.scalar(select(Study))
        assert study is not None and study.stable_at is not None
        assert study.stable_at - study.last_received_at >= timedelta(seconds=1)
