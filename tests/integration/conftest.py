"""Real services for the integration tests: PostgreSQL + Redis on 127.0.0.1, or the embedded defaults.

Each test run gets its own PostgreSQL database (dropped at the end) and its own Redis database
index (flushed first). The API and the worker run as separate processes, started and stopped by the
tests themselves (only processes these fixtures started are touched). Under CI a missing service
fails the run; on a laptop without one those tests are skipped with a loud reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hematovision.devtools.localstack import LocalStack, free_port
from hematovision.devtools.localstack import start_stack as _start_stack

__all__ = ["LocalStack", "free_port", "start_stack"]

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


def start_stack(var_dir: Path, database_url: str, broker_url: str, **extra: str) -> LocalStack:
    return _start_stack(var_dir, database_url, broker_url, key_name="integration-tests", **extra)


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
    with start_stack(tmp_path / "var", db_url, broker) as s:
        s.start_worker()
        yield s


@pytest.fixture
def pg_stack(request, tmp_path: Path) -> Iterator[LocalStack]:  # type: ignore[no-untyped-def]
    """API only (tests start their own workers) on PostgreSQL/Redis, with a short visibility
    timeout so that a killed worker's slide is re-delivered within the test."""
    db_url, broker = _backend(request, "postgres+redis")
    with start_stack(tmp_path / "var", db_url, broker, visibility_timeout_s="15", task_max_retries="2") as s:
        yield s


@pytest.fixture
def pg_stack_steady(request, tmp_path: Path) -> Iterator[LocalStack]:  # type: ignore[no-untyped-def]
    """API only on PostgreSQL/Redis with the production visibility timeout (no re-delivery while a
    slide is still being analysed)."""
    db_url, broker = _backend(request, "postgres+redis")
    with start_stack(tmp_path / "var", db_url, broker) as s:
        yield s
