"""Who is asking, and may they: API keys for machines, login sessions for people, CSRF, scopes.

Every endpoint except ``/healthz``, the login page and static files needs a principal:

- a **machine** presents an API key (header ``X-API-Key`` or ``Authorization: Bearer``); its scope
  (``read``, ``submit``, ``review``, ``admin``) decides what it may do. No key may sign off;
- a **person** has a login session (Flask-Login, a signed cookie) opened at ``/ui/login``; their
  role (``technologist``, ``pathologist``, ``admin``) decides what they may do. Unsafe requests in a
  session must carry the session's CSRF token (Flask-WTF's ``CSRFProtect``: the header
  ``X-CSRFToken`` or the form field ``csrf_token``; a submission, whose body is streamed, takes the
  header only); key requests need none (a browser never adds the key header on its own).

Credentials are checked before any view reads the body; the production server refuses a body
sent to the keyed API without a key or session cookie before reading it (:mod:`api.server`).
The key row's id (``Principal.id``) scopes a submission's ``Idempotency-Key`` (:mod:`api.batches`).

The review pages need a person and send others to the login page. Each endpoint maps to one action
(:mod:`hematovision.core.access`): GET is ``read``; submitting, cancelling, reclassifying and signing
off are their own actions. A refusal answers 401 (no valid credentials) or 403 (not allowed), and
it is audited like every other attempt (:mod:`api.audit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, g, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, UserMixin, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect

from api.context import db
from api.errors import ApiError
from hematovision.core.access import key_may, printable, role_may

log = logging.getLogger(__name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Served to anyone: liveness, static files, the login page (and logout, which needs no session).
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "static", "ui.static", "ui.login", "ui.logout"})
#: The review pages: a person must be logged in (else: the login page).
UI_PAGES = frozenset(
    {
        "ui.index",
        "ui.batches_page",
        "ui.batch_page",
        "ui.flags_page",
        "ui.slide_page",
        "ui.gallery_page",
        "ui.red_cell_gallery_page",
        "ui.find_slide",
    }
)
#: The action of each unsafe endpoint (every GET is ``read``; an unsafe endpoint not named here
#: needs ``admin``).
UNSAFE_ACTIONS = {
    "batches.submit_batch": "submit",
    "jobs.cancel_job": "cancel",
    "review.label_cell": "reclassify",
    "review.census": "reclassify",  # "count all cells": a review action, as reclassifying
    "review.signoff": "signoff",
    "slides.patch_slide": "submit",  # the order's data come from the LIS intake (or an admin)
    "workflow.acknowledge": "reclassify",  # a person only (the view refuses keys)
    "workflow.slide_comments": "reclassify",
    "workflow.cell_comments": "reclassify",
    "workflow.amend_slide": "reclassify",  # a technologist's or pathologist's act (the view refuses keys)
}

#: Endpoints whose body is read by the view alone (uploads are streamed into a staging folder):
#: a session request to them carries its CSRF token in the header, never in the form.
STREAMED_ENDPOINTS = frozenset({"batches.submit_batch"})


class HeaderFirstCSRF(CSRFProtect):
    """Flask-WTF's CSRF check, reading the token from the header (``X-CSRFToken``) before the form:
    the form of a streamed upload is not parsed before the view has made its staging folder."""

    def _get_csrf_token(self) -> str | None:  # type: ignore[override]
        from flask import current_app

        for header_name in current_app.config["WTF_CSRF_HEADERS"]:
            token = request.headers.get(header_name)
            if token:
                return token
        if request.endpoint in STREAMED_ENDPOINTS:
            return None
        token = super()._get_csrf_token()
        return token if isinstance(token, str) else None


csrf = HeaderFirstCSRF()
login_manager = LoginManager()


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: ``kind`` is ``key``, ``user`` or ``anonymous``; ``name`` the key's
    name or the username; ``grant`` the key's scope or the person's role."""

    kind: str
    name: str
    id: int | None = None
    grant: str | None = None
    full_name: str | None = None

    @property
    def actor(self) -> str:
        """The audit log's name for the principal: ``key:<name>``, ``user:<username>``, ``anonymous``."""
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{printable(self.name)}"

    def may(self, action: str) -> bool:
        if self.kind == "key":
            return key_may(self.grant or "", action)
        if self.kind == "user":
            return role_may(self.grant or "", action)
        return False


ANONYMOUS = Principal("anonymous", "anonymous")


