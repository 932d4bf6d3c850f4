"""The Flask application factory."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta

from flask import Flask, g

from hematovision.core.settings import Settings

log = logging.getLogger(__name__)


def secret_key(settings: Settings) -> str:
    """The key that signs session cookies and CSRF tokens: ``HEMATOVISION_SECRET_KEY``, else a random
    key made once and kept in ``var_dir/secret_key`` (readable by its owner only)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = settings.resolved_var_dir / "secret_key"
    if not path.is_file():
        # Written aside and linked into place: another API process never reads a half-written key.
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: use its key
        finally:
            tmp.unlink()
    return path.read_text().strip()


def create_app(settings: Settings, *, background: bool = True) -> Flask:
    """Build the intake API for one installation's settings.

    Starts the outbox dispatcher (a background thread publishing accepted slides to the broker,
    retrying while it is down; ``background=False`` leaves it stopped, e.g. for a one-off script)
    and removes staging folders left by a killed API process. :func:`stop_app` stops the thread.
    """
    from api import audit, auth, batches, errors, health, jobs, queues, registry, reports, review, slides, ui, workflow
    from api.params import register_converters
    from api.security import register_security_headers
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
    app.config.update(
        SECRET_KEY=secret_key(settings),
        SESSION_COOKIE_NAME="hv_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        # CSRF is checked by api.auth for session requests only (API-key requests need none); a
        # token lives as long as its session.
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.extensions["hv_settings"] = settings
    engine = make_engine(settings)
    app.extensions["hv_engine"] = engine
    app.extensions["hv_sessions"] = make_session_factory(engine)
    app.extensions["hv_celery"] = make_celery(settings)
    from hematovision.service.lis import lis_chore

    send_lis = lis_chore(app.extensions["hv_sessions"], settings)
    dispatcher = Dispatcher(
        app.extensions["hv_sessions"],
        app.extensions["hv_celery"],
        interval_s=min(settings.dispatch_interval_s, settings.lis_interval_s)
        if send_lis
        else settings.dispatch_interval_s,
        chores=[(settings.lis_interval_s, send_lis)] if send_lis else [],
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
    register_security_headers(app)
    register_converters(app)  # before the routes that use them
    from api.metrics import init_metrics

    init_metrics(app)
    audit.register_audit(app)  # after the metrics hook: it runs before it and may replace the answer
    for bp in (
        health.bp,
        batches.bp,
        jobs.bp,
        queues.bp,
        reports.bp,
        review.bp,
        slides.bp,
        registry.bp,
        ui.bp,
        workflow.bp,
    ):
        app.register_blueprint(bp)
    return app


def stop_app(app: Flask) -> None:
    """Stop the app's background thread and close its database connections."""
    app.extensions["hv_dispatcher"].stop()
    app.extensions["hv_engine"].dispose()
