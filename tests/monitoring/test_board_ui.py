"""The ward board in a real browser: headless Chromium against the app served by uvicorn
on a loopback port (in this process, so alarms raised through the services reach the
server's live hub).

A nurse logs in, opens the board in the nurses' station layout; a fall alarm raised on
the server appears on the bed's tile, flashing, without a reload; she acknowledges it
on the tile and the tile shows it acknowledged; on the desktop board she resolves it as
a false alarm. On a phone-sized screen the phone page
puts a new alarm first, with a big Acknowledge button.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from board_support import (
    ThreadServer,
    Ward,
    add_readings,
    add_score,
    admit,
    alert_row,
    fall_alarm,
    make_ward,
    thread_server,
)

import support
from lods.app import create_app
from lods.db import utcnow
from lods.runtime import Runtime

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Where to keep the screenshots for a person to look at (optional).
SHOTS = os.environ.get("LODS_UI_SHOTS")

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def server(app_runtime: Runtime) -> Iterator[ThreadServer]:
    with thread_server(create_app(app_runtime)) as running:
        yield running


def a_ward(rt: Runtime) -> Ward:
    """Eight beds: six patients with scores from calm to high, two empty beds."""
    beds = tuple((str(n), f"R{(n + 1) // 2}") for n in range(1, 9))
    ward = make_ward(rt, beds=beds)
    now = utcnow()
    people: list[tuple[str, str, int, str, tuple[str, ...]]] = [
        ("1", "Hansen^Karen", 0, "low", ()),
        ("2", "Berg^Ole", 3, "low", ()),
        ("3", "Nielsen^Ane", 3, "low_medium", ()),
        ("4", "Jensen^Poul", 6, "medium", ()),
        ("5", "Larsen^Inge", 8, "high", ()),
        ("7", "Holm^Erik", 2, "low", ("resp_rate", "temperature")),
    ]
    for n, (bed, name, total, band, missing) in enumerate(people):
        enc, _ = admit(rt, ward, bed, patient_id=f"P-{bed}", name=name)
        add_readings(
            rt,
            enc,
            {"resp_rate": 16.0 + n, "spo2": 97.0 - n, "bp_sys": 125.0, "bp_dia": 75.0},
            at=now - timedelta(minutes=3),
        )
        for hours in (6, 3):
            add_score(rt, ward, enc, at=now - timedelta(hours=hours), total=total // 2, band="low")
        if missing:  # a complete set 95 min ago (due hourly), then one that lost two readings
            add_score(rt, ward, enc, at=now - timedelta(minutes=95), total=2, band="low")
            add_score(
                rt, ward, enc, at=now - timedelta(minutes=4), total=None, band=None,
                missing=missing, next_due_minutes=None,
            )  # fmt: skip
        else:
            add_score(rt, ward, enc, at=now - timedelta(minutes=10), total=total, band=band)
    return ward


def shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)


def test_a_nurse_sees_an_alarm_arrive_and_acknowledges_it_on_the_tile(
    app_runtime: Runtime, server: ThreadServer, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    ward = a_ward(app_runtime)
    bed = ward.beds["4"]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        errors: list[str] = []
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 900})
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.base_url}/wards/{ward.id}?layout=station")  # to the login form
            page.fill("#username", "nina")
            page.fill("#password", support.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"**/wards/{ward.id}?layout=station")
            page.wait_for_selector('#ward-live[data-state="live"]')
            assert page.locator(".topbar").is_hidden()  # no menus on the station screen
            assert page.locator("#ward-grid .tile").count() == 8
            tile = page.locator(f"#bed-{bed}")
            assert "Jensen, Poul" in tile.inner_text()
            assert "Medium" in tile.inner_text()  # the band is named, not only coloured
            assert tile.get_attribute("data-colour") == "orange"
            missing = page.locator(f"#bed-{ward.beds['7']}").inner_text()
            assert "Missing: RR, Temp" in missing and "Overdue 35 min" in missing
            assert "Low" in missing  # the band of the last complete set stays
            assert page.locator(f"#bed-{bed} svg.spark polyline").count() == 1

            alarm = fall_alarm(app_runtime, ward, "4")
            page.wait_for_selector(f"#bed-{bed} .alarm.flash[data-alert-id='{alarm}']")
            banner = page.locator("#ward-banner .alarm")
            assert banner.count() == 1 and "Jensen, Poul" in banner.inner_text()
            assert page.locator(f"#bed-{bed} .alarm svg.figure").count() == 1  # a stick figure
            shot(page, tmp_path, "ward_station.png")

            page.click(f"#bed-{bed} button[data-ack='{alarm}']")
            page.wait_for_selector(f"#bed-{bed} .alarm.state-acknowledged[data-alert-id='{alarm}']")
            assert "acknowledged by nina" in page.locator(f"#bed-{bed} .alarm").inner_text()
            assert page.locator("#ward-banner .alarm").count() == 0
            row = alert_row(app_runtime, alarm)
            assert (row.state, row.acknowledged_by) == ("acknowledged", "nina")

            # On the desktop board she closes it as a false alarm.
            page.goto(f"{server.base_url}/wards/{ward.id}")
            page.wait_for_selector('#ward-live[data-state="live"]')
            assert page.locator(".topbar").is_visible()
            page.click(f"#bed-{bed} .resolve-box summary")
            page.select_option(f"#bed-{bed} select[name=outcome]", "false_alarm")
            shot(page, tmp_path, "ward_board.png")
            page.click(f"#bed-{bed} form.js-resolve button[type=submit]")
            page.wait_for_selector(f"#bed-{bed} .alarm", state="detached")
            row = alert_row(app_runtime, alarm)
            assert (row.state, row.outcome, row.resolved_by) == ("resolved", "false_alarm", "nina")

            phone = browser.new_context(
                viewport={"width": 390, "height": 844},
                is_mobile=True,
                has_touch=True,
                device_scale_factor=2,
                storage_state=context.storage_state(),
            ).new_page()
            phone.on("pageerror", lambda exc: errors.append(str(exc)))
            phone.goto(f"{server.base_url}/wards/{ward.id}/phone")
            phone.wait_for_selector('#ward-live[data-state="live"]')
            second = fall_alarm(app_runtime, ward, "5")
            first_card = phone.locator("#ph-alarms .alarm").first
            phone.wait_for_selector(f"#ph-alarms .alarm[data-alert-id='{second}']")
            assert first_card.get_attribute("data-alert-id") == str(second)
            button = phone.locator(f"#ph-alarms button[data-ack='{second}']")
            button.wait_for(state="visible")  # the list may be redrawn as events arrive
            box = button.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] >= 44  # thumb-sized
            assert phone.locator("#ph-beds li").count() == 8
            shot(phone, tmp_path, "ward_phone.png")
            button.click()
            phone.wait_for_selector(
                f"#ph-alarms .alarm.state-acknowledged[data-alert-id='{second}']"
            )
            assert errors == []
        except Exception:
            print("page errors:", errors)
            page.screenshot(path=str(tmp_path / "ward-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
