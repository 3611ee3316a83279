"""Test helpers of the review tests: a `Principal` for a cast member, stored AI results,
a screening unit and its exams."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from lods.auth.deps import Principal
from lods.auth.models import Role
from lods.auth.service import create_user, get_user
from lods.findings.models import Finding
from lods.findings.service import replace_job_results
from lods.imaging.models import Patient, Study
from lods.jobs import service as jobs
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions.manifest import Manifest, manifest_from_dict
from lods.solutions.models import SolutionVersion
from lods.solutions.runtimes.base import FindingResult, RunResult
from support import PASSWORD, add_cast
from support_solutions import install_approve_deploy, manifest_dict, python_package

#: (runtime, site id, solution version id, deployment id)
Unit = tuple[Runtime, int, int, int]


def principal(rt: Runtime, username: str, *, extra: frozenset[Role] = frozenset()) -> Principal:
    """The request identity of cast member `username`, as a logged-in session gives it."""
    with rt.sessions() as db:
        user = get_user(db, username=username)
        assert user is not None
        return Principal(
            user_id=user.id,
            username=user.username,
            full_name=user.full_name,
            roles=user.role_set | extra,
            via="session",
            session_id=None,
            source="127.0.0.1",
        )


def _manifest(solution_id: str, **outputs: object) -> Manifest:
    base = manifest_dict(
        solution_id=solution_id,
        version="1.0",
        runtime={"kind": "python", "entry_point": "engine.py:run"},
    )
    return manifest_from_dict(
        {**base, "outputs": {**base["outputs"], **outputs}, "files": {"engine.py": "0" * 64}}
    )


#: The spot solution of the tests: sure ≥ 0.8, doubtful ≥ 0.4.
SPOT_MANIFEST = _manifest("org.test.rule")
#: A screening-like manifest: exam score 1–10, sure 10, doubtful 8.
SCREENING_MANIFEST = _manifest(
    "org.test.screen", score_range=[1, 10], operating_points={"sure": 10, "doubtful": 8}
)


def store_result(
    rt: Runtime,
    unit_ids: tuple[int, int],
    study_id: int,
    *,
    findings: Sequence[FindingResult] = (),
    study_score: float | None = None,
    mode: str = "live",
    manifest: Manifest = SPOT_MANIFEST,
) -> list[int]:
    """Store one finished job's AI result for the study, as a worker would; return the
    ids of its findings, strongest first. `unit_ids` = (version id, deployment id)."""
    version_id, deployment_id = unit_ids
    with rt.sessions() as db, db.begin():
        job_id = jobs.enqueue(
            db,
            version_id=version_id,
            deployment_id=deployment_id,
            inputs={},
            max_attempts=1,
            timeout_seconds=5,
        )
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        replace_job_results(
            db,
            job_id=job_id,
            study_id=study_id,
            version=version,
            deployment=None,
            mode=mode,
            manifest=manifest,
            result=RunResult(findings=list(findings), study_score=study_score),
        )
        return list(
            db.scalars(
                select(Finding.id).where(Finding.job_fk == job_id).order_by(Finding.score.desc())
            )
        )


def screening_unit(rt: Runtime, tmp_path: Path) -> Unit:
    """A screening site SCR with the cast, a second radiologist "rolf" and a live
    deployment of the test solution."""
    add_cast(rt)
    with rt.sessions() as db, db.begin():
        site_id = create_site(db, code="SCR", name="Screening", actor="test").id
        create_user(
            db,
            username="rolf",
            full_name="Rolf Radiolog",
            password=PASSWORD,
            roles=[Role.RADIOLOGIST],
            actor="test",
        )
    version_id, deployment_id = install_approve_deploy(
        rt, python_package(tmp_path / "pkg"), site="SCR"
    )
    return rt, site_id, version_id, deployment_id


def screening_exam(unit: Unit, name: str, score: float | None) -> int:
    """A screening exam (MG) of patient `name` at the unit's site, with an AI exam score
    from the unit's deployment (none when `score` is None); return the study id."""
    rt, site_id, version_id, deployment_id = unit
    with rt.sessions() as db, db.begin():
        patient = Patient(patient_id=f"P-{name}", name=name, sex="F")
        db.add(patient)
        db.flush()
        study = Study(
            study_uid=f"1.2.826.0.1.3680043.8.498.7{abs(hash(name)) % 10**8}",
            patient_fk=patient.id,
            site_id=site_id,
            modalities="MG",
        )
        db.add(study)
        db.flush()
        study_id = study.id
    if score is not None:
        store_result(
            rt,
            (version_id, deployment_id),
            study_id,
            study_score=score,
            manifest=SCREENING_MANIFEST,
        )
    return study_id
