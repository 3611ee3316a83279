"""NEWS2 as an installed, approved, deployed `python` solution: readings stored and scored
in one transaction, stored scores, ward alerts on a band rise, overdue reminders with a
controlled clock, intended-use skips, shadow mode, and a tampered package suspended.
Runs on SQLite and on PostgreSQL (when LODS_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from ews_support import (
    NEWS2_PACKAGE,
    NORMAL,
    NOW,
    Ward,
    admit,
    deploy,
    make_ward,
    news2_package,
    store,
)
from sqlalchemy import select

from lods.alerts import live
from lods.alerts.models import Alert
from lods.runtime import Runtime
from lods.solutions.models import Deployment, SolutionVersion
from lods.solutions.packaging import package_problems, read_manifest
from lods.solutions.runtimes.base import RunContext
from lods.solutions.runtimes.python import PythonRuntime
from lods.vitals import scoring
from lods.vitals import service as vitals
from lods.vitals.models import EarlyWarningScore
from lods.vitals.options import set_option
from support import add_cast

HIGH = {**NORMAL, "resp_rate": 26, "spo2": 90, "consciousness": "V"}  # 3 + 3 + 3 = 9
MEDIUM = {**NORMAL, "resp_rate": 22, "spo2": 93, "heart_rate": 95}  # 2 + 2 + 1 = 5


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """SQLite, and PostgreSQL when LODS_TEST_POSTGRES_URL is set; with the cast of users."""
    add_cast(runtime)
    return runtime


@pytest.fixture
def ward(rt: Runtime, tmp_path: Path) -> Ward:
    made = make_ward(rt)
    deploy(rt, news2_package(tmp_path))
    return made


def alerts(rt: Runtime, kind: str) -> list[Alert]:
    with rt.sessions() as db:
        return list(db.scalars(select(Alert).where(Alert.kind == kind).order_by(Alert.id)))


def test_a_complete_set_stores_total_band_and_parts(rt: Runtime, ward: Ward) -> None:
    encounter, patient = admit(rt, ward, "1", patient_id="P1")
    [score] = store(rt, encounter, MEDIUM, at=NOW)
    assert (score.complete, score.total, score.band) == (True, 5, "medium")
    assert score.score_name == "NEWS2" and score.missing == []
    assert score.next_due_minutes == 60
    assert score.patient_fk == patient and score.bed_fk == ward.beds["1"]
    assert score.parts["pulse"]["points"] == 1 and score.parts["pulse"]["source"] == "heart_rate"
    assert score.parts["spo2"]["code"]["value"] == "1104311000000102"
    assert score.observed_at == NOW
    with rt.sessions() as db:
        version = db.get(SolutionVersion, score.version_fk)
        deployment = db.get(Deployment, score.deployment_fk)
        assert version is not None and version.solution_id == "org.lods.reference.news2"
        assert deployment is not None and deployment.mode == "live"
        latest = scoring.latest_scores(db, encounter_fks=[encounter])
        assert latest[encounter].id == score.id


def test_no_deployment_at_the_site_means_no_score(rt: Runtime, tmp_path: Path) -> None:
    ward = make_ward(rt, site="OTHER")
    deploy(rt, news2_package(tmp_path), site="OTHER")
    elsewhere = make_ward(rt, site="AUH", code="MED2")
    encounter, _ = admit(rt, elsewhere, "1", patient_id="P1")
    assert store(rt, encounter, NORMAL, at=NOW) == []
    other, _ = admit(rt, ward, "1", patient_id="P2")
    assert len(store(rt, other, NORMAL, at=NOW)) == 1


def test_missing_and_stale_parameters_give_no_total(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    old = {k: NORMAL[k] for k in ("consciousness", "oxygen")}
    store(rt, encounter, old, at=NOW - timedelta(minutes=90))
    fresh = {k: v for k, v in NORMAL.items() if k not in old}
    [score] = store(rt, encounter, fresh, at=NOW)
    assert not score.complete
    assert (score.total, score.band, score.next_due_minutes) == (None, None, None)
    assert sorted(score.missing) == ["consciousness", "oxygen"]
    assert score.parts["resp_rate"]["points"] == 0
    [complete] = store(rt, encounter, old, at=NOW + timedelta(minutes=1))
    assert complete.complete and complete.total == 0


def test_invalid_readings_are_never_scored(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    store(rt, encounter, NORMAL, at=NOW)
    [score] = store(
        rt,
        encounter,
        {"resp_rate": 40, "spo2": 70},
        at=NOW + timedelta(minutes=1),
        valid=False,
    )
    assert score.total == 0 and score.parts["resp_rate"]["value"] == 16
    fresh, _ = admit(rt, ward, "2", patient_id="P2")
    [only_invalid] = store(rt, fresh, NORMAL, at=NOW, valid=False)
    assert not only_invalid.complete and len(only_invalid.missing) == 7


def test_spo2_scale_2_changes_the_spo2_points(rt: Runtime, ward: Ward) -> None:
    encounter, patient = admit(rt, ward, "1", patient_id="P1")
    on_oxygen = {**NORMAL, "spo2": 90, "oxygen": "oxygen"}
    [scale1] = store(rt, encounter, on_oxygen, at=NOW)
    assert scale1.parts["spo2"]["points"] == 3 and scale1.total == 5
    with rt.sessions() as db, db.begin():
        set_option(
            db,
            patient_fk=patient,
            key="spo2_scale",
            value=2,
            reason="COPD, documented target SpO2 88–92 %",
            actor="peter",
        )
    [scale2] = store(rt, encounter, {"spo2": 90}, at=NOW + timedelta(minutes=1))
    assert scale2.parts["spo2"]["points"] == 0 and scale2.parts["spo2"]["variant"] == "scale2"
    assert scale2.parts["spo2"]["code"]["value"] == "1104321000000108"
    assert scale2.options == {"spo2_scale": 2}
    assert scale2.total == 2


def test_an_adjusted_threshold_is_scored_with_its_author(rt: Runtime, ward: Ward) -> None:
    encounter, patient = admit(rt, ward, "1", patient_id="P1")
    bands = [
        {"points": 3, "ranges": [{"max": 79}]},
        {"points": 0, "ranges": [{"min": 80}]},
    ]
    with rt.sessions() as db, db.begin():
        set_option(
            db,
            patient_fk=patient,
            key="threshold:bp_sys",
            value={"bands": bands},
            reason="Low blood pressure is this patient's normal",
            actor="peter",
        )
    [score] = store(rt, encounter, {**NORMAL, "bp_sys": 85}, at=NOW)
    assert score.parts["bp_sys"]["points"] == 0
    assert score.parts["bp_sys"]["adjusted"]["set_by"] == "peter"


@pytest.mark.parametrize(
    ("birth_date", "pregnant", "reason"),
    [
        (date(2015, 1, 1), False, "under 16"),
        (None, False, "age unknown"),
        (date(1990, 1, 1), True, "pregnant"),
    ],
)
def test_outside_the_intended_use_is_not_scored(
    rt: Runtime, ward: Ward, birth_date: date | None, pregnant: bool, reason: str
) -> None:
    encounter, patient = admit(rt, ward, "1", patient_id="P1", birth_date=birth_date)
    if pregnant:
        with rt.sessions() as db, db.begin():
            set_option(
                db, patient_fk=patient, key="pregnant", value=True, reason="28 weeks", actor="nina"
            )
    [score] = store(rt, encounter, HIGH, at=NOW)
    assert not score.complete and score.total is None and score.band is None
    assert scoring.not_scored_reason(score) == f"not scored: {reason}"
    assert alerts(rt, "ews.band") == []


def test_sixteenth_birthday_is_in_use(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1", birth_date=date(2010, 11, 29))
    [score] = store(rt, encounter, NORMAL, at=NOW)
    assert score.complete and scoring.not_scored_reason(score) is None


def test_a_band_rise_notifies_the_ward(rt: Runtime, ward: Ward) -> None:
    encounter, patient = admit(rt, ward, "2", patient_id="P1")
    store(rt, encounter, NORMAL, at=NOW)
    assert alerts(rt, "ews.band") == []
    [medium] = store(rt, encounter, MEDIUM, at=NOW + timedelta(minutes=10))
    [alert] = alerts(rt, "ews.band")
    assert alert.state == "notified" and alert.severity == "urgent"
    assert alert.subject == f"ews:{encounter}"
    assert (alert.ward_fk, alert.bed_fk, alert.patient_fk) == (ward.id, ward.beds["2"], patient)
    assert set(alert.audience.split(",")) == {"nurse", "physician"}
    assert alert.facts is not None
    assert alert.facts["score"] == 5 and alert.facts["band"] == "medium"
    assert alert.facts["previous_band"] == "low" and alert.facts["score_id"] == medium.id
    # The same band again: no new alert.
    store(rt, encounter, MEDIUM, at=NOW + timedelta(minutes=20))
    assert len(alerts(rt, "ews.band")) == 1
    # Higher still: the medium alert is closed by the system, a high one replaces it.
    store(rt, encounter, HIGH, at=NOW + timedelta(minutes=30))
    first, second = alerts(rt, "ews.band")
    assert first.state == "resolved" and first.resolved_by == "system"
    assert second.state == "notified" and second.facts is not None
    assert second.facts["band"] == "high" and second.facts["previous_band"] == "medium"
    assert second.title.startswith("NEWS2 high")
    # Down again and back up to medium: a rise from low, told again.
    store(rt, encounter, NORMAL, at=NOW + timedelta(minutes=40))
    store(rt, encounter, MEDIUM, at=NOW + timedelta(minutes=50))
    assert [a.facts["band"] for a in alerts(rt, "ews.band") if a.facts] == [
        "medium",
        "high",
        "medium",
    ]


def test_a_first_score_in_an_alerting_band_notifies(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    store(rt, encounter, {**NORMAL, "consciousness": "C"}, at=NOW)
    [alert] = alerts(rt, "ews.band")
    assert alert.severity == "warning" and alert.facts and alert.facts["band"] == "low_medium"


def test_the_board_hears_of_each_score_after_commit(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "3", patient_id="P1")
    loop = asyncio.new_event_loop()

    async def subscribe() -> object:
        return live.HUB.open(ward.id)

    sub = loop.run_until_complete(subscribe())
    try:
        [score] = store(rt, encounter, NORMAL, at=NOW)
        seen = []
        while (event := loop.run_until_complete(live.next_event(sub, 0.2))) is not None:  # type: ignore[arg-type]
            seen.append(event)
    finally:
        live.HUB.close(sub)  # type: ignore[arg-type]
        loop.close()
    scores = [e for e in seen if e["type"] == "score"]
    assert scores == [
        {
            "type": "score",
            "bed_id": ward.beds["3"],
            "score_id": score.id,
            "band": "low",
            "ward_id": ward.id,
            "published": scores[0]["published"],
        }
    ]


def test_overdue_sets_raise_a_reminder_resolved_by_the_next_set(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    store(rt, encounter, MEDIUM, at=NOW)  # medium: hourly

    def check(minutes: int) -> int:
        with rt.sessions() as db, db.begin():
            return scoring.check_overdue(
                db, now=NOW + timedelta(minutes=minutes), settings=rt.settings
            )

    assert check(59) == 0 and check(60) == 0
    assert check(61) == 1
    [reminder] = alerts(rt, "ews.overdue")
    assert reminder.severity == "info" and reminder.subject == f"ews-overdue:{encounter}"
    assert reminder.state == "notified" and reminder.ward_fk == ward.id
    assert check(70) == 0  # still the same reminder
    assert check(121) == 1  # overdue by a whole interval more: now a warning
    first, second = alerts(rt, "ews.overdue")
    assert first.state == "resolved" and second.severity == "warning"
    store(rt, encounter, MEDIUM, at=NOW + timedelta(minutes=125))
    assert [a.state for a in alerts(rt, "ews.overdue")] == ["resolved", "resolved"]
    assert check(130) == 0


def test_discharge_closes_an_overdue_reminder(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    store(rt, encounter, NORMAL, at=NOW)
    with rt.sessions() as db, db.begin():
        assert scoring.check_overdue(db, now=NOW + timedelta(hours=13), settings=rt.settings) == 1
        vitals.discharge(db, encounter_id=encounter, at=NOW + timedelta(hours=13), actor="test")
    with rt.sessions() as db, db.begin():
        scoring.check_overdue(db, now=NOW + timedelta(hours=14), settings=rt.settings)
    [reminder] = alerts(rt, "ews.overdue")
    assert reminder.state == "resolved" and reminder.resolution == "the patient left"


def test_shadow_scores_are_stored_but_never_alert(rt: Runtime, tmp_path: Path) -> None:
    ward = make_ward(rt)
    deploy(rt, news2_package(tmp_path), mode="shadow")
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    store(rt, encounter, NORMAL, at=NOW)
    [score] = store(rt, encounter, HIGH, at=NOW + timedelta(minutes=5))
    assert score.complete and score.band == "high"
    assert alerts(rt, "ews.band") == []
    with rt.sessions() as db, db.begin():
        assert scoring.latest_scores(db, encounter_fks=[encounter]) == {}
        assert scoring.score_trend(db, encounter_fk=encounter, since=NOW - timedelta(1)) == []
        assert scoring.check_overdue(db, now=NOW + timedelta(days=1), settings=rt.settings) == 0


def test_trend_and_latest_complete(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    store(rt, encounter, NORMAL, at=NOW)
    store(rt, encounter, MEDIUM, at=NOW + timedelta(minutes=30))
    store(rt, encounter, {"temperature": 37.0}, at=NOW + timedelta(minutes=95))
    with rt.sessions() as db:
        trend = scoring.score_trend(db, encounter_fk=encounter, since=NOW - timedelta(hours=1))
        assert trend == [(NOW, 0), (NOW + timedelta(minutes=30), 5)]
        latest = scoring.latest_scores(db, encounter_fks=[encounter])[encounter]
        assert not latest.complete  # the newest set was partial
        complete = scoring.latest_scores(db, encounter_fks=[encounter], complete_only=True)
        assert complete[encounter].total == 5


def test_a_tampered_package_suspends_the_deployment(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    assert len(store(rt, encounter, NORMAL, at=NOW)) == 1
    with rt.sessions() as db:
        version = db.scalars(select(SolutionVersion)).one()
        table = rt.settings.solutions_dir / version.package_path / "news2.yaml"
    table.chmod(0o644)
    table.write_text(table.read_text(encoding="utf-8").replace("min: 25", "min: 35"))
    # Within the re-verification interval the verified, loaded table keeps scoring …
    assert len(store(rt, encounter, NORMAL, at=NOW + timedelta(minutes=1))) == 1
    # … and the next verification finds the change.
    later = NOW + scoring.VERIFY_EVERY + timedelta(minutes=2)
    assert store(rt, encounter, HIGH, at=later) == []
    with rt.sessions() as db:
        deployment = db.scalars(select(Deployment)).one()
        assert deployment.state == "suspended"
        assert "news2.yaml does not match" in (deployment.state_reason or "")
        assert db.scalars(select(SolutionVersion)).one().integrity_failed_at is not None
        count = len(db.scalars(select(EarlyWarningScore)).all())
    [integrity] = alerts(rt, "solution.integrity")
    assert integrity.severity == "urgent"
    assert store(rt, encounter, HIGH, at=later + timedelta(minutes=1)) == []
    with rt.sessions() as db:
        assert len(db.scalars(select(EarlyWarningScore)).all()) == count


def test_manual_charting_is_scored(rt: Runtime, ward: Ward) -> None:
    encounter, _ = admit(rt, ward, "1", patient_id="P1")
    with rt.sessions() as db, db.begin():
        vitals.record_manual_vitals(
            db,
            encounter_id=encounter,
            values=dict(NORMAL),
            observed_at=NOW,
            actor="nina",
            now=NOW,
            settings=rt.settings,
        )
    with rt.sessions() as db:
        latest = scoring.latest_scores(db, encounter_fks=[encounter])[encounter]
        assert latest.complete and latest.total == 0


def test_one_batch_scores_many_patients(rt: Runtime, ward: Ward) -> None:
    encounters = [admit(rt, ward, bed, patient_id=f"P{bed}") for bed in ("1", "2", "3")]
    for encounter, _ in encounters:
        store(rt, encounter, NORMAL, at=NOW)
    with rt.sessions() as db, db.begin():
        scores = scoring.score_after_intake(
            db,
            patient_fks=[p for _, p in encounters] + [p for _, p in encounters],
            now=NOW + timedelta(minutes=1),
            settings=rt.settings,
        )
    assert sorted(s.encounter_fk for s in scores if s.encounter_fk) == sorted(
        e for e, _ in encounters
    )
    assert all(s.complete and s.total == 0 for s in scores)


def test_the_committed_package_matches_its_manifest() -> None:
    """After editing news2.yaml or score.py, run `lods solution pack
    reference_solutions/news2/package` to list the new SHA-256s."""
    manifest, _ = read_manifest(NEWS2_PACKAGE)
    assert package_problems(NEWS2_PACKAGE, manifest.files) == []
    assert manifest.intended_use.input_kind.value == "vitals"
    assert manifest.intended_use.excluded_patient_flags == ["pregnant"]
    assert manifest.intended_use.age is not None and manifest.intended_use.age.min_years == 16


def test_the_entry_point_answers_one_patient_with_findings(tmp_path: Path) -> None:
    folder = news2_package(tmp_path)  # a copy: importing leaves no cache in the checkout
    manifest, _ = read_manifest(folder)
    readings = [
        {
            "parameter": k,
            "value": None if isinstance(v, str) else v,
            "value_text": v if isinstance(v, str) else None,
            "observed_at": NOW.isoformat(),
        }
        for k, v in MEDIUM.items()
    ]
    ctx = RunContext(
        job_id=1,
        package_dir=folder,
        manifest=manifest,
        study_uid="",
        images=(),
        deadline=time.monotonic() + 10,
        payload={
            "readings": readings,
            "options": {},
            "now": NOW.isoformat(),
            "previous_band": "low",
        },
    )
    result = PythonRuntime().run(ctx)
    assert result.study_score == 5
    assert [(f.code.value, f.score) for f in result.findings][:2] == [
        ("1104051000000101", 5.0),
        ("1104301000000104", 2.0),
    ]
    assert result.details["trigger"]["to"] == "medium"
    assert result.details["evaluation"]["band"] == "medium"
    needs = PythonRuntime().run(replace(ctx, payload={"describe": True})).details["needs"]
    assert {
        "key": "pulse",
        "sources": ["heart_rate", "pulse_rate"],
        "freshness_minutes": 60,
    } in needs
