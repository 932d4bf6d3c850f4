"""The technologist's review pages: server-rendered shells, filled in by the JSON API.

A person logs in at ``/ui/login`` (username and password; a Flask-Login session in a signed,
HTTP-only cookie) and every page needs that session (else: the login page). The pages hold no data:
their scripts call the JSON API with the session cookie and, on unsafe requests, the session's CSRF
token (``<meta name="csrf-token">``, sent as ``X-CSRFToken``). Single sign-on (OIDC) is not yet
available. OpenSeadragon is not kept in git: ``npm ci`` in ``api/assets/`` copies it into
``api/static/vendor/`` (git-ignored).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import login_user, logout_user
from markupsafe import Markup

from api.audit import commit_audited
from api.auth import Principal, check_csrf, person_of, session_person
from api.context import db
from api.errors import ApiError
from hematovision.core.access import SIGNOFF_MEANING, printable

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")

VENDOR_DIR = Path(__file__).with_name("static") / "vendor" / "openseadragon"


@bp.context_processor
def _page_globals() -> dict[str, str]:
    return {"signoff_meaning": SIGNOFF_MEANING}


def viewer_installed() -> bool:
    return (VENDOR_DIR / "openseadragon.min.js").is_file()


@bp.app_template_global()
def boot(call: str, *args: Any) -> Markup:
    """The ``<script>`` tag that starts a page: ``static/boot.js`` calls ``HV.<call>(*args)``.

    The call and its arguments travel in ``data-`` attributes (HTML-escaped JSON), not as inline
    script, which the Content-Security-Policy (``api/security.py``) does not allow.
    """
    src = url_for("ui.static", filename="boot.js")
    return Markup('<script src="{}" data-call="{}" data-args="{}"></script>').format(src, call, json.dumps(list(args)))


def safe_next(raw: str | None) -> str:
    """Where to go after logging in: a review page of this site, never another site."""
    if (
        raw
        and raw.startswith("/ui/")
        and not raw.startswith("/ui/login")
        and "\\" not in raw
        and "//" not in raw
        and raw.isprintable()
    ):
        return raw
    return url_for("ui.batches_page")


@bp.route("/ui/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The login form; a POST checks the CSRF token, the username and the password."""
    from hematovision.store.users import LOCK_MINUTES, authenticate

    nxt = safe_next(request.values.get("next"))
    if request.method == "GET":
        if session_person() is not None:
            return redirect(nxt)
        return render_template("login.html", page="login", next=nxt, error=None)
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    g.principal = Principal("user", printable(username) or "?")
    try:
        check_csrf()
    except ApiError as e:
        commit_audited(db(), status=400, outcome="refused")
        return render_template("login.html", page="login", next=nxt, error=e.message), 400
    store = db()
    check = authenticate(store, username, password)
    if check.user is None:
        why = check.reason or "unknown"
        g.refused = True
        commit_audited(store, status=401, outcome="refused", reason=f"login failed: {why}")
        message = "Wrong username or password, or the account is disabled."
        if "locked" in why:
            message = f"Too many wrong passwords: try again in {LOCK_MINUTES} minutes."
        return render_template("login.html", page="login", next=nxt, error=message, username=username), 401
    person = person_of(check.user)
    g.principal = person.principal
    commit_audited(store, status=302)
    session.clear()  # a new session (and a new CSRF token) for the person
    login_user(person)
    session.permanent = True  # ends after HEMATOVISION_SESSION_HOURS
    return redirect(nxt)


@bp.post("/ui/logout")
def logout() -> ResponseReturnValue:
    person = session_person()
    if person is not None:
        g.principal = person.principal
        check_csrf()
        commit_audited(db(), status=302)
        logout_user()
    session.clear()
    return redirect(url_for("ui.login"))


@bp.get("/")
def index() -> ResponseReturnValue:
    return redirect(url_for("ui.batches_page"))


@bp.get("/ui/")
def batches_page() -> ResponseReturnValue:
    return render_template("batches.html", page="batches")


@bp.get("/ui/batches/<hexid:batch_id>")
def batch_page(batch_id: str) -> ResponseReturnValue:
    return render_template("batch.html", page="batches", batch_id=batch_id)


@bp.get("/ui/flags")
def flags_page() -> ResponseReturnValue:
    return render_template("flags.html", page="flags")


def _model(slide_id: str) -> dict[str, Any] | None:
    """The model the slide was assigned (or analysed with) for the page header."""
    from hematovision.store.models import Slide

    slide = db().get(Slide, slide_id)
    mv = slide.model_version if slide is not None else None
    return None if mv is None else {"name": mv.name, "version": mv.version, "sha256": mv.sha256}


def _order(slide_id: str) -> dict[str, Any] | None:
    """The slide's order and patient for the page header (autoescaped by the template)."""
    from hematovision.service.submission import order_of
    from hematovision.store.models import Slide

    slide = db().get(Slide, slide_id)
    return None if slide is None else order_of(slide).to_dict()


@bp.get("/ui/slides/<hexid:slide_id>")
def slide_page(slide_id: str) -> ResponseReturnValue:
    return render_template(
        "slide.html",
        page="slide",
        slide_id=slide_id,
        viewer=viewer_installed(),
        order=_order(slide_id),
        model=_model(slide_id),
    )


@bp.get("/ui/slides/<hexid:slide_id>/gallery")
def gallery_page(slide_id: str) -> ResponseReturnValue:
    return render_template(
        "gallery.html", page="gallery", slide_id=slide_id, order=_order(slide_id), model=_model(slide_id)
    )


@bp.get("/ui/models")
def models_page() -> ResponseReturnValue:
    """The model registry (server-rendered: it changes only when a model is promoted)."""
    from hematovision.service.model_registry import registry_json

    return render_template("models.html", page="models", registry=registry_json(db()))


@bp.get("/ui/slides/<hexid:slide_id>/red-cells")
def red_cell_gallery_page(slide_id: str) -> ResponseReturnValue:
    """The red-cell gallery: the classified red cells per finding, reclassified like white cells."""
    return render_template("gallery.html", page="gallery", slide_id=slide_id, order=_order(slide_id), kind="rbc")


@bp.get("/ui/find")
def find_slide() -> ResponseReturnValue:
    """Open the newest slide of an accession (``?accession=``); back to the batches when none."""
    from sqlalchemy import select

    from hematovision.store.models import Slide

    accession = request.args.get("accession", "")[:64]
    found = (
        db()
        .scalars(select(Slide.id).where(Slide.accession == accession).order_by(Slide.created_at.desc()).limit(1))
        .first()
    )
    if not accession or found is None:
        return redirect(url_for("ui.batches_page", not_found=accession or None))
    return redirect(url_for("ui.slide_page", slide_id=found))
