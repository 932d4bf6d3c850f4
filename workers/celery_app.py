"""The workers' Celery app: the shared configuration plus the stage tasks, a sweep of the work dir
when a worker starts, and the worker's maintenance thread (outbox dispatcher and reconciler)."""

from __future__ import annotations

import logging

from celery import Celery

from hematovision.core.settings import Settings
from hematovision.service.outbox import Dispatcher
from hematovision.service.queueing import make_celery

log = logging.getLogger(__name__)


def start_maintenance(settings: Settings, app: Celery) -> Dispatcher:
    """The worker's background thread: the outbox dispatcher (every ``dispatch_interval_s``) and
    the reconciler (at once, then every ``reconcile_interval_s``). It has its own engine without a
    pool, so that a prefork pool's children never share its connections."""
    from hematovision.service.outbox import prune_sent
    from hematovision.service.reconcile import reconcile
    from hematovision.store.db import make_engine, make_session_factory

    factory = make_session_factory(make_engine(settings, pooled=False))

    def reconcile_now() -> None:
        result = reconcile(factory, settings)
        if result.stale or result.lost:
            log.warning(
                "reconciler re-queued %d job(s) of stopped workers and %d whose message was lost",
                len(result.stale),
                len(result.lost),
            )
        prune_sent(factory)

    from hematovision.service.lis import lis_chore

    send_lis = lis_chore(factory, settings)
    dispatcher = Dispatcher(
        factory,
        app,
        interval_s=settings.dispatch_interval_s,
        chores=[(settings.reconcile_interval_s, reconcile_now)]
        + ([(settings.lis_interval_s, send_lis)] if send_lis else []),
        name="worker-maintenance",
    )
    return dispatcher.start()


def create_worker_app(settings: Settings) -> Celery:
    from celery.signals import worker_ready, worker_shutdown

    app = make_celery(settings)
    app.conf.include = ["workers.tasks"]
    import workers.tasks  # noqa: F401  (registers the shared tasks on this app)

    maintenance: list[Dispatcher] = []

    @worker_ready.connect(weak=False)
    def _maintain(**_: object) -> None:
        """Publish what the outbox holds and re-queue stranded jobs, now and periodically."""
        maintenance.append(start_maintenance(settings, app))

    @worker_shutdown.connect(weak=False)
    def _stop_maintenance(**_: object) -> None:
        for d in maintenance:
            d.stop()

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
