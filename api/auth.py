"""API-key authentication, scopes and the audit log.

Every endpoint except ``/healthz`` needs a key (header ``X-API-Key`` or ``Authorization: Bearer``):
GET needs scope ``read``, anything else ``submit`` (``admin`` may do all). Submissions,
cancellations, reclassifications, sign-offs, report reads and exports and flag-report reads are
written to the audit log.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request

from api.context import db
from api.errors import ApiError

log = logging.getLogger(__name__)
#: The review pages and their static files hold no data (all data comes from the keyed API).
UI_ENDPOINTS = frozenset(
    {"ui.index", "ui.batches_page", "ui.batch_page", "ui.flags_page", "ui.slide_page", "ui.gallery_page", "ui.static"}
)
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "static"}) | UI_ENDPOINTS


def _presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


def _audit_action() -> str | None:
    ep = request.endpoint or ""
    if ep == "batches.submit_batch":
        return "submit"
    if ep == "jobs.cancel_job":
        return "cancel"
    if ep == "review.label_cell":
        return "reclassify"
    if ep == "review.signoff":
        return "signoff"
    if ep in ("reports.slide_report", "reports.flag_report"):
        # Any rendering other than the JSON document (CSV, PDF, HL7) leaves the system: an export.
        return "export" if request.args.get("format") in ("csv", "pdf", "hl7") else "read"
    return None


def register_auth(app: Flask) -> None:
    from hematovision.store.apikeys import allows, find_key

    @app.before_request
    def _authenticate() -> None:
        """Runs first, before any view reads the body (request.files/form/json are untouched here);
        ``api.server`` refuses a keyless body even before the server reads it."""
        g.actor = "anonymous"
        g.api_key_id = None
        if request.endpoint in PUBLIC_ENDPOINTS or not app.extensions["hv_settings"].auth_required:
            return
        if request.endpoint is None:  # unknown route: let the 404/405 handlers answer
            return
        key = _presented_key()
        if key is None:
            raise ApiError(401, "unauthorized", "an API key is required (header X-API-Key)")
        row = find_key(db(), key)
        if row is None:
            raise ApiError(401, "unauthorized", "the API key is not valid or has been revoked")
        needed = "read" if request.method in ("GET", "HEAD", "OPTIONS") else "submit"
        if not allows(row.scope, needed):
            raise ApiError(403, "forbidden", f"this key's scope '{row.scope}' does not allow this ('{needed}' needed)")
        g.actor = f"key:{row.name}:{row.prefix}"
        g.api_key_id = row.id

    @app.after_request
    def _audit(resp: Response) -> Response:
        action = _audit_action()
        if action is None or resp.status_code >= 500:
            return resp
        from hematovision.store.models import AuditEntry

        resource = request.full_path.rstrip("?")
        if action == "submit" and resp.is_json and resp.status_code in (200, 202):
            resource = f"batch:{(resp.get_json(silent=True) or {}).get('id')}"
        try:
            with app.extensions["hv_sessions"]() as s, s.begin():
                s.add(
                    AuditEntry(
                        actor=getattr(g, "actor", "anonymous"),
                        action=action,
                        resource=resource[:300],
                        status=resp.status_code,
                        remote_addr=request.remote_addr,
                    )
                )
        except Exception:  # the audit must not turn a served answer into an error; it is logged
            log.exception("audit log write failed")
        return resp
