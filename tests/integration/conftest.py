"""Real services for the integration tests: PostgreSQL + Redis on 127.0.0.1, or the embedded defaults.

Each test run gets its own PostgreSQL database (dropped at the end) and its own Redis database
index (flushed first). The API and the worker run as separate processes, started and stopped by the
tests themselves (only processes these fixtures started are touched). Under CI a missing service
fails the run; on a laptop without one those tests are skipped with a loud reason (``require``, in
``tests/conftest.py``). Every test here is marked ``integration`` and ``slow``.

Fixtures for the tests' own set-ups: ``start_stack(var_dir, database_url, broker_url, **settings)``
starts an API as these fixtures do, and ``tcp_proxy(upstream_port)`` a loopback forwarder the test
can cut (stopped at the end of the test).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hematovision.devtools.localstack import LocalStack
from hematovision.devtools.localstack import start_stack as _start_stack

from .tcpproxy import TcpProxy

PG_ADMIN_URL = os.environ.get("HEMATOVISION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HEMATOVISION_TEST_REDIS", "redis://127.0.0.1:6379/13")
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


def _unreachable(what: str, err: Exception) -> str:
    return f"{what}, which is not reachable ({err.__class__.__name__}: {err})"


@pytest.fixture(scope="session")
def postgres_url(require) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import psycopg

    name = f"hv_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:  # noqa: BLE001
        require(False, _unreachable("PostgreSQL at " + PG_ADMIN_URL, e))
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(require) -> str:  # type: ignore[no-untyped-def]
    import redis

    try:
        r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
        r.flushdb()
    except Exception as e:  # noqa: BLE001
        require(False, _unreachable("Redis at " + REDIS_URL, e))
    return REDIS_URL


def _start(var_dir: Path, database_url: str, broker_url: str, **extra: str) -> LocalStack:
    return _start_stack(var_dir, database_url, broker_url, key_name="integration-tests", **extra)


@pytest.fixture(name="start_stack", scope="session")
def start_stack_fixture() -> Callable[..., LocalStack]:
    """``start_stack(var_dir, database_url, broker_url, **settings) -> LocalStack``: an API started as
    the stack fixtures start theirs (a context manager; workers via ``start_worker()``)."""
    return _start


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """``tcp_proxy(upstream_port) -> TcpProxy`` on a free loopback port, not yet started; every
    proxy made is stopped when the test ends."""
    made: list[TcpProxy] = []

    def make(upstream_port: int) -> TcpProxy:
        made.append(TcpProxy(upstream_port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.stop()


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
def stack(request, tmp_path: Path) -> Iterator[LocalStack]:  # type: ignore[no-untyped-def]
    """API + one worker, on PostgreSQL/Redis and again on the embedded defaults."""
    db_url, broker = _backend(request, request.param)
    with _start(tmp_path / "var", db_url, broker) as s:
        s.start_worker()
        yield s


@pytest.fixture
def pg_stack(request, tmp_path: Path) -> Iterator[LocalStack]:  # type: ignore[no-untyped-def]
    """API only (tests start their own workers) on PostgreSQL/Redis, with a short visibility
    timeout so that a killed worker's slide is re-delivered within the test."""
    db_url, broker = _backend(request, "postgres+redis")
    with _start(tmp_path / "var", db_url, broker, visibility_timeout_s="15", task_max_retries="2") as s:
        yield s


@pytest.fixture
def pg_stack_steady(request, tmp_path: Path) -> Iterator[LocalStack]:  # type: ignore[no-untyped-def]
    """API only on PostgreSQL/Redis with the production visibility timeout (no re-delivery while a
    slide is still being analysed)."""
    db_url, broker = _backend(request, "postgres+redis")
    with _start(tmp_path / "var", db_url, broker) as s:
        yield s
