"""The router: a job for each matching deployment, a skip with reasons for the others,
and the re-trigger policy for images that arrive after a study was stable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from lods.db import utcnow
from lods.imaging.service import ingest_part10
from lods.imaging.stable import mark_stable_studies
from lods.imaging.store import BlobStore
from lods.jobs.models import Job
from lods.routing.models import RouteDecision
from lods.routing.router import route_pending
from lods.routing.service import decisions_for_study
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions import service
from support import add_cast
from support_solutions import install_approve_deploy, python_package, write_dx_image


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        create_site(db, code="HAV", name="Havnby Hospital", actor="test")
        create_site(db, code="SKO", name="Skovlund Hospital", actor="test")
    return runtime


def _site(rt: Runtime, code: str) -> int:
    from lods.sites.service import get_site_by_code

    with rt.sessions() as db:
        site = get_site_by_code(db, code=code)
        assert site is not None
        return site.id


def _receive(
    rt: Runtime, tmp_path: Path, *, site: str, study_uid: str, n: int = 1, **kw: object
) -> None:
    store = BlobStore.from_settings(rt.settings)
    site_id = _site(rt, site)
    for i in range(n):
        path = tmp_path / f"img-{generate_uid()}.dcm"
        write_dx_image(path, study_uid=study_uid, instance_number=i + 1, **kw)  # type: ignore[arg-type]
        with rt.sessions() as db, db.begin():
            assert ingest_part10(
                db, store=store, data=path, channel="import", source="test", site_id=site_id
            ).ok


def _stable(rt: Runtime) -> None:
    with rt.sessions() as db, db.begin():
        mark_stable_studies(db, quiet_seconds=0, now=utcnow() + timedelta(seconds=1))


def _decisions(rt: Runtime) -> list[RouteDecision]:
    with rt.sessions() as db:
        return list(db.scalars(select(RouteDecision).order_by(RouteDecision.id)))


def _study_id(rt: Runtime, study_uid: str) -> int:
    from lods.imaging.models import Study

    with rt.sessions() as db:
        return db.scalars(select(Study.id).where(Study.study_uid == study_uid)).one()


def test_matching_study_gets_a_job_and_other_body_part_a_skip_with_reasons(
    rt: Runtime, tmp_path: Path
) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="HAV", mode="live")
    hand, chest = generate_uid(), generate_uid()
    _receive(rt, tmp_path, site="HAV", study_uid=hand, n=2)
    _receive(rt, tmp_path, site="HAV", study_uid=chest, body_part="CHEST", patient_age="012Y")
    _stable(rt)
    assert route_pending(rt) == 2
    hand_id, chest_id = _study_id(rt, hand), _study_id(rt, chest)
    with rt.sessions() as db:
        ((job_decision, version, job),) = decisions_for_study(db, study_id=hand_id)
        assert job_decision.outcome == "job" and len(job_decision.eligible) == 2
        assert version.label == "Spot AI 1.0"
        assert job is not None and job.state == "queued" and job.priority == 10
        assert job.inputs["sop_instance_uids"] == job_decision.eligible
        ((skip, _, no_job),) = decisions_for_study(db, study_id=chest_id)
    assert skip.outcome == "skipped" and no_job is None
    texts = [r["text"] for r in skip.reasons]
    assert {r["criterion"] for r in skip.reasons} == {"age", "body_part"}
    assert any("CHEST" in t for t in texts)


def test_only_deployments_at_the_studys_site_are_evaluated(rt: Runtime, tmp_path: Path) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="SKO")
    _receive(rt, tmp_path, site="HAV", study_uid=generate_uid())
    _stable(rt)
    route_pending(rt)
    assert _decisions(rt) == []


def test_suspended_deployment_gets_no_jobs(rt: Runtime, tmp_path: Path) -> None:
    _, deployment_id = install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="HAV")
    with rt.sessions() as db, db.begin():
        service.suspend(db, deployment_id=deployment_id, actor="otto", reason="kill switch test")
    _receive(rt, tmp_path, site="HAV", study_uid=generate_uid())
    _stable(rt)
    route_pending(rt)
    assert _decisions(rt) == []


def test_restable_without_new_images_runs_nothing_new(rt: Runtime, tmp_path: Path) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="HAV")
    study = generate_uid()
    _receive(rt, tmp_path, site="HAV", study_uid=study)
    _stable(rt)
    route_pending(rt)
    # A duplicate does not wake the study; a forced second event with the same images
    # (e.g. the watcher marked it stable again) is "unchanged".
    from lods.imaging.models import StudyEvent

    with rt.sessions() as db, db.begin():
        sid = db.scalars(select(StudyEvent.study_fk)).first()
        db.add(StudyEvent(study_fk=sid, kind="stable", num_instances=1))
    route_pending(rt)
    outcomes = [d.outcome for d in _decisions(rt)]
    assert outcomes == ["job", "unchanged"]
    study_id = _study_id(rt, study)
    with rt.sessions() as db:
        ((_, _, job),) = decisions_for_study(db, study_id=study_id)
        assert job is not None  # the page still shows the earlier job


def test_new_image_after_stable_reruns_on_all_images_and_supersedes_queued_job(
    rt: Runtime, tmp_path: Path
) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="HAV")
    study = generate_uid()
    _receive(rt, tmp_path, site="HAV", study_uid=study)
    _stable(rt)
    route_pending(rt)
    _receive(rt, tmp_path, site="HAV", study_uid=study)  # arrives later: clears stable_at
    _stable(rt)
    route_pending(rt)
    first, second = _decisions(rt)
    assert (first.outcome, second.outcome) == ("job", "job")
    assert len(second.eligible) == 2
    with rt.sessions() as db:
        assert db.get(Job, first.job_fk).state == "cancelled"  # type: ignore[union-attr]
        assert db.get(Job, second.job_fk).state == "queued"  # type: ignore[union-attr]


def test_an_event_is_routed_once(rt: Runtime, tmp_path: Path) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="HAV")
    _receive(rt, tmp_path, site="HAV", study_uid=generate_uid())
    _stable(rt)
    assert route_pending(rt) == 1
    assert route_pending(rt) == 0
    with rt.sessions() as db:
        assert len(db.scalars(select(Job)).all()) == 1
