"""The screening reading strategy: a high AI score needs two independent reads (the second
blind), discordance needs consensus, a low score one read with the AI shown; the same
reader twice never counts as two, and no exam closes without a human read."""

from __future__ import annotations

from pathlib import Path

import pytest
from review_support import Unit, principal, screening_exam, screening_unit
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from lods.auth.deps import Principal
from lods.auth.models import Role
from lods.review import screening
from lods.review.models import ScreeningRead
from lods.review.screening import ExamState
from lods.review.service import ReviewError
from lods.runtime import Runtime
from lods.sites.models import Site


@pytest.fixture
def unit(runtime: Runtime, tmp_path: Path) -> Unit:
    return screening_unit(runtime, tmp_path)


def _read(rt: Runtime, study_id: int, user: Principal, outcome: str) -> screening.ExamStatus:
    with rt.sessions() as db, db.begin():
        return screening.record_read(db, study_id=study_id, user=user, outcome=outcome)


def test_a_high_score_needs_two_reads_and_the_second_is_blind(
    unit: Unit,
) -> None:
    rt = unit[0]
    exam = screening_exam(unit, "high", 9)
    rita, rolf = principal(rt, "rita"), principal(rt, "rolf")
    with rt.sessions() as db:
        first_view = screening.reader_view(db, exam, rita)
    assert first_view.show_ai_score and first_view.can_read
    after_first = _read(rt, exam, rita, "recall")
    assert (after_first.state, after_first.reads_needed) == (ExamState.AWAITING_SECOND, 2)
    with rt.sessions() as db:
        blind = screening.reader_view(db, exam, rolf)
        (row,) = screening.screening_worklist(db, rolf)
    assert not blind.show_ai_score and blind.visible_reads == [] and blind.can_read
    assert row.ai_score is None and row.state is ExamState.AWAITING_SECOND
    done = _read(rt, exam, rolf, "recall")
    assert (done.state, done.outcome) == (ExamState.DONE, "recall")
    with rt.sessions() as db:
        stored = db.scalars(select(ScreeningRead).order_by(ScreeningRead.id)).all()
    assert [r.ai_score_shown for r in stored] == [9, None]


def test_the_same_reader_twice_does_not_count_as_two(unit: Unit) -> None:
    rt = unit[0]
    exam = screening_exam(unit, "twice", 10)
    rita = principal(rt, "rita")
    _read(rt, exam, rita, "no_recall")
    with pytest.raises(ReviewError, match="already read"):
        _read(rt, exam, rita, "no_recall")
    with rt.sessions() as db:
        assert screening.status(db, exam).state is ExamState.AWAITING_SECOND
    # and the database holds the rule on its own
    with pytest.raises(IntegrityError), rt.sessions() as db, db.begin():
        db.add(ScreeningRead(study_fk=exam, reader_fk=rita.user_id, kind="read", outcome="recall"))


def test_discordant_reads_need_consensus(unit: Unit) -> None:
    rt = unit[0]
    exam = screening_exam(unit, "discord", 8)
    rita, rolf = principal(rt, "rita"), principal(rt, "rolf")
    _read(rt, exam, rita, "recall")
    state = _read(rt, exam, rolf, "no_recall")
    assert state.state is ExamState.AWAITING_CONSENSUS and state.outcome is None
    with rt.sessions() as db:
        assert screening.reader_view(db, exam, rita).can_give_consensus
    with pytest.raises(ReviewError, match="awaiting consensus"):
        _read(rt, exam, principal(rt, "ada", extra=frozenset({Role.RADIOLOGIST})), "recall")
    with rt.sessions() as db, db.begin():
        final = screening.record_consensus(db, study_id=exam, user=rita, outcome="recall")
    assert (final.state, final.outcome) == (ExamState.DONE, "recall")


def test_a_low_score_needs_one_read_with_the_ai_shown(unit: Unit) -> None:
    rt = unit[0]
    exam = screening_exam(unit, "low", 3)
    rita = principal(rt, "rita")
    with rt.sessions() as db:
        assert screening.reader_view(db, exam, rita).show_ai_score
    done = _read(rt, exam, rita, "no_recall")
    assert (done.state, done.reads_needed, done.outcome) == (ExamState.DONE, 1, "no_recall")


def test_no_exam_closes_without_a_human_read(unit: Unit) -> None:
    rt = unit[0]
    lowest = screening_exam(unit, "lowest", 1)
    unscored = screening_exam(unit, "unscored", None)
    rita = principal(rt, "rita")
    with rt.sessions() as db:
        rows = screening.screening_worklist(db, rita)
        states = {r.patient_name: r.state for r in rows}
        assert screening.status(db, lowest).outcome is None
        assert screening.status(db, unscored).reads_needed == 1
    assert states == {"lowest": ExamState.AWAITING_FIRST, "unscored": ExamState.AWAITING_FIRST}


def test_the_site_sets_the_double_read_threshold(unit: Unit) -> None:
    rt, site_id, *_ = unit
    exam = screening_exam(unit, "seven", 7)
    with rt.sessions() as db:
        assert screening.status(db, exam).reads_needed == 1
    with rt.sessions() as db, db.begin():
        db.execute(update(Site).where(Site.id == site_id).values(screening_double_read_from=6))
    with rt.sessions() as db:
        assert screening.status(db, exam).reads_needed == 2


def test_only_radiologists_read(unit: Unit) -> None:
    rt = unit[0]
    exam = screening_exam(unit, "who", 9)
    for name in ("peter", "otto", "nina"):
        with pytest.raises(ReviewError) as caught:
            _read(rt, exam, principal(rt, name), "recall")
        assert caught.value.status == 403
