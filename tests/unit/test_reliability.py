"""The outbox dispatcher, the reconciler, heartbeats, the stage load of /api/v1/queues and the
operators' ``hematovision jobs`` commands, on SQLite and the filesystem queue (the real Kombu
transport the demo uses). A broker that is down is a Redis URL on a port where nothing listens.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from hematovision.core.settings import Settings
from hematovision.devtools.localstack import free_port
from hematovision.service.outbox import Dispatcher, dispatch
from hematovision.service.queueing import CLASSIFY, PREPARE, make_celery, pending_job_ids
from hematovision.service.reconcile import reconcile
from hematovision.store.models import AuditEntry, Job, OutboxMessage, utcnow


@pytest.fixture
def broker(settings):  # type: ignore[no-untyped-def]
    """The installation's filesystem queue (a Celery app that publishes to it)."""
    return make_celery(settings)


@pytest.fixture
def dead_broker(settings):  # type: ignore[no-untyped-def]
    return make_celery(Settings(var_dir=settings.var_dir, broker_url=f"redis://127.0.0.1:{free_port()}/0"))


def queue_job(factory, job_id: str, stage: str = PREPARE) -> int:  # type: ignore[no-untyped-def]
    from hematovision.service.outbox import add_message

    with factory() as s, s.begin():
        return add_message(s, job_id, stage, 5).id


def set_job(factory, job_id: str, **values) -> None:  # type: ignore[no-untyped-def]
    with factory() as s, s.begin():
        job = s.get(Job, job_id)
        for k, v in values.items():
            setattr(job, k, v)


def get_job(factory, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    with factory() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def outbox(factory, job_id: str) -> list[OutboxMessage]:  # type: ignore[no-untyped-def]
    with factory() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id).order_by(OutboxMessage.id)))
        for r in rows:
            s.expunge(r)
        return rows


# ------------------------------------------------------------------------------------------ outbox


def test_dispatch_defers_while_the_broker_is_down_and_publishes_once_back(
    make_job, settings, broker, dead_broker
) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job()
    row_id = queue_job(factory, job_id)
    down = dispatch(factory, dead_broker)
    assert (down.sent, down.deferred) == (0, 1) and down.error
    (row,) = outbox(factory, job_id)
    assert row.sent_at is None and row.attempts == 1 and row.next_attempt_at > utcnow()
    assert dispatch(factory, broker).sent == 0  # backing off: not due yet
    up = dispatch(factory, broker, ids=[row_id])  # named rows go now
    assert (up.sent, up.error) == (1, None)
    assert pending_job_ids(settings) == {job_id}
    assert dispatch(factory, broker).sent == 0 and dispatch(factory, broker, ids=[row_id]).sent == 0


def test_messages_of_ended_jobs_are_not_published(make_job, settings, broker) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job(state="cancelled")
    queue_job(factory, job_id)
    result = dispatch(factory, broker)
    assert (result.sent, result.skipped) == (0, 1)
    assert pending_job_ids(settings) == set()


def test_dispatcher_thread_publishes_when_kicked_and_stops(make_job, settings, broker) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job()
    d = Dispatcher(factory, broker, interval_s=3600).start()
    try:
        assert d.running
        queue_job(factory, job_id)
        d.kick()
        deadline = time.monotonic() + 20
        while pending_job_ids(settings) != {job_id}:
            assert time.monotonic() < deadline, "the dispatcher did not publish"
            time.sleep(0.05)
    finally:
        d.stop()
    assert not d.running


# -------------------------------------------------------------------------------------- reconciler


def test_running_job_without_heartbeat_is_requeued_in_its_stage(make_job, settings, broker) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job()
    old = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
    set_job(factory, job_id, state="running", stage=CLASSIFY, heartbeat_at=old, started_at=old, worker="gone:1")
    _, fresh_id, _ = make_job()
    set_job(factory, fresh_id, state="running", stage=PREPARE, heartbeat_at=utcnow(), started_at=old)
    result = reconcile(factory, settings)
    assert result.stale == [job_id] and result.lost == []
    job = get_job(factory, job_id)
    assert (job.state, job.stage) == ("queued", CLASSIFY) and job.stages[CLASSIFY]["requeued"] == 1
    assert [(m.stage, m.sent_at) for m in outbox(factory, job_id)] == [(CLASSIFY, None)]
    assert get_job(factory, fresh_id).state == "running"  # its heartbeat is fresh
    assert reconcile(factory, settings).stale == []  # idempotent
    assert dispatch(factory, broker).sent == 1 and pending_job_ids(settings) == {job_id}


def test_queued_job_whose_message_is_lost_is_requeued(make_job, settings, broker) -> None:  # type: ignore[no-untyped-def]
    factory, lost_id, _ = make_job()
    _, kept_id, _ = make_job()
    _, new_id, _ = make_job()
    for job_id in (lost_id, kept_id, new_id):
        queue_job(factory, job_id)
    assert dispatch(factory, broker).sent == 3
    old = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
    with factory() as s, s.begin():
        for m in s.scalars(select(OutboxMessage).where(OutboxMessage.job_id.in_([lost_id, kept_id]))):
            m.sent_at = old
        for j in s.scalars(select(Job).where(Job.id.in_([lost_id, kept_id]))):
            j.created_at = old
    # The broker loses one message (as a Redis restarted without persistence loses them all).
    for f in settings.broker_dir.glob("*.msg"):
        if lost_id in f.read_text():
            f.unlink()
    assert pending_job_ids(settings) == {kept_id, new_id}
    result = reconcile(factory, settings)
    assert result.lost == [lost_id] and result.stale == [] and result.broker_checked
    assert [m.sent_at for m in outbox(factory, lost_id)][-1] is None
    assert reconcile(factory, settings).lost == []  # its new message is pending: left alone
    assert dispatch(factory, broker).sent == 1 and pending_job_ids(settings) == {lost_id, kept_id, new_id}


