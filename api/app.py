"""The Flask application factory."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta

from flask import Flask, g

from hematovision.core.settings import Settings


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


def create_app(settings: Settings) -> Flask:
    """Build the intake API for one installation's settings."""
    from api import audit, auth, batches, errors, health, jobs, queues, reports, review, ui
    from api.params import register_converters
    from api.security import register_security_headers
    from hematovision.service.queueing import make_celery
    from hematovision.store.db import make_engine, make_session_factory

    app = Flask("hematovision")
    settings.ensure_dirs()
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
    for bp in (health.bp, batches.bp, jobs.bp, queues.bp, reports.bp, review.bp, ui.bp):
        app.register_blueprint(bp)
    return app
