"""Request parameters, checked by shape before anything reaches the database.

Path ids are typed in the routes by URL converters (registered by :func:`register_converters`):
``<hexid:slide_id>`` (batch, slide and job ids: 32 lowercase hex digits, as ``new_id`` makes them)
and ``<cellid:cell_id>`` (a positive 64-bit integer). A path whose id has another shape matches no
route and gets the JSON 404 ``not_found``, on every backend alike -- PostgreSQL, unlike SQLite,
refuses a NUL in a string parameter and an integer beyond its column, which used to come back as a
500. ``int`` is replaced by a converter that takes ASCII digits only (Werkzeug's own accepts any
Unicode decimal digit, e.g. ``१``).

Query parameters are read with the ``query_*`` functions: strictly (ASCII digits, in range; ids by
shape; text without control characters, length-limited), answering 400 with a message otherwise.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, request
from werkzeug.routing import BaseConverter, IntegerConverter, Map, ValidationError

from api.errors import ApiError
from hematovision.store.models import CELL_ID_MAX, ID_PATTERN

_ID = re.compile(ID_PATTERN)
_ASCII_INT = re.compile(r"[0-9]{1,18}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class HexIdConverter(BaseConverter):
    """A batch, slide or job id: 32 lowercase hexadecimal digits."""

    regex = ID_PATTERN


class AsciiIntConverter(IntegerConverter):
    """Werkzeug's ``int`` with ASCII digits only (at most 19, so no huge number is parsed)."""

    regex = r"[0-9]{1,19}"


class CellIdConverter(AsciiIntConverter):
    """A cell id: 1 .. 2**63 - 1 (what a BIGINT holds)."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        super().__init__(map, *args, **kwargs)
        self.min, self.max = 1, CELL_ID_MAX

    def to_python(self, value: str) -> int:
        if value.startswith("0"):
            raise ValidationError()  # one spelling per id
        return int(super().to_python(value))


def register_converters(app: Flask) -> None:
    """Make ``hexid`` and ``cellid`` known and ``int`` strict; call before any route is added."""
    app.url_map.converters.update(hexid=HexIdConverter, cellid=CellIdConverter, int=AsciiIntConverter)


def query_int(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter (``default`` when absent): ASCII digits only, ``low`` .. ``high``;
    anything else (empty, ``³``, ``१``, ``1e3``, out of range) is a 400 ``invalid_<name>``."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _ASCII_INT.fullmatch(raw) or not low <= int(raw) <= high:
        raise ApiError(400, f"invalid_{name}", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def query_id(name: str) -> str | None:
    """An id query parameter (e.g. ``batch``); absent or empty is None; another shape is a 400."""
    raw = request.args.get(name)
    if not raw:
        return None
    if not _ID.fullmatch(raw):
        raise ApiError(400, f"invalid_{name}", f"{name} must be an id of 32 lowercase hexadecimal digits")
    return raw


def query_text(name: str, max_len: int) -> str | None:
    """A free-text query parameter: at most ``max_len`` characters, no control characters."""
    raw = request.args.get(name)
    if not raw:
        return None
    if len(raw) > max_len or _CONTROL.search(raw):
        raise ApiError(400, f"invalid_{name}", f"{name} must be at most {max_len} printable characters")
    return raw
