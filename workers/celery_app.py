"""The workers' Celery app: the shared configuration plus the slide tasks."""

from __future__ import annotations

from celery import Celery

from hematovision.queueing import make_celery
from hematovision.settings import Settings


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    app.conf.include = ["workers.tasks"]
    import workers.tasks  # noqa: F401  (registers the shared tasks on this app)

    return app
