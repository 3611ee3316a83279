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

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        """Prepare the data dir and database (migrating it to head unless told not to)."""
        settings.ensure_dirs()
        url = settings.resolved_database_url
        if migrate:
            upgrade(url)
        engine = make_engine(url)
        return cls(settings=settings, engine=engine, sessions=make_session_factory(engine))

    def close(self) -> None:
        self.engine.dispose()


def settle_garbage_collector() -> None:
    """Leave start-up's objects (app, metadata, compiled statements) out of every later
    collection (`gc.freeze`) and collect young objects less often: with thousands of
    monitor messages a second, the cyclic collector otherwise costs ~15 % of the intake."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
