"""The scorer process: early-warning scores for the MLLP listener, on a second core.

Parsing and storing monitor messages and scoring them all need the interpreter; in one
process they share one core. With `LODS_HL7_SCORING=process` (the default) the listener
stores a batch — messages, observations and a `vitals_score_requests` row naming the
patients with new readings — and commits; this process then scores those patients and,
in one more transaction, stores the scores, raises band alerts and deletes the request.
Only then does the listener send the batch's ACKs, so an ACK still means "stored and
scored", and a sender that waits for its ACK sees its score.

How the work is split:

- The listener (`ScorerProcess`, in `lods serve`) submits `(request id, patients, time)`
  down a pipe as soon as the batch has committed, and goes on with the next batch while
  this one is scored. A reader thread takes the answers: the requests done and the ward
  board's events, which it publishes (`lods.alerts.live.HUB` lives in `lods serve`).
- The scorer (`_main`, a spawned child) takes every request waiting in the pipe, works
  out their scores in a read transaction (`plan_scores`: on SQLite a snapshot that does
  not hold the write lock, so the listener keeps committing meanwhile) and stores them in
  one short write transaction (`store_scores`). Requests naming the same patient go into
  separate rounds, so each sees the score before it (band rises are judged in order).
- Nothing is lost: a request row is written in the intake transaction and deleted only
  with its scores. When the scorer starts (first, or again after it died) it scores every
  request left in the table and tells the listener which ones; the listener counts those
  it had sent that are no longer there as done. If the scorer dies, it is started again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lods.alerts import live
from lods.config import Settings
from lods.runtime import Runtime, settle_garbage_collector
from lods.vitals import scoring
from lods.vitals.models import ScoreRequest

log = logging.getLogger(__name__)

#: Seconds to wait before starting a scorer again after it died.
RESTART_DELAY = 1.0
#: A scorer process that ends this often within `FALLBACK_WINDOW` seconds is replaced by a
#: scorer thread in `lods serve` (slower, but the ACKs go on).
FALLBACK_AFTER = 3
FALLBACK_WINDOW = 60.0
#: Requests scored together at most (one read and one write transaction).
ROUND_SIZE = 16

#: (ward id, payload) events for the ward board, published after the scorer's commit.
Event = tuple[int | None, dict[str, Any]]
#: Told by the reader thread: request ids done, and the board events they made.
Done = Callable[[list[int], list[Event]], None]


@dataclass(frozen=True)
class Request:
    id: int
    patient_fks: tuple[int, ...]
    requested_at: datetime


class WriteTurns:
    """Turns at SQLite's single write lock for the listener's writer and the scorer.

    Both would otherwise wait for it in SQLite's busy handler, which sleeps in growing
    steps (1, 2, 5, 10 … 100 ms) and so leaves the lock idle long after it is free. An
    exclusive `flock` on a file beside the database wakes the waiter at once, and the
    kernel releases it if its holder dies. Nothing to do on PostgreSQL (row locks)."""

    def __init__(self, settings: Settings) -> None:
        self._fd: int | None = None
        if settings.resolved_database_url.startswith("sqlite"):
            path = Path(settings.data_dir) / "tmp" / "vitals-write.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- the listener's side ----------------------------------------------------------------------


class ScorerProcess:
    """Starts the scorer, sends it requests, and reports what it has done to `on_done`
    (from a reader thread). Starts it again if it dies; one that keeps dying is replaced
    by a scorer thread in this process."""

    def __init__(self, settings: Settings, on_done: Done) -> None:
        self.settings = settings
        self.on_done = on_done
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        #: Ids sent to a scorer and not yet reported done.
        self._sent: set[int] = set()
        #: Of those, the ones sent before the current scorer started.
        self._before: set[int] = set()
        self._deaths: list[float] = []
        #: Scorers started so far (1 unless one died).
        self.starts = 0
        #: True once scoring has fallen back to a thread of this process.
        self.in_thread = False

    def command(self, fd: int) -> list[str]:
        """The scorer process's command line, given its end of the socket pair."""
        return [sys.executable, "-m", "lods.vitals.scorer", str(fd)]

    def start(self) -> None:
        with self._lock:
            self._launch()
        self._reader = threading.Thread(target=self._read, name="hl7-scorer-reader", daemon=True)
        self._reader.start()

    def _launch(self) -> None:
        """Start a scorer (the lock is held): `python -m lods.vitals.scorer FD` with one end
        of a socket pair, the settings its first message — or, after the fallback, a
        thread running the same loop."""
        self._before = set(self._sent)
        self.starts += 1
        ours, theirs = socket.socketpair()
        if self.in_thread:
            self._conn, self._process = Connection(ours.detach()), None
            self._thread = threading.Thread(
                target=_score_in_thread,
                args=(self.settings, Connection(theirs.detach())),
                name="hl7-scorer",
                daemon=True,
            )
            self._thread.start()
            return
        try:
            process = subprocess.Popen(self.command(theirs.fileno()), pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        with contextlib.suppress(OSError):  # it died at once: the reader sees the end
            conn.send((self.settings, logging.getLogger().getEffectiveLevel()))
        self._conn, self._process = conn, process

    def submit(self, request: Request) -> None:
        """Have `request` scored; its row is committed. If the pipe is broken the scorer is
        being started again and finds the row itself."""
        with self._lock:
            self._sent.add(request.id)
            conn = self._conn
        if conn is None:
            return
        try:
            conn.send(("score", request.id, request.patient_fks, request.requested_at))
        except (OSError, ValueError):
            log.warning("scorer pipe broken; request %d waits for the restarted scorer", request.id)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            conn, process, thread = self._conn, self._process, self._thread
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(5)
        if thread is not None:
            thread.join(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if conn is not None:
            conn.close()

    def _read(self) -> None:
        while True:
            conn = self._conn
            assert conn is not None
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if not self._restart():
                    return
                continue
            try:
                self._handle(message)
            except Exception:  # never let the reader die
                log.exception("scorer answer not handled: %r", message[:1])

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            # Requests sent to a scorer that died and no longer in the table were stored by
            # it before it died; those still there are being scored now. (Requests sent
            # since are answered by the new scorer.)
            leftover = set(message[1])
            with self._lock:
                gone = sorted(self._before - leftover)
                self._sent -= set(gone)
                self._before = set()
            if gone:
                self.on_done(gone, [])
        elif kind == "done":
            ids, events = list(message[1]), list(message[2])
            with self._lock:
                self._sent -= set(ids)
            self.on_done(ids, events)

    def _restart(self) -> bool:
        """Start a new scorer after the old one ended; False when stopping."""
        with self._lock:
            if self._stopping:
                return False
            code = self._process.wait() if self._process is not None else None
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < FALLBACK_WINDOW] + [now]
            if len(self._deaths) >= FALLBACK_AFTER and not self.in_thread:
                self.in_thread = True
                log.error(
                    "the scorer process ended %d times in %g s (exit code %s); scoring in "
                    "this process from now on",
                    len(self._deaths),
                    FALLBACK_WINDOW,
                    code,
                )
            else:
                log.error("the scorer ended (exit code %s); starting it again", code)
        time.sleep(RESTART_DELAY)
        with self._lock:
            if self._stopping:
                return False
            if self._conn is not None:
                self._conn.close()
            self._launch()
        return True


# --- the scorer process -------------------------------------------------------------------


class _Collector(live.LiveHub):
    """The scorer's hub: board events are kept to be sent to the listener's process."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def publish(self, ward_id: int | None, payload: dict[str, Any]) -> None:
        self.events.append((ward_id, payload))

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class _Scorer:
    def __init__(self, settings: Settings, conn: Connection, hub: _Collector) -> None:
        self.settings = settings
        self.conn = conn
        self.hub = hub
        self.runtime = Runtime.open(settings, migrate=False)
        self.sessions = self.runtime.sessions
        #: Ids scored from the table at start; the same ids may also come down the pipe.
        self.recovered: set[int] = set()
        self.turns = WriteTurns(settings)

    def close(self) -> None:
        self.turns.close()
        self.runtime.close()

    def recover(self) -> list[Request]:
        """Tell the listener which requests are left in the table, and return them."""
        with self.sessions() as db, db.begin():
            rows = db.execute(
                select(
                    ScoreRequest.id, ScoreRequest.patient_fks, ScoreRequest.requested_at
                ).order_by(ScoreRequest.id)
            ).all()
        left = [Request(r.id, tuple(r.patient_fks or ()), _aware(r.requested_at)) for r in rows]
        self.recovered = {r.id for r in left}
        self.conn.send(("ready", sorted(self.recovered)))
        if left:
            log.info("scoring %d request(s) left from before", len(left))
        return left

    def run(self) -> None:
        self.score(self.recover())
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the listener's process has gone
                return
            waiting = [message]
            while self.conn.poll():
                waiting.append(self.conn.recv())
            stop = any(m[0] == "stop" for m in waiting)
            requests = [Request(m[1], tuple(m[2]), m[3]) for m in waiting if m[0] == "score"]
            repeated = [r.id for r in requests if r.id in self.recovered]
            if repeated:
                self.conn.send(("done", repeated, []))
            self.score([r for r in requests if r.id not in self.recovered])
            if stop:
                return

    def score(self, requests: Sequence[Request]) -> None:
        for round_ in _rounds(requests):
            self._score_round(round_)

    def _score_round(self, requests: list[Request]) -> None:
        settings = self.settings
        plans: list[Any] | None = []
        try:
            with self.runtime.reading() as db, db.begin():
                plans = [
                    scoring.plan_scores(
                        db, patient_fks=r.patient_fks, now=r.requested_at, settings=settings
                    )
                    for r in requests
                ]
        except OperationalError:
            # A package's integrity check writes; on SQLite a reader may not be able to.
            log.info("scoring in a write transaction (the read transaction could not write)")
            plans = None
        except Exception:
            # Scored again below, one request at a time, where a failure is dealt with.
            log.exception("working out the scores of requests %s failed", [r.id for r in requests])
            plans = None
        ids = [r.id for r in requests]
        try:
            with self.turns.turn(), self.sessions() as db, db.begin():
                if plans is None:
                    for r in requests:
                        scoring.score_after_intake(
                            db,
                            patient_fks=r.patient_fks,
                            now=r.requested_at,
                            settings=settings,
                            returning=False,
                        )
                else:
                    for plan in plans:
                        scoring.store_scores(db, plan, settings=settings)
                _forget(db, ids)
        except Exception:
            self.hub.take()
            if len(requests) > 1:
                log.warning("scoring %d requests failed; one by one", len(requests), exc_info=True)
                for r in requests:
                    self._score_round([r])
                return
            # Its readings are stored; a score that cannot be stored must not hold the ACK.
            log.exception("request %d (patients %s) could not be scored", ids[0], requests[0])
            with self.sessions() as db, db.begin():
                _forget(db, ids)
        self.conn.send(("done", ids, self.hub.take()))


def _score_in_thread(settings: Settings, conn: Connection) -> None:
    """The fallback: the scorer's loop in a thread of `lods serve`. Board events go to the
    process's hub directly (its own collector stays empty)."""
    scorer = _Scorer(settings, conn, _Collector())
    try:
        scorer.run()
    except Exception:
        log.exception("the scorer thread failed")
    finally:
        scorer.close()
        conn.close()


def _forget(db: Session, ids: list[int]) -> None:
    db.execute(delete(ScoreRequest).where(ScoreRequest.id.in_(ids)))


def _rounds(requests: Sequence[Request]) -> list[list[Request]]:
    """Consecutive requests in rounds of at most `ROUND_SIZE` in which no patient comes
    twice: a round's scores are all worked out before any of them is stored."""
    rounds: list[list[Request]] = []
    current: list[Request] = []
    seen: set[int] = set()
    for request in requests:
        if len(current) >= ROUND_SIZE or seen.intersection(request.patient_fks):
            rounds.append(current)
            current, seen = [], set()
        current.append(request)
        seen.update(request.patient_fks)
    if current:
        rounds.append(current)
    return rounds


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str]) -> int:
    """The scorer process (`python -m lods.vitals.scorer FD`): score what comes down the
    connection on file descriptor FD until told to stop or the connection closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # `lods serve` stops it
    conn = Connection(int(argv[1]))
    try:
        settings, log_level = conn.recv()
    except (EOFError, OSError):
        return 0
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = _Collector()
    live.HUB = hub
    scorer = _Scorer(settings, conn, hub)
    settle_garbage_collector()
    try:
        scorer.run()
    except Exception:
        log.exception("the scorer process failed")
        return 1
    finally:
        scorer.close()
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
