"""Installing, verifying and the lifecycle of solution versions (services, both databases)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lods.alerts.models import Alert
from lods.audit.models import AuditEvent
from lods.auth.service import get_user
from lods.jobs import service as jobs
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import create_site
from lods.solutions import service
from lods.solutions.models import Deployment, SolutionVersion
from lods.solutions.packaging import PackageError
from support import add_cast
from support_solutions import install_approve_deploy, python_package


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    add_cast(runtime)
    with runtime.sessions() as db, db.begin():
        create_site(db, code="HAV", name="Havnby Hospital", actor="test")
        create_site(db, code="SKO", name="Skovlund Hospital", actor="test")
    return runtime


def _install(rt: Runtime, path: Path) -> int:
    with rt.sessions() as db, db.begin():
        return service.install(db, settings=rt.settings, path=path, actor="test").id


def _refusal(rt: Runtime, path: Path) -> list[str]:
    with pytest.raises(PackageError) as info:
        service.install_package(rt, path=path, actor="test")
    return info.value.problems


def _actions(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _site_id(rt: Runtime, code: str) -> int:
    from lods.sites.service import get_site_by_code

    with rt.sessions() as db:
        site = get_site_by_code(db, code=code)
        assert site is not None
        return site.id


def test_install_copies_verified_files_read_only_and_audits(rt: Runtime, tmp_path: Path) -> None:
    version_id = _install(rt, python_package(tmp_path / "pkg"))
    with rt.sessions() as db:
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        assert (version.solution_id, version.version, version.state) == (
            "org.test.rule",
            "1.0",
            "installed",
        )
        folder = service.package_dir(rt.settings, version)
        assert (folder / "engine.py").read_text().startswith("\nfrom lods")
        assert not (folder / "engine.py").stat().st_mode & 0o222
        service.verify_version(rt.settings, version)
    assert _actions(rt, "solution.install")


def test_install_from_zip_archive(rt: Runtime, tmp_path: Path) -> None:
    folder = python_package(tmp_path / "pkg")
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, f"pkg/{path.name}")
    assert _install(rt, archive)


def test_zip_entry_escaping_the_package_is_refused(rt: Runtime, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    assert "points outside the package" in _refusal(rt, archive)[0]


def test_file_differing_from_its_hash_is_refused(rt: Runtime, tmp_path: Path) -> None:
    folder = python_package(tmp_path / "pkg")
    (folder / "engine.py").write_text("def run(ctx):\n    return None\n")
    problems = _refusal(rt, folder)
    assert any("engine.py does not match its SHA-256" in p for p in problems)
    assert _actions(rt, "solution.install")[0].outcome == "failure"


def test_unlisted_and_missing_files_are_refused(rt: Runtime, tmp_path: Path) -> None:
    folder = python_package(tmp_path / "pkg")
    (folder / "extra.bin").write_bytes(b"not listed")
    problems = _refusal(rt, folder)
    assert any("extra.bin is in the package but not listed" in p for p in problems)
    (folder / "extra.bin").unlink()
    (folder / "engine.py").unlink()
    assert any("engine.py is listed in the manifest but missing" in p for p in _refusal(rt, folder))


def test_invalid_manifest_lists_every_problem(rt: Runtime, tmp_path: Path) -> None:
    folder = python_package(tmp_path / "pkg")
    text = (folder / "manifest.yaml").read_text()
    (folder / "manifest.yaml").write_text(
        text.replace("vendor: Lods tests", "vendr: x").replace("version: '1.0'", "version: one")
    )
    problems = _refusal(rt, folder)
    assert any("vendor: is required" in p for p in problems)
    assert any("vendr: unknown field" in p for p in problems)
    assert any(p.startswith("manifest.yaml: version") for p in problems)


def test_installed_version_is_immutable(rt: Runtime, tmp_path: Path) -> None:
    _install(rt, python_package(tmp_path / "a"))
    problems = _refusal(rt, python_package(tmp_path / "b", options={"score": 0.1}))
    assert "already installed" in problems[0]


def test_tampered_file_suspends_deployments_alerts_and_audits(rt: Runtime, tmp_path: Path) -> None:
    version_id, deployment_id = install_approve_deploy(
        rt, python_package(tmp_path / "pkg"), site="HAV"
    )
    with rt.sessions() as db, db.begin():
        queued = jobs.enqueue(
            db,
            version_id=version_id,
            deployment_id=deployment_id,
            inputs={},
            max_attempts=1,
            timeout_seconds=5,
        )
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        target = service.package_dir(rt.settings, version) / "engine.py"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[5] ^= 0x01  # one byte
    target.write_bytes(bytes(data))
    with rt.sessions() as db, db.begin():
        problems = service.check_integrity(
            db, settings=rt.settings, version_id=version_id, actor="test"
        )
    assert problems and "engine.py does not match" in problems[0]
    hav = _site_id(rt, "HAV")
    with rt.sessions() as db:
        deployment = db.get(Deployment, deployment_id)
        assert deployment is not None and deployment.state == "suspended"
        assert "integrity" in (deployment.state_reason or "")
        assert db.get(Job, queued).state == "cancelled"  # type: ignore[union-attr]
        alert = db.scalars(select(Alert)).one()
        assert alert.severity == "urgent" and set(alert.audience.split(",")) == {
            "admin",
            "ai_owner",
        }
        version = db.get(SolutionVersion, version_id)
        assert version is not None and version.integrity_failed_at is not None
    assert _actions(rt, "solution.integrity_failed")
    with rt.sessions() as db, db.begin(), pytest.raises(service.SolutionError):
        service.deploy(db, version_id=version_id, site_id=hav, mode="live", actor="test")


def test_only_an_ai_owner_with_evidence_approves(rt: Runtime, tmp_path: Path) -> None:
    version_id = _install(rt, python_package(tmp_path / "pkg"))
    with rt.sessions() as db, db.begin():
        rita = get_user(db, username="rita")
        otto = get_user(db, username="otto")
        assert rita is not None and otto is not None
        with pytest.raises(service.SolutionError, match="only AI owners approve"):
            service.approve(
                db,
                settings=rt.settings,
                version_id=version_id,
                approver=rita,
                evidence="looks fine to me",
            )
        with pytest.raises(service.SolutionError, match="evidence"):
            service.approve(
                db, settings=rt.settings, version_id=version_id, approver=otto, evidence="ok"
            )
        service.approve(
            db,
            settings=rt.settings,
            version_id=version_id,
            approver=otto,
            evidence="local validation report 2026-11: AUC 0.97",
        )
    with rt.sessions() as db:
        version = db.get(SolutionVersion, version_id)
        assert version is not None and version.approved_by == "otto"


def test_new_version_never_inherits_approval(rt: Runtime, tmp_path: Path) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "v1"), site="HAV")
    v2 = _install(rt, python_package(tmp_path / "v2", version="1.1"))
    hav = _site_id(rt, "HAV")
    with rt.sessions() as db, db.begin():
        assert db.get(SolutionVersion, v2).state == "installed"  # type: ignore[union-attr]
        with pytest.raises(service.SolutionError, match="only approved versions"):
            service.deploy(db, version_id=v2, site_id=hav, mode="shadow", actor="test")


def test_one_version_shows_results_per_site_others_run_in_shadow(
    rt: Runtime, tmp_path: Path
) -> None:
    install_approve_deploy(rt, python_package(tmp_path / "v1"), site="HAV", mode="live")
    v2, _ = install_approve_deploy(
        rt, python_package(tmp_path / "v2", version="1.1"), site="HAV", mode="shadow"
    )
    hav, sko = _site_id(rt, "HAV"), _site_id(rt, "SKO")
    with (
        rt.sessions() as db,
        db.begin(),
        pytest.raises(service.SolutionError, match="is live at HAV"),
    ):
        service.deploy(db, version_id=v2, site_id=hav, mode="live", actor="test")
    with rt.sessions() as db, db.begin():
        assert (
            service.deploy(db, version_id=v2, site_id=sko, mode="live", actor="test").mode == "live"
        )


def test_suspend_cancels_queued_jobs_and_resume_reactivates(rt: Runtime, tmp_path: Path) -> None:
    version_id, deployment_id = install_approve_deploy(
        rt, python_package(tmp_path / "pkg"), site="HAV"
    )
    hav = _site_id(rt, "HAV")
    with rt.sessions() as db, db.begin():
        queued = [
            jobs.enqueue(
                db,
                version_id=version_id,
                deployment_id=deployment_id,
                inputs={},
                max_attempts=1,
                timeout_seconds=5,
            )
            for _ in range(3)
        ]
    with rt.sessions() as db, db.begin(), pytest.raises(service.SolutionError, match="why"):
        service.suspend(db, deployment_id=deployment_id, actor="otto", reason=" ")
    with rt.sessions() as db, db.begin():
        cancelled = service.suspend(
            db, deployment_id=deployment_id, actor="otto", reason="false positives at night"
        )
    assert sorted(cancelled) == sorted(queued)
    with rt.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")) == 0
        assert service.active_deployments(db, site_id=hav, input_kind="dicom-study") == []
    with rt.sessions() as db, db.begin():
        resumed = service.deploy(db, version_id=version_id, site_id=hav, mode="pilot", actor="otto")
        assert (resumed.state, resumed.mode) == ("active", "pilot")
    assert [e.detail for e in _actions(rt, "solution.suspend")]


def test_retire_ends_every_deployment_and_is_final(rt: Runtime, tmp_path: Path) -> None:
    version_id, deployment_id = install_approve_deploy(
        rt, python_package(tmp_path / "pkg"), site="HAV"
    )
    hav = _site_id(rt, "HAV")
    with rt.sessions() as db, db.begin():
        service.retire(db, version_id=version_id, actor="otto", reason="replaced")
    with rt.sessions() as db, db.begin():
        assert db.get(Deployment, deployment_id).state == "retired"  # type: ignore[union-attr]
        with pytest.raises(service.IllegalLifecycleMove):
            service.retire(db, version_id=version_id, actor="otto")
        with pytest.raises(service.SolutionError):
            service.deploy(db, version_id=version_id, site_id=hav, mode="live", actor="otto")


def test_find_version_by_reference(rt: Runtime, tmp_path: Path) -> None:
    _install(rt, python_package(tmp_path / "v1"))
    _install(rt, python_package(tmp_path / "v2", version="1.1"))
    with rt.sessions() as db:
        assert service.find_version(db, ref="org.test.rule@1.0").version == "1.0"
        assert service.find_version(db, ref="org.test.rule").version == "1.1"
        with pytest.raises(service.SolutionNotFound):
            service.find_version(db, ref="org.test.none")


def test_manifest_text_change_is_an_integrity_failure(rt: Runtime, tmp_path: Path) -> None:
    version_id = _install(rt, python_package(tmp_path / "pkg"))
    with rt.sessions() as db:
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        folder = service.package_dir(rt.settings, version)
    manifest = folder / "manifest.yaml"
    manifest.chmod(0o644)
    manifest.write_text(manifest.read_text().replace("min_years: 18", "min_years: 2"))
    with rt.sessions() as db:
        version = db.get(SolutionVersion, version_id)
        assert version is not None
        with pytest.raises(service.IntegrityFailure, match=r"manifest\.yaml was changed"):
            service.verify_version(rt.settings, version)
