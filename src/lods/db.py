"""Engine and session factory; SQLite gets WAL and full fsync, PostgreSQL works unchanged."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we acknowledge anything that depends on it.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.close()


#: How long a statement waits for a lock another connection holds.
BUSY_TIMEOUT_MS = 30_000
#: Longest pause between two tries at the write lock (`_begin_immediate`).
_MAX_PAUSE = 0.002


def _begin_immediate(conn: Any) -> None:
    """BEGIN IMMEDIATE, trying again every 0.1–2 ms while another connection writes.

    SQLite's own busy handler sleeps in growing steps (1, 2, 5, 10 … 100 ms), so a writer
    that meets a short transaction of a poller (router, ticker, sender) may sleep tens of
    milliseconds after the lock is free — at thousands of monitor messages a second that
    idle lock is most of the cost. The handler stays in force for every other statement."""
    raw = conn.connection.dbapi_connection
    raw.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.0001
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)
    finally:
        raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def make_engine(url: str, *, reads_first: bool = False, **kwargs: Any) -> Engine:
    """Create an engine for `url` with the settings Lods relies on.

    On SQLite every transaction takes the write lock when it begins, unless `reads_first`:
    then it starts as a reader (a snapshot; writers go on meanwhile) and a write in it may
    fail with SQLITE_BUSY — for work that reads first and writes elsewhere."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN. We emit BEGIN IMMEDIATE so a
        # transaction takes the write lock up front: a deferred one that reads and then
        # writes fails with SQLITE_BUSY when another writer got in between.
        if reads_first:
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        else:
            event.listen(engine, "begin", _begin_immediate)

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Yield a session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session


_INSERTS: dict[tuple[str, str, tuple[str, ...]], tuple[str, tuple[str, ...] | None]] = {}


def _memoised(processor: Any, values: list[Any]) -> list[Any]:
    memo: dict[Any, Any] = {}
    out: list[Any] = []
    for value in values:
        try:
            done = memo[value]
        except KeyError:
            done = memo[value] = processor(value)
        except TypeError:  # unhashable
            done = processor(value)
        out.append(done)
    return out


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) with one DBAPI executemany (PostgreSQL:
    one COPY).

    The same as `conn.execute(insert(table), rows)` at a fraction of the cost per row: the
    statement is compiled once per dialect, parameters are assembled column by column,
    and each column's bind processor (e.g. datetime → SQLite text) runs once per distinct
    value, not once per row — monitor readings of one message share their times.
    """
    if not rows:
        return
    keys = tuple(rows[0])
    dialect = conn.dialect
    cache_key = (dialect.name, table.name, keys)
    cached = _INSERTS.get(cache_key)
    if cached is None:
        compiled = insert(table).values({k: bindparam(k) for k in keys}).compile(dialect=dialect)
        positions = compiled.positiontup if compiled.positional else None
        cached = _INSERTS[cache_key] = (str(compiled), tuple(positions) if positions else None)
    sql, order = cached
    names = order or keys
    columns: list[list[Any]] = []
    for name in names:
        values = [row[name] for row in rows]
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        columns.append(_memoised(processor, values) if processor is not None else values)
    tuples = list(zip(*columns, strict=True))
    if dialect.name == "postgresql":
        # COPY: one stream for the whole batch; executemany costs a round of the server's
        # statement machinery per row (~35 µs each on loopback).
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor, cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
            for row_values in tuples:
                copy.write_row(row_values)
        return
    if order is not None:
        conn.exec_driver_sql(sql, tuples)
    else:
        conn.exec_driver_sql(sql, [dict(zip(names, v, strict=True)) for v in tuples])
