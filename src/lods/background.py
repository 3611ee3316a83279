"""A daemon thread that calls `poll_once()` every `interval` seconds until stopped.

The stable-study watcher and the router are such threads; a failed pass is logged and
the next one tries again (the database may be briefly unavailable), so the thread never
dies of an error.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


class PollingThread:
    """Subclasses set `thread_name` and implement `poll_once`; `start()` and `stop()`."""

    thread_name = "lods-poller"

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        """Start polling in a daemon thread (no-op when already running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except DBAPIError:
                log.exception("%s: pass failed; retrying", self.thread_name)
            except Exception:
                log.exception("%s: pass failed unexpectedly; retrying", self.thread_name)
