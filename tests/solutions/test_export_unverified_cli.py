"""`lods solution export-unverified`: an AI owner or admin turns the UNVERIFIED SR of a
deployment's AI answers on and off; the change is audited and the exports hook obeys it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from lods.audit.models import AuditEvent
from lods.cli import app as cli
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions.models import Deployment
from support import add_cast
from support_solutions import install_approve_deploy, python_package


def solution(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["solution", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_flag_is_set_per_deployment_and_audited(cli_runtime: Runtime, tmp_path: Path) -> None:
    rt = cli_runtime
    add_cast(rt)
    with rt.sessions() as db, db.begin():
        create_site(db, code="HAV", name="Havnby", actor="test")
        create_site(db, code="SKO", name="Skovlund", actor="test")
    _, deployment_id = install_approve_deploy(rt, python_package(tmp_path / "pkg"), site="HAV")
    with rt.sessions() as db:
        ref = f"{db.get(Deployment, deployment_id).version.solution_id}@1.0"  # type: ignore[union-attr]
    code, out, _ = solution("export-unverified", ref, "--site", "HAV", "--on")
    assert code == 0 and "sends UNVERIFIED SRs" in out
    with rt.sessions() as db:
        assert db.get(Deployment, deployment_id).export_unverified_sr is True  # type: ignore[union-attr]
    assert solution("export-unverified", ref, "--site", "HAV", "--off")[0] == 0
    with rt.sessions() as db:
        assert db.get(Deployment, deployment_id).export_unverified_sr is False  # type: ignore[union-attr]
        actions = db.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "solution.export_unverified_sr")
        ).all()
    assert len(actions) == 2
    code, _, err = solution("export-unverified", ref, "--site", "SKO", "--on")
    assert code == 1 and "not deployed at SKO" in err
