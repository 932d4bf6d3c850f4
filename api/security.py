"""Security headers on every response: the review pages and the JSON API alike.

The review pages run no inline script (each page's start-up call is read by ``static/boot.js``
from its ``<script>`` tag's ``data-`` attributes), so the policy allows scripts, styles and
requests from the server itself only. Images may also be ``blob:`` URLs (the pages fetch cell
crops and DeepZoom tiles with the API key and show them from memory) and ``data:`` (the empty
favicon). Nothing may frame the pages (``frame-ancestors 'none'`` and, for older browsers,
``X-Frame-Options: DENY``). JSON answers are never stored by a browser or a proxy; downloads and
images keep the ``Cache-Control`` their view set.
"""

from __future__ import annotations

from flask import Flask, Response

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def register_security_headers(app: Flask) -> None:
    @app.after_request
    def _security_headers(resp: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
        if resp.mimetype == "application/json":
            resp.headers["Cache-Control"] = "no-store"
        return resp
