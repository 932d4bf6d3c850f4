"""The production server (waitress via ``api.server``), on a loopback port in this process: the
upload limit in force is HEMATOVISION_MAX_UPLOAD_MB, and a keyless body is refused before it is read."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from hematovision.devtools.localstack import free_port


@pytest.fixture
def served_app(settings, make_key) -> Iterator[tuple[str, str, Any]]:  # type: ignore[no-untyped-def]
    """(base URL, admin key, app) of the app served by ``api.server`` with a 1 MiB upload limit."""
    from api.app import create_app, stop_app
    from api.server import make_server
    from hematovision.store.migrate import upgrade

    settings.max_upload_mb = 1
    upgrade(settings)
    app = create_app(settings)
    port = free_port()
    server = make_server(app, settings, "127.0.0.1", port, threads=2)
    stop = threading.Event()

    def loop() -> None:  # waitress's run(), stoppable
        while not stop.is_set():
            server.asyncore.loop(timeout=0.1, map=server._map, count=1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", make_key(app=app), app
    finally:
        stop.set()
        thread.join(10)
        server.close()
        server.task_dispatcher.shutdown()
        stop_app(app)


@pytest.fixture
def served(served_app) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(base URL, admin key) of the app served by ``api.server`` with a 1 MiB upload limit."""
    return served_app[0], served_app[1]


def raw_request(url: str, head: str) -> tuple[int, dict, float]:
    """Send only the request head (no body) and read the answer: (status, JSON body, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    head_lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert "x-content-type-options: nosniff" in head_lines and "cache-control: no-store" in head_lines, head_lines
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1]), time.monotonic() - t0


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_keyless_body_is_refused_before_it_is_read(served) -> None:  # type: ignore[no-untyped-def]
    url, key = served
    head = (
        "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: {n}\r\n{extra}\r\n"
    )
    # 512 KiB announced and never sent: the answer comes at once, from the headers alone.
    status, body, seconds = raw_request(url, head.format(n=512 * 1024, extra=""))
    assert status == 401 and body["error"]["code"] == "unauthorized" and seconds < 5
    status, body, _ = raw_request(url, head.format(n=512 * 1024, extra="X-API-Key: not-a-key\r\n"))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    # Over the limit (1 MiB here): a JSON 413 from the headers, not waitress's plain text.
    status, body, seconds = raw_request(url, head.format(n=3 * 2**30, extra=f"X-API-Key: {key}\r\n"))
    assert status == 413 and body["error"]["code"] == "too_large" and "1 MiB" in body["error"]["message"]
    assert seconds < 5


def test_the_documented_limit_is_the_one_in_force(served, png_bytes) -> None:  # type: ignore[no-untyped-def]
    url, key = served
    headers = {"X-API-Key": key}
    ok = requests.post(
        f"{url}/api/v1/batches",
        headers=headers,
        data={"mpp": "0.25"},
        files=[("files", ("a.png", png_bytes()))],
        timeout=30,
    )
    assert ok.status_code == 202, ok.text
    big = png_bytes() + b"\0" * (2**20)
    r = requests.post(
        f"{url}/api/v1/batches", headers=headers, data={"mpp": "0.25"}, files=[("files", ("b.png", big))], timeout=30
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"


def test_answers_from_the_headers_are_audited(served_app) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from hematovision.store.models import AuditEntry

    url, key, app = served_app
    head = (
        "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: {n}\r\n{extra}\r\n"
    )
    assert raw_request(url, head.format(n=512 * 1024, extra=""))[0] == 401
    assert raw_request(url, head.format(n=3 * 2**30, extra=f"X-API-Key: {key}\r\n"))[0] == 413
    with app.extensions["hv_sessions"]() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        seen = [(e.actor, e.action, e.resource, e.status, e.outcome) for e in rows]
        assert seen == [
            ("anonymous", "submit", "/api/v1/batches", 401, "refused"),
            ("key:tests", "submit", "/api/v1/batches", 413, "failed"),
        ]
        assert "before the body was read" in rows[0].detail["reason"]
        assert key[:6] not in repr([e.detail for e in rows])


def test_a_login_session_passes_the_gate(served_app, make_user, png_bytes) -> None:  # type: ignore[no-untyped-def]
    import re

    url, _, app = served_app
    make_user("ada", "admin", "Ada Admin", "ada's password", app=app)
    with requests.Session() as browser:
        page = browser.get(f"{url}/ui/login", timeout=10).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        login = {"username": "ada", "password": "ada's password", "csrf_token": token}
        assert browser.post(f"{url}/ui/login", data=login, timeout=10, allow_redirects=False).status_code == 302
        page = browser.get(f"{url}/ui/", timeout=10).text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        r = browser.post(
            f"{url}/api/v1/batches",
            headers={"X-CSRFToken": csrf},
            data={"mpp": "0.25"},
            files=[("files", ("a.png", png_bytes()))],
            timeout=30,
        )
        assert r.status_code == 202, r.text
        # Without the token: the app (not the gate) answers, after the session was checked.
        r = browser.post(
            f"{url}/api/v1/batches", data={"mpp": "0.25"}, files=[("files", ("a.png", png_bytes()))], timeout=30
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "csrf_failed"
