"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask, g

from hematovision.core.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, background: bool = True) -> Flask:
    """Build the intake API for one installation's settings.

    Starts the outbox dispatcher (a background thread publishing accepted slides to the broker,
    retrying while it is down; ``background=False`` leaves it stopped, e.g. for a one-off script)
    and removes staging folders left by a killed API process. :func:`stop_app` stops the thread.
    """
    from api import auth, batches, errors, health, jobs, queues, reports, review, ui
    from api.uploads import IntakeRequest, sweep_staging
    from hematovision.service.outbox import Dispatcher
    from hematovision.service.queueing import make_celery
    from hematovision.store.db import make_engine, make_session_factory

    app = Flask("hematovision")
    app.request_class = IntakeRequest
    try:
        settings.ensure_dirs()
    except OSError as exc:  # an unusable upload folder must not keep the API down: /healthz says so
        log.error("cannot create the working folders under %s: %s", settings.resolved_var_dir, exc)
    sweep_staging(settings.upload_dir)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 2**20
    app.config["MAX_FORM_PARTS"] = settings.max_batch_parts
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["hv_settings"] = settings
    engine = make_engine(settings)
    app.extensions["hv_engine"] = engine
    app.extensions["hv_sessions"] = make_session_factory(engine)
    app.extensions["hv_celery"] = make_celery(settings)
    dispatcher = Dispatcher(
        app.extensions["hv_sessions"], app.extensions["hv_celery"], interval_s=settings.dispatch_interval_s
    )
    app.extensions["hv_dispatcher"] = dispatcher
    if background:
        dispatcher.start()

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        s = g.pop("db", None)
        if s is not None:
            s.close()

    errors.register_error_handlers(app)
    auth.register_auth(app)
    from api.metrics import init_metrics

    init_metrics(app)
    for bp in (health.bp, batches.bp, jobs.bp, queues.bp, reports.bp, review.bp, ui.bp):
        app.register_blueprint(bp)
    return app


def stop_app(app: Flask) -> None:
    """Stop the app's background thread and close its database connections."""
    app.extensions["hv_dispatcher"].stop()
    app.extensions["hv_engine"].dispose()
