"""A small HTTP client for the intake API, used by the CLI and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests


class ApiClientError(RuntimeError):
    """The API answered with an error (its message is kept) or could not be reached."""


def _body(resp: requests.Response, fmt: str) -> dict[str, Any] | str | bytes:
    if fmt == "json":
        doc: dict[str, Any] = resp.json()
        return doc
    if fmt == "pdf":
        return resp.content
    return resp.content.decode("utf-8")  # CSV and HL7 are UTF-8 whatever the Content-Type says


class ApiClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = requests.Session()
        if api_key:
            self.http.headers["X-API-Key"] = api_key

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            resp = self.http.request(method, self.base_url + path, timeout=self.timeout_s, **kw)
        except requests.RequestException as e:
            raise ApiClientError(f"cannot reach the API at {self.base_url}: {e.__class__.__name__}") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                msg = f"{resp.status_code} {err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                msg = f"{resp.status_code}: {resp.text[:200]}"
            raise ApiClientError(msg)
        return resp

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz").json()

    def submit(
        self,
        files: Iterable[Path] = (),
        paths: Iterable[str] = (),
        *,
        name: str | None = None,
        priority: int | None = None,
        mpp: float | None = None,
        idempotency_key: str | None = None,
        worklist: str | None = None,
        census: bool = False,
    ) -> dict[str, Any]:
        """Submit one batch; ``worklist`` is a worklist CSV's text (each slide's order and patient);
        ``census`` asks for a whole-smear census of every slide."""
        data: dict[str, Any] = {"paths": list(paths)}
        for k, v in (("name", name), ("priority", priority), ("mpp", mpp)):
            if v is not None:
                data[k] = str(v)
        if census:
            data["census"] = "true"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with ExitStack() as stack:
            uploads: list[tuple[str, Any]] = [
                ("files", (p.name, stack.enter_context(open(p, "rb")))) for p in map(Path, files)
            ]
            if worklist is not None:
                uploads.append(("worklist", ("worklist.csv", worklist.encode("utf-8"), "text/csv")))
            return self._call("POST", "/api/v1/batches", data=data, files=uploads or None, headers=headers).json()

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/batches/{batch_id}").json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/jobs/{job_id}/cancel").json()

    def report(self, slide_id: str, fmt: str = "json") -> dict[str, Any] | str | bytes:
        """One slide's report: a dict (``json``), text (``csv``, ``hl7``) or the PDF's bytes (``pdf``)."""
        resp = self._call("GET", f"/api/v1/slides/{slide_id}/report", params={"format": fmt})
        return _body(resp, fmt)

    def flags(
        self,
        batch: str | None = None,
        since: str | None = None,
        fmt: str = "json",
        *,
        status: str | None = None,
        search: str | None = None,
    ) -> dict[str, Any] | str | bytes:
        """The triaged flag list: a dict (``json``), text (``csv``) or the PDF's bytes (``pdf``)."""
        params = {k: v for k, v in (("batch", batch), ("since", since), ("status", status), ("q", search)) if v}
        if fmt != "json":
            params["format"] = fmt
        return _body(self._call("GET", "/api/v1/flags", params=params), fmt)

    def wait_for_batch(
        self,
        batch_id: str,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until every job of the batch is final; returns the last batch document."""
        deadline = time.monotonic() + timeout_s
        while True:
            b = self.batch(batch_id)
            if on_update:
                on_update(b)
            if b["state"] == "finished":
                return b
            if time.monotonic() > deadline:
                raise ApiClientError(f"batch {batch_id} not finished after {timeout_s:.0f} s")
            time.sleep(poll_s)
