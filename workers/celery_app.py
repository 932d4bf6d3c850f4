"""The workers' Celery app: the shared configuration plus the stage tasks (and a sweep of the
work dir when a worker starts)."""

from __future__ import annotations

import logging

from celery import Celery

from hematovision.core.settings import Settings
from hematovision.service.queueing import make_celery

log = logging.getLogger(__name__)


def create_worker_app(settings: Settings) -> Celery:
    from celery.signals import worker_ready

    app = make_celery(settings)
    app.conf.include = ["workers.tasks"]
    import workers.tasks  # noqa: F401  (registers the shared tasks on this app)

    @worker_ready.connect(weak=False)
    def _sweep(**_: object) -> None:
        """Hand-over folders of ended jobs (a lost message's leftovers) go when a worker starts."""
        from workers.stages import sweep_work_dir
        from workers.tasks import session_factory

        try:
            n = sweep_work_dir(settings, session_factory(settings))
        except Exception as exc:  # noqa: BLE001 - housekeeping must not stop a worker
            log.warning("work dir not swept: %s: %s", exc.__class__.__name__, exc)
            return
        if n:
            log.info("removed %d hand-over folder(s) of ended jobs from %s", n, settings.stage_work_dir)

    return app
