"""Reading a study: claims lock it, every visible AI finding needs a human decision, and
no report is final without a named radiologist as signer — whatever the AI said."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from review_support import principal, store_result
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from lods.audit.models import AuditEvent
from lods.auth.deps import Principal
from lods.auth.models import Role
from lods.db import utcnow
from lods.findings.models import Finding
from lods.imaging.models import Instance, Patient, Series, Study
from lods.review import service as review
from lods.review.models import FindingDecision, Report, ReportRevision, StudyClaim
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions.runtimes.base import Box, CodeRef, FindingResult
from support import add_cast
from support_solutions import SPOT_CODE, install_approve_deploy, python_package

CODE = CodeRef(**SPOT_CODE)
FRACTURE = review.Code("SCT", "125605004", "Fracture of bone")


@dataclass
class Reading:
    rt: Runtime
    study_id: int
    sop_uid: str
    #: AI findings a clinician sees (live), strongest first: sure, doubtful, below the
    #: doubtful point; and one shadow-mode finding.
    live: list[int]
    shadow: int


def _store(
    rt: Runtime, version_id: int, deployment_id: int, study_id: int, mode: str, uid: str
) -> list[int]:
    return store_result(
        rt,
        (version_id, deployment_id),
        study_id,
        mode=mode,
        findings=[
            FindingResult(code=CODE, score=0.95, sop_instance_uid=uid, box=Box(10, 10, 40, 40)),
            FindingResult(code=CODE, score=0.5, sop_instance_uid=uid, box=Box(60, 60, 90, 90)),
            # below the doubtful point: shown, but it needs no decision
            FindingResult(code=CODE, score=0.1, sop_instance_uid=uid, box=Box(5, 90, 20, 99)),
        ],
    )


@pytest.fixture
def reading(runtime: Runtime, tmp_path: Path) -> Reading:
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        site = create_site(db, code="HAV", name="Havnby", actor="test")
        patient = Patient(patient_id="0101501234", name="Hansen^Ole")
        db.add(patient)
        db.flush()
        study = Study(
            study_uid="1.2.826.0.1.3680043.8.498.1",
            patient_fk=patient.id,
            site_id=site.id,
            accession_number="ACC1",
            modalities="DX",
        )
        db.add(study)
        db.flush()
        series = Series(series_uid="1.2.826.0.1.3680043.8.498.2", study_fk=study.id, modality="DX")
        db.add(series)
        db.flush()
        uid = "1.2.826.0.1.3680043.8.498.3"
        db.add(
            Instance(
                sop_instance_uid=uid,
                series_fk=series.id,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                sha256="0" * 64,
                dataset_sha256="0" * 64,
                size=1,
                channel="dicom",
            )
        )
        study_id = study.id
    version_id, deployment_id = install_approve_deploy(
        runtime, python_package(tmp_path / "pkg"), site="HAV"
    )
    live = _store(runtime, version_id, deployment_id, study_id, "live", uid)
    shadow = _store(runtime, version_id, deployment_id, study_id, "shadow", uid)[0]
    return Reading(runtime, study_id, uid, live, shadow)


def _decide_all(r: Reading, user: Principal) -> None:
    with r.rt.sessions() as db, db.begin():
        review.decide(db, study_id=r.study_id, finding_id=r.live[0], decision="agree", user=user)
        review.decide(db, study_id=r.study_id, finding_id=r.live[1], decision="disagree", user=user)


def test_a_claimed_study_is_locked_for_another_radiologist(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    other = Principal(
        user_id=rita.user_id + 1000,
        username="rolf",
        full_name="Rolf R",
        roles=frozenset({Role.RADIOLOGIST}),
        via="session",
        session_id=None,
        source="",
    )
    with reading.rt.sessions() as db, db.begin():
        review.claim(db, study_id=reading.study_id, user=rita)
    with (
        pytest.raises(review.ReviewError, match="is reading this study"),
        reading.rt.sessions() as db,
        db.begin(),
    ):
        review.claim(db, study_id=reading.study_id, user=other)
    with reading.rt.sessions() as db:
        claims = review.claims_for(db, [reading.study_id])
    assert claims[reading.study_id].username == "rita"


def test_a_stale_claim_no_longer_locks_the_study(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    with reading.rt.sessions() as db, db.begin():
        review.claim(db, study_id=reading.study_id, user=rita)
        db.execute(
            update(StudyClaim).values(
                claimed_at=utcnow() - timedelta(minutes=review.CLAIM_STALE_MINUTES + 1)
            )
        )
    with reading.rt.sessions() as db:
        assert review.claims_for(db, [reading.study_id]) == {}


def test_only_a_radiologist_decides_and_signs(reading: Reading) -> None:
    for name in ("peter", "otto", "ada"):
        user = principal(reading.rt, name)
        with pytest.raises(review.ReviewError) as caught, reading.rt.sessions() as db, db.begin():
            review.decide(
                db,
                study_id=reading.study_id,
                finding_id=reading.live[0],
                decision="agree",
                user=user,
            )
        assert caught.value.status == 403
        with pytest.raises(review.ReviewError), reading.rt.sessions() as db, db.begin():
            review.sign(db, study_id=reading.study_id, user=user, conclusion="negative")


def test_signing_needs_a_decision_on_every_visible_ai_finding(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    with reading.rt.sessions() as db, db.begin():
        review.decide(
            db, study_id=reading.study_id, finding_id=reading.live[0], decision="agree", user=rita
        )
    with (
        pytest.raises(review.ReviewError, match="1 AI finding"),
        reading.rt.sessions() as db,
        db.begin(),
    ):
        review.sign(db, study_id=reading.study_id, user=rita, conclusion="positive")
    with reading.rt.sessions() as db:
        assert review.report_of(db, reading.study_id).state == "draft"  # type: ignore[union-attr]
        # the shadow finding is not among those a clinician must (or may) decide on
        assert [
            f.id
            for f in review.undecided(db, reading.study_id, review.report_of(db, reading.study_id))
        ] == [reading.live[1]]


def test_a_signed_study_cannot_be_claimed_again(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    _decide_all(reading, rita)
    with reading.rt.sessions() as db, db.begin():
        review.sign(db, study_id=reading.study_id, user=rita, conclusion="positive")
    with pytest.raises(review.ReviewError, match="signed"), reading.rt.sessions() as db:
        review.claim(db, study_id=reading.study_id, user=rita)


def test_shadow_findings_cannot_be_decided_on(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    with pytest.raises(review.ReviewError) as caught, reading.rt.sessions() as db, db.begin():
        review.decide(
            db,
            study_id=reading.study_id,
            finding_id=reading.shadow,
            decision="agree",
            user=rita,
        )
    assert caught.value.status == 403


def test_sign_makes_the_report_final_with_the_named_signer(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    _decide_all(reading, rita)
    with reading.rt.sessions() as db, db.begin():
        review.add_finding(
            db,
            study_id=reading.study_id,
            user=rita,
            code=FRACTURE,
            sop_instance_uid=reading.sop_uid,
            box=review.Box(100, 100, 130, 120),
        )
        report = review.sign(
            db,
            study_id=reading.study_id,
            user=rita,
            text="Fracture of the radius.",
            conclusion="positive",
        )
        report_id = report.id
    with reading.rt.sessions() as db:
        stored = db.get(Report, report_id)
        assert stored is not None
        assert (stored.state, stored.signer_fk, stored.version) == ("signed", rita.user_id, 1)
        assert stored.signed_at is not None
        decisions = {d.decision for d in review.decisions_of(db, report_id)}
        assert decisions == {"agree", "disagree", "added"}  # none for the sub-threshold one
        (revision,) = review.revisions(db, report_id)
        assert '"decision": "added"' in revision.decisions
        assert db.scalar(select(StudyClaim).where(StudyClaim.study_fk == reading.study_id)) is None
        actions = set(db.scalars(select(AuditEvent.action)))
    assert {"review.claim", "review.decision", "review.finding_added", "report.signed"} <= actions
    # the AI's own output is untouched: still preliminary, same scores
    with reading.rt.sessions() as db:
        assert {f.status for f in db.scalars(select(Finding))} == {"preliminary"}


def test_a_signed_report_changes_only_by_a_signed_amendment(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    _decide_all(reading, rita)
    with reading.rt.sessions() as db, db.begin():
        review.sign(db, study_id=reading.study_id, user=rita, conclusion="positive")
    with pytest.raises(review.ReviewError, match="amend"), reading.rt.sessions() as db, db.begin():
        review.save_draft(db, study_id=reading.study_id, user=rita, text="changed")
    with pytest.raises(review.ReviewError, match="reason"), reading.rt.sessions() as db, db.begin():
        review.amend(
            db,
            study_id=reading.study_id,
            user=rita,
            text="x",
            conclusion="negative",
            reason=" ",
        )
    with reading.rt.sessions() as db, db.begin():
        report = review.amend(
            db,
            study_id=reading.study_id,
            user=rita,
            text="No fracture: a nutrient canal.",
            conclusion="negative",
            reason="second look",
        )
        assert (report.state, report.version) == ("amended", 2)
        versions = [(r.version, r.conclusion) for r in review.revisions(db, report.id)]
    assert versions == [(1, "positive"), (2, "negative")]


def test_the_database_refuses_a_final_report_without_a_signer(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    with reading.rt.sessions() as db, db.begin():
        report = review.save_draft(db, study_id=reading.study_id, user=rita, text="draft")
        report_id = report.id
    for state in ("signed", "amended"):
        with pytest.raises(IntegrityError), reading.rt.sessions() as db, db.begin():
            db.execute(update(Report).where(Report.id == report_id).values(state=state))
    with reading.rt.sessions() as db:
        assert db.get(Report, report_id).state == "draft"  # type: ignore[union-attr]


def test_an_added_finding_must_be_on_an_image_of_the_study(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    with (
        pytest.raises(review.ReviewError, match="not part of this study"),
        reading.rt.sessions() as db,
        db.begin(),
    ):
        review.add_finding(
            db,
            study_id=reading.study_id,
            user=rita,
            code=FRACTURE,
            sop_instance_uid="1.2.3.4",
            box=review.Box(1, 1, 5, 5),
        )
    with pytest.raises(review.ReviewError):
        review.Box(10, 10, 5, 20)


def test_a_changed_mind_updates_the_one_decision_row(reading: Reading) -> None:
    rita = principal(reading.rt, "rita")
    with reading.rt.sessions() as db, db.begin():
        review.decide(
            db, study_id=reading.study_id, finding_id=reading.live[0], decision="agree", user=rita
        )
        review.decide(
            db,
            study_id=reading.study_id,
            finding_id=reading.live[0],
            decision="amend",
            user=rita,
            box=review.Box(12, 12, 44, 44),
        )
    with reading.rt.sessions() as db:
        rows = db.scalars(select(FindingDecision)).all()
        assert [(r.decision, r.box_x1) for r in rows] == [("amend", 44)]
        assert db.scalar(select(ReportRevision)) is None
