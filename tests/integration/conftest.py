"""Real services for the integration tests: PostgreSQL + Redis on 127.0.0.1, or the embedded defaults.

Each test run gets its own PostgreSQL database (dropped at the end) and its own Redis database
index (flushed first). The API and the worker run as separate processes, started and stopped by the
tests themselves (only processes these fixtures started are touched). Under CI a missing service
fails the run; on a laptop without one those tests are skipped with a loud reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("HEMATOVISION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HEMATOVISION_TEST_REDIS", "redis://127.0.0.1:6379/13")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _service_missing(what: str, err: Exception) -> None:
    msg = f"{what} is not reachable ({err.__class__.__name__}: {err})"
    if IN_CI:
        pytest.fail(f"CI needs {msg}", pytrace=False)
    pytest.skip(f"NOT RUN: {msg}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import psycopg

    name = f"hv_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:  # noqa: BLE001
        _service_missing("PostgreSQL at " + PG_ADMIN_URL, e)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
        r.flushdb()
    except Exception as e:  # noqa: BLE001
        _service_missing("Redis at " + REDIS_URL, e)
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """A running API and worker on one database and broker."""

    env: dict[str, str]
    api_url: str
    api_key: str
    var_dir: Path
    procs: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.var_dir / f"{name}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "hematovision.cli", *args], env=self.env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        return self.start(name, "worker", "--loglevel", "INFO")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs.pop(name)
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def log(self, name: str) -> str:
        path = self.var_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def client(self):  # type: ignore[no-untyped-def]
        from hematovision.client import ApiClient

        return ApiClient(self.api_url, self.api_key)


def start_stack(var_dir: Path, database_url: str, broker_url: str, **extra: str) -> Stack:
    from hematovision.client import ApiClientError
    from hematovision.migrate import upgrade
    from hematovision.settings import Settings

    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMATOVISION_")}
    env.update({
        "HEMATOVISION_VAR_DIR": str(var_dir),
        "HEMATOVISION_DATABASE_URL": database_url,
        "HEMATOVISION_BROKER_URL": broker_url,
        "HEMATOVISION_API_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **{f"HEMATOVISION_{k.upper()}": v for k, v in extra.items()},
    })
    for k in ("HEMATOVISION_DATA_ROOT", "HEMATOVISION_MODEL_DIR"):
        if k in os.environ:
            env[k] = os.environ[k]
    settings = Settings(var_dir=var_dir, database_url=database_url, broker_url=broker_url)
    upgrade(settings)
    from hematovision.apikeys import create_key
    from hematovision.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as s:
        key = create_key(s, "integration-tests", "admin")
    engine.dispose()
    stack = Stack(env, f"http://127.0.0.1:{port}", key, var_dir, {})
    stack.start("api", "serve", "--port", str(port))
    deadline = time.monotonic() + 60
    while True:
        try:
            stack.client().health()
            break
        except ApiClientError:
            if time.monotonic() > deadline or stack.procs["api"].poll() is not None:
                raise RuntimeError("API did not start:\n" + stack.log("api")) from None
            time.sleep(0.3)
    return stack


def _backend(request, name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    if name == "embedded":
        return "", ""
    db_url = request.getfixturevalue("postgres_url")
    broker = request.getfixturevalue("redis_url")
    import redis
    from sqlalchemy import create_engine, text

    redis.Redis.from_url(broker).flushdb()
    eng = create_engine(db_url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    return db_url, broker


@pytest.fixture(params=["postgres+redis", "embedded"])
def stack(request, tmp_path: Path) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """API + one worker, on PostgreSQL/Redis and again on the embedded defaults."""
    db_url, broker = _backend(request, request.param)
    s = start_stack(tmp_path / "var", db_url, broker)
    s.start_worker()
    try:
        yield s
    finally:
        for name in list(s.procs):
            s.stop(name)


@pytest.fixture
def pg_stack(request, tmp_path: Path) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """API only (tests start their own workers) on PostgreSQL/Redis, with a short visibility
    timeout so that a killed worker's slide is re-delivered within the test."""
    db_url, broker = _backend(request, "postgres+redis")
    s = start_stack(tmp_path / "var", db_url, broker, visibility_timeout_s="15", task_max_retries="2")
    try:
        yield s
    finally:
        for name in list(s.procs):
            s.stop(name)
