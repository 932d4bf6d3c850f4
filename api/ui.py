"""The technologist's review pages: server-rendered shells, filled in by the keyed JSON API.

The pages hold no data and are served without a key; their scripts ask for an API key once (kept in
the browser's ``localStorage``) and send it as ``X-API-Key`` with every request. OpenSeadragon is not
kept in git: ``npm ci`` in ``api/assets/`` copies it into ``api/static/vendor/`` (git-ignored).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")

VENDOR_DIR = Path(__file__).with_name("static") / "vendor" / "openseadragon"


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


@bp.get("/ui/slides/<hexid:slide_id>")
def slide_page(slide_id: str) -> ResponseReturnValue:
    return render_template("slide.html", page="slide", slide_id=slide_id, viewer=viewer_installed())


@bp.get("/ui/slides/<hexid:slide_id>/gallery")
def gallery_page(slide_id: str) -> ResponseReturnValue:
    return render_template("gallery.html", page="gallery", slide_id=slide_id)
