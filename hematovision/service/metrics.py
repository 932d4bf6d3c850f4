"""Prometheus metrics, shared by the API and the workers.

The API exposes ``/metrics`` with request counts and latencies, jobs by
state and the depth of each stage's queue (computed when scraped); each worker process can serve its own metrics on
``HEMATOVISION_WORKER_METRICS_PORT`` (stage task durations and outcomes by stage, slide durations,
cells classified and classifier seconds, hence cells/s). Structured logs are in
:mod:`hematovision.core.logs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
STAGE_SECONDS = Histogram(
    "hematovision_stage_task_seconds", "Duration of one stage task of a slide", ["stage"], buckets=_BUCKETS
)
STAGE_OUTCOMES = Counter("hematovision_stage_tasks_total", "Stage tasks by outcome", ["stage", "outcome"])
SLIDE_SECONDS = Histogram(
    "hematovision_slide_seconds", "From a slide's first stage starting to its result stored", buckets=_BUCKETS
)
CELLS_CLASSIFIED = Counter("hematovision_cells_classified_total", "White cells classified")
CLASSIFY_SECONDS = Counter("hematovision_classify_seconds_total", "Seconds spent in the classifier")


def queue_depths(settings: Any) -> dict[str, int | None]:
    """Messages waiting in each stage's queue (the Redis lists of its priorities, or the filesystem
    queue's message files), by stage; None where the broker cannot be asked."""
    from hematovision.service.queueing import redis_lists, stage_queues

    queues = stage_queues(settings)
    url = settings.celery_broker_url
    out: dict[str, int | None] = dict.fromkeys(queues)
    try:
        if url.startswith("redis"):
            import redis

            r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            with r.pipeline() as p:
                for q in queues.values():
                    for n in redis_lists(q):
                        p.llen(n)
                lengths = iter(p.execute())
            for stage, q in queues.items():
                out[stage] = int(sum(next(lengths) for _ in redis_lists(q)))
        elif url.startswith("filesystem"):
            files = [f.name for f in settings.broker_dir.glob("*.msg")]
            for stage, q in queues.items():
                out[stage] = sum(1 for f in files if f.endswith(f".{q}.msg"))
    except Exception:  # noqa: BLE001 - a metric must not fail the scrape
        return dict.fromkeys(queues)
    return out


class ServiceCollector:
    """Jobs by state and queue depth, read when Prometheus scrapes."""

    def __init__(self, settings: Any, session_factory: Any) -> None:
        self.settings = settings
        self.sessions = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select
        from sqlalchemy.exc import SQLAlchemyError

        from hematovision.store.models import JOB_STATES, Job

        jobs = GaugeMetricFamily("hematovision_jobs", "Slide jobs by state", labels=["state"])
        try:
            with self.sessions() as s:
                counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            for state in JOB_STATES:
                jobs.add_metric([state], counts.get(state, 0))
        except SQLAlchemyError:  # database away: the scrape goes on, the gauge stays empty
            pass
        yield jobs
        from hematovision.service.queueing import stage_queues

        names = stage_queues(self.settings)
        depths = queue_depths(self.settings)
        if any(v is not None for v in depths.values()):
            q = GaugeMetricFamily(
                "hematovision_queue_depth", "Messages waiting in the broker, by stage queue", labels=["stage", "queue"]
            )
            for stage, depth in depths.items():
                if depth is not None:
                    q.add_metric([stage, names[stage]], depth)
            yield q


def api_registry(settings: Any, session_factory: Any) -> tuple[CollectorRegistry, Counter, Histogram]:
    """A registry for one API app: request metrics plus the service collector."""
    reg = CollectorRegistry()
    requests = Counter(
        "hematovision_http_requests_total", "HTTP requests", ["method", "endpoint", "status"], registry=reg
    )
    latency = Histogram("hematovision_http_request_seconds", "HTTP request latency", ["endpoint"], registry=reg)
    reg.register(ServiceCollector(settings, session_factory))
    return reg, requests, latency
