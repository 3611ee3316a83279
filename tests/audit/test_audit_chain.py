"""The hash chain on SQLite and PostgreSQL: appends, the database's own guard, and
tampering by someone with full database access, which `verify` must find and name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from lods.audit import service
from lods.audit.models import AuditEvent, AuditHead
from lods.config import MIN_AUDIT_RETENTION_DAYS
from lods.db import utcnow
from lods.runtime import Runtime


def append(rt: Runtime, n: int, *, actor: str = "rita") -> None:
    """Append `n` events, each in its own transaction, as real requests would."""
    for i in range(n):
        with rt.sessions() as db, db.begin():
            service.record(
                db, actor=actor, action="study.view", patient_id=f"P{i}", detail={"i": i}
            )


def ids_by_seq(db: Session) -> dict[int, int]:
    return {seq: id_ for seq, id_ in db.execute(select(AuditEvent.seq, AuditEvent.id))}


def drop_guard(conn: Connection) -> None:
    """Do what an attacker with database rights does first: remove the append-only guard."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
    else:
        conn.exec_driver_sql("DROP TRIGGER audit_events_append_only ON audit_events")


@contextmanager
def tampering(rt: Runtime) -> Iterator[Session]:
    """Yield a session in which the guard is gone; everything is rolled back afterwards.

    DDL is transactional on both backends, so the shared PostgreSQL test database gets
    its trigger back.
    """
    with rt.engine.connect() as conn:
        outer = conn.begin()
        drop_guard(conn)
        with Session(bind=conn) as db:
            yield db
        outer.rollback()


def problems_of(db: Session) -> list[tuple[int | None, str]]:
    _count, problems = service.verify(db)
    return [(p.seq, p.kind) for p in problems]


def swap_contents(db: Session, seq_a: int, seq_b: int) -> None:
    """Swap every column but the row id of two events: each keeps a valid hash."""
    cols = [c.name for c in AuditEvent.__table__.columns if c.name != "id"]
    rows = {
        r.seq: r
        for r in db.execute(select(AuditEvent.__table__).where(AuditEvent.seq.in_([seq_a, seq_b])))
    }
    id_a, id_b = rows[seq_a].id, rows[seq_b].id
    table = AuditEvent.__table__
    db.execute(table.update().where(table.c.id == id_a).values(seq=-1))
    db.execute(
        table.update().where(table.c.id == id_b).values({c: getattr(rows[seq_a], c) for c in cols})
    )
    db.execute(
        table.update().where(table.c.id == id_a).values({c: getattr(rows[seq_b], c) for c in cols})
    )


# --- a sound trail ------------------------------------------------------------------------


def test_verify_is_clean_after_appends(runtime: Runtime) -> None:
    append(runtime, 12)
    with runtime.sessions() as db, db.begin():
        count, problems = service.verify(db)
        head = db.get(AuditHead, 1)
    assert (count, problems) == (12, [])
    assert head is not None and head.seq == 12


def test_verify_is_clean_for_an_empty_trail(runtime: Runtime) -> None:
    with runtime.sessions() as db, db.begin():
        assert service.verify(db) == (0, [])


def test_record_links_each_event_to_the_one_before(runtime: Runtime) -> None:
    append(runtime, 3)
    with runtime.sessions() as db:
        events = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == service.GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_events WHERE seq = 2",
    ],
    ids=["update", "delete"],
)
def test_database_refuses_changes_to_events(runtime: Runtime, statement: str) -> None:
    append(runtime, 3)
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as conn:
        conn.exec_driver_sql(statement)
    with runtime.sessions() as db:
        assert db.scalar(select(AuditEvent.actor).where(AuditEvent.seq == 2)) == "rita"
        assert problems_of(db) == []


def test_concurrent_appends_keep_the_chain_valid(runtime: Runtime) -> None:
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            append(runtime, 15, actor=name)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"user{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with runtime.sessions() as db:
        count, problems = service.verify(db)
        seqs = db.scalars(select(AuditEvent.seq).order_by(AuditEvent.id)).all()
    assert (count, problems) == (60, [])
    assert seqs == list(range(1, 61))


# --- tampering ----------------------------------------------------------------------------


def test_verify_finds_an_edited_field(runtime: Runtime) -> None:
    append(runtime, 8)
    with tampering(runtime) as db:
        db.execute(text("UPDATE audit_events SET patient_id = 'OTHER' WHERE seq = 4"))
        assert problems_of(db) == [(4, "edited")]


def test_verify_finds_an_event_rewritten_with_a_fresh_hash(runtime: Runtime) -> None:
    append(runtime, 8)
    with tampering(runtime) as db:
        ev = db.scalars(select(AuditEvent).where(AuditEvent.seq == 4)).one()
        fields = {
            k: getattr(ev, k)
            for k in ("seq", "occurred_at", "action", "outcome", "patient_id", "study_uid")
        }
        fields.update(object_ref=ev.object_ref, source=ev.source, detail=ev.detail)
        forged = service.event_hash(prev_hash=ev.prev_hash, actor="mallory", **fields)
        db.execute(
            text("UPDATE audit_events SET actor = 'mallory', hash = :h WHERE seq = 4"),
            {"h": forged},
        )
        assert problems_of(db) == [(4, "edited")]


