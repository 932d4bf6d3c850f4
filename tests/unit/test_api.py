"""The intake API on embedded defaults (SQLite, filesystem queue): validation, idempotency, errors.

No worker runs here; the full path with a real worker is in tests/integration.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from hematovision.store.models import Batch, Job, Slide


def rows(app) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with app.extensions["hv_sessions"]() as s:
        return {t.__name__: s.execute(select(func.count()).select_from(t)).scalar_one() for t in (Batch, Slide, Job)}


def queued_messages(settings) -> int:  # type: ignore[no-untyped-def]
    return len([p for p in settings.broker_dir.glob("*.msg")])


def test_healthz_and_openapi(client) -> None:  # type: ignore[no-untyped-def]
    health = client.get("/healthz").json
    assert (health["status"], health["database"], health["broker"]) == ("ok", "ok", "ok")
    assert health["uploads"]["writable"] is True and health["uploads"]["free_mb"] > 0
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/batches", "/api/v1/jobs/{job_id}", "/api/v1/flags"} <= set(doc["paths"])


def test_submit_upload_queues_a_job_per_slide(app, client, settings, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, ("a.png", png_bytes()), ("b.png", png_bytes()), name="night", priority=2, mpp=0.25)
    assert r.status_code == 202, r.json
    body = r.json
    assert len(body["job_ids"]) == 2 and body["priority"] == 2 and body["name"] == "night"
    assert rows(app) == {"Batch": 1, "Slide": 2, "Job": 2}
    assert queued_messages(settings) == 2
    job = client.get(f"/api/v1/jobs/{body['job_ids'][0]}").json
    assert job["state"] == "queued" and job["progress"] == 0.0
    stored = list((settings.upload_dir / body["id"]).iterdir())
    assert len(stored) == 2
    batch = client.get(f"/api/v1/batches/{body['id']}").json
    assert batch["states"] == {"queued": 2}


PNG = b"<a small PNG>"  # stands for png_bytes() in parameters (fixtures are not available there)


@pytest.mark.parametrize(
    ("files", "fields", "status", "code"),
    [
        ([], {}, 400, "no_slides"),
        ([("empty.svs", b"")], {"mpp": 0.25}, 400, "empty_file"),
        ([("notes.svs", b"this is a text file, not a slide\n" * 10)], {"mpp": 0.25}, 422, "invalid_slide"),
        ([("x.png", PNG)], {}, 422, "invalid_slide"),  # no µm/px anywhere
        ([("x.png", PNG)], {"mpp": "abc"}, 422, "invalid_field"),
        ([("x.png", PNG)], {"mpp": 0.25, "priority": 42}, 422, "invalid_field"),
        ([("../../etc/passwd.png", PNG)], {"mpp": 0.25}, 400, "invalid_filename"),
    ],
)
def test_bad_submissions_write_nothing(app, client, settings, png_bytes, upload, files, fields, status, code) -> None:  # type: ignore[no-untyped-def]
    files = [(name, png_bytes() if data is PNG else data) for name, data in files]
    r = upload(client, *files, **fields)
    assert r.status_code == status, r.json
    assert r.json["error"]["code"] == code and r.json["error"]["message"]
    assert rows(app) == {"Batch": 0, "Slide": 0, "Job": 0}
    assert queued_messages(settings) == 0
    assert not any(settings.upload_dir.iterdir())


def test_one_bad_file_rejects_the_whole_batch(app, client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, ("good.png", png_bytes()), ("bad.jpg", b"\xff\xd8\xff\xe0garbage"), mpp=0.3)
    assert r.status_code == 422
    assert "bad.jpg" in r.json["error"]["message"]
    assert rows(app)["Batch"] == 0


def test_server_paths_below_import_root_only(app, client, settings, png_bytes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = settings.import_root
    (root / "ok.png").write_bytes(png_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    os.symlink(outside, root / "link.png")
    for path, code in [
        ("../secret.png", "path_outside_root"),
        (str(outside), "path_outside_root"),
        ("link.png", "path_outside_root"),
        ("missing.png", "path_not_found"),
    ]:
        r = client.post("/api/v1/batches", json={"paths": [path], "mpp": 0.25})
        assert r.status_code == 400 and r.json["error"]["code"] == code, (path, r.json)
    r = client.post("/api/v1/batches", json={"paths": ["ok.png"], "mpp": 0.25})
    assert r.status_code == 202
    assert rows(app) == {"Batch": 1, "Slide": 1, "Job": 1}


def test_malformed_json_and_wrong_types(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/batches", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.json["error"]["code"] == "malformed_json"
    r = client.post("/api/v1/batches", json={"paths": "x.png"})
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_field"
    r = client.post("/api/v1/batches", json={"paths": ["a"], "mpp": True})
    assert r.status_code == 422


def test_idempotency_key_returns_the_same_batch(app, client, png_bytes) -> None:  # type: ignore[no-untyped-def]
    first = client.post(
        "/api/v1/batches",
        data={"mpp": "0.25", "files": [(io.BytesIO(png_bytes()), "a.png")]},
        headers={"Idempotency-Key": "night-42"},
        content_type="multipart/form-data",
    )
    again = client.post(
        "/api/v1/batches",
        data={"mpp": "0.25", "files": [(io.BytesIO(png_bytes()), "a.png")]},
        headers={"Idempotency-Key": "night-42"},
        content_type="multipart/form-data",
    )
    assert first.status_code == 202 and again.status_code == 200
    assert again.json["id"] == first.json["id"] and again.json["duplicate"] is True
    assert rows(app)["Batch"] == 1


def test_unknown_ids_and_reports_not_ready(client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    for url in ("/api/v1/batches/nope", "/api/v1/jobs/nope", "/api/v1/slides/nope/report"):
        r = client.get(url)
        assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    body = upload(client, ("a.png", png_bytes()), mpp=0.25).json
    slide_id = body["jobs"][0]["slide_id"]
    r = client.get(f"/api/v1/slides/{slide_id}/report")
    assert r.status_code == 409 and "queued" in r.json["error"]["message"]
    assert client.get(f"/api/v1/slides/{slide_id}/report?format=pdfx").status_code == 400
    assert client.get("/api/v1/flags?since=yesterday").status_code == 400
    assert client.get("/api/v1/flags").json["count"] == 0


def test_cancel_a_queued_job(client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    job_id = upload(client, ("a.png", png_bytes()), mpp=0.25).json["job_ids"][0]
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


@pytest.fixture
def client_with(settings, make_key):  # type: ignore[no-untyped-def]
    """``client_with(**overrides) -> (app, client)``: a keyed test client of an app built with some
    settings changed."""
    from api.app import create_app, stop_app
    from hematovision.store.migrate import upgrade

    apps = []

    def build(**overrides):  # type: ignore[no-untyped-def]
        for k, v in overrides.items():
            setattr(settings, k, v)
        upgrade(settings)
        app = create_app(settings)
        apps.append(app)
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = make_key(app=app)
        return app, client

    yield build
    for app in apps:
        stop_app(app)


def test_upload_over_the_size_limit(client_with, upload) -> None:  # type: ignore[no-untyped-def]
    _, client = client_with(max_upload_mb=1)
    r = upload(client, ("big.png", b"\0" * (2 * 2**20)), mpp=0.25)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"


def test_too_many_files_in_one_submission(client_with, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    app, client = client_with(max_batch_parts=3)
    r = upload(client, *[(f"{i}.png", png_bytes()) for i in range(4)], mpp=0.25)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_many_parts"
    assert rows(app)["Batch"] == 0


def test_hostile_files_get_422_and_write_nothing(app, client, settings, png_header, upload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Decompression bomb, truncated pyramid TIFF and SVS, an unsupported format: 4xx JSON, no rows."""
    from hematovision.devtools.synthetic import make_slide

    tiff = tmp_path / "s.tiff"
    make_slide(tiff, tmp_path / "no-data", 1024, 1024, mpp=0.25, n_wbc=2, seed=1, source="procedural")
    svs = tmp_path / "s.svs"
    make_slide(svs, tmp_path / "no-data", 1024, 1024, mpp=0.25, n_wbc=2, seed=1, fmt="svs", source="procedural")
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(gif, format="GIF")
    cases = {
        "bomb.png": png_header(200_000, 200_000),
        "cut.tiff": tiff.read_bytes()[: tiff.stat().st_size // 2],
        "cut.svs": svs.read_bytes()[: svs.stat().st_size // 2],
        "cells.gif": gif.getvalue(),
    }
    for name, data in cases.items():
        r = upload(client, (name, data), mpp=0.25)
        assert r.status_code == 422, (name, r.json)
        assert r.json["error"]["code"] == "invalid_slide" and name in r.json["error"]["message"]
    assert rows(app) == {"Batch": 0, "Slide": 0, "Job": 0}
    assert queued_messages(settings) == 0
