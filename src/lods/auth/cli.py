"""`lods user ...` and `lods token ...`: account and API-token administration from a shell.

Every change is audited with actor `cli:<operating-system user>`. Secrets (generated
passwords, new tokens) are printed once on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from lods.auth import service
from lods.auth.models import Role
from lods.config import get_settings
from lods.db import utcnow
from lods.runtime import Runtime

user_app = typer.Typer(help="User accounts.", no_args_is_help=True)
token_app = typer.Typer(help="API bearer tokens for machine clients.", no_args_is_help=True)

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from standard input"),
]


def cli_actor() -> str:
    """Return the audit actor for this command: `cli:<os user>`."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return f"cli:{who}"


@contextmanager
def _transaction() -> Iterator[Session]:
    """Open the installation's database and yield a session that commits on success.

    Domain errors become a message on stderr and exit status 1.
    """
    runtime = Runtime.open(get_settings())
    try:
        with runtime.sessions() as db, db.begin():
            yield db
    except service.AuthError as exc:
        typer.echo(f"error: {_describe(exc)}", err=True)
        raise typer.Exit(code=1) from exc
    finally:
        runtime.close()


def _describe(exc: service.AuthError) -> str:
    if isinstance(exc, service.UserExists):
        return f"user {exc} already exists"
    if isinstance(exc, service.UserNotFound):
        return f"no user {exc}"
    if isinstance(exc, service.TokenNotFound):
        return f"no token with id {exc}"
    if isinstance(exc, service.LastAdmin):
        return f"{exc} is the last active administrator"
    return str(exc)


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        typer.echo("error: no password on standard input", err=True)
        raise typer.Exit(code=1)
    return password


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ -)")],
    role: Annotated[list[Role], typer.Option("--role", help="A role; repeat for several")],
    full_name: Annotated[str, typer.Option("--full-name")] = "",
    password_stdin: PasswordStdin = False,
) -> None:
    """Create a user; without --password-stdin a strong password is generated and printed."""
    password = _read_password() if password_stdin else service.generate_password()
    with _transaction() as db:
        user = service.create_user(
            db, username=name, roles=role, password=password, full_name=full_name, actor=cli_actor()
        )
        roles = ",".join(sorted(user.role_set))
    typer.echo(f"created user {user.username} ({roles})", err=True)
    if not password_stdin:
        typer.echo(f"password for {user.username}: {password}")


@user_app.command("list")
def user_list() -> None:
    """List users with their roles and state."""
    now = utcnow()
    with _transaction() as db:
        for u in service.list_users(db):
            state = "active" if u.is_active else "inactive"
            if u.locked_until is not None and u.locked_until > now:
                state += f", locked until {u.locked_until:%Y-%m-%d %H:%M} UTC"
            roles = ",".join(sorted(u.role_set))
            typer.echo(f"{u.username:<20} {roles:<30} {state:<12} {u.full_name}")


@user_app.command("passwd")
def user_passwd(name: str, password_stdin: PasswordStdin = False) -> None:
    """Set a user's password (ending their sessions); generated and printed if not given."""
    password = _read_password() if password_stdin else service.generate_password()
    with _transaction() as db:
        user = service.set_password(db, username=name, password=password, actor=cli_actor())
    typer.echo(f"password changed for {user.username}", err=True)
    if not password_stdin:
        typer.echo(f"password for {user.username}: {password}")


@user_app.command("deactivate")
def user_deactivate(name: str) -> None:
    """Deactivate a user and end their sessions."""
    with _transaction() as db:
        user = service.deactivate_user(db, username=name, actor=cli_actor())
    typer.echo(f"deactivated {user.username}", err=True)


@user_app.command("unlock")
def user_unlock(name: str) -> None:
    """Clear a user's lockout after failed logins."""
    with _transaction() as db:
        user = service.unlock_user(db, username=name, actor=cli_actor())
    typer.echo(f"unlocked {user.username}", err=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="The user the token acts as")],
    label: Annotated[str, typer.Option("--label", help="What the token is for")] = "",
    expires_days: Annotated[int | None, typer.Option("--expires-days", min=1)] = None,
) -> None:
    """Create a bearer token and print it once; only its hash is stored."""
    with _transaction() as db:
        row, token = service.issue_api_token(
            db, username=name, label=label, expires_days=expires_days, actor=cli_actor()
        )
        token_id = row.id
    typer.echo(f"token {token_id} for {service.normalise_username(name)}", err=True)
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token by its id (see `lods token list`)."""
    with _transaction() as db:
        service.revoke_api_token(db, token_id=token_id, actor=cli_actor())
    typer.echo(f"revoked token {token_id}", err=True)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens")] = False,
) -> None:
    """List tokens (id, user, label, dates); the tokens themselves are never shown."""
    with _transaction() as db:
        for t in service.list_api_tokens(db, username=user, include_revoked=all_):
            expires = f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never"
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
            state = "revoked" if t.revoked_at else "active"
            typer.echo(
                f"{t.id:>5} {t.user.username:<20} {state:<8} expires {expires:<10} "
                f"last used {used:<16} {t.label}"
            )
