"""The OpenAPI document and the app's routes describe the same API: every keyed route is documented
with its methods, and every documented path is served."""

from __future__ import annotations

import re

from flask import Flask

#: Routes that are not part of the keyed HTTP API (the review pages and their static files).
UNDOCUMENTED = re.compile(r"^/$|^/ui/|/static/")


def _served(app: Flask) -> dict[str, set[str]]:
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if UNDOCUMENTED.search(rule.rule):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        served.setdefault(path, set()).update(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    return served


def test_every_route_is_documented_and_every_documented_path_is_served(app: Flask) -> None:
    from api.health import openapi_document

    documented = {p: set(ops) for p, ops in openapi_document()["paths"].items()}
    served = _served(app)
    assert served, "no routes found"
    assert set(served) - set(documented) == set(), "routes missing from the OpenAPI document"
    assert set(documented) - set(served) == set(), "documented paths that no route serves"
    for path, methods in served.items():
        assert documented[path] == methods, f"{path}: served {sorted(methods)}, documented {sorted(documented[path])}"


def test_served_document_is_the_checked_one(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    from api.health import openapi_document

    got = client.get("/api/v1/openapi.json")
    assert got.status_code == 200
    assert got.get_json()["paths"].keys() == openapi_document()["paths"].keys()
