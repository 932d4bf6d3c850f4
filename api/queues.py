"""``/api/v1/queues``: the load on each stage, for people and for autoscalers (KEDA's metrics-api
scaler reads ``stages.<stage>.demand``: slides waiting in the stage's queue, slides running in it
with a live worker, and slides stranded in it: running on a worker that stopped sending heartbeats,
or queued in the database beyond the messages the broker holds, e.g. accepted while the broker was
down or lost by a broker restart. Counting the stranded ones keeps a worker coming up for them, and
its reconciler re-queues them)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from api.context import db
from hematovision.service.metrics import queue_depths
from hematovision.service.queueing import stage_queues
from hematovision.service.reconcile import stage_load

bp = Blueprint("queues", __name__, url_prefix="/api/v1")


@bp.get("/queues")
def queues() -> ResponseReturnValue:
    settings = current_app.extensions["hv_settings"]
    names = stage_queues(settings)
    waiting = queue_depths(settings)
    load = stage_load(db(), settings, waiting)
    stages = {stage: {"queue": queue, **load[stage]} for stage, queue in names.items()}
    return jsonify(
        {
            "broker_reachable": all(v is not None for v in waiting.values()),
            "stale_after_s": settings.stale_after_s,
            "stages": stages,
        }
    )
