"""Beds of a ward: `lods site add-bed` / `lods site beds` from a shell, and the section of
the sites administration page that lists and adds them (admins only, CSRF, audited)."""

from __future__ import annotations

import getpass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from lods.audit.models import AuditEvent
from lods.cli import app as cli
from lods.runtime import Runtime
from lods.sites import service
from support import csrf, login


def site(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["site", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def rt(cli_runtime: Runtime) -> Runtime:
    assert site("add", "AUH", "Aarhus")[0] == 0
    assert site("department", "add", "AUH", "GER1", "Geriatri 1", "--kind", "ward")[0] == 0
    assert site("department", "add", "AUH", "RAD", "Radiologi", "--kind", "radiology")[0] == 0
    return cli_runtime


def test_add_bed_and_list_the_ward(rt: Runtime) -> None:
    added = site("add-bed", "--site", "AUH", "--ward", "GER1", "--bed", "12", "--room", "R3")
    assert added == (0, "added bed AUH/GER1/12 (room R3)\n", "")
    assert site("add-bed", "--site", "AUH", "--ward", "GER1", "--bed", "1")[0] == 0
    assert site("beds", "--site", "AUH", "--ward", "GER1")[1].splitlines() == ["-\t1", "R3\t12"]
    with rt.sessions() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "bed.create")).first()
        assert event is not None and event.actor == f"cli:{getpass.getuser()}"
        assert event.object_ref == "bed:GER1/12"
        ward = service.find_ward(db, ward_code="GER1", site_code="AUH")
        assert ward is not None
        assert [(b.room, b.code) for b in service.list_beds(db, ward_id=ward.id)] == [
            ("", "1"),
            ("R3", "12"),
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ward", "GER1", "--bed", "12"), "already has a bed '12'"),
        (("--ward", "RAD", "--bed", "1"), "is a radiology department, not a ward"),
        (("--ward", "NOPE", "--bed", "1"), "no department 'NOPE'"),
        (("--ward", "GER1", "--bed", "bad code!"), "a bed code is 1 to 32"),
    ],
)
def test_add_bed_refusals_say_why(rt: Runtime, args: tuple[str, ...], message: str) -> None:
    site("add-bed", "--site", "AUH", "--ward", "GER1", "--bed", "12")
    code, out, err = site("add-bed", "--site", "AUH", *args)
    assert code == 1 and out == "" and message in err


def test_the_sites_page_lists_and_adds_beds_for_admins(client: TestClient) -> None:
    login(client, "ada")
    client.post("/admin/sites", data={"code": "AUH", "name": "Aarhus", "csrf_token": csrf(client)})
    client.post(
        "/admin/sites/AUH/departments",
        data={"dept_code": "GER1", "name": "Geriatri", "kind": "ward", "csrf_token": csrf(client)},
    )
    page = client.get("/admin/sites")
    assert 'id="ward-AUH-GER1"' in page.text and "No beds yet." in page.text
    path = "/admin/sites/AUH/departments/GER1/beds"
    assert client.post(path, data={"bed_code": "7", "room": "R2"}).status_code == 403
    done = client.post(
        path,
        data={"bed_code": "7", "room": "R2", "csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/admin/sites?done=bed_added#ward-AUH-GER1"
    assert "R2 · 7" in client.get("/admin/sites").text
    again = client.post(path, data={"bed_code": "7", "csrf_token": csrf(client)})
    assert again.status_code == 409
    client.post("/logout", data={"csrf_token": csrf(client)})
    login(client, "nina")
    assert client.post(path, data={"bed_code": "8", "csrf_token": csrf(client)}).status_code == 403