class Person(UserMixin):
    """The logged-in person as Flask-Login sees them (loaded from the ``users`` row per request)."""

    def __init__(self, user_id: int, username: str, full_name: str, role: str, fingerprint: str) -> None:
        self.user_id, self.username, self.full_name, self.role = user_id, username, full_name, role
        self.fingerprint = fingerprint

    def get_id(self) -> str:
        # The fingerprint ends sessions opened before a password change.
        return f"{self.user_id}:{self.fingerprint}"

    @property
    def principal(self) -> Principal:
        return Principal("user", self.username, self.user_id, self.role, self.full_name)


def person_of(user: object) -> Person:
    from hematovision.store.models import User
    from hematovision.store.users import session_fingerprint

    assert isinstance(user, User)
    return Person(user.id, user.username, user.full_name, user.role, session_fingerprint(user))


def principal() -> Principal:
    """The current request's principal (anonymous outside a request that was authenticated)."""
    p = g.get("principal")
    return p if isinstance(p, Principal) else ANONYMOUS


def refuse(status: int, code: str, message: str, reason: str) -> ApiError:
    """An ApiError for a refused attempt; the audit records it as ``refused`` with ``reason``."""
    g.refused = True
    g.setdefault("audit_detail", {})["reason"] = reason
    return ApiError(status, code, message)


def session_person() -> Person | None:
    """The person of the request's login session, if any (a disabled user has none)."""
    user = current_user
    return user if isinstance(user, Person) and user.is_authenticated else None


def action_of(endpoint: str, method: str) -> str:
    if method in SAFE_METHODS:
        return "read"
    return UNSAFE_ACTIONS.get(endpoint, "admin")


def _presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


def check_csrf() -> None:
    """Refuse (400 ``csrf_failed``) an unsafe request without the session's CSRF token."""
    try:
        csrf.protect()
    except CSRFError as e:
        raise refuse(
            400,
            "csrf_failed",
            f"{e.description} Reload the page and try again.",
            reason=f"CSRF check failed: {e.description}",
        ) from None


def _scope_refusal(action: str, scope: str) -> ApiError:
    if action == "signoff":
        return refuse(
            403,
            "forbidden",
            "API keys cannot sign slides off: an electronic signature is a person's act (log in to the review UI)",
            reason="sign-off with an API key",
        )
    return refuse(
        403,
        "forbidden",
        f"this key's scope '{scope}' does not allow '{action}'",
        reason=f"scope {scope} lacks {action}",
    )


def register_auth(app: Flask) -> None:
    from hematovision.store.apikeys import find_key

    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def _load_person(session_id: str) -> Person | None:
        from hematovision.store.models import User
        from hematovision.store.users import session_fingerprint

        user_id, _, fingerprint = session_id.partition(":")
        if not user_id.isdigit() or not 0 < int(user_id) < 2**31:
            return None
        user = db().get(User, int(user_id))
        if user is None or user.disabled_at is not None or session_fingerprint(user) != fingerprint:
            return None
        return person_of(user)

    @app.before_request
    def _authenticate() -> ResponseReturnValue | None:
        """Runs first, before any view reads the body (request.files/form/json are untouched here);
        ``api.server`` refuses a body without credentials even before the server reads it."""
        g.principal = ANONYMOUS
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC_ENDPOINTS:  # unknown route: the 404/405 handlers answer
            return None
        if endpoint in UI_PAGES:
            person = session_person()
            if person is None:
                return redirect(url_for("ui.login", next=request.path))
            g.principal = person.principal
            return None
        action = g.permission = action_of(endpoint, request.method)
        key = _presented_key()
        if key is not None:
            row = find_key(db(), key)
            if row is None:
                g.principal = Principal("key", "?")
                raise refuse(
                    401, "unauthorized", "the API key is not valid or has been revoked", reason="invalid or revoked key"
                )
            g.principal = Principal("key", row.name, row.id, row.scope)
            if not key_may(row.scope, action):
                raise _scope_refusal(action, row.scope)
            return None
        person = session_person()
        if person is not None:
            g.principal = person.principal
            if request.method not in SAFE_METHODS:
                check_csrf()
            if not role_may(person.role, action):
                raise refuse(
                    403,
                    "forbidden",
                    f"the role '{person.role}' does not allow '{action}'",
                    reason=f"role {person.role} lacks {action}",
                )
            return None
        if not app.extensions["hv_settings"].auth_required and action != "signoff":
            return None  # development only: the keyed API open to anyone (never a sign-off)
        raise refuse(
            401,
            "unauthorized",
            "an API key (header X-API-Key) or a login session (/ui/login) is required",
            reason="no credentials",
        )
