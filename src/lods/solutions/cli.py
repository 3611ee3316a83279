"""`lods solution ...`: install, inspect, approve, deploy, suspend and retire AI solutions.

A solution version is named `ID@VERSION` (or `ID` for its newest version). Changes are
audited with actor `cli:<operating-system user>`, except approval, which names the
AI owner who approves (`--by`). Errors go to stderr with exit status 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.auth.cli import cli_actor
from lods.auth.service import AuthError, get_user_or_raise
from lods.config import Settings, get_settings
from lods.runtime import Runtime
from lods.sites.models import Site
from lods.sites.service import SiteError, get_site_by_code_or_raise
from lods.solutions import service
from lods.solutions.intended_use import describe
from lods.solutions.manifest import ManifestError
from lods.solutions.models import Deployment, DeploymentState
from lods.solutions.packaging import PackageError, write_hashes

app = typer.Typer(help="AI solutions: packages, approval, deployment.", no_args_is_help=True)


@contextmanager
def _transaction() -> Iterator[tuple[Session, Settings]]:
    settings = get_settings()
    runtime = Runtime.open(settings)
    try:
        with runtime.sessions() as db, db.begin():
            yield db, settings
    except (PackageError, ManifestError) as exc:
        typer.echo("error: the package was refused:", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(code=1) from exc
    except (service.SolutionError, SiteError, AuthError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    finally:
        runtime.close()


def _site_deployments(db: Session, version_ids: list[int], site: str | None) -> list[Deployment]:
    query = select(Deployment).where(Deployment.version_fk.in_(version_ids))
    if site:
        query = query.where(Deployment.site_fk == get_site_by_code_or_raise(db, code=site).id)
    return list(db.scalars(query.order_by(Deployment.id)))


@app.command("install")
def install(path: Annotated[Path, typer.Argument(help="Package folder or .zip")]) -> None:
    """Verify every file's SHA-256 and install the package as a new, immutable version."""
    with _transaction() as (db, settings):
        runtime = Runtime.open(settings, migrate=False)
        try:
            version_id = service.install_package(runtime, path=path, actor=cli_actor())
        finally:
            runtime.close()
        version = service.get_version(db, version_id=version_id)
        typer.echo(
            f"installed {version.label} ({version.solution_id}@{version.version}), "
            f"{len(version.files)} files verified; it needs approval before deployment"
        )


@app.command("pack")
def pack(folder: Annotated[Path, typer.Argument(help="Package folder with manifest.yaml")]) -> None:
    """For vendors: write the SHA-256 of every file into the manifest's `files:`."""
    try:
        hashes = write_hashes(folder)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"listed {len(hashes)} files in {folder / 'manifest.yaml'}")


@app.command("list")
def list_() -> None:
    """Installed versions: id@version, name, state, runtime, deployments."""
    with _transaction() as (db, _settings):
        versions = service.list_versions(db)
        if not versions:
            typer.echo("no solutions installed", err=True)
        sites = {s.id: s.code for s in db.scalars(select(Site))}
        for v in versions:
            deployed = ", ".join(
                f"{sites.get(d.site_fk, d.site_fk)}:{d.mode}"
                + ("" if d.state == DeploymentState.ACTIVE.value else f"({d.state})")
                for d in v.deployments
            )
            flag = " INTEGRITY FAILED" if v.integrity_failed_at else ""
            typer.echo(
                f"{v.solution_id}@{v.version}\t{v.name}\t{v.state}{flag}\t{v.runtime_kind}\t"
                f"{deployed or '-'}"
            )


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="ID@VERSION or ID")]) -> None:
    """Everything about a version: regulatory facts, intended use, files, approval, deployments."""
    with _transaction() as (db, _settings):
        v = service.find_version(db, ref=ref)
        m = service.manifest_of(v)
        lines = [
            f"{m.label}  ({m.id}@{m.version})",
            f"vendor: {m.vendor}",
            f"regulatory: {m.regulatory.summary()}",
            f"runtime: {m.runtime.kind}",
            f"data egress: {m.data_egress.kind}"
            + (f" to {m.data_egress.destination}" if m.data_egress.destination else "")
            + (" (pseudonymised)" if m.data_egress.pseudonymise else ""),
            f"state: {v.state}",
            "intended use:",
            f"  {m.intended_use.summary}",
            *[f"  - {line}" for line in describe(m.intended_use)],
            *[f"  known limit: {limit}" for limit in m.intended_use.limitations],
            "outputs: "
            + ", ".join(f"{f.label} ({f.code.scheme} {f.code.value})" for f in m.outputs.findings),
            f"operating points: sure >= {m.outputs.operating_points.sure}, "
            f"doubtful >= {m.outputs.operating_points.doubtful}",
            f"installed: {v.installed_at:%Y-%m-%d %H:%M} UTC by {v.installed_by}",
        ]
        if v.approved_at:
            lines.append(
                f"approved: {v.approved_at:%Y-%m-%d %H:%M} UTC by {v.approved_by}: "
                f"{v.approval_evidence}"
            )
        if v.integrity_failed_at:
            lines.append(
                f"INTEGRITY FAILED {v.integrity_failed_at:%Y-%m-%d %H:%M}: {v.integrity_detail}"
            )
        lines.append("files:")
        lines.extend(f"  {sha}  {name}" for name, sha in sorted(v.files.items()))
        lines.append("deployments:")
        sites = {s.id: s.code for s in db.scalars(select(Site))}
        for d in v.deployments:
            lines.append(
                f"  #{d.id} {sites.get(d.site_fk)} {d.mode} {d.state}"
                + (f" ({d.state_reason})" if d.state_reason else "")
            )
        typer.echo("\n".join(lines))


