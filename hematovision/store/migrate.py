"""Run the Alembic revisions shipped in the ``migrations`` package against the configured database.

The revisions and ``alembic.ini`` are package data, found with :mod:`importlib.resources`, so an
installed wheel migrates exactly as a checkout does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from hematovision.core.settings import Settings


def migrations_dir() -> Path:
    """The folder of the Alembic environment (``env.py``, ``versions/``, ``alembic.ini``)."""
    return Path(str(files("migrations")))


def alembic_config(settings: Settings) -> Config:
    here = migrations_dir()
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings), revision)
