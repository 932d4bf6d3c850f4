"""Run the API and workers as local processes on one set of settings.

Used by ``hematovision demo``, the integration tests and the load benchmark: each starts the real
``hematovision serve`` and ``hematovision worker`` commands as child processes (in their own process
groups, so that only what was started here is ever signalled), on a database migrated first and
with an API key made for the caller (and, with :meth:`LocalStack.add_user`, people who log in).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalStack:
    """An API (and any number of workers) as child processes sharing one environment."""

    env: dict[str, str]
    api_url: str
    api_key: str
    var_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        # The child gets its own copy of the descriptor; ours is closed once it has started.
        with open(self.var_dir / f"{name}.log", "ab") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "hematovision.cli", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = p
        return p

    def start_worker(
        self, name: str = "worker", loglevel: str = "INFO", stages: str = "prepare,classify,report"
    ) -> subprocess.Popen[bytes]:
        return self.start(name, "worker", "--loglevel", loglevel, "--stages", stages)

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

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str, tail_chars: int = 4000) -> str:
        path = self.var_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail_chars:] if path.exists() else ""

    def client(self) -> Any:
        from hematovision.cli.api_client import ApiClient

        return ApiClient(self.api_url, self.api_key)

    def add_user(self, username: str, full_name: str, role: str, password: str) -> int:
        """Store a person who can log in to this stack's review UI; returns the user id."""
        from hematovision.core.settings import Settings
        from hematovision.store.db import make_engine, make_session_factory, transaction
        from hematovision.store.users import create_user

        settings = Settings(
            var_dir=self.var_dir,
            database_url=self.env["HEMATOVISION_DATABASE_URL"],
            broker_url=self.env["HEMATOVISION_BROKER_URL"],
        )
        engine = make_engine(settings)
        try:
            with transaction(make_session_factory(engine)) as session:
                return create_user(session, username, full_name, role, password).id
        finally:
            engine.dispose()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def start_stack(
    var_dir: Path,
    database_url: str = "",
    broker_url: str = "",
    *,
    key_scope: str = "admin",
    key_name: str = "local",
    api_threads: int = 8,
    **settings: str,
) -> LocalStack:
    """Migrate the database, make an API key, start the API and wait until it answers.

    Extra keyword arguments become ``HEMATOVISION_<NAME>`` variables of the child processes.
    """
    from hematovision.cli.api_client import ApiClientError
    from hematovision.core.settings import Settings
    from hematovision.store.apikeys import create_key
    from hematovision.store.db import make_engine, make_session_factory, transaction
    from hematovision.store.migrate import upgrade

    var_dir = Path(var_dir).resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMATOVISION_")}
    for k in ("HEMATOVISION_DATA_ROOT", "HEMATOVISION_MODEL_DIR"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(
        {
            "HEMATOVISION_VAR_DIR": str(var_dir),
            "HEMATOVISION_DATABASE_URL": database_url,
            "HEMATOVISION_BROKER_URL": broker_url,
            "HEMATOVISION_API_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **{f"HEMATOVISION_{k.upper()}": str(v) for k, v in settings.items()},
        }
    )
    s = Settings(var_dir=var_dir, database_url=database_url, broker_url=broker_url)
    upgrade(s)
    engine = make_engine(s)
    with transaction(make_session_factory(engine)) as session:
        key = create_key(session, key_name, key_scope)
    engine.dispose()
    stack = LocalStack(env, f"http://127.0.0.1:{port}", key, var_dir)
    stack.start("api", "serve", "--port", str(port), "--threads", str(api_threads))
    deadline = time.monotonic() + 60
    while True:
        try:
            stack.client().health()
            return stack
        except ApiClientError:
            if time.monotonic() > deadline or stack.procs["api"].poll() is not None:
                stack.stop_all()
                raise RuntimeError("the API did not start:\n" + stack.log("api")) from None
            time.sleep(0.3)