@app.command("verify")
def verify(ref: Annotated[str, typer.Argument(help="ID@VERSION or ID")]) -> None:
    """Re-check the installed files now; a mismatch suspends the version's deployments."""
    with _transaction() as (db, settings):
        v = service.find_version(db, ref=ref)
        problems = service.check_integrity(
            db, settings=settings, version_id=v.id, actor=cli_actor()
        )
    if problems:
        typer.echo(f"INTEGRITY FAILED for {ref}; its deployments are suspended:", err=True)
        for problem in problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"{ref}: every file matches its SHA-256")


@app.command("approve")
def approve(
    ref: Annotated[str, typer.Argument(help="ID@VERSION")],
    by: Annotated[str, typer.Option("--by", help="User name of the approving AI owner")],
    evidence: Annotated[str, typer.Option("--evidence", help="What the approval rests on")],
) -> None:
    """Approve a version for deployment (an AI owner, with evidence)."""
    with _transaction() as (db, settings):
        v = service.find_version(db, ref=ref)
        user = get_user_or_raise(db, username=by)
        service.approve(db, settings=settings, version_id=v.id, approver=user, evidence=evidence)
        typer.echo(f"approved {v.label} by {user.username}")


@app.command("deploy")
def deploy(
    ref: Annotated[str, typer.Argument(help="ID@VERSION")],
    site: Annotated[str, typer.Option("--site", help="Code of the hospital")],
    mode: Annotated[str, typer.Option(help="shadow, pilot or live")] = "shadow",
) -> None:
    """Deploy an approved version at a site (or change its mode, or resume it)."""
    with _transaction() as (db, _settings):
        v = service.find_version(db, ref=ref)
        found = get_site_by_code_or_raise(db, code=site)
        d = service.deploy(db, version_id=v.id, site_id=found.id, mode=mode, actor=cli_actor())
        typer.echo(f"{v.label} is {d.mode} at {found.code} (deployment #{d.id})")


@app.command("export-unverified")
def export_unverified(
    ref: Annotated[str, typer.Argument(help="ID@VERSION")],
    site: Annotated[str, typer.Option("--site", help="Code of the hospital")],
    enabled: Annotated[
        bool, typer.Option("--on/--off", help="Send UNVERIFIED SRs of AI answers, or stop")
    ] = True,
) -> None:
    """Send an UNVERIFIED DICOM SR of each AI answer of a deployment to the site's PACS."""
    with _transaction() as (db, _settings):
        v = service.find_version(db, ref=ref)
        found = get_site_by_code_or_raise(db, code=site)
        targets = [d for d in service.deployments_of(db, version_id=v.id) if d.site_fk == found.id]
        if not targets:
            typer.echo(f"{v.label} is not deployed at {found.code}", err=True)
            raise typer.Exit(code=1)
        d = service.set_unverified_sr_export(
            db, deployment_id=targets[0].id, enabled=enabled, actor=cli_actor()
        )
        state = "sends" if d.export_unverified_sr else "does not send"
        typer.echo(f"{v.label} at {found.code} {state} UNVERIFIED SRs to the PACS")


@app.command("suspend")
def suspend(
    ref: Annotated[str, typer.Argument(help="ID@VERSION, or ID for every version")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail)")],
    site: Annotated[str | None, typer.Option("--site", help="Only this hospital")] = None,
) -> None:
    """Kill switch: stop the solution now; queued jobs are cancelled."""
    with _transaction() as (db, _settings):
        solution_id, version = service.parse_ref(ref)
        versions = (
            [service.find_version(db, ref=ref)]
            if version
            else [v for v in service.list_versions(db) if v.solution_id == solution_id]
        )
        if not versions:
            raise service.SolutionNotFound(f"no installed solution {ref!r}")
        targets = [
            d
            for d in _site_deployments(db, [v.id for v in versions], site)
            if d.state == DeploymentState.ACTIVE.value
        ]
        if not targets:
            typer.echo("nothing to suspend: no active deployment matches", err=True)
            raise typer.Exit(code=1)
        for d in targets:
            cancelled = service.suspend(db, deployment_id=d.id, actor=cli_actor(), reason=reason)
            typer.echo(
                f"suspended deployment #{d.id} ({d.version.label}); {len(cancelled)} jobs cancelled"
            )


@app.command("retire")
def retire(
    ref: Annotated[str, typer.Argument(help="ID@VERSION")],
    site: Annotated[str | None, typer.Option("--site", help="Retire only at this hospital")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
) -> None:
    """Retire a version everywhere, or only its deployment at one site."""
    with _transaction() as (db, _settings):
        v = service.find_version(db, ref=ref)
        if site:
            for d in _site_deployments(db, [v.id], site):
                if d.state != DeploymentState.RETIRED.value:
                    service.retire_deployment(
                        db, deployment_id=d.id, actor=cli_actor(), reason=reason
                    )
                    typer.echo(f"retired deployment #{d.id} of {v.label} at {site}")
        else:
            service.retire(db, version_id=v.id, actor=cli_actor(), reason=reason)
            typer.echo(f"retired {v.label} everywhere")
