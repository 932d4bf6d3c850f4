"""Stage queues are routed by configuration, and workers pick their stages."""

from __future__ import annotations

from click.testing import CliRunner

from hematovision.cli import main
from hematovision.core.settings import load_settings
from hematovision.service.queueing import TASK_NAMES, celery_config, queues_for, redis_lists


def test_routes_follow_the_configured_queue_names(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HEMATOVISION_QUEUE_CLASSIFY", "gpu-a100")
    settings = load_settings(var_dir=tmp_path, broker_url="redis://127.0.0.1:6379/13")
    conf = celery_config(settings)
    assert conf["task_routes"] == {
        TASK_NAMES["prepare"]: {"queue": "slides.prepare"},
        TASK_NAMES["classify"]: {"queue": "gpu-a100"},
        TASK_NAMES["report"]: {"queue": "slides.report"},
    }
    assert queues_for(settings, ["report", "prepare"]) == ["slides.prepare", "slides.report"]
    assert queues_for(settings, ["classify"]) == ["gpu-a100"]
    # One box may put every stage on one queue: a worker then consumes it once.
    one = load_settings(var_dir=tmp_path, queue_prepare="q", queue_classify="q", queue_report="q")
    assert queues_for(one, ["prepare", "classify", "report"]) == ["q"]
    assert redis_lists("gpu-a100")[:3] == ["gpu-a100", "gpu-a100:1", "gpu-a100:2"]


def test_worker_rejects_unknown_stages(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["worker", "--stages", "prepare,gpu"])
    assert result.exit_code == 2
    assert "unknown stage(s) gpu" in result.output and "prepare, classify, report" in result.output
