"""Certainty by operating points, the study outcome, exactly-once storage, and the rule
that AI output is never anything but preliminary."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from lods.findings.models import Finding, StudyResult
from lods.findings.service import (
    can_see_shadow,
    certainty,
    replace_job_results,
    study_outcome,
    visible_modes,
)
from lods.jobs import service as jobs
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions.manifest import OperatingPoints, manifest_from_dict
from lods.solutions.models import SolutionVersion
from lods.solutions.runtimes.base import Box, CodeRef, FindingResult, RunResult
from support import add_cast
from support_solutions import SPOT_CODE, install_approve_deploy, manifest_dict, python_package

POINTS = OperatingPoints(sure=0.8, doubtful=0.4)
CODE = CodeRef(**SPOT_CODE)
MANIFEST = manifest_from_dict(
    {
        **manifest_dict(
            solution_id="org.test.rule",
            version="1.0",
            runtime={"kind": "python", "entry_point": "engine.py:run"},
        ),
        "files": {"engine.py": "0" * 64},
    }
)


@given(st.floats(min_value=0, max_value=1))
def test_certainty_follows_the_operating_points(score: float) -> None:
    level = certainty(score, POINTS)
    assert level == ("sure" if score >= 0.8 else "doubtful" if score >= 0.4 else "none")


@pytest.mark.parametrize(
    ("scores", "outcome", "text"),
    [
        ([0.95, 0.1], "positive", "Spot"),
        ([0.5], "uncertain", "Maybe a spot"),
        ([0.1], "negative", "No spot"),
        ([], "negative", "No spot"),
    ],
)
def test_study_outcome_from_the_strongest_finding(
    scores: list[float], outcome: str, text: str
) -> None:
    result = RunResult(findings=[FindingResult(code=CODE, score=s) for s in scores])
    answer = study_outcome(MANIFEST, result, [certainty(s, POINTS) for s in scores])
    assert (answer.outcome, answer.text) == (outcome, text)


def test_study_score_alone_can_make_a_study_positive() -> None:
    answer = study_outcome(MANIFEST, RunResult(findings=[], study_score=0.9), [])
    assert answer.outcome == "positive" and answer.score == 0.9


def test_shadow_output_is_for_ai_owners_only() -> None:
    assert not can_see_shadow(["radiologist", "physician", "admin"])
    assert "shadow" in visible_modes(["ai_owner"])
    assert "shadow" not in visible_modes(["radiologist"])


@pytest.fixture
def job_setup(runtime: Runtime, tmp_path: Path) -> tuple[Runtime, int, int, int]:
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        create_site(db, code="HAV", name="Havnby", actor="test")
    version_id, deployment_id = install_approve_deploy(
        runtime, python_package(tmp_path / "pkg"), site="HAV"
    )
    with runtime.sessions() as db, db.begin():
        job_id = jobs.enqueue(
            db,
            version_id=version_id,
            deployment_id=deployment_id,
            inputs={},
            max_attempts=1,
            timeout_seconds=5,
        )
    return runtime, version_id, deployment_id, job_id


def _store(rt: Runtime, version_id: int, job_id: int, result: RunResult) -> None:
    with rt.sessions() as db, db.begin():
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        replace_job_results(
            db,
            job_id=job_id,
            study_id=None,
            version=version,
            deployment=None,
            mode="live",
            manifest=MANIFEST,
            result=result,
        )


def test_rerun_replaces_findings_never_duplicates(job_setup: tuple[Runtime, int, int, int]) -> None:
    rt, version_id, _, job_id = job_setup
    result = RunResult(
        findings=[
            FindingResult(code=CODE, score=0.9, sop_instance_uid="1.2.3", box=Box(1, 2, 30, 40)),
            FindingResult(code=CODE, score=0.5, sop_instance_uid="1.2.3"),
            FindingResult(code=CodeRef("SCT", "1", "undeclared"), score=0.99),
        ]
    )
    _store(rt, version_id, job_id, result)
    _store(rt, version_id, job_id, result)
    with rt.sessions() as db:
        findings = db.scalars(
            select(Finding).where(Finding.job_fk == job_id).order_by(Finding.score.desc())
        ).all()
        results = db.scalars(select(StudyResult).where(StudyResult.job_fk == job_id)).all()
    assert [(f.score, f.certainty) for f in findings] == [(0.9, "sure"), (0.5, "doubtful")]
    assert (findings[0].box_x0, findings[0].box_y1) == (1, 40)
    assert len(results) == 1 and results[0].num_findings == 2 and results[0].outcome == "positive"
    assert '"version": "1.0"' in results[0].provenance


def test_ai_output_cannot_be_made_final_in_the_database(
    job_setup: tuple[Runtime, int, int, int],
) -> None:
    rt, version_id, _, job_id = job_setup
    _store(rt, version_id, job_id, RunResult(findings=[FindingResult(code=CODE, score=0.9)]))
    for model in (Finding, StudyResult):
        with pytest.raises(IntegrityError), rt.sessions() as db, db.begin():
            db.execute(update(model).values(status="final"))
