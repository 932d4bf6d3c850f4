"""The production WSGI server: waitress, with its request-size limit set from the settings and a
gate that answers before the body is read.

Waitress reads a request's whole body (into memory or a temporary file) before it calls the app,
so the app's own checks come after the upload has been received. Two answers do not need the body
and are given from the headers alone, in waitress's I/O thread, with the API's JSON error shape:

- a body larger than ``HEMATOVISION_MAX_UPLOAD_MB`` (waitress's ``max_request_body_size`` is set to
  the same limit, so the documented limit is the one in force): 413 ``too_large``;
- a body sent to the keyed API (``/api/…``, ``/metrics``) without any API key or login session
  cookie, or with a value that cannot be a key: 401 ``unauthorized``.

The connection is then closed without reading the body (the answer carries the app's security
headers, :mod:`api.security`). Keys that look valid and session cookies
are checked by the app (a database look-up; the session's CSRF token) as before. Each such answer
is audited like the app's own (:func:`api.audit.audit_early_answer`, written by the task thread
that sends the answer, not the I/O thread); if that write fails the answer is 500/503
``audit_failed``/``database_unavailable`` instead.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

from api.errors import size_text
from api.security import SECURITY_HEADERS
from hematovision.core.settings import Settings

#: Path prefixes whose every route needs a key (the review UI and /healthz do not).
KEYED_PREFIXES = ("/api/", "/metrics")
#: What a key looks like (``hematovision.store.apikeys``: ``hv_`` + 43 URL-safe characters).
_KEY_PREFIX = "hv_"
_MAX_KEY_CHARS = 200


def _waitress() -> Any:
    import waitress.channel
    import waitress.parser
    import waitress.task
    import waitress.utilities

    return waitress


def _json_error_class(utilities: Any) -> type:
    class JsonError(utilities.Error):  # type: ignore[misc,name-defined]
        """A waitress error answered in the API's JSON shape."""

        def __init__(self, status: int, reason: str, code: str, message: str) -> None:
            super().__init__(message)
            self.code, self.reason, self.error_code = status, reason, code

        def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
            body = json.dumps({"error": {"code": self.error_code, "message": self.body}}).encode()
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            return f"{self.code} {self.reason}", headers + list(SECURITY_HEADERS.items()), body

    return JsonError


def _presented_key(headers: dict[str, str]) -> str | None:
    key = headers.get("X_API_KEY", "").strip()
    auth = headers.get("AUTHORIZATION", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


def _has_cookie(headers: dict[str, str], name: str) -> bool:
    return any(part.strip().startswith(f"{name}=") for part in headers.get("COOKIE", "").split(";"))


def make_server(app: Flask, settings: Settings, host: str, port: int, threads: int = 8, **kw: Any) -> Any:
    """A waitress server for ``app`` (not yet serving: call ``.run()``), gated as the module says."""
    waitress = _waitress()
    from waitress.server import create_server

    from api.audit import audit_early_answer

    limit = settings.max_upload_mb * 2**20
    JsonError = _json_error_class(waitress.utilities)
    auth_required = settings.auth_required
    session_cookie = str(app.config.get("SESSION_COOKIE_NAME") or "session")

    class GatedParser(waitress.parser.HTTPRequestParser):  # type: ignore[misc,name-defined]
        _gated = False

        def received(self, data: bytes) -> int:
            consumed = int(super().received(data))
            if self.headers_finished and not self._gated:
                self._gated = True
                self._gate()
            return consumed

        def _gate(self) -> None:
            if isinstance(self.error, waitress.utilities.RequestEntityTooLarge):
                self.error = JsonError(
                    413, "Request Entity Too Large", "too_large", f"the request exceeds the limit of {size_text(limit)}"
                )
                self.expect_continue = False
                return
            if self.error is not None or self.completed or not auth_required:
                return  # no body to spare (the app answers), or a parse error waitress reports
            path = self.path or ""
            if not path.startswith(KEYED_PREFIXES):
                return
            key = _presented_key(self.headers)
            if key is not None and key.startswith(_KEY_PREFIX) and len(key) <= _MAX_KEY_CHARS:
                return  # looks like a key: the app checks it against the database
            if key is None and _has_cookie(self.headers, session_cookie):
                return  # a login session: the app checks it (and the CSRF token)
            self.error = JsonError(
                401,
                "Unauthorized",
                "unauthorized",
                "an API key (header X-API-Key) or a login session (/ui/login) is required"
                if key is None
                else "the API key is not valid or has been revoked",
            )
            self.completed = True
            self.expect_continue = False  # no "100 Continue": the body is not wanted

    class AuditedErrorTask(waitress.task.ErrorTask):  # type: ignore[misc,name-defined]
        """Waitress's error answer; the gate's answers are audited first (in this task thread)."""

        def execute(self) -> None:
            e = self.request.error
            if isinstance(e, JsonError):
                addr = self.channel.addr
                failure = audit_early_answer(
                    app,
                    method=self.request.command or "GET",
                    path=self.request.path or "/",
                    key=_presented_key(self.request.headers),
                    remote_addr=addr[0] if isinstance(addr, tuple) and addr else None,
                    status=e.code,
                    message=e.body,
                )
                if failure is not None:
                    status, code, message = failure
                    reason = "Service Unavailable" if status == 503 else "Internal Server Error"
                    self.request.error = JsonError(status, reason, code, message)
            super().execute()

    class GatedChannel(waitress.channel.HTTPChannel):  # type: ignore[misc,name-defined]
        parser_class = GatedParser
        error_task_class = AuditedErrorTask

    # waitress refuses a body of max_request_body_size bytes or more: one more byte than the limit
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="hematovision",
        max_request_body_size=limit + 1,
        **kw,
    )
    server.channel_class = GatedChannel
    return server


def serve(app: Flask, settings: Settings, host: str, port: int, threads: int = 8) -> None:
    """Serve ``app`` until the process is stopped."""
    make_server(app, settings, host, port, threads).run()
