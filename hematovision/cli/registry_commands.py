"""The model registry: ``hematovision models list | register | promote | rollback`` (thin: the rules
are in :mod:`hematovision.service.model_registry`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hematovision.cli.options import settings_or_exit

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@contextmanager
def _registry_session() -> Iterator[Session]:
    """One transaction on the installation's database; registry refusals and an unusable database
    end the command with a message (nothing is written then)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.model_registry import RegistryError
    from hematovision.store.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings_or_exit())
    try:
        with transaction(make_session_factory(engine)) as s:
            yield s
    except RegistryError as e:
        raise click.ClickException(f"{e.code}: {e.message}") from None
    except (SQLAlchemyError, OSError) as e:
        raise click.ClickException(
            f"database unavailable or not migrated ({e.__class__.__name__}); run `hematovision db upgrade`"
        ) from None
    finally:
        engine.dispose()


@click.group()
def models() -> None:
    """The model registry: versions, their validation, which one new slides get."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="The registry as JSON (versions, promoted, history).")
def models_list(as_json: bool) -> None:
    """The registered model versions (the promoted one marked *)."""
    from hematovision.service.model_registry import registry_json

    with _registry_session() as s:
        doc = registry_json(s)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    if not doc["models"]:
        click.echo("no models registered (the configured model is registered and promoted on first use)")
    for m in doc["models"]:
        mark = "*" if m["status"] == "promoted" else " "
        sha = (m["sha256"] or "")[:12]
        who = f"  promoted by {m['promoted_by']} {m['promoted_at']}" if m["promoted_by"] else ""
        click.echo(f"{mark} {m['ref']:<32} {m['status']:<10} sha256 {sha:<12}  {m['validation']['verdict']}{who}")


@models.command("register")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--by", "actor", default="cli", show_default=True, help="Who registers it.")
def models_register(model_dir: Path, actor: str) -> None:
    """Register MODEL_DIR (model.keras, model.json, optional validation.json); idempotent."""
    from hematovision.service.model_registry import ref_of, register, verdict

    with _registry_session() as s:
        mv, created = register(s, model_dir, actor)
        line = f"{'registered' if created else 'already registered'} {ref_of(mv)} sha256 {mv.sha256}; {verdict(mv)[1]}"
    click.echo(line)


def _promotion_line(action: Callable[[Session], Any]) -> str:
    from hematovision.service.model_registry import ref_of

    with _registry_session() as s:
        entry = action(s)
        from_ref = ref_of(entry.from_version) if entry.from_version is not None else "(none)"
        return f"{entry.action}: {from_ref} -> {ref_of(entry.to_version)} by {entry.actor}"


@models.command("promote")
@click.argument("ref", metavar="NAME:VERSION")
@click.option("--by", "actor", required=True, help="Who promotes it (recorded).")
@click.option("--reason", required=True, help="Why (recorded).")
@click.option(
    "--override-reason",
    default=None,
    help="Promote although the validation report is missing or says not promotable (recorded).",
)
def models_promote(ref: str, actor: str, reason: str, override_reason: str | None) -> None:
    """Make NAME:VERSION the model new slides are analysed with."""
    from hematovision.service.model_registry import promote

    click.echo(_promotion_line(lambda s: promote(s, ref, actor, reason, override_reason)))


@models.command("rollback")
@click.option("--by", "actor", required=True, help="Who rolls back (recorded).")
@click.option("--reason", required=True, help="Why (recorded).")
def models_rollback(actor: str, reason: str) -> None:
    """Promote again the model promoted before the current one (which is retired)."""
    from hematovision.service.model_registry import rollback

    click.echo(_promotion_line(lambda s: rollback(s, actor, reason)))


COMMANDS: list[click.Command] = [models]
