"""The acute list puts the AI's most urgent studies first, then the longest waiting; shadow
output never moves a study; signed studies leave; the ED view shows the recent hours."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from review_support import principal, store_result
from sqlalchemy import select

from lods.db import utcnow
from lods.findings.models import Finding
from lods.imaging.models import Patient, Study
from lods.review import service as review
from lods.review.worklist import acute_worklist, recent_fingerprint, recent_studies
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions.runtimes.base import CodeRef, FindingResult
from support import add_cast
from support_solutions import SPOT_CODE, install_approve_deploy, python_package

CODE = CodeRef(**SPOT_CODE)
#: The spot solution's operating points: sure ≥ 0.8, doubtful ≥ 0.4 (see support_solutions).
SCORES = {"sure": 0.95, "doubtful": 0.5, "negative": 0.1}


@pytest.fixture
def region(runtime: Runtime, tmp_path: Path) -> tuple[Runtime, int, int, int]:
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        site_id = create_site(db, code="HAV", name="Havnby", actor="test").id
    version_id, deployment_id = install_approve_deploy(
        runtime, python_package(tmp_path / "pkg"), site="HAV"
    )
    return runtime, site_id, version_id, deployment_id


def _study(rt: Runtime, site_id: int, name: str, *, age_minutes: int, modality: str = "DX") -> int:
    with rt.sessions() as db, db.begin():
        patient = Patient(patient_id=f"P-{name}", name=name)
        db.add(patient)
        db.flush()
        study = Study(
            study_uid=f"1.2.826.0.1.3680043.8.498.{abs(hash(name)) % 10**9}",
            patient_fk=patient.id,
            site_id=site_id,
            modalities=modality,
            first_received_at=utcnow() - timedelta(minutes=age_minutes),
        )
        db.add(study)
        db.flush()
        return study.id


def _result(
    rt: Runtime,
    version_id: int,
    deployment_id: int,
    study_id: int,
    level: str,
    *,
    mode: str = "live",
) -> None:
    store_result(
        rt,
        (version_id, deployment_id),
        study_id,
        mode=mode,
        findings=[FindingResult(code=CODE, score=SCORES[level])],
    )


def test_most_urgent_first_then_longest_waiting(region: tuple[Runtime, int, int, int]) -> None:
    rt, site_id, version_id, deployment_id = region
    plan = [
        ("negative-old", "negative", 90),
        ("none-oldest", None, 200),
        ("doubtful", "doubtful", 10),
        ("sure-new", "sure", 5),
        ("sure-old", "sure", 50),
        ("negative-new", "negative", 20),
    ]
    for name, level, age in plan:
        study_id = _study(rt, site_id, name, age_minutes=age)
        if level:
            _result(rt, version_id, deployment_id, study_id, level)
    _study(rt, site_id, "mammo", age_minutes=500, modality="MG")  # not an acute X-ray
    with rt.sessions() as db:
        rows = acute_worklist(db, site_id=site_id)
    assert [r.patient_name for r in rows] == [
        "sure-old",
        "sure-new",
        "doubtful",
        "negative-old",
        "negative-new",
        "none-oldest",
    ]
    assert [r.urgency for r in rows] == [3, 3, 2, 1, 1, 0]
    assert rows[0].ai_outcome == "positive" and rows[0].waiting >= timedelta(minutes=49)


def test_shadow_output_does_not_move_a_study(region: tuple[Runtime, int, int, int]) -> None:
    rt, site_id, version_id, deployment_id = region
    quiet = _study(rt, site_id, "quiet", age_minutes=30)
    _result(rt, version_id, deployment_id, quiet, "sure", mode="shadow")
    _study(rt, site_id, "older", age_minutes=60)
    with rt.sessions() as db:
        rows = acute_worklist(db, site_id=site_id)
    assert [(r.patient_name, r.urgency, r.ai_text) for r in rows] == [
        ("older", 0, None),
        ("quiet", 0, None),
    ]


def test_a_signed_study_leaves_the_list_and_a_claim_shows(
    region: tuple[Runtime, int, int, int],
) -> None:
    rt, site_id, version_id, deployment_id = region
    done = _study(rt, site_id, "done", age_minutes=40)
    _result(rt, version_id, deployment_id, done, "sure")
    reading = _study(rt, site_id, "reading", age_minutes=30)
    rita = principal(rt, "rita")
    with rt.sessions() as db, db.begin():
        (finding_id,) = db.scalars(select(Finding.id).where(Finding.study_fk == done))
        review.decide(db, study_id=done, finding_id=finding_id, decision="agree", user=rita)
        review.sign(db, study_id=done, user=rita, conclusion="positive")
        review.claim(db, study_id=reading, user=rita)
    with rt.sessions() as db:
        rows = acute_worklist(db, site_id=site_id)
        assert [r.patient_name for r in rows] == ["reading"]
        assert rows[0].claim is not None and rows[0].claim.username == "rita"
        recent = recent_studies(db, site_id=site_id, hours=1)
    assert {r.patient_name: r.report_state for r in recent} == {"done": "signed", "reading": None}


def test_the_ed_view_keeps_to_its_hours(region: tuple[Runtime, int, int, int]) -> None:
    rt, site_id, *_ = region
    _study(rt, site_id, "today", age_minutes=60)
    _study(rt, site_id, "yesterday", age_minutes=60 * 20)
    with rt.sessions() as db:
        assert [r.patient_name for r in recent_studies(db, site_id=site_id, hours=12)] == ["today"]


def test_the_ed_fingerprint_changes_with_each_arrival(
    region: tuple[Runtime, int, int, int],
) -> None:
    rt, site_id, version_id, deployment_id = region

    def fingerprint() -> str:
        with rt.sessions() as db:
            return recent_fingerprint(db, site_id=site_id, hours=12)

    empty = fingerprint()
    study = _study(rt, site_id, "arriving", age_minutes=5)
    arrived = fingerprint()
    _result(rt, version_id, deployment_id, study, "sure")
    answered = fingerprint()
    rita = principal(rt, "rita")
    with rt.sessions() as db, db.begin():
        (finding_id,) = db.scalars(select(Finding.id).where(Finding.study_fk == study))
        review.decide(db, study_id=study, finding_id=finding_id, decision="agree", user=rita)
        review.sign(db, study_id=study, user=rita, conclusion="positive")
    signed = fingerprint()
    assert len({empty, arrived, answered, signed}) == 4
    assert fingerprint() == signed  # nothing new: the same
