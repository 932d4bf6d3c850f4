"""The Flask application factory."""

from __future__ import annotations

from flask import Flask, g

from hematovision.core.settings import Settings


def create_app(settings: Settings) -> Flask:
    """Build the intake API for one installation's settings."""
    from api import auth, batches, errors, health, jobs, queues, reports, review, ui
    from api.params import register_converters
    from api.security import register_security_headers
    from hematovision.service.queueing import make_celery
    from hematovision.store.db import make_engine, make_session_factory

    app = Flask("hematovision")
    settings.ensure_dirs()
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 2**20
    app.config["MAX_FORM_PARTS"] = settings.max_batch_parts
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["hv_settings"] = settings
    engine = make_engine(settings)
    app.extensions["hv_engine"] = engine
    app.extensions["hv_sessions"] = make_session_factory(engine)
    app.extensions["hv_celery"] = make_celery(settings)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        s = g.pop("db", None)
        if s is not None:
            s.close()

    errors.register_error_handlers(app)
    auth.register_auth(app)
    register_security_headers(app)
    register_converters(app)  # before the routes that use them
    from api.metrics import init_metrics

    init_metrics(app)
    for bp in (health.bp, batches.bp, jobs.bp, queues.bp, reports.bp, review.bp, ui.bp):
        app.register_blueprint(bp)
    return app
