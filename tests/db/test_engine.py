"""SQLite runs in WAL mode with full fsync; timestamps come back as aware UTC on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from lods.db import make_engine, make_session_factory
from lods.sites.models import Site


def test_sqlite_uses_wal_and_full_sync(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_timestamps_round_trip_as_aware_utc(db_url: str) -> None:
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    copenhagen = timezone(timedelta(hours=1))
    written = datetime(2026, 11, 25, 10, 30, 0, 123456, tzinfo=copenhagen)
    with factory() as db, db.begin():
        db.add(Site(code="X", name="X hospital", created_at=written))
    with factory() as db:
        site = db.scalars(select(Site).where(Site.code == "X")).one()
    engine.dispose()
    assert site.created_at.tzinfo is not None
    assert site.created_at == written
    assert site.created_at.astimezone(UTC).hour == 9


def test_naive_timestamps_are_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with pytest.raises(Exception, match="naive"), factory() as db, db.begin():
        db.add(Site(code="Y", name="Y", created_at=datetime(2026, 1, 1)))
    engine.dispose()
