"""The `lods` command line: serve, demo, database, users, tokens, sites, import, audit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lods.audit.cli import app as audit_app
from lods.auth.cli import token_app, user_app
from lods.config import get_settings
from lods.migrations import upgrade
from lods.sites.cli import app as site_app
from lods.solutions.cli import app as solution_app
from lods.synth.cli import app as synth_app
from lods.validation.cli import validate_command

app = typer.Typer(
    help="Lods: certified clinical AI under clinicians' control.", no_args_is_help=True
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(site_app, name="site")
app.add_typer(audit_app, name="audit")
app.add_typer(solution_app, name="solution")
app.command("validate")(validate_command)
app.add_typer(synth_app, name="synth")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs every PDU at INFO; keep its chatter for --verbose.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database to the newest schema."""
    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    typer.echo(f"database is at the newest schema: {settings.resolved_database_url}")


@app.command()
def serve(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the web UI/API, the DICOM node and the background workers until stopped."""
    from lods.server import run_server

    _logging(verbose)
    run_server(get_settings())


@app.command()
def demo(
    keep_data: Annotated[
        bool, typer.Option(help="Reuse the data dir of an earlier demo instead of starting clean")
    ] = False,
) -> None:
    """Set up a demonstration region, send synthetic studies in over DICOM, and serve."""
    from lods.demo import run_demo

    _logging(False)
    run_demo(get_settings(), keep_data=keep_data)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(exists=True, help="A DICOM file or a folder (recursive)")],
    site: Annotated[str, typer.Option(help="Code of the site the studies belong to")] = "",
) -> None:
    """Import DICOM files from a folder into the store, as if they had been sent."""
    from lods.imaging.importer import import_path
    from lods.runtime import Runtime

    _logging(False)
    runtime = Runtime.open(get_settings())
    try:
        report = import_path(runtime, path, site_code=site or None)
    finally:
        runtime.close()
    typer.echo(
        f"stored {report.stored}, already present {report.duplicates}, "
        f"new versions {report.new_versions}, rejected {report.rejected}, "
        f"not DICOM {report.skipped}"
    )
    if report.rejected:
        raise typer.Exit(code=1)
