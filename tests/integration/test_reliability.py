"""A submission never loses a slide: real API and worker processes on PostgreSQL and a private
``redis-server`` that the tests stop and start (the machine's shared Redis is never touched).

- Redis down during a submission: 202, the rows are queued; Redis back: every slide is analysed
  once (each stage ran once, nothing duplicated).
- Redis restarted without persistence while jobs wait: the messages are gone; a worker's reconciler
  re-queues the jobs and they finish.
- A worker SIGKILLed mid-slide: ``/api/v1/queues`` keeps counting its slide in demand (running,
  then stale/stranded); after ``stale_after_s`` the next worker's reconciler re-queues it and it
  finishes (the production visibility timeout is kept, so Redis does not re-deliver it first).
- The upload folder unwritable: 503 and no rows; an API killed mid-upload leaves a staging folder
  that the next API start removes.

Heartbeats, staleness and the reconciler's period are shortened through the settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from hematovision.devtools.localstack import free_port

HAVE_REDIS_SERVER = shutil.which("redis-server") is not None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.needs(HAVE_REDIS_SERVER, "the redis-server binary (Debian package redis-server)"),
]

#: Short reliability timings for the tests (defaults: 300 s stale, 30 s heartbeat, 60 s reconcile).
FAST = {"stale_after_s": "8", "heartbeat_s": "1", "reconcile_interval_s": "2", "dispatch_interval_s": "1"}


@dataclass
class PrivateRedis:
    """A redis-server on its own port and folder, started and stopped by the test."""

    folder: Path
    persistent: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        cmd += ["--save", ""] + (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 30, "redis start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except Exception:  # noqa: BLE001
            return False

    def messages(self) -> int:
        import redis

        r = redis.Redis(port=self.port)
        return sum(int(r.llen(k)) for k in r.scan_iter("slides.*") if r.type(k) == b"list")


def wait_for(pred, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory, real_cells: Path) -> list[Path]:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    d = tmp_path_factory.mktemp("reliability-slides")
    out = []
    for i in range(3):
        p = d / f"r{i}.tiff"
        make_slide(p, real_cells, 2048, 2048, mpp=0.25, n_wbc=25, seed=40 + i, fmt="tiff")
        out.append(p)
    return out


@pytest.fixture
def fresh_db(postgres_url: str) -> str:
    eng = create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    return postgres_url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    r = PrivateRedis(folder)
    yield r
    r.stop()


def db_rows(db_url: str, sql: str, **params: object) -> list[tuple]:
    eng = create_engine(db_url)
    with eng.connect() as c:
        rows = [tuple(r) for r in c.execute(text(sql), params).all()]
    eng.dispose()
    return rows


def job_stages(db_url: str, batch_id: str) -> dict[str, dict]:
    rows = db_rows(db_url, "SELECT id, stages FROM jobs WHERE batch_id = :b", b=batch_id)
    return {job_id: (s if isinstance(s, dict) else json.loads(s)) for job_id, s in rows}


def test_redis_down_during_submission_then_back(  # type: ignore[no-untyped-def]
    fresh_db: str, private_redis: PrivateRedis, small_slides, tmp_path: Path, start_stack
) -> None:
    private_redis.start()
    with start_stack(tmp_path / "var", fresh_db, private_redis.url, **FAST) as stack:
        stack.start_worker()
        private_redis.stop()
        r = requests.post(
            f"{stack.api_url}/api/v1/batches",
            headers={"X-API-Key": stack.api_key, "Idempotency-Key": "outage-1"},
            data={"mpp": "0.25"},
            files=[("files", (p.name, p.read_bytes())) for p in small_slides],
            timeout=120,
        )
        assert r.status_code == 202, r.text
        batch = r.json()
        assert batch["queued"] is False and batch["states"] == {"queued": 3}
        assert db_rows(fresh_db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(3,)]
        health = requests.get(f"{stack.api_url}/healthz", timeout=30).json()
        assert health["broker"] == "down" and health["database"] == "ok"
        time.sleep(3)
        private_redis.start()
        final = stack.client().wait_for_batch(batch["id"], timeout_s=600)
        assert final["states"] == {"succeeded": 3}, (final, stack.log("worker"))
        # Nothing duplicated: three jobs, each stage run once, each outbox message sent once.
        stages = job_stages(fresh_db, batch["id"])
        assert len(stages) == 3
        assert all(s[k]["runs"] == 1 for s in stages.values() for k in ("prepare", "classify", "report")), stages
        sent = db_rows(fresh_db, "SELECT stage, count(*) FROM outbox WHERE sent_at IS NOT NULL GROUP BY stage")
        assert dict(sent) == {"prepare": 3, "classify": 3, "report": 3}
        doubled = db_rows(
            fresh_db,
            "SELECT slide_id, kind, x0, y0, x1, y1 FROM cells GROUP BY slide_id, kind, x0, y0, x1, y1 "
            "HAVING count(*) > 1",
        )
        assert doubled == []
        assert all(stack.client().report(j["slide_id"])["counts"]["wbc"] > 0 for j in final["jobs"])
        again = requests.post(
            f"{stack.api_url}/api/v1/batches",
            headers={"X-API-Key": stack.api_key, "Idempotency-Key": "outage-1"},
            data={"mpp": "0.25"},
            files=[("files", (p.name, p.read_bytes())) for p in small_slides],
            timeout=120,
        )
        assert again.status_code == 200 and again.json()["id"] == batch["id"]


def test_redis_restarted_without_persistence_is_reconciled(  # type: ignore[no-untyped-def]
    fresh_db: str, tmp_path: Path, small_slides, start_stack
) -> None:
    folder = tmp_path / "redis"
    folder.mkdir()
    broker = PrivateRedis(folder, persistent=False)
    broker.start()
    try:
        with start_stack(tmp_path / "var", fresh_db, broker.url, **FAST) as stack:
            batch = stack.client().submit(small_slides, mpp=0.25)
            assert batch["queued"] is True
            wait_for(lambda: broker.messages() == 3, 30, "the three messages in Redis")
            broker.stop()
            broker.start()  # empty: the messages are gone
            assert broker.messages() == 0
            time.sleep(9)  # older than stale_after_s
            load = requests.get(
                f"{stack.api_url}/api/v1/queues", headers={"X-API-Key": stack.api_key}, timeout=30
            ).json()
            assert load["stages"]["prepare"]["stranded"] == 3 and load["stages"]["prepare"]["demand"] == 3
            stack.start_worker()
            final = stack.client().wait_for_batch(batch["id"], timeout_s=600)
            assert final["states"] == {"succeeded": 3}, (final, stack.log("worker"))
            stages = job_stages(fresh_db, batch["id"])
            assert all(s["prepare"].get("requeued") == 1 for s in stages.values()), stages
    finally:
        broker.stop()


def test_worker_killed_mid_slide_is_requeued_after_the_stale_timeout(  # type: ignore[no-untyped-def]
    fresh_db: str, private_redis: PrivateRedis, small_slides, tmp_path: Path, start_stack
) -> None:
    private_redis.start()
    with start_stack(tmp_path / "var", fresh_db, private_redis.url, **FAST) as stack:
        client = stack.client()
        headers = {"X-API-Key": stack.api_key}
        stack.start_worker("w1")
        job = client.submit([small_slides[0]], mpp=0.25)["jobs"][0]
        wait_for(lambda: (j := client.job(job["id"]))["state"] == "running" and j["progress"] >= 0.1, 300, "progress")
        stage = client.job(job["id"])["stage"]
        stack.stop("w1", signal.SIGKILL)
        seen: set[str] = set()

        def counted() -> bool:
            load = requests.get(f"{stack.api_url}/api/v1/queues", headers=headers, timeout=30).json()["stages"][stage]
            assert load["demand"] >= 1, load  # never drops out of what the autoscaler sees
            seen.update(k for k in ("running", "stale", "stranded") if load[k])
            return load["stale"] == 1 and load["stranded"] == 1

        wait_for(counted, 60, "the killed worker's slide counted as stale")
        assert client.job(job["id"])["state"] == "running"  # nobody has re-queued it yet
        stack.start_worker("w2")
        done = wait_for(
            lambda: (j := client.job(job["id"]))["state"] in ("succeeded", "failed") and j, 600, "the slide to end"
        )
        assert done["state"] == "succeeded", (done, stack.log("w2"))
        assert done["attempts"] >= 2 and done["stages"][stage]["requeued"] == 1
        assert seen >= {"stale", "stranded"}


def test_upload_storage_faults(  # type: ignore[no-untyped-def]
    fresh_db: str, private_redis: PrivateRedis, small_slides, tmp_path: Path, start_stack
) -> None:
    private_redis.start()
    var = tmp_path / "var"
    with start_stack(var, fresh_db, private_redis.url) as stack:
        headers = {"X-API-Key": stack.api_key}
        uploads = var / "uploads"
        # Unwritable upload folder: 503 and nothing written; /healthz says why.
        shutil.rmtree(uploads)
        uploads.write_text("not a folder")
        files = [("files", (small_slides[0].name, small_slides[0].read_bytes()))]
        r = requests.post(
            f"{stack.api_url}/api/v1/batches", headers=headers, data={"mpp": "0.25"}, files=files, timeout=60
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "upload_storage_unavailable"
        assert db_rows(fresh_db, "SELECT count(*) FROM batches") == [(0,)]
        health = requests.get(f"{stack.api_url}/healthz", timeout=30)
        assert health.status_code == 503 and health.json()["uploads"]["writable"] is False
        uploads.unlink()
        uploads.mkdir()
        assert requests.get(f"{stack.api_url}/healthz", timeout=30).status_code == 200

        # An API killed while it writes an upload leaves its staging folder; the next start removes it.
        big = [("files", ("big.tiff", b"\0" * (200 * 2**20)))]
        thread = threading.Thread(
            target=lambda: _post_quietly(f"{stack.api_url}/api/v1/batches", headers, big), daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 120
        while not (staging := list(uploads.glob(".incoming-*"))):
            assert time.monotonic() < deadline and thread.is_alive(), "no staging folder appeared"
            time.sleep(0.005)
        stack.stop("api", signal.SIGKILL)
        thread.join(60)
        assert all(p.exists() for p in staging)
        two_hours_ago = time.time() - 7200
        for p in staging:
            os.utime(p, (two_hours_ago, two_hours_ago))
        port = stack.api_url.rsplit(":", 1)[1]
        stack.start("api", "serve", "--port", port)
        wait_for(lambda: _healthy(stack.api_url), 60, "the API to start again")
        assert not any(p.exists() for p in staging)
        assert db_rows(fresh_db, "SELECT count(*) FROM batches") == [(0,)]


def _post_quietly(url: str, headers: dict[str, str], files: list) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(requests.RequestException):  # the API is killed under it
        requests.post(url, headers=headers, data={"mpp": "0.25"}, files=files, timeout=120)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False
