"""Strict intake and the submission that never loses a slide, on embedded defaults (SQLite and the
filesystem queue; a broker that is down is a Redis URL on a port where nothing listens).

Each rule of ``POST /api/v1/batches``: unknown fields, strict numbers, bounded paths, names, the
idempotency key scoped per API key and bound to the submission, 503 only when nothing can be
accepted, 202 while the broker is down (the outbox publishes later), no server paths in messages,
staging folders of a killed API swept at start, and /healthz's three checks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hematovision.devtools.localstack import free_port
from hematovision.store.models import Batch, Job, OutboxMessage, Slide, utcnow


def rows(app) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with app.extensions["hv_sessions"]() as s:
        return {
            t.__name__: s.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (Batch, Slide, Job, OutboxMessage)
        }


def messages(settings) -> int:  # type: ignore[no-untyped-def]
    return len(list(settings.broker_dir.glob("*.msg")))


@pytest.fixture
def build(settings, make_key):  # type: ignore[no-untyped-def]
    """``build(**settings_overrides) -> (app, client)``: an app on changed settings and a keyed client."""
    from api.app import create_app, stop_app
    from hematovision.store.migrate import upgrade

    apps = []

    def make(**overrides):  # type: ignore[no-untyped-def]
        for k, v in overrides.items():
            setattr(settings, k, v)
        upgrade(settings)
        app = create_app(settings)
        apps.append(app)
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = make_key(app=app)
        return app, client

    yield make
    for app in apps:
        stop_app(app)


@pytest.fixture
def import_png(settings, png_bytes) -> str:  # type: ignore[no-untyped-def]
    (settings.import_root / "ok.png").write_bytes(png_bytes())
    return "ok.png"


def post_json(client, body: str | dict, **headers: str):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post("/api/v1/batches", data=data, content_type="application/json", headers=headers)


# ------------------------------------------------------------------------------------- strict fields


def test_unknown_fields_are_refused_and_named(app, client, png_bytes, upload, import_png) -> None:  # type: ignore[no-untyped-def]
    r = post_json(client, {"paths": [import_png], "mmp": 0.5})
    assert r.status_code == 422 and r.json["error"]["code"] == "unknown_field"
    assert "'mmp'" in r.json["error"]["message"]
    r = upload(client, ("a.png", png_bytes()), mpp=0.25, prioritty=3)
    assert r.status_code == 422 and "'prioritty'" in r.json["error"]["message"]
    r = client.post(
        "/api/v1/batches",
        data={"mpp": "0.25", "slides": [(io.BytesIO(png_bytes()), "a.png")]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and "slides" in r.json["error"]["message"]
    assert rows(app) == {"Batch": 0, "Slide": 0, "Job": 0, "OutboxMessage": 0}


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("mpp", "1_0"),  # Python's float() reads 10.0
        ("priority", "१"),  # Devanagari one: int() reads 1
        ("priority", "٣"),  # Arabic-Indic three
        ("mpp", "1e400"),  # infinite
        ("mpp", "nan"),
        ("mpp", " 0.25"),
        ("priority", "0x1"),
        ("priority", "2.5"),
        ("priority", "10"),  # out of range
        ("wbc_per_l", "-1"),
    ],
)
def test_numbers_are_parsed_strictly_in_forms(app, client, png_bytes, upload, field, raw) -> None:  # type: ignore[no-untyped-def]
    fields = {"mpp": "0.25", field: raw}
    r = upload(client, ("a.png", png_bytes()), **fields)
    assert r.status_code == 422, (raw, r.json)
    assert r.json["error"]["code"] == "invalid_field" and field in r.json["error"]["message"]
    assert rows(app)["Batch"] == 0


@pytest.mark.parametrize(
    "body",
    [
        '{"paths": ["ok.png"], "mpp": 0.25, "priority": 1e400}',  # was a 500
        '{"paths": ["ok.png"], "mpp": NaN}',
        '{"paths": ["ok.png"], "mpp": Infinity}',
        '{"paths": ["ok.png"], "mpp": "1_0"}',
        '{"paths": ["ok.png"], "mpp": 0.25, "priority": "१"}',
        '{"paths": ["ok.png"], "mpp": 0.25, "priority": 2.5}',
        '{"paths": ["ok.png"], "mpp": 0.25, "priority": true}',
        '{"paths": ["ok.png"], "mpp": [0.25]}',
    ],
)
def test_numbers_are_parsed_strictly_in_json(app, client, import_png, body: str) -> None:  # type: ignore[no-untyped-def]
    r = post_json(client, body)
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_field", (body, r.json)
    assert rows(app)["Batch"] == 0


def test_plain_numbers_are_accepted(app, client, png_bytes, upload, import_png) -> None:  # type: ignore[no-untyped-def]
    r = post_json(client, {"paths": [import_png], "mpp": 0.25, "priority": 7, "wbc_per_l": 6.5e9})
    assert r.status_code == 202, r.json
    assert r.json["priority"] == 7
    r = upload(client, ("a.png", png_bytes()), mpp="2.5E-1", priority="0", wbc_per_l="6500000000")
    assert r.status_code == 202, r.json
    with app.extensions["hv_sessions"]() as s:
        assert sorted(s.scalars(select(Slide.mpp))) == [0.25, 0.25]


def test_names_are_bounded_and_without_control_characters(app, client, import_png) -> None:  # type: ignore[no-untyped-def]
    for name in ("x" * 201, "night\x00shift", "line\nbreak"):
        r = post_json(client, {"paths": [import_png], "mpp": 0.25, "name": name})
        assert r.status_code == 422 and r.json["error"]["code"] == "invalid_field", name
        assert "name" in r.json["error"]["message"]
    r = post_json(client, {"paths": [import_png], "mpp": 0.25, "name": "é" * 200})
    assert r.status_code == 202 and r.json["name"] == "é" * 200


def test_a_field_given_twice_is_refused(app, client, png_bytes) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        "/api/v1/batches",
        data={"mpp": "0.25", "priority": ["1", "8"], "files": [(io.BytesIO(png_bytes()), "a.png")]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and r.json["error"]["code"] == "duplicate_field"
    assert rows(app)["Batch"] == 0


def test_number_of_paths_is_bounded(build, settings, png_bytes) -> None:  # type: ignore[no-untyped-def]
    app, client = build(max_paths=3)
    for i in range(4):
        (settings.import_root / f"{i}.png").write_bytes(png_bytes())
    r = post_json(client, {"paths": [f"{i}.png" for i in range(4)], "mpp": 0.25})
    assert r.status_code == 413 and r.json["error"]["code"] == "too_many_paths" and "3" in r.json["error"]["message"]
    r = client.post("/api/v1/batches", data={"paths": [f"{i}.png" for i in range(4)], "mpp": "0.25"})
    assert r.status_code == 413 and r.json["error"]["code"] == "too_many_paths"
    # A JSON body far larger than the paths allowed could fill is refused before it is parsed.
    r = post_json(client, {"paths": ["x" * 4000] * 200, "mpp": 0.25})
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"
    assert rows(app)["Batch"] == 0
    r = post_json(client, {"paths": [f"{i}.png" for i in range(3)], "mpp": 0.25})
    assert r.status_code == 202 and len(r.json["job_ids"]) == 3


# -------------------------------------------------------------------------------------- idempotency


def test_idempotency_key_bound_to_the_submission(app, client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    key = {"headers": {"Idempotency-Key": "night-7"}}
    first = upload(client, ("a.png", png_bytes()), mpp=0.25, **key)
    assert first.status_code == 202
    same = upload(client, ("a.png", png_bytes()), mpp=0.25, **key)
    assert same.status_code == 200 and same.json["duplicate"] is True and same.json["id"] == first.json["id"]
    for other in (
        upload(client, ("a.png", png_bytes()), ("b.png", png_bytes()), mpp=0.25, **key),  # a slide more
        upload(client, ("a.png", png_bytes(80, 60)), mpp=0.25, **key),  # another file of that name
        upload(client, ("a.png", png_bytes()), mpp=0.3, **key),  # another field
    ):
        assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_conflict", other.json
        assert first.json["id"] in other.json["error"]["message"]
    assert rows(app) == {"Batch": 1, "Slide": 1, "Job": 1, "OutboxMessage": 1}
    assert not [p for p in (app.extensions["hv_settings"].upload_dir).iterdir() if p.name.startswith(".incoming")]


def test_idempotency_key_is_scoped_to_the_api_key(app, client, make_key, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    other = app.test_client()
    other.environ_base["HTTP_X_API_KEY"] = make_key("submit", "second-lis")
    key = {"headers": {"Idempotency-Key": "batch-1"}}
    a = upload(client, ("a.png", png_bytes()), mpp=0.25, **key)
    b = upload(other, ("a.png", png_bytes()), mpp=0.25, **key)
    assert a.status_code == 202 and b.status_code == 202 and a.json["id"] != b.json["id"]
    again = upload(other, ("a.png", png_bytes()), mpp=0.25, **key)
    assert again.status_code == 200 and again.json["id"] == b.json["id"]
    assert rows(app)["Batch"] == 2


def test_idempotency_owner_is_the_key_row_or_the_person(app, client, person, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    from hematovision.store.models import ApiKey

    key = {"Idempotency-Key": "same-key"}
    by_key = upload(client, ("a.png", png_bytes()), mpp=0.25, headers=key)
    admin = person("admin")
    by_person = upload(admin.client, ("a.png", png_bytes()), mpp=0.25, headers={**key, "X-CSRFToken": admin.csrf})
    assert by_key.status_code == 202 and by_person.status_code == 202, by_person.json
    with app.extensions["hv_sessions"]() as s:
        key_id = s.execute(select(ApiKey.id).where(ApiKey.name == "tests")).scalar_one()
        owners = {b.id: b.idempotency_owner for b in s.scalars(select(Batch))}
    assert owners == {by_key.json["id"]: f"key:{key_id}", by_person.json["id"]: f"user:{admin.user_id}"}


# ------------------------------------------------------------------ identity: sessions and the audit


def test_a_session_submission_streams_its_uploads_and_takes_the_csrf_header(  # type: ignore[no-untyped-def]
    app, settings, person, png_bytes, upload
) -> None:
    admin = person("admin")
    ok = upload(admin.client, ("血液.png", png_bytes()), mpp=0.25, headers={"X-CSRFToken": admin.csrf})
    assert ok.status_code == 202, ok.json
    assert [j["filename"] for j in ok.json["jobs"]] == ["血液.png"]
    assert [p.name for p in (settings.upload_dir / ok.json["id"]).iterdir()] == ["0000-slide.png"]
    # The token in the form is not looked for: the form is the body, read by the view alone.
    r = upload(admin.client, ("a.png", png_bytes()), mpp=0.25, csrf_token=admin.csrf)
    assert r.status_code == 400 and r.json["error"]["code"] == "csrf_failed", r.json
    # A technologist may not submit.
    tech = person("technologist")
    r = upload(tech.client, ("a.png", png_bytes()), mpp=0.25, headers={"X-CSRFToken": tech.csrf})
    assert r.status_code == 403
    assert rows(app)["Batch"] == 1
    assert not [p for p in settings.upload_dir.iterdir() if p.name.startswith(".incoming")]


def test_a_submission_and_its_audit_entry_are_one_transaction(app, client, settings, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from hematovision.store.models import AuditEntry

    ok = upload(client, ("a.png", png_bytes()), mpp=0.25)
    assert ok.status_code == 202
    with app.extensions["hv_sessions"]() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "submit")).all()
        assert (entry.resource, entry.status, entry.outcome, entry.actor) == (
            f"batch:{ok.json['id']}",
            202,
            "allowed",
            "key:tests",
        )
    with app.extensions["hv_engine"].begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is read-only'); END"
            )
        )
    r = upload(client, ("b.png", png_bytes()), mpp=0.25)
    assert r.status_code == 500 and r.json["error"]["code"] == "audit_failed", r.json
    assert rows(app) == {"Batch": 1, "Slide": 1, "Job": 1, "OutboxMessage": 1}  # nothing of the second
    assert sorted(p.name for p in settings.upload_dir.iterdir()) == [ok.json["id"]]  # nor its files


# ------------------------------------------------------------------------ outages: broker, storage


def test_broker_down_submission_is_accepted_and_queued_when_it_returns(build, settings, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    from hematovision.core.settings import Settings
    from hematovision.service.outbox import dispatch
    from hematovision.service.queueing import make_celery

    app, client = build(broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    r = upload(client, ("a.png", png_bytes()), ("b.png", png_bytes()), mpp=0.25, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 202, r.json
    assert r.json["queued"] is False and r.json["states"] == {"queued": 2}
    assert rows(app) == {"Batch": 1, "Slide": 2, "Job": 2, "OutboxMessage": 2}
    assert len(list((settings.upload_dir / r.json["id"]).iterdir())) == 2
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json["broker"] == "down" and health.json["status"] == "degraded"
    load = client.get("/api/v1/queues").json
    assert load["broker_reachable"] is False
    assert load["stages"]["prepare"]["queued"] == 2 and load["stages"]["prepare"]["stranded"] == 2
    # A retry with the same key gets the same batch, whose jobs are still to be queued.
    again = upload(client, ("a.png", png_bytes()), ("b.png", png_bytes()), mpp=0.25, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json["id"] == r.json["id"]
    # The broker is back (here: the same installation on its filesystem queue): the rows go out.
    back = make_celery(Settings(var_dir=settings.var_dir, broker_url=""))
    later = utcnow() + timedelta(minutes=5)  # past the backoff the failed attempts set
    result = dispatch(app.extensions["hv_sessions"], back, now=later)
    assert (result.sent, result.error) == (2, None)
    assert messages(settings) == 2
    with app.extensions["hv_sessions"]() as s:
        assert all(m.sent_at is not None for m in s.scalars(select(OutboxMessage)))
    assert dispatch(app.extensions["hv_sessions"], back, now=later).sent == 0  # published once


def _make_unwritable(folder: Path) -> None:
    """Put a file where the folder was: no process, root included, can create anything in it."""
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def test_unwritable_upload_folder_gives_503_and_writes_nothing(  # type: ignore[no-untyped-def]
    app, client, settings, png_bytes, upload, import_png
) -> None:
    _make_unwritable(settings.upload_dir)
    r = upload(client, ("a.png", png_bytes()), mpp=0.25)
    assert r.status_code == 503 and r.json["error"]["code"] == "upload_storage_unavailable"
    assert str(settings.var_dir) not in r.json["error"]["message"]
    assert rows(app)["Batch"] == 0
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["error"]["code"] == "upload_storage_unavailable"
    assert health.json["uploads"]["writable"] is False and health.json["database"] == "ok"
    # Server-side paths need no upload folder: they are still accepted.
    r = post_json(client, {"paths": [import_png], "mpp": 0.25})
    assert r.status_code == 202 and rows(app)["Batch"] == 1


def test_messages_name_the_file_as_the_client_did(app, client, settings, upload) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, ("scan 1.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100), mpp=0.25)
    assert r.status_code == 422
    msg = r.json["error"]["message"]
    assert msg.startswith("scan 1.png"), msg  # the display name, as given
    for leak in (str(settings.var_dir), "uploads", ".incoming", "0000-"):
        assert leak not in msg, msg


def test_staging_folders_of_a_killed_api_are_swept_at_start(settings) -> None:  # type: ignore[no-untyped-def]
    from api.app import create_app, stop_app
    from hematovision.store.migrate import upgrade

    upgrade(settings)
    old = settings.upload_dir / ".incoming-0123456789abcdef"
    (old / "part-00001").parent.mkdir(parents=True)
    (old / "part-00001").write_bytes(b"half an upload")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    fresh = settings.upload_dir / ".incoming-fedcba9876543210"  # another API process at work
    fresh.mkdir()
    stop_app(create_app(settings))
    assert not old.exists() and fresh.exists()


# ------------------------------------------------------------------------------ image validation


def test_truncated_or_corrupt_png_is_refused_without_decoding(tmp_path: Path, png_bytes) -> None:  # type: ignore[no-untyped-def]
    from hematovision.core.slides import SlideError, validate_slide

    data = png_bytes(256, 256)
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideError, match="cut.png.*truncated or corrupt"):
        validate_slide(cut, mpp=0.25)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(SlideError, match="checksum"):
        validate_slide(bad, mpp=0.25)
    good = tmp_path / "good.png"
    good.write_bytes(data)
    assert validate_slide(good, mpp=0.25)["dimensions"] == [256, 256]


@pytest.mark.slow
def test_a_large_png_is_validated_without_decoding_it_whole(tmp_path: Path) -> None:
    """A 110-megapixel PNG (0.3 MB on disk, 330 MB of pixels) is checked in a process whose peak
    memory stays far below one decoded copy."""
    import struct
    import subprocess
    import sys
    import zlib

    w, h = 11_000, 10_000
    comp = zlib.compressobj(9)
    row = b"\0" + b"\xf0" * (3 * w)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = tmp_path / "field.png"
    png.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    code = (
        "import resource, sys\n"
        "from hematovision.core.slides import validate_slide\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "info = validate_slide(sys.argv[1], mpp=0.25)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(info['dimensions'], (after - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    dims, grown_mb = out.stdout.rsplit(" ", 1)
    assert dims.strip() == f"[{w}, {h}]"
    assert int(grown_mb) < 100, f"validation grew the process by {grown_mb} MB (one decoded copy is 330 MB)"