def test_nothing_is_concluded_when_the_broker_cannot_be_read(make_job, settings) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job()
    set_job(factory, job_id, created_at=utcnow() - timedelta(days=1))
    down = Settings(var_dir=settings.var_dir, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    result = reconcile(factory, down)
    assert result.lost == [] and result.broker_checked is False
    assert outbox(factory, job_id) == []


def test_a_stage_records_heartbeats_while_it_runs(make_job) -> None:  # type: ignore[no-untyped-def]
    from workers.job_store import claim_stage, heartbeat

    factory, job_id, _ = make_job()
    claim_stage(factory, job_id, PREPARE)
    first = get_job(factory, job_id).heartbeat_at
    assert first is not None
    with heartbeat(factory, job_id, interval_s=0.2):
        time.sleep(1.5)
    assert get_job(factory, job_id).heartbeat_at > first


def test_finishing_a_stage_writes_the_next_message_to_the_outbox(make_job) -> None:  # type: ignore[no-untyped-def]
    from workers.job_store import claim_stage, finish_stage

    factory, job_id, _ = make_job(priority=2)
    claim_stage(factory, job_id, PREPARE)
    row_id = finish_stage(factory, job_id, PREPARE, CLASSIFY, 0.85, seconds=1.0)
    ((stage, priority, rid, sent),) = [(m.stage, m.priority, m.id, m.sent_at) for m in outbox(factory, job_id)]
    assert (stage, priority, rid, sent) == (CLASSIFY, 2, row_id, None)
    set_job(factory, job_id, state="cancelled")
    assert finish_stage(factory, job_id, CLASSIFY, "report", 0.97) is None


# ------------------------------------------------------------------------------- /api/v1/queues


def test_queues_count_stale_and_stranded_jobs_in_demand(app, client, make_job, settings) -> None:  # type: ignore[no-untyped-def]
    factory, stale_id, _ = make_job()
    _, live_id, _ = make_job()
    _, queued_id, _ = make_job()  # queued in the database, no message in the broker
    old = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
    set_job(factory, stale_id, state="running", stage=PREPARE, heartbeat_at=old)
    set_job(factory, live_id, state="running", stage=PREPARE, heartbeat_at=utcnow())
    body = client.get("/api/v1/queues").json
    prepare = body["stages"]["prepare"]
    assert body["stale_after_s"] == settings.stale_after_s
    assert {k: prepare[k] for k in ("waiting", "running", "stale", "queued", "stranded", "demand")} == {
        "waiting": 0,
        "running": 1,
        "stale": 1,
        "queued": 1,
        "stranded": 2,
        "demand": 3,
    }
    assert body["stages"]["classify"]["demand"] == 0


# ---------------------------------------------------------------------------------- jobs commands


def test_operators_requeue_and_fail_jobs_audited(make_job, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(settings.var_dir))
    factory, failed_id, failed_slide = make_job(state="failed")
    _, running_id, running_slide = make_job()
    set_job(factory, running_id, state="running", stage=CLASSIFY)
    _, done_id, _ = make_job(state="succeeded")
    runner = CliRunner()
    res = runner.invoke(main, ["jobs", "requeue", failed_id])
    assert res.exit_code == 0, res.output
    job = get_job(factory, failed_id)
    assert (job.state, job.stage, job.error, job.finished_at) == ("queued", PREPARE, None, None)
    assert pending_job_ids(settings) == {failed_id}  # published (the filesystem queue is up)
    res = runner.invoke(main, ["jobs", "requeue", running_id])
    assert res.exit_code == 0 and get_job(factory, running_id).stage == CLASSIFY
    res = runner.invoke(main, ["jobs", "requeue", done_id])
    assert res.exit_code == 1 and "succeeded" in res.output
    res = runner.invoke(main, ["jobs", "fail", running_id, "--reason", "slide broken in transit"])
    assert res.exit_code == 0, res.output
    job = get_job(factory, running_id)
    assert job.state == "failed" and "slide broken in transit" in job.error
    res = runner.invoke(main, ["jobs", "fail", running_id, "--reason", "again"])
    assert res.exit_code == 1 and "already failed" in res.output
    assert runner.invoke(main, ["jobs", "fail", "nope", "--reason", "x"]).exit_code == 1
    res = runner.invoke(main, ["jobs", "reconcile"])
    assert res.exit_code == 0 and "re-queued 0 job(s)" in res.output
    with factory() as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        audit = [(a.action, a.resource, a.status, a.outcome, a.slide_id) for a in entries]
        actors = {a.actor for a in entries}
        reasons = [(a.detail or {}).get("reason") for a in entries]
    assert audit == [  # tied to the slide: shown in its audit history
        ("requeue", f"job:{failed_id}", 200, "allowed", failed_slide),
        ("requeue", f"job:{running_id}", 200, "allowed", running_slide),
        ("fail", f"job:{running_id}", 200, "allowed", running_slide),
    ]
    assert reasons == [None, None, "slide broken in transit"]
    assert all(a.startswith("cli:") for a in actors)
