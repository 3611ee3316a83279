"""`lods site ...` against an installation configured by LODS_* variables."""

from __future__ import annotations

import getpass

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from lods.audit import service as audit
from lods.audit.models import AuditEvent
from lods.cli import app as cli
from lods.runtime import Runtime
from lods.sites import service


@pytest.fixture
def rt(cli_runtime: Runtime) -> Runtime:
    return cli_runtime


def site(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["site", *args])
    return result.exit_code, result.stdout, result.stderr


def test_site_add_list_and_departments(rt: Runtime) -> None:
    assert site("add", "AUH", "Aarhus Universitetshospital")[0] == 0
    assert site("add", "RH", "Rigshospitalet")[0] == 0
    code, out, _ = site("department", "add", "AUH", "RAD", "Radiologi", "--kind", "radiology")
    assert (code, out) == (0, "added department AUH/RAD: Radiologi (radiology)\n")
    code, out, _ = site("list")
    assert code == 0
    assert out.splitlines() == [
        "AUH\tAarhus Universitetshospital\t1 departments\t0 nodes",
        "RH\tRigshospitalet\t0 departments\t0 nodes",
    ]
    assert site("department", "list", "AUH")[1] == "RAD\tRadiologi\tradiology\n"
    with rt.sessions() as db:
        events = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert [e.action for e in events] == ["site.create", "site.create", "department.create"]
        assert {e.actor for e in events} == {f"cli:{getpass.getuser()}"}


def test_node_add_list_and_remove(rt: Runtime) -> None:
    site("add", "AUH", "Aarhus")
    site("department", "add", "AUH", "RAD", "Radiologi")
    code, out, _ = site(
        "node", "add", "CR_ROOM1", "--site", "AUH", "--host", "10.0.0.7", "--port", "104",
        "--department", "RAD",
    )  # fmt: skip
    assert (code, out) == (0, "added modality node CR_ROOM1 for site AUH\n")
    assert site("node", "add", "PACS1", "--site", "AUH", "--kind", "pacs")[0] == 0
    assert site("node", "list")[1].splitlines() == [
        "CR_ROOM1\tAUH\tmodality\t10.0.0.7:104\tactive",
        "PACS1\tAUH\tpacs\t-\tactive",
    ]
    assert site("node", "remove", "PACS1") == (0, "removed node PACS1 (site AUH)\n", "")
    assert site("node", "list")[1].splitlines() == ["CR_ROOM1\tAUH\tmodality\t10.0.0.7:104\tactive"]
    assert site("node", "list", "--all")[1].count("removed") == 1
    with rt.sessions() as db:
        found = service.site_for_calling_ae(db, ae_title="CR_ROOM1", accept_unknown=False)
        assert found is not None and found.code == "AUH"
        assert service.site_for_calling_ae(db, ae_title="PACS1", accept_unknown=False) is None
        assert audit.verify(db)[1] == []


@pytest.mark.parametrize(
    "args",
    [
        ("add", "AUH", "Twice"),
        ("add", "bad code", "X"),
        ("department", "add", "NOPE", "RAD", "Radiologi"),
        ("node", "add", "CT1", "--site", "NOPE"),
        ("node", "add", "THIS_AE_TITLE_IS_TOO_LONG", "--site", "AUH"),
        ("node", "add", "BACK\\SLASH", "--site", "AUH"),
        ("node", "add", "CT1", "--site", "AUH", "--kind", "printer"),
        ("node", "remove", "NEVER_ADDED"),
    ],
)
def test_site_commands_refuse_bad_input_with_exit_1(rt: Runtime, args: tuple[str, ...]) -> None:
    site("add", "AUH", "Aarhus")
    code, _out, err = site(*args)
    assert code == 1 and err.startswith("error: ")
    with rt.sessions() as db:
        assert [s.code for s in service.list_sites(db)] == ["AUH"]
        assert service.known_ae_titles(db) == frozenset()
