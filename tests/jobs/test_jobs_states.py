"""The job state machine allows exactly the documented transitions."""

from __future__ import annotations

import itertools

import pytest

from lods.jobs.models import JobState
from lods.jobs.states import (
    ALLOWED,
    FINAL,
    IllegalTransition,
    can_transition,
    check_transition,
    successors,
)

Q, R, S, F, C = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)

EXPECTED = {(Q, R), (Q, C), (R, S), (R, F), (R, Q), (R, C), (F, Q)}


@pytest.mark.parametrize(("old", "new"), sorted(EXPECTED))
def test_allowed_transitions_pass(old: JobState, new: JobState) -> None:
    check_transition(old, new)
    check_transition(old.value, new.value)
    assert can_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [(Q, S), (Q, F), (S, Q), (S, R), (C, Q), (C, R), (F, R), (F, S), (Q, Q), (R, R)],
)
def test_illegal_transitions_raise(old: JobState, new: JobState) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(old, new)
    assert caught.value.old == old.value and caught.value.new == new.value
    assert old.value in str(caught.value) and new.value in str(caught.value)
    assert not can_transition(old, new)


def test_the_table_is_exactly_the_documented_one() -> None:
    assert set(ALLOWED) == EXPECTED
    every_pair = set(itertools.product(JobState, JobState))
    for old, new in every_pair - EXPECTED:
        assert not can_transition(old, new)


def test_final_states_have_no_successors() -> None:
    assert set(FINAL) == {S, C}
    for state in FINAL:
        assert successors(state) == frozenset()
    assert successors(F) == {Q}
    assert successors(R) == {S, F, Q, C}


def test_unknown_states_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown job state"):
        check_transition("queued", "paused")
    assert issubclass(IllegalTransition, ValueError)
