"""Prometheus metrics and structured JSON logs, shared by the API and the workers.

Metrics (prometheus_client): the API exposes ``/metrics`` with request counts and latencies, jobs by
state and the queue depth (computed when scraped); each worker process can serve its own metrics on
``HEMATOVISION_WORKER_METRICS_PORT`` (slide task durations, outcomes, cells classified).
Logs: ``HEMATOVISION_LOG_FORMAT=json`` makes every log line one JSON object; ``job_id`` and
``slide_id`` passed as ``extra=`` appear as fields.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

SLIDE_SECONDS = Histogram("hematovision_slide_task_seconds", "Time to analyse one slide",
                          buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600))
SLIDE_OUTCOMES = Counter("hematovision_slide_tasks_total", "Slide tasks by outcome", ["outcome"])
CELLS_CLASSIFIED = Counter("hematovision_cells_classified_total", "White cells classified")
CLASSIFY_SECONDS = Counter("hematovision_classify_seconds_total", "Seconds spent in the classifier")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and job/slide ids when given."""

    FIELDS = ("job_id", "slide_id", "batch_id", "worker")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in self.FIELDS:
            if hasattr(record, k):
                out[k] = getattr(record, k)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Entry points call this once; modules only use ``logging.getLogger(__name__)``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def queue_depth(settings: Any) -> int | None:
    """Messages waiting in the slide queue (Redis lists ``slides``, ``slides:1``… or the filesystem
    queue's message files); None when the broker cannot be asked."""
    from hematovision.queueing import SLIDE_QUEUE

    url = settings.celery_broker_url
    try:
        if url.startswith("redis"):
            import redis

            r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            names = [SLIDE_QUEUE] + [f"{SLIDE_QUEUE}:{i}" for i in range(1, 10)]
            with r.pipeline() as p:
                for n in names:
                    p.llen(n)
                return int(sum(p.execute()))
        if url.startswith("filesystem"):
            return sum(1 for _ in settings.broker_dir.glob("*.msg"))
    except Exception:  # noqa: BLE001 - a metric must not fail the scrape
        return None
    return None


class ServiceCollector:
    """Jobs by state and queue depth, read when Prometheus scrapes."""

    def __init__(self, settings: Any, session_factory: Any) -> None:
        self.settings = settings
        self.sessions = session_factory

    def collect(self):  # type: ignore[no-untyped-def]
        from sqlalchemy import func, select

        from hematovision.models import JOB_STATES, Job

        jobs = GaugeMetricFamily("hematovision_jobs", "Slide jobs by state", labels=["state"])
        try:
            with self.sessions() as s:
                counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            for state in JOB_STATES:
                jobs.add_metric([state], counts.get(state, 0))
        except Exception:  # noqa: BLE001
            pass
        yield jobs
        depth = queue_depth(self.settings)
        if depth is not None:
            q = GaugeMetricFamily("hematovision_queue_depth", "Slide messages waiting in the broker")
            q.add_metric([], depth)
            yield q


def api_registry(settings: Any, session_factory: Any) -> tuple[CollectorRegistry, Counter, Histogram]:
    """A registry for one API app: request metrics plus the service collector."""
    reg = CollectorRegistry()
    requests = Counter("hematovision_http_requests_total", "HTTP requests", ["method", "endpoint", "status"],
                       registry=reg)
    latency = Histogram("hematovision_http_request_seconds", "HTTP request latency", ["endpoint"], registry=reg)
    reg.register(ServiceCollector(settings, session_factory))
    return reg, requests, latency
