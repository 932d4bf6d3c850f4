"""People who log in to the review UI: ``hematovision users create | list | disable``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from hematovision.cli.options import settings_or_exit
from hematovision.core.access import ROLES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


@click.group()
def users() -> None:
    """People who log in to the review UI (technologists, pathologists, admins)."""


def _sessions() -> sessionmaker[Session]:
    from hematovision.store.db import make_engine, make_session_factory

    return make_session_factory(make_engine(settings_or_exit()))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@users.command("create")
@click.option("--username", required=True, help="Login name: 2-64 letters, digits and . _ @ -.")
@click.option("--name", "full_name", required=True, help='Full name, printed as the verifier (e.g. "Jane Doe").')
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="technologist or pathologist: review and sign off; admin: also submit and cancel.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def users_create(username: str, full_name: str, role: str, password_stdin: bool) -> None:
    """Create a person (the password is asked for twice, or read with --password-stdin)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.store.users import check_new_password, create_user

    password = _read_password(password_stdin)
    try:
        check_new_password(password)
        with _sessions()() as s, s.begin():
            user = create_user(s, username, full_name, role, password)
            shown = f"{user.username} ({user.full_name}, {user.role})"
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except (SQLAlchemyError, OSError) as e:  # no database, or no schema yet
        raise click.ClickException(
            f"cannot store the user: {e.__class__.__name__} (run `hematovision db upgrade`?)"
        ) from None
    click.echo(f"created {shown}")


@users.command("list")
def users_list() -> None:
    """List people (username, role, state, full name)."""
    from hematovision.store.users import list_users

    with _sessions()() as s:
        for u in list_users(s):
            state = "disabled" if u.disabled_at else "active"
            click.echo(f"{u.username:<24} {u.role:<13} {state:<9} {u.full_name}")


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable USERNAME: no more logins, and open sessions end at their next request."""
    from hematovision.store.users import disable_user

    with _sessions()() as s, s.begin():
        found = disable_user(s, username)
    if not found:
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"disabled {username}")


COMMANDS: list[click.Command] = [users]
