"""Helpers of the export tests: a read study with AI findings, a real Orthanc as the PACS,
a controllable clock, and dciodvfy.

`reading_scene` builds what a sign-off exports: a site with PACS nodes, a two-image DX
study stored through the real import path (so its files are in the blob store), a live
deployment of a small installed solution whose job found two boxed findings, and
(`sign_reading`) a radiologist's decisions and signature through the review service.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from lods.auth.deps import Principal
from lods.auth.service import get_user
from lods.db import utcnow
from lods.findings.models import Finding
from lods.findings.service import replace_job_results
from lods.imaging.importer import import_path
from lods.imaging.models import Instance, Series, Study
from lods.jobs import service as jobs
from lods.review import service as review
from lods.runtime import Runtime
from lods.sites.service import add_dicom_node, create_site
from lods.solutions.manifest import parse_manifest
from lods.solutions.models import Deployment, SolutionVersion
from lods.solutions.runtimes.base import Box, CodeRef, FindingResult, RunResult
from lods.synth.xray import make_study, synthetic_patient
from orthanc_peer import Orthanc  # noqa: F401  (the PACS of these tests)
from support import add_cast
from support_solutions import SPOT_CODE, install_approve_deploy, python_package

SITE_CODE, SITE_NAME = "HAV", "Havnby Hospital"
CODE = CodeRef(**SPOT_CODE)
#: The AI's two boxed findings: (image index, box, score).
AI_FINDINGS = ((0, Box(20.0, 30.0, 90.0, 110.0), 0.93), (1, Box(120.0, 60.0, 200.0, 140.0), 0.55))
#: The finding the radiologist adds on the second image.
ADDED_BOX = Box(30.0, 150.0, 80.0, 200.0)
ADDED_CODE = review.Code("SCT", "125605004", "Fracture of bone")


@dataclass
class Scene:
    rt: Runtime
    study_id: int
    study_uid: str
    #: SOP Instance UIDs of the study's two images.
    uids: list[str]
    version_id: int
    deployment_id: int
    job_id: int
    #: The AI findings, strongest first.
    findings: list[int]
    node_ids: list[int] = field(default_factory=list)


def principal(rt: Runtime, username: str) -> Principal:
    with rt.sessions() as db:
        user = get_user(db, username=username)
        assert user is not None
        return Principal(
            user_id=user.id,
            username=user.username,
            full_name=user.full_name,
            roles=user.role_set,
            via="session",
            session_id=None,
            source="127.0.0.1",
        )


def reading_scene(
    rt: Runtime,
    tmp_path: Path,
    *,
    pacs: Sequence[tuple[str, str, int]] = (),
    export_unverified: bool = False,
    mode: str = "live",
) -> Scene:
    """A signed-off-ready study: images stored, AI findings stored, PACS nodes registered."""
    add_cast(rt)
    with rt.sessions() as db, db.begin():
        site = create_site(db, code=SITE_CODE, name=SITE_NAME, actor="test")
        node_ids = [
            add_dicom_node(
                db, site_id=site.id, ae_title=ae, kind="pacs", host=host, port=port, actor="test"
            ).id
            for ae, host, port in pacs
        ]
    images = make_study(
        7, body_part="HAND", modality="DX", patient=synthetic_patient(5, seed=7), views=2, size=256
    )
    folder = tmp_path / "study"
    folder.mkdir()
    for number, ds in enumerate(images):
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
    report = import_path(rt, folder, site_code=SITE_CODE)
    assert report.stored == 2, report
    uids = [str(ds.SOPInstanceUID) for ds in images]
    version_id, deployment_id = install_approve_deploy(
        rt, python_package(tmp_path / "pkg"), site=SITE_CODE, mode=mode
    )
    with rt.sessions() as db, db.begin():
        study = db.scalar(select(Study).where(Study.study_uid == str(images[0].StudyInstanceUID)))
        assert study is not None
        db.execute(
            update(Deployment)
            .where(Deployment.id == deployment_id)
            .values(export_unverified_sr=export_unverified)
        )
        job_id = jobs.enqueue(
            db,
            version_id=version_id,
            deployment_id=deployment_id,
            study_id=study.id,
            inputs={"sop_instance_uids": uids, "mode": mode},
            max_attempts=1,
            timeout_seconds=5,
        )
        version = db.get(SolutionVersion, version_id)
        deployment = db.get(Deployment, deployment_id)
        assert version is not None
        found = [
            FindingResult(code=CODE, score=score, sop_instance_uid=uids[index], box=box)
            for index, box, score in AI_FINDINGS
        ]
        replace_job_results(
            db,
            job_id=job_id,
            study_id=study.id,
            version=version,
            deployment=deployment,
            mode=mode,
            manifest=parse_manifest(version.manifest_text),
            result=RunResult(findings=found),
        )
        findings = list(
            db.scalars(
                select(Finding.id).where(Finding.job_fk == job_id).order_by(Finding.score.desc())
            )
        )
        assert len(findings) == 2
        return Scene(
            rt,
            study.id,
            study.study_uid,
            uids,
            version_id,
            deployment_id,
            job_id,
            findings,
            node_ids,
        )


def sign_reading(scene: Scene, *, text: str = "Fracture, distal radius.") -> int:
    """Rita agrees with the strong finding, disagrees with the weak one, adds a missed one
    and signs; return the report id."""
    rita = principal(scene.rt, "rita")
    with scene.rt.sessions() as db, db.begin():
        review.decide(
            db, study_id=scene.study_id, finding_id=scene.findings[0], decision="agree", user=rita
        )
        review.decide(
            db,
            study_id=scene.study_id,
            finding_id=scene.findings[1],
            decision="disagree",
            user=rita,
        )
        b = ADDED_BOX
        review.add_finding(
            db,
            study_id=scene.study_id,
            user=rita,
            code=ADDED_CODE,
            sop_instance_uid=scene.uids[1],
            box=review.Box(b.x0, b.y0, b.x1, b.y1),
        )
        report = review.sign(
            db, study_id=scene.study_id, user=rita, text=text, conclusion="positive"
        )
        return report.id


def current_instances(rt: Runtime, study_id: int) -> list[str]:
    with rt.sessions() as db:
        return list(
            db.scalars(
                select(Instance.sop_instance_uid)
                .join(Series, Series.id == Instance.series_fk)
                .where(Series.study_fk == study_id)
            )
        )


class Clock:
    """A clock the test moves by hand (the outbox's `now`)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- dciodvfy -------------------------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """Return the error lines dciodvfy prints for the file, and its whole output."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed; run `make system-deps`")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output


# --- Orthanc as the PACS --------------------------------------------------------------------------
