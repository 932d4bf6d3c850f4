"""Outages: PostgreSQL unreachable for a while, Redis restarted under a running batch.

The database outage is made with a loopback forwarder the test cuts (the machine's PostgreSQL keeps
running); the Redis is one this test starts on its own port (append-only file on, as the deployment
guide asks) and restarts. One trial each.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hematovision.devtools.localstack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory, real_cells: Path) -> list[Path]:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    d = tmp_path_factory.mktemp("outage-slides")
    out = []
    for i in range(3):
        p = d / f"s{i}.tiff"
        make_slide(p, real_cells, 2048, 2048, mpp=0.25, n_wbc=25, seed=20 + i, fmt="tiff")
        out.append(p)
    return out


def wait_for(pred, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def submit_and_wait_running(stack, slides):  # type: ignore[no-untyped-def]
    """Start a worker, submit the slides as one batch, wait until the first job runs."""
    stack.start_worker()
    client = stack.client()
    batch = client.submit(slides)
    first = batch["jobs"][0]["id"]
    wait_for(lambda: client.job(first)["state"] == "running", 300, "a running job")
    return client, batch, first


def test_postgres_unreachable_then_back(  # type: ignore[no-untyped-def]
    postgres_url: str, redis_url: str, small_slides, tmp_path: Path, start_stack, tcp_proxy
) -> None:
    import redis
    from sqlalchemy import create_engine, text

    redis.Redis.from_url(redis_url).flushdb()
    eng = create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    proxy = tcp_proxy(5432)
    proxy.start()
    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    proxied = postgres_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    stack = start_stack(tmp_path / "var", proxied, redis_url)
    try:
        client, batch, first = submit_and_wait_running(stack, small_slides)
        proxy.stop()
        r = requests.get(f"{stack.api_url}/healthz", timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
        r = requests.get(f"{stack.api_url}/api/v1/jobs/{first}", headers={"X-API-Key": stack.api_key}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["message"]
        time.sleep(10)  # the worker meets the outage and retries
        assert stack.procs["worker"].poll() is None
        proxy.start()
        wait_for(lambda: requests.get(f"{stack.api_url}/healthz", timeout=30).status_code == 200, 60, "API recovery")
        final = client.wait_for_batch(batch["id"], timeout_s=600)
        assert final["states"] == {"succeeded": len(small_slides)}, (final, stack.log("worker"))
    finally:
        stack.stop_all()
        proxy.stop()


@pytest.mark.needs(shutil.which("redis-server") is not None, "the redis-server binary (Debian package redis-server)")
def test_redis_restart_loses_no_job(postgres_url: str, small_slides, tmp_path: Path, start_stack) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine, text

    eng = create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    port = free_port()
    rdir = tmp_path / "redis"
    rdir.mkdir()
    cmd = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(rdir),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]

    def start_redis() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: _ping(redis, port), 30, "redis start")
        return p

    redis_proc = start_redis()
    stack = start_stack(tmp_path / "var", postgres_url, f"redis://127.0.0.1:{port}/0", visibility_timeout_s="15")
    try:
        client, batch, _ = submit_and_wait_running(stack, small_slides)
        redis_proc.send_signal(signal.SIGTERM)
        redis_proc.wait(timeout=30)
        time.sleep(3)
        redis_proc = start_redis()
        final = client.wait_for_batch(batch["id"], timeout_s=600)
        assert final["states"] == {"succeeded": len(small_slides)}, (final, stack.log("worker"))
        assert all(j["attempts"] >= 1 for j in final["jobs"])
    finally:
        stack.stop_all()
        redis_proc.terminate()
        redis_proc.wait(timeout=30)


def _ping(redis_mod, port: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(redis_mod.Redis(port=port, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False
