"""``/metrics`` in Prometheus' text format (needs a read-scope key like every other data endpoint)."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

bp = Blueprint("metrics", __name__)


def init_metrics(app: Flask) -> None:
    from hematovision.service.metrics import api_registry

    registry, requests, latency = api_registry(app.extensions["hv_settings"], app.extensions["hv_sessions"])
    app.extensions["hv_metrics"] = registry

    @app.before_request
    def _start_timer() -> None:
        g.t0 = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        requests.labels(request.method, endpoint, str(resp.status_code)).inc()
        if "t0" in g:
            latency.labels(endpoint).observe(time.perf_counter() - g.t0)
        return resp

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(current_app.extensions["hv_metrics"]), mimetype=CONTENT_TYPE_LATEST)
