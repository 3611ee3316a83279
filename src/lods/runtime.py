"""The objects one Lods process shares: settings, database engine and session factory."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lods.config import Settings
from lods.db import make_engine, make_session_factory
from lods.migrations import upgrade


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    #: On SQLite, an engine whose transactions begin as readers (`reading`).
    read_engine: Engine | None = None

    def __post_init__(self) -> None:
        self._readers = (
            make_session_factory(self.read_engine) if self.read_engine is not None else None
        )

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        """Prepare the data dir and database (migrating it to head unless told not to)."""
        settings.ensure_dirs()
        url = settings.resolved_database_url
        if migrate:
            upgrade(url)
        engine = make_engine(url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            read_engine=make_engine(url, reads_first=True)
            if engine.dialect.name == "sqlite"
            else None,
        )

    def reading(self) -> Session:
        """A session for looking before writing (the pollers' checks). On SQLite its
        transaction is a snapshot that does not take the write lock — a poller every
        200 ms would otherwise hold it up for the MLLP listener. It must not write."""
        return (self._readers or self.sessions)()

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not None:
            self.read_engine.dispose()


def settle_garbage_collector() -> None:
    """Leave start-up's objects (app, metadata, compiled statements) out of every later
    collection (`gc.freeze`) and collect young objects less often: with thousands of
    monitor messages a second, the cyclic collector otherwise costs ~15 % of the intake."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
