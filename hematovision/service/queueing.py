"""The Celery application's configuration, shared by the API (which only enqueues, by task name)
and the workers (which register the tasks).

A slide goes through three stages, each a task on its own queue so that CPU and GPU workers scale
independently (queue names come from the settings, routing is Celery's ``task_routes``):

``prepare``  (CPU) read the slide, find the smear and the cells, cut the white-cell crops;
``classify`` (GPU) classify the crops with the transfer model;
``report``   (CPU) differential, confidence intervals, flags; store the result in one transaction.

Each stage queues the next with the batch's priority. Settings fit for long tasks: late
acknowledgement (a message is acked only after its stage's output is written, so a worker that dies
loses nothing), prefetch of one, a visibility timeout above the longest task, no result backend (job
state lives in the results database).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from celery import Celery

from hematovision.core.settings import Settings

PREPARE, CLASSIFY, REPORT = "prepare", "classify", "report"
STAGES = (PREPARE, CLASSIFY, REPORT)
#: Celery task name of each stage (the API and the stages send tasks by these names).
TASK_NAMES = {
    PREPARE: "hematovision.prepare_slide",
    CLASSIFY: "hematovision.classify_slide",
    REPORT: "hematovision.report_slide",
}
NEXT_STAGE = {PREPARE: CLASSIFY, CLASSIFY: REPORT, REPORT: None}
#: Redis transport: priorities 0..9, each its own list ``queue`` (0) or ``queue:p``.
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"


def stage_queues(settings: Settings) -> dict[str, str]:
    """The queue of each stage, as configured."""
    return {PREPARE: settings.queue_prepare, CLASSIFY: settings.queue_classify, REPORT: settings.queue_report}


def queues_for(settings: Settings, stages: list[str] | tuple[str, ...]) -> list[str]:
    """The queue names a worker serving ``stages`` consumes (in stage order, without repeats)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    names = stage_queues(settings)
    return list(dict.fromkeys(names[s] for s in STAGES if s in stages))


def redis_lists(queue: str) -> list[str]:
    """The Redis lists Kombu keeps for one queue under priority ordering."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.celery_broker_url
    queues = stage_queues(settings)
    conf: dict[str, Any] = {
        "broker_url": url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": queues[PREPARE],
        "task_routes": {TASK_NAMES[s]: {"queue": queues[s]} for s in STAGES},
        "task_time_limit": settings.task_time_limit_s,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    if url.startswith("filesystem://"):
        folder = str(settings.broker_dir)
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.broker_dir / "control"),
            "store_processed": False,
        }
        (settings.broker_dir / "control").mkdir(parents=True, exist_ok=True)
        conf["worker_enable_remote_control"] = False
    else:
        conf["broker_transport_options"] = {
            "visibility_timeout": settings.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
        }
    return conf


def make_celery(settings: Settings) -> Celery:
    """A Celery app bound to the configured broker (no tasks registered)."""
    app = Celery("hematovision")
    app.conf.update(celery_config(settings))
    app.conf.hv_settings = settings
    return app


#: Publishing tries once more on a fresh connection (a pooled one may be stale after a broker
#: restart) and then gives up: the outbox keeps the message and its dispatcher retries with backoff.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


def enqueue_stage(app: Celery, stage: str, job_id: str, priority: int = 5) -> None:
    """Queue one stage of a slide job by task name, on the stage's configured queue.

    Raises whatever the transport raises when the broker cannot be reached (after one quick retry).
    Jobs are queued through the outbox (:mod:`hematovision.service.outbox`), which calls this.
    """
    name = TASK_NAMES[stage]
    queue = app.conf.task_routes[name]["queue"]
    app.send_task(
        name,
        args=[job_id],
        queue=queue,
        priority=max(0, min(9, priority)),
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def broker_reachable(settings: Settings, timeout_s: float = 1.0) -> bool:
    """Whether the broker answers now: Redis answers PING; the filesystem queue's folder is writable."""
    url = settings.celery_broker_url
    if url.startswith("filesystem"):
        return settings.broker_dir.is_dir() and os.access(settings.broker_dir, os.W_OK | os.X_OK)
    if url.startswith("redis"):
        import redis

        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - any failure to answer means "not reachable"
            return False
    return True  # another transport: not checked here


def pending_job_ids(settings: Settings) -> set[str] | None:
    """The job ids that have a stage message in the broker now: waiting in a stage queue, or
    delivered to a worker and not yet acknowledged (Redis keeps those in its ``unacked`` hash).

    None when the broker cannot be read; the reconciler then re-queues nothing that depends on it.
    """
    url = settings.celery_broker_url
    names = set(TASK_NAMES.values())
    found: set[str] = set()
    try:
        if url.startswith("filesystem"):
            for f in settings.broker_dir.glob("*.msg"):
                try:
                    payload = json.loads(f.read_bytes())
                except (OSError, ValueError):
                    continue  # taken by a worker meanwhile, or half written
                _collect(payload, names, found)
            return found
        if url.startswith("redis"):
            import redis

            r = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
            try:
                for queue in dict.fromkeys(stage_queues(settings).values()):
                    for key in redis_lists(queue):
                        for raw in r.lrange(key, 0, -1):
                            _collect(_loads(raw), names, found)
                for _tag, raw in r.hscan_iter("unacked"):
                    entry = _loads(raw)
                    if isinstance(entry, list) and entry:
                        _collect(entry[0], names, found)
            finally:
                r.close()
            return found
    except Exception:  # noqa: BLE001 - the broker is away or unreadable: nothing can be concluded
        return None
    return None


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _collect(payload: Any, names: set[str], found: set[str]) -> None:
    """Add the job id of one Kombu message (Celery protocol 2) to ``found`` if it is a stage task."""
    if not isinstance(payload, dict):
        return
    headers = payload.get("headers") or {}
    if headers.get("task") not in names:
        return
    body: Any = payload.get("body")
    try:
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if args and isinstance(args[0], str):
            found.add(args[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return