def test_verify_finds_a_rewritten_last_event_by_the_head(runtime: Runtime) -> None:
    append(runtime, 5)
    with tampering(runtime) as db:
        db.execute(text("UPDATE audit_events SET hash = :h WHERE seq = 5"), {"h": "f" * 64})
        assert problems_of(db) == [(5, "edited")]


@pytest.mark.parametrize("seq", [1, 5, 10])
def test_verify_finds_a_deleted_event(runtime: Runtime, seq: int) -> None:
    append(runtime, 10)
    with tampering(runtime) as db:
        db.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": seq})
        assert problems_of(db) == [(seq, "deleted")]


def test_verify_names_the_first_of_several_deleted_events(runtime: Runtime) -> None:
    append(runtime, 10)
    with tampering(runtime) as db:
        db.execute(text("DELETE FROM audit_events WHERE seq BETWEEN 4 AND 6"))
        _count, problems = service.verify(db)
    assert [(p.seq, p.kind) for p in problems] == [(4, "deleted")]
    assert "4 to 6" in problems[0].message


def test_verify_finds_two_swapped_events(runtime: Runtime) -> None:
    append(runtime, 10)
    with tampering(runtime) as db:
        before = ids_by_seq(db)
        swap_contents(db, 3, 7)
        assert ids_by_seq(db)[3] == before[7]  # the swap really happened
        assert problems_of(db) == [(3, "reordered"), (7, "reordered")]


def test_verify_finds_two_swapped_neighbours(runtime: Runtime) -> None:
    append(runtime, 10)
    with tampering(runtime) as db:
        swap_contents(db, 5, 6)
        found = problems_of(db)
    assert found, "a swap of neighbours went unnoticed"
    assert all(kind == "reordered" and seq in (5, 6) for seq, kind in found)


def test_verify_finds_an_event_appended_behind_the_head(runtime: Runtime) -> None:
    append(runtime, 4)
    with tampering(runtime) as db:
        last = db.scalars(select(AuditEvent).where(AuditEvent.seq == 4)).one()
        when = last.occurred_at + timedelta(seconds=1)
        fields = {
            "seq": 5, "occurred_at": when, "actor": "mallory", "action": "study.view",
            "outcome": "success", "patient_id": None, "study_uid": None,
            "object_ref": None, "source": "", "detail": "{}",
        }  # fmt: skip
        digest = service.event_hash(prev_hash=last.hash, **fields)
        db.add(AuditEvent(prev_hash=last.hash, hash=digest, **fields))
        db.flush()
        assert problems_of(db) == [(5, "inserted")]


# --- retention ----------------------------------------------------------------------------


def append_at(rt: Runtime, monkeypatch: pytest.MonkeyPatch, *, days_ago: float, n: int) -> None:
    moment = utcnow() - timedelta(days=days_ago)
    with monkeypatch.context() as patch:
        patch.setattr(service, "utcnow", lambda: moment)
        append(rt, n)


def test_purge_removes_only_events_past_retention(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_at(runtime, monkeypatch, days_ago=400, n=5)
    append_at(runtime, monkeypatch, days_ago=100, n=3)
    append(runtime, 2)
    with runtime.sessions() as db, db.begin():
        removed = service.purge(db, actor="cli:ops", retention_days=365)
    with runtime.sessions() as db:
        remaining = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert problems_of(db) == []
        head = db.get(AuditHead, 1)
    assert removed == 5
    assert [e.seq for e in remaining] == [6, 7, 8, 9, 10, 11]
    assert remaining[-1].action == "audit.purge"
    assert head is not None and head.anchor_seq == 5


def test_purge_can_run_again_and_leaves_a_verifiable_chain(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_at(runtime, monkeypatch, days_ago=500, n=3)
    append_at(runtime, monkeypatch, days_ago=300, n=3)
    with runtime.sessions() as db, db.begin():
        assert service.purge(db, actor="ops", retention_days=400) == 3
    with runtime.sessions() as db, db.begin():
        assert service.purge(db, actor="ops", retention_days=MIN_AUDIT_RETENTION_DAYS) == 3
    with runtime.sessions() as db:
        count, problems = service.verify(db)
        actions = db.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    # What remains is the record of both purges, still one verifiable chain.
    assert (count, problems) == (2, [])
    assert actions == ["audit.purge", "audit.purge"]


def test_purge_refuses_a_retention_below_six_months(runtime: Runtime) -> None:
    append(runtime, 2)
    with pytest.raises(ValueError, match="at least"), runtime.sessions() as db:
        service.purge(db, actor="ops", retention_days=MIN_AUDIT_RETENTION_DAYS - 1)


def test_purge_with_nothing_old_changes_nothing(runtime: Runtime) -> None:
    append(runtime, 3)
    with runtime.sessions() as db, db.begin():
        assert service.purge(db, actor="ops", retention_days=MIN_AUDIT_RETENTION_DAYS) == 0
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(AuditEvent)) == 3


def test_deleting_recent_events_stays_refused_after_a_purge(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_at(runtime, monkeypatch, days_ago=400, n=2)
    append(runtime, 2)
    with runtime.sessions() as db, db.begin():
        service.purge(db, actor="ops", retention_days=365)
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_events WHERE seq = 3")
