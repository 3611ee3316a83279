"""The job state machine, in one place: which state may follow which.

    queued ──► running ──► succeeded
      │          │  │
      │          │  └────► failed ──► queued   (manual retry by an admin)
      │          ├───────► queued              (transient error, time-out or lost lease)
      ▼          ▼
    cancelled ◄──┘

`succeeded` and `cancelled` are final; `failed` is final unless someone retries it.
Every state change in `lods.jobs.service` calls `check_transition` before its
compare-and-set UPDATE, so a transition missing here cannot happen anywhere.
"""

from __future__ import annotations

from lods.jobs.models import JobState

#: Every (old, new) pair a job may go through.
ALLOWED: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.QUEUED),
        (JobState.RUNNING, JobState.CANCELLED),
        (JobState.FAILED, JobState.QUEUED),
    }
)

#: States a job never leaves.
FINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.CANCELLED})

#: States a worker may still act on; `cancel` applies to these.
ACTIVE: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RUNNING})


class IllegalTransition(ValueError):
    """A state change the job state machine does not allow."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"a job cannot go from {old!r} to {new!r}")
        self.old = old
        self.new = new


def _state(value: str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise ValueError(f"unknown job state {value!r}") from None


def can_transition(old: str, new: str) -> bool:
    """Return whether a job may go from `old` to `new` (unknown states raise ValueError)."""
    return (_state(old), _state(new)) in ALLOWED


def check_transition(old: str, new: str) -> None:
    """Raise `IllegalTransition` unless a job may go from `old` to `new`."""
    if not can_transition(old, new):
        raise IllegalTransition(str(old), str(new))


def successors(state: str) -> frozenset[JobState]:
    """Return the states a job in `state` may go to next."""
    current = _state(state)
    return frozenset(new for old, new in ALLOWED if old == current)
