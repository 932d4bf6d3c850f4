"""The Celery application's configuration, shared by the API (which only enqueues, by task name)
and the workers (which register the tasks).

Settings fit for long slide tasks: late acknowledgement (a message is acked only after the slide is
stored, so a worker that dies loses nothing), prefetch of one, a visibility timeout above the longest
task, no result backend (job state lives in the results database).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from hematovision.settings import Settings

PROCESS_SLIDE = "hematovision.process_slide"
SLIDE_QUEUE = "slides"


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.celery_broker_url
    conf: dict[str, Any] = {
        "broker_url": url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": SLIDE_QUEUE,
        "task_routes": {PROCESS_SLIDE: {"queue": SLIDE_QUEUE}},
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
            "priority_steps": list(range(10)),
            "sep": ":",
        }
    return conf


def make_celery(settings: Settings) -> Celery:
    """A Celery app bound to the configured broker (no tasks registered)."""
    app = Celery("hematovision")
    app.conf.update(celery_config(settings))
    app.conf.hv_settings = settings
    return app


def enqueue_slide(app: Celery, job_id: str, priority: int = 5) -> None:
    """Queue one slide job by task name (the API never imports the workers)."""
    app.send_task(PROCESS_SLIDE, args=[job_id], queue=SLIDE_QUEUE, priority=max(0, min(9, priority)))
