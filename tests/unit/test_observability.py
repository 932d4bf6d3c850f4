"""Prometheus metrics of the API and structured JSON logs."""

from __future__ import annotations

import io
import json
import logging

from hematovision.core.logs import JsonFormatter


def test_metrics_endpoint_counts_jobs_queue_and_requests(app, client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    assert app.test_client().get("/metrics").status_code == 401
    upload(client, ("a.png", png_bytes()), ("b.png", png_bytes()), mpp=0.25)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'hematovision_jobs{state="queued"} 2.0' in text
    assert 'hematovision_queue_depth{queue="slides.prepare",stage="prepare"} 2.0' in text
    assert 'hematovision_queue_depth{queue="slides.classify",stage="classify"} 0.0' in text
    assert 'hematovision_http_requests_total{endpoint="batches.submit_batch",method="POST",status="202"} 1.0' in text


def test_queues_endpoint_gives_each_stage_its_load(app, client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    from hematovision.store.models import Job

    assert app.test_client().get("/api/v1/queues").status_code == 401
    body = upload(client, ("a.png", png_bytes()), ("b.png", png_bytes()), mpp=0.25).get_json()
    with app.extensions["hv_sessions"]() as s, s.begin():
        job = s.get(Job, body["job_ids"][0])
        job.state, job.stage = "running", "classify"
    stages = client.get("/api/v1/queues").get_json()["stages"]
    assert stages["prepare"] == {
        "queue": "slides.prepare",
        "waiting": 2,
        "running": 0,
        "stale": 0,
        "queued": 1,
        "stranded": 0,
        "demand": 2,
    }
    assert stages["classify"] == {
        "queue": "slides.classify",
        "waiting": 0,
        "running": 1,
        "stale": 0,
        "queued": 0,
        "stranded": 0,
        "demand": 1,
    }
    assert stages["report"]["demand"] == 0


def test_json_logs_carry_job_ids() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("hv-test-json")
    log.addHandler(handler)
    log.propagate = False
    log.warning("job %s: retrying", "j1", extra={"job_id": "j1", "slide_id": "s1"})
    line = json.loads(buf.getvalue())
    assert line["message"] == "job j1: retrying" and line["job_id"] == "j1" and line["slide_id"] == "s1"
    assert line["level"] == "WARNING" and line["ts"].endswith("Z")
