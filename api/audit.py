"""The audit log: every attempt, allowed or refused, is written before its answer leaves.

Audited: submissions, cancellations, reclassifications, sign-offs, slide-report reads and exports
(CSV, PDF, HL7), flag-report reads and exports, reads of a slide's audit history, logins and
logouts -- and every refused request on any endpoint (401, 403, a failed CSRF check). An entry
names who tried (``key:<name>``, ``user:<username>`` or ``anonymous``; never a key or any part of
one), the action, the resource, the slide it concerns, the HTTP status, the outcome (``allowed``,
``refused``, ``failed``), the client address and ``detail`` (e.g. from/to labels, the export
format, why it was refused).

An audit write that fails fails the request. A change (a submission's batch, slides, jobs and
outbox rows; cancel, reclassify, sign-off, a login's counters) writes its entry in the same
transaction as the change (:func:`commit_audited`): if the entry cannot be stored, nothing changes
and the answer is 500 ``audit_failed`` (503 when the database is unreachable). Everything else is
written after the view has answered and before the answer is sent; if that write fails, the answer
is replaced by the same 500/503. The production server's answers from the headers alone (401 for
a body without credentials, 413 over the limit: :mod:`api.server`) are audited by
:func:`audit_early_answer`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, g, request
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.auth import principal
from api.context import db
from api.errors import ApiError, error_response
from hematovision.store.models import AuditEntry, Cell

log = logging.getLogger(__name__)
_SLIDE_ID = re.compile(r"^[0-9a-f]{32}$")
#: The audited action of each endpoint (``None``: decided per request, see :func:`audit_action`).
AUDITED_ENDPOINTS: dict[str, str | None] = {
    "batches.submit_batch": "submit",
    "jobs.cancel_job": "cancel",
    "review.label_cell": "reclassify",
    "review.signoff": "signoff",
    "review.census": "census",
    "slides.patch_slide": "order",
    "review.slide_audit": "audit",
    "workflow.acknowledge": "acknowledge",
    "workflow.amend_slide": "amend",
    "workflow.slide_comments": "comment",
    "workflow.cell_comments": "comment",
    "reports.slide_report": None,
    "reports.flag_report": None,
    "ui.login": "login",
    "ui.logout": "logout",
}
#: Audited only when they change something (POST); their GETs are plain reads.
POST_ONLY_AUDITED = frozenset({"ui.login", "ui.logout", "workflow.slide_comments", "workflow.cell_comments"})
AUDIT_FAILED = "the audit log could not be written, so the request was not carried out (or is not confirmed)"


def audit_action() -> str | None:
    """The audited action of the current request, or None when only a refusal would be audited."""
    endpoint = request.endpoint or ""
    if endpoint not in AUDITED_ENDPOINTS:
        return None
    if endpoint in POST_ONLY_AUDITED and request.method != "POST":
        return None
    action = AUDITED_ENDPOINTS[endpoint]
    if action is None:  # reports: any rendering but the JSON document leaves the system: an export
        return "export" if request.args.get("format") in ("csv", "pdf", "hl7") else "read"
    return action


def note(**detail: Any) -> None:
    """Add to the current request's audit ``detail``."""
    g.setdefault("audit_detail", {}).update(detail)


def note_slide(slide_id: str | None) -> None:
    """Tie the current request's audit entry to a slide (``None``: to none)."""
    g.audit_slide = slide_id


def _slide_of_request(session: Session) -> str | None:
    if "audit_slide" in g:
        return g.audit_slide  # type: ignore[no-any-return]
    args = request.view_args or {}
    slide_id = args.get("slide_id")
    if isinstance(slide_id, str):
        return slide_id if _SLIDE_ID.match(slide_id) else None
    cell_id = args.get("cell_id")
    if isinstance(cell_id, int) and 0 < cell_id < 2**63:
        try:
            return session.execute(select(Cell.slide_id).where(Cell.id == cell_id)).scalar_one_or_none()
        except SQLAlchemyError:
            session.rollback()
    return None


def _entry(session: Session, action: str, status: int, outcome: str) -> AuditEntry:
    who = principal()
    detail: dict[str, Any] = dict(g.get("audit_detail") or {})
    if who.kind == "key" and who.id is not None:
        detail.setdefault("key_id", who.id)
    elif who.kind == "user" and who.id is not None:
        detail.setdefault("user_id", who.id)
    resource = request.path
    if action == "submit" and "audit_resource" in g:
        resource = g.audit_resource
    elif action == "export":
        detail.setdefault("format", request.args.get("format"))
    return AuditEntry(
        actor=who.actor[:100],
        action=action[:20],
        resource=resource[:300],
        status=status,
        outcome=outcome,
        remote_addr=(request.remote_addr or "")[:64] or None,
        slide_id=_slide_of_request(session),
        detail=detail or None,
    )


