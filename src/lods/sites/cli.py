"""`lods site ...`: hospitals, departments, wards' beds and DICOM nodes, from a shell.

Every change is audited with actor `cli:<operating-system user>`; errors go to stderr
with exit status 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from lods.auth.cli import cli_actor
from lods.config import get_settings
from lods.runtime import Runtime
from lods.sites import service

app = typer.Typer(help="Hospitals, departments, beds and DICOM nodes.", no_args_is_help=True)
department_app = typer.Typer(help="Departments and wards of a hospital.", no_args_is_help=True)
node_app = typer.Typer(
    help="DICOM nodes (AE titles) and the site they send for.", no_args_is_help=True
)
app.add_typer(department_app, name="department")
app.add_typer(node_app, name="node")


@contextmanager
def _transaction() -> Iterator[Session]:
    """Yield a session on the installation's database that commits on success."""
    runtime = Runtime.open(get_settings())
    try:
        with runtime.sessions() as db, db.begin():
            yield db
    except (service.SiteError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    finally:
        runtime.close()


@app.command("add")
def site_add(
    code: Annotated[str, typer.Argument(help="Short unique code, e.g. AUH")],
    name: Annotated[str, typer.Argument(help="Display name of the hospital")],
) -> None:
    """Add a hospital."""
    with _transaction() as db:
        site = service.create_site(db, code=code, name=name, actor=cli_actor())
        typer.echo(f"added site {site.code}: {site.name}")


@app.command("list")
def site_list() -> None:
    """List hospitals with their number of departments and active DICOM nodes."""
    with _transaction() as db:
        counts = service.node_counts(db)
        sites = service.list_sites(db)
        if not sites:
            typer.echo("no sites", err=True)
        for site in sites:
            depts = len(service.list_departments(db, site_id=site.id))
            typer.echo(
                f"{site.code}\t{site.name}\t{depts} departments\t{counts.get(site.id, 0)} nodes"
            )


@department_app.command("add")
def department_add(
    site: Annotated[str, typer.Argument(help="Code of the hospital")],
    code: Annotated[str, typer.Argument(help="Department code, unique within the hospital")],
    name: Annotated[str, typer.Argument(help="Display name")],
    kind: Annotated[
        str, typer.Option(help="One of: " + ", ".join(sorted(service.DEPARTMENT_KINDS)))
    ] = "other",
) -> None:
    """Add a department or ward to a hospital."""
    with _transaction() as db:
        found = service.get_site_by_code_or_raise(db, code=site)
        dept = service.add_department(
            db, site_id=found.id, code=code, name=name, kind=kind, actor=cli_actor()
        )
        typer.echo(f"added department {found.code}/{dept.code}: {dept.name} ({dept.kind})")


@app.command("add-bed")
def bed_add(
    site: Annotated[str, typer.Option("--site", help="Code of the hospital")],
    ward: Annotated[
        str, typer.Option("--ward", help="Code of the ward (kind ward, icu or emergency)")
    ],
    bed: Annotated[str, typer.Option("--bed", help="The bed's code as monitors and ADT send it")],
    room: Annotated[str, typer.Option("--room", help="The room, as room sensors report it")] = "",
) -> None:
    """Add a bed to a ward (adding a removed bed's code again brings it back)."""
    with _transaction() as db:
        found = service.get_site_by_code_or_raise(db, code=site)
        dept = service.get_department(db, site_id=found.id, code=ward)
        made = service.add_bed(db, ward_id=dept.id, code=bed, room=room, actor=cli_actor())
        typer.echo(f"added bed {found.code}/{dept.code}/{made.code} (room {made.room or '-'})")


@app.command("beds")
def bed_list(
    site: Annotated[str, typer.Option("--site", help="Code of the hospital")],
    ward: Annotated[str, typer.Option("--ward", help="Code of the ward")],
) -> None:
    """List a ward's beds: room and bed code, by room."""
    with _transaction() as db:
        found = service.get_site_by_code_or_raise(db, code=site)
        dept = service.get_department(db, site_id=found.id, code=ward)
        beds = service.list_beds(db, ward_id=dept.id)
        if not beds:
            typer.echo("no beds", err=True)
        for bed in beds:
            typer.echo(f"{bed.room or '-'}\t{bed.code}")


@department_app.command("list")
def department_list(site: Annotated[str, typer.Argument(help="Code of the hospital")]) -> None:
    """List the departments of a hospital."""
    with _transaction() as db:
        found = service.get_site_by_code_or_raise(db, code=site)
        for dept in service.list_departments(db, site_id=found.id):
            typer.echo(f"{dept.code}\t{dept.name}\t{dept.kind}")


@node_app.command("add")
def node_add(
    ae_title: Annotated[str, typer.Argument(help="The node's AE title (1-16 characters)")],
    site: Annotated[str, typer.Option("--site", help="Code of the hospital it sends for")],
    kind: Annotated[str, typer.Option(help="modality or pacs")] = "modality",
    host: Annotated[str | None, typer.Option(help="Host name or address")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port")] = None,
    department: Annotated[str | None, typer.Option(help="Department code")] = None,
    description: Annotated[str, typer.Option(help="Free text, e.g. the room")] = "",
) -> None:
    """Register a DICOM node: studies from this AE title belong to the site."""
    with _transaction() as db:
        found = service.get_site_by_code_or_raise(db, code=site)
        dept = service.get_department(db, site_id=found.id, code=department) if department else None
        node = service.add_dicom_node(
            db,
            site_id=found.id,
            ae_title=ae_title,
            kind=kind,
            department_id=dept.id if dept else None,
            host=host,
            port=port,
            description=description,
            actor=cli_actor(),
        )
        typer.echo(f"added {node.kind} node {node.ae_title} for site {found.code}")


@node_app.command("list")
def node_list(
    site: Annotated[str | None, typer.Option("--site", help="Only this hospital")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include removed nodes")] = False,
) -> None:
    """List DICOM nodes: AE title, site, kind, address, state."""
    with _transaction() as db:
        site_id = service.get_site_by_code_or_raise(db, code=site).id if site else None
        for node in service.list_nodes(db, site_id=site_id, include_inactive=all_):
            address = f"{node.host}:{node.port or ''}" if node.host else "-"
            state = "active" if node.is_active else "removed"
            typer.echo(f"{node.ae_title}\t{node.site.code}\t{node.kind}\t{address}\t{state}")


@node_app.command("remove")
def node_remove(ae_title: Annotated[str, typer.Argument(help="The node's AE title")]) -> None:
    """Remove a DICOM node: its AE title is refused (or unassigned) from now on."""
    with _transaction() as db:
        node = service.remove_dicom_node(db, ae_title=ae_title, actor=cli_actor())
        typer.echo(f"removed node {node.ae_title} (site {node.site.code})")
