"""Administration of one installation: the results database and the API keys (people: users_commands)."""

from __future__ import annotations

import click

from hematovision.cli.options import settings_or_exit
from hematovision.core.access import SCOPES
from hematovision.core.settings import Settings


@click.group()
def db() -> None:
    """Results database administration."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic revisions (creates the schema on a new database)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.store.migrate import upgrade

    settings = settings_or_exit()
    try:
        upgrade(settings, revision)
    except (CommandError, SQLAlchemyError, OSError) as e:  # unknown revision, database or var_dir unusable
        raise click.ClickException(f"database upgrade failed: {e.__class__.__name__}: {e}") from None
    click.echo(f"database at {revision}: {settings.sqlalchemy_url.split('@')[-1]}")
    if revision == "head":
        _promote_configured_model(settings)


def _promote_configured_model(settings: Settings) -> None:
    """Register and promote the configured model directory when no model is promoted yet (the model
    registry, issue 18); a model directory that cannot be read leaves it to the workers' first use."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.model_registry import RegistryError, ensure_promoted, ref_of
    from hematovision.store.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings)
    try:
        with transaction(make_session_factory(engine)) as s:
            click.echo(f"promoted model: {ref_of(ensure_promoted(s, settings.model_dir))}")
    except (RegistryError, SQLAlchemyError, OSError) as e:
        click.echo(f"model registry not set up: {e}", err=True)
    finally:
        engine.dispose()


@click.group()
def keys() -> None:
    """API keys (stored hashed; a key is shown once, when created)."""


@keys.command("create")
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    required=True,
    help="read: read results; submit: read, submit slides and cancel jobs (the LIS intake key); "
    "review: read and reclassify cells; admin: all of these. No key can sign off: people sign "
    "(see `hematovision users`).",
)
@click.option(
    "--name",
    default="default",
    show_default=True,
    help="Who or what uses the key (shown in the audit log): at most 64 characters, no control characters.",
)
def keys_create(scope: str, name: str) -> None:
    """Create an API key (for a machine) and print it."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.store.apikeys import create_key
    from hematovision.store.db import make_engine, make_session_factory, transaction

    settings = settings_or_exit()
    try:
        with transaction(make_session_factory(make_engine(settings))) as s:
            key = create_key(s, name, scope)
    except ValueError as e:  # a bad name
        raise click.ClickException(str(e)) from None
    except (SQLAlchemyError, OSError) as e:  # no database, or no schema yet
        raise click.ClickException(
            f"cannot store the key: {e.__class__.__name__} (run `hematovision db upgrade`?)"
        ) from None
    click.echo(key)
    click.echo(f"scope {scope}, name {name}: keep it safe, it is not shown again", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (prefix, name, scope, state)."""
    from sqlalchemy import select

    from hematovision.store.db import make_engine, make_session_factory
    from hematovision.store.models import ApiKey

    with make_session_factory(make_engine(settings_or_exit()))() as s:
        for k in s.execute(select(ApiKey).order_by(ApiKey.id)).scalars():
            click.echo(f"{k.prefix}…  {k.scope:<7} {k.name:<20} {'revoked' if k.revoked_at else 'active'}")


@keys.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke the key(s) starting with PREFIX (as `keys list` shows it)."""
    from hematovision.store.apikeys import revoke_key
    from hematovision.store.db import make_engine, make_session_factory, transaction

    with transaction(make_session_factory(make_engine(settings_or_exit()))) as s:
        n = revoke_key(s, prefix)
    if not n:
        raise click.ClickException(f"no active key with prefix {prefix}")
    click.echo(f"revoked {n} key(s)")


COMMANDS: list[click.Command] = [db, keys]