def commit_audited(
    session: Session, *, status: int = 200, outcome: str | None = None, slide_id: str | None = None, **detail: Any
) -> None:
    """Commit the request's change together with its audit entry (one transaction).

    Raises ApiError 500 ``audit_failed`` (or lets ``OperationalError`` through, answered 503) when
    the commit fails; nothing of the change is kept then.
    """
    note(**detail)
    if slide_id is not None:
        note_slide(slide_id)
    action = audit_action() or g.get("permission") or "access"
    refused = bool(g.get("refused"))
    outcome = outcome or ("refused" if refused else "allowed" if status < 400 else "failed")
    try:
        session.add(_entry(session, action, status, outcome))
        session.commit()
    except OperationalError:
        session.rollback()
        raise
    except SQLAlchemyError:
        session.rollback()
        log.exception("audit log write failed (%s); the change was rolled back", action)
        g.audit_failed = True
        raise ApiError(500, "audit_failed", AUDIT_FAILED) from None
    g.audit_written = True


def register_audit(app: Flask) -> None:
    """Write the audit entry of each audited or refused request before its answer is sent.

    Register it after every other ``after_request`` hook: Flask runs them last-registered first,
    so the others (metrics) see the answer this one may replace.
    """

    @app.after_request
    def _audit(resp: Response) -> Response:
        if g.get("audit_written"):
            return resp
        action = audit_action()
        refused = bool(g.get("refused")) or resp.status_code in (401, 403)
        if action is None:
            if not refused:
                return resp
            action = g.get("permission") or "access"
        outcome = "refused" if refused else "allowed" if resp.status_code < 400 else "failed"
        if action == "submit" and resp.is_json and resp.status_code in (200, 202):
            g.audit_resource = f"batch:{(resp.get_json(silent=True) or {}).get('id')}"
        if g.get("audit_failed"):  # the change's own entry failed: record the failure if possible
            note(reason="audit write failed; change rolled back")
        session = db()
        try:
            if resp.status_code >= 400:
                session.rollback()  # whatever the failed view left undone
            session.add(_entry(session, action, resp.status_code, outcome))
            session.commit()
        except OperationalError:
            session.rollback()
            log.warning("audit log write failed: the database is unavailable (%s)", action)
            return error_response(503, "database_unavailable", AUDIT_FAILED + "; retry later")
        except SQLAlchemyError:
            session.rollback()
            log.exception("audit log write failed (%s)", action)
            return error_response(500, "audit_failed", AUDIT_FAILED)
        return resp


def audit_early_answer(
    app: Flask, *, method: str, path: str, key: str | None, remote_addr: str | None, status: int, message: str
) -> tuple[int, str, str] | None:
    """Audit an answer the server gave from the request's headers alone (:mod:`api.server`: 401
    without credentials, 413 over the upload limit), as the app audits its own answers.

    Returns None, or ``(status, code, message)`` to answer instead when the entry could not be
    written (as for the app's answers: an attempt is not answered unaudited).
    """
    from api.auth import Principal, action_of
    from hematovision.store.apikeys import find_key

    try:
        ctx = app.test_request_context(path, method=method, environ_base={"REMOTE_ADDR": remote_addr or ""})
    except Exception:  # noqa: BLE001 - a path Werkzeug cannot take: the app would not route it either
        log.warning("not audited: an early %d answer for an unroutable path", status)
        return None
    with ctx:
        endpoint = request.endpoint
        if endpoint is None:
            return None  # no route: the app answers 404/405 unaudited as well
        refused = status in (401, 403)
        action = audit_action()
        if action is None:
            if not refused:
                return None
            action = action_of(endpoint, method)
        session = db()
        try:
            if key is not None:
                row = find_key(session, key)
                g.principal = Principal("key", row.name, row.id, row.scope) if row else Principal("key", "?")
            if refused:
                reason = "no credentials" if key is None else "invalid or revoked key"
                note(reason=f"{reason} (refused before the body was read)")
            else:
                note(reason=f"answered before the body was read: {message[:200]}")
            session.add(_entry(session, action, status, "refused" if refused else "failed"))
            session.commit()
        except OperationalError:
            session.rollback()
            log.warning("audit log write failed: the database is unavailable (%s)", action)
            return 503, "database_unavailable", AUDIT_FAILED + "; retry later"
        except SQLAlchemyError:
            session.rollback()
            log.exception("audit log write failed (%s)", action)
            return 500, "audit_failed", AUDIT_FAILED
    return None
