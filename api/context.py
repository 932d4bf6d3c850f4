"""Per-request access to the settings, the database session, the Celery producer and the outbox
dispatcher."""

from __future__ import annotations

from celery import Celery
from flask import current_app, g
from sqlalchemy.orm import Session

from hematovision.core.settings import Settings
from hematovision.service.outbox import Dispatcher


def settings() -> Settings:
    return current_app.extensions["hv_settings"]


def db() -> Session:
    """One session per request, closed at teardown."""
    if "db" not in g:
        g.db = current_app.extensions["hv_sessions"]()
    return g.db


def celery() -> Celery:
    return current_app.extensions["hv_celery"]


def dispatcher() -> Dispatcher:
    """The app's outbox dispatcher (a background thread; see ``hematovision.service.outbox``)."""
    return current_app.extensions["hv_dispatcher"]
