"""JSON errors: every failure the API returns is ``{"error": {"code", "message"}}``.

Domain errors of the service layer (a review that cannot be carried out) are mapped here, by
registered error handlers, so views raise them as they are.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException

from hematovision.service.review import ReviewError

log = logging.getLogger(__name__)
#: HTTP status of each kind of review (domain) error.
REVIEW_STATUS = {"not_found": 404, "invalid": 400, "forbidden": 403, "conflict": 409}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    return resp


def size_text(n_bytes: int) -> str:
    """``4096 MiB`` or ``4.2 MB``-like text for a byte limit."""
    if n_bytes >= 2**20 and n_bytes % 2**20 == 0:
        return f"{n_bytes // 2**20} MiB"
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes // 1024} KiB"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> ResponseReturnValue:
        return error_response(e.status, e.code, e.message)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> ResponseReturnValue:
        code = (e.name or "error").lower().replace(" ", "_")
        if e.code == 413:
            from flask import request

            limit = request.max_content_length or app.config.get("MAX_CONTENT_LENGTH") or 0
            if request.content_length is not None and request.content_length <= limit:
                parts = app.config.get("MAX_FORM_PARTS")
                return error_response(
                    413,
                    "too_many_parts",
                    f"too many files and fields in one submission (limit {parts}); split the batch",
                )
            return error_response(413, "too_large", f"the request exceeds the limit of {size_text(limit)}")
        return error_response(e.code or 500, code, e.description or e.name)

    @app.errorhandler(ReviewError)
    def _review_error(e: ReviewError) -> ResponseReturnValue:
        # The request's session is closed at teardown, which rolls back what the review changed.
        return error_response(REVIEW_STATUS[e.kind], e.code, e.message)

    @app.errorhandler(OperationalError)
    def _db_down(e: OperationalError) -> ResponseReturnValue:
        log.warning("database unavailable: %s", e.__class__.__name__)
        return error_response(503, "database_unavailable", "the results database is unavailable; retry later")

    @app.errorhandler(DataError)
    def _bad_value(e: DataError) -> ResponseReturnValue:
        # A value the database refuses (a NUL in text on PostgreSQL, a number beyond its column):
        # parameters are checked by shape first (api/params.py); this is the net behind that.
        log.warning("database refused a value: %s", e.orig.__class__.__name__ if e.orig else e.__class__.__name__)
        return error_response(400, "invalid_value", "a value in the request cannot be stored or looked up")

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the request was not completed")
