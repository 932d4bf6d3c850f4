"""Per-request access to the settings, the database session and the Celery producer."""

from __future__ import annotations

from celery import Celery
from flask import current_app, g
from sqlalchemy.orm import Session

from hematovision.core.settings import Settings


def settings() -> Settings:
    return current_app.extensions["hv_settings"]


def db() -> Session:
    """One session per request, closed at teardown."""
    if "db" not in g:
        g.db = current_app.extensions["hv_sessions"]()
    return g.db


def celery() -> Celery:
    return current_app.extensions["hv_celery"]
