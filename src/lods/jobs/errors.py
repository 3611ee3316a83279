"""Errors job handlers raise, and the signal that a job is no longer the worker's.

The worker classifies a handler's exception by its `transient` attribute: true means
"try again later" (retried with back-off while attempts remain), anything else,
including exceptions without the attribute, fails the job at once.
"""

from __future__ import annotations


class JobError(Exception):
    """A handler error with an explicit classification."""

    #: Whether the job may succeed if run again later.
    transient: bool = False
    #: What the job monitor shows as the error's kind.
    error_kind: str = "permanent"


class TransientJobError(JobError):
    """A failure worth retrying: an unreachable peer, a busy resource, a lock time-out."""

    transient = True
    error_kind = "transient"


class PermanentJobError(JobError):
    """A failure a retry cannot fix: bad input, an unsupported study, a broken model."""

    transient = False
    error_kind = "permanent"


class JobCancelled(Exception):
    """Raised by `JobContext.heartbeat` once the job was cancelled or its lease was lost."""
