"""Per-ward fall figures, checked against numbers worked out by hand: bed-days from ADT
occupancy, sensor alarms per bed-day, PPV of fall alarms, median/p90 response time, and
falls per 1,000 bed-days before and after the falls deployment date; the JSON endpoint
and the HTML page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from falls.falls_support import Ward, admit, deploy_falls, make_ward
from lods.alerts import service as alerts
from lods.falls.models import FallIncident
from lods.monitoring.falls import percentile, ward_fall_figures
from lods.runtime import Runtime
from lods.solutions.models import Deployment
from support import auth, login


def day(month: int, d: int, hour: int = 0) -> datetime:
    return datetime(2026, month, d, hour, tzinfo=UTC)


START, END = day(1, 1), day(3, 1)
#: The falls solution went live on 1 February.
DEPLOYED = day(2, 1)
#: "Now" for open stays: 25 February.
NOW = day(2, 25)


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 90) == 7.0
    assert percentile([30, 60, 90, 120, 300], 50) == 90
    assert percentile([30, 60, 90, 120, 300], 90) == pytest.approx(228.0)
    assert percentile([1, 2, 3, 4], 50) == 2.5


def _alarm(
    db: Session,
    ward: Ward,
    name: str,
    raised: datetime,
    *,
    kind: str = "fall.alarm",
    ack_after: float | None = None,
    outcome: str | None = None,
    by_system: bool = False,
) -> None:
    alert = alerts.raise_alert(
        db,
        kind=kind,
        subject=f"test:{name}",
        title=name,
        severity="urgent",
        audience=("nurse", "physician"),
        site_id=ward.site_id,
        ward_id=ward.id,
        notify=True,
        repeat_seconds=120,
        escalate_after=1,
        now=raised,
    )
    if ack_after is not None:
        at = raised + timedelta(seconds=ack_after)
        if by_system:
            alerts.resolve_by_system(db, alert=alert, resolution="back in bed", now=at)
            return
        alerts.acknowledge(db, alert_id=alert.id, actor="nina", now=at)
    if outcome is not None:
        alerts.resolve(
            db,
            alert_id=alert.id,
            actor="nina",
            resolution=outcome,
            outcome=outcome,
            now=raised + timedelta(hours=1),
        )


def _fall(db: Session, ward: Ward, at: datetime, outcome: str = "fall") -> None:
    db.add(
        FallIncident(
            ward_fk=ward.id,
            occurred_at=at,
            source="manual",
            outcome=outcome,
            injury_grade="none" if outcome == "fall" else None,
            recorded_by="nina",
        )
    )


@pytest.fixture
def wards(runtime: Runtime) -> tuple[Ward, Ward]:
    ward = make_ward(runtime)
    other = make_ward(runtime, code="SURG1", beds=(("B1", "R1"),))
    _version, deployment_id = deploy_falls(runtime, ward)
    with runtime.sessions() as db, db.begin():
        db.execute(
            update(Deployment).where(Deployment.id == deployment_id).values(created_at=DEPLOYED)
        )
        # Bed stays (hand count): 10 + 26 + 5 = 41 bed-days in the window;
        # 10 + 16.5 = 26.5 before 1 Feb, 9.5 + 5 = 14.5 after.
        admit(db, ward, "B1", at=day(12, 20).replace(year=2025), until=day(1, 11))  # 10
        admit(db, ward, "B2", at=day(1, 15, 12), until=day(2, 10, 12))  # 16.5 + 9.5
        admit(db, ward, "B3", at=day(2, 20))  # open: 5 days up to NOW
        admit(
            db, ward, "B3", at=day(12, 1).replace(year=2025), until=day(12, 31).replace(year=2025)
        )
        admit(db, other, "B1", at=day(1, 1), until=day(2, 1))  # another ward
        # Falls: 2 before, 1 after; the near fall, the earlier fall and the other ward's
        # fall do not count.
        _fall(db, ward, day(1, 5))
        _fall(db, ward, day(1, 20))
        _fall(db, ward, day(2, 15))
        _fall(db, ward, day(2, 16), outcome="near_fall")
        _fall(db, ward, day(12, 25).replace(year=2025))
        _fall(db, other, day(1, 25))
        # Fall alarms in the window: responses 60, 120, 30, 300, 90 s (A5 never answered);
        # outcomes fall, false alarm, near fall, (none), (none), fall.
        _alarm(db, ward, "A1", day(2, 2, 10), ack_after=60, outcome="fall")
        _alarm(db, ward, "A2", day(2, 5), ack_after=120, outcome="false_alarm")
        _alarm(db, ward, "A3", day(2, 8), ack_after=30, outcome="near_fall")
        _alarm(db, ward, "A4", day(2, 12), ack_after=300)
        _alarm(db, ward, "A5", day(2, 14))
        _alarm(db, ward, "A6", day(1, 10), ack_after=90, outcome="fall")
        _alarm(db, ward, "A7", day(12, 30).replace(year=2025), ack_after=5, outcome="fall")
        _alarm(db, other, "A8", day(1, 20), ack_after=5, outcome="fall")
        # Bed-exit alerts: one answered in 45 s, one cleared by the system, one open.
        _alarm(db, ward, "E1", day(1, 12), kind="fall.bed_exit", ack_after=45)
        _alarm(db, ward, "E2", day(1, 13), kind="fall.bed_exit", ack_after=20, by_system=True)
        _alarm(db, ward, "E3", day(2, 3), kind="fall.bed_exit")
    return ward, other


def test_figures_match_the_hand_count(runtime: Runtime, wards: tuple[Ward, Ward]) -> None:
    ward, _other = wards
    with runtime.sessions() as db:
        f = ward_fall_figures(db, ward_id=ward.id, start=START, end=END, now=NOW)
    assert f["bed_days"] == 41
    assert f["alarms"] == {
        "fall_alarms": 6,
        "bed_exit_alerts": 3,
        "total": 9,
        "per_bed_day": pytest.approx(9 / 41),
    }
    assert f["ppv"] == {
        "fall_alarms_with_outcome": 4,
        "falls": 2,
        "near_falls": 1,
        "false_alarms": 1,
        "value": 0.5,
    }
    assert f["response"]["fall_alarms"] == {
        "count": 5,
        "median_seconds": 90,
        "p90_seconds": pytest.approx(228),
    }
    assert f["response"]["bed_exit_alerts"] == {
        "count": 1,
        "median_seconds": 45,
        "p90_seconds": 45,
    }
    rate = f["falls_per_1000_bed_days"]
    assert rate["deployed_at"] == DEPLOYED.isoformat()
    before, after = rate["before"], rate["after"]
    assert (before["falls"], before["bed_days"]) == (2, 26.5)
    assert before["per_1000_bed_days"] == pytest.approx(2 / 26.5 * 1000)  # 75.47
    assert (after["falls"], after["bed_days"]) == (1, 14.5)
    assert after["per_1000_bed_days"] == pytest.approx(1 / 14.5 * 1000)  # 68.97
    assert (before["start"], before["end"]) == (START.isoformat(), DEPLOYED.isoformat())
    assert (after["start"], after["end"]) == (DEPLOYED.isoformat(), END.isoformat())


def test_a_window_cuts_stays_at_its_edges(runtime: Runtime, wards: tuple[Ward, Ward]) -> None:
    ward, other = wards
    with runtime.sessions() as db:
        # 1 Feb – 5 Feb: B2 only (4 days); all after the deployment.
        f = ward_fall_figures(db, ward_id=ward.id, start=day(2, 1), end=day(2, 5), now=NOW)
        assert f["bed_days"] == 4
        assert f["falls_per_1000_bed_days"]["before"]["bed_days"] == 0
        assert f["falls_per_1000_bed_days"]["before"]["per_1000_bed_days"] is None
        assert f["alarms"]["fall_alarms"] == 1 and f["alarms"]["bed_exit_alerts"] == 1
        g = ward_fall_figures(db, ward_id=other.id, start=START, end=END, now=NOW)
        assert g["bed_days"] == 31 and g["alarms"]["fall_alarms"] == 1


def test_empty_denominators_give_none(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    with runtime.sessions() as db:
        f = ward_fall_figures(db, ward_id=ward.id, start=START, end=END, now=NOW)
    assert f["bed_days"] == 0
    assert f["alarms"]["per_bed_day"] is None and f["ppv"]["value"] is None
    assert f["response"]["fall_alarms"]["median_seconds"] is None
    rate = f["falls_per_1000_bed_days"]
    # No falls solution: the whole window is "before".
    assert rate["deployed_at"] is None and rate["deployment_id"] is None
    assert rate["before"]["end"] == END.isoformat()
    assert rate["after"]["bed_days"] == 0 and rate["after"]["per_1000_bed_days"] is None


def test_a_shadow_deployment_does_not_start_the_after_period(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    deploy_falls(runtime, ward, mode="shadow")
    with runtime.sessions() as db:
        f = ward_fall_figures(db, ward_id=ward.id, start=START, end=END, now=NOW)
    assert f["falls_per_1000_bed_days"]["deployed_at"] is None


def test_bad_windows_are_refused(runtime: Runtime) -> None:
    ward = make_ward(runtime)
    with runtime.sessions() as db:
        with pytest.raises(ValueError, match="after start"):
            ward_fall_figures(db, ward_id=ward.id, start=END, end=START)
        with pytest.raises(ValueError, match="zone"):
            ward_fall_figures(db, ward_id=ward.id, start=START.replace(tzinfo=None), end=END)
        with pytest.raises(LookupError):
            ward_fall_figures(db, ward_id=999, start=START, end=END)


# --- the endpoint and the page -----------------------------------------------------------------


@pytest.fixture
def app_ward(app_runtime: Runtime) -> Ward:
    ward = make_ward(app_runtime)
    with app_runtime.sessions() as db, db.begin():
        admit(db, ward, "B1", at=day(1, 1), until=day(1, 21))
        _fall(db, ward, day(1, 5))
    return ward


def test_the_figures_endpoint(client: TestClient, app_runtime: Runtime, app_ward: Ward) -> None:
    url = f"/api/wards/{app_ward.id}/fall-figures?start=2026-01-01&end=2026-01-31"
    for user in ("nina", "peter", "otto", "ada"):
        response = client.get(url, headers=auth(app_runtime, user))
        assert response.status_code == 200, (user, response.text)
    body = response.json()
    assert body["bed_days"] == 20 and body["start"] == START.isoformat()
    assert body["end"] == day(2, 1).isoformat()  # the end date is inclusive
    assert body["falls_per_1000_bed_days"]["before"]["per_1000_bed_days"] == 50
    for user in ("rita", "aud"):
        assert client.get(url, headers=auth(app_runtime, user)).status_code == 403
    assert client.get(url).status_code == 401
    headers = auth(app_runtime, "nina")
    bad = client.get(
        f"/api/wards/{app_ward.id}/fall-figures?start=2026-02-01&end=2026-01-01", headers=headers
    )
    assert bad.status_code == 422
    assert client.get("/api/wards/999/fall-figures", headers=headers).status_code == 404


def test_the_figures_page(client: TestClient, app_ward: Ward) -> None:
    login(client, "nina")
    page = client.get(f"/wards/{app_ward.id}/falls?start=2026-01-01&end=2026-01-31")
    assert page.status_code == 200
    html = page.text
    assert "Falls per 1,000 bed-days" in html and 'data-period="before"' in html
    assert "50.00" in html  # 1 fall in 20 bed-days
    assert 'value="2026-01-01"' in html and 'value="2026-01-31"' in html
    assert client.get("/wards/999/falls").status_code == 404
    wrong = client.get(f"/wards/{app_ward.id}/falls?start=soon")
    assert wrong.status_code == 422 and "cannot be used" in wrong.text


def test_the_page_is_in_danish_too(client: TestClient, app_ward: Ward) -> None:
    login(client, "peter")
    page = client.get(f"/wards/{app_ward.id}/falls", headers={"accept-language": "da"})
    assert page.status_code == 200
    assert "Fald pr. 1.000 sengedage" in page.text


def test_the_page_refuses_other_roles(client: TestClient, app_ward: Ward) -> None:
    login(client, "rita")
    page = client.get(f"/wards/{app_ward.id}/falls", headers={"accept": "text/html"})
    assert page.status_code == 403
