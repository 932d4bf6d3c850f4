"""API keys: hashed storage, 401 without a valid key, 403 without the scope, audit log."""

from __future__ import annotations

import io

from click.testing import CliRunner
from sqlalchemy import select

from hematovision.store.apikeys import hash_key
from hematovision.store.models import ApiKey, AuditEntry, new_id


def test_every_endpoint_but_healthz_needs_a_key(app) -> None:  # type: ignore[no-untyped-def]
    c = app.test_client()
    x = new_id()  # an id of the right shape (another shape matches no route: 404)
    assert c.get("/healthz").status_code == 200
    for method, url in [
        ("get", "/api/v1/openapi.json"),
        ("get", f"/api/v1/batches/{x}"),
        ("get", f"/api/v1/jobs/{x}"),
        ("post", f"/api/v1/jobs/{x}/cancel"),
        ("get", f"/api/v1/slides/{x}/report"),
        ("get", "/api/v1/flags"),
        ("post", "/api/v1/batches"),
    ]:
        r = getattr(c, method)(url)
        assert r.status_code == 401, url
        assert r.json["error"]["code"] == "unauthorized"
    r = c.get("/api/v1/flags", headers={"X-API-Key": "hv_not-a-real-key"})
    assert r.status_code == 401


def test_scopes(app, make_key, png_bytes) -> None:  # type: ignore[no-untyped-def]
    c = app.test_client()
    read = make_key("read", "viewer")
    submit = make_key("submit", "intake")
    assert c.get("/api/v1/flags", headers={"X-API-Key": read}).status_code == 200
    r = c.post("/api/v1/batches", headers={"X-API-Key": read}, json={"paths": ["x"]})
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    r = c.post(
        "/api/v1/batches",
        headers={"Authorization": f"Bearer {submit}"},
        data={"mpp": "0.25", "files": [(io.BytesIO(png_bytes()), "a.png")]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 202


def test_keys_are_stored_hashed_and_revocable(app, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(settings.var_dir))
    res = CliRunner().invoke(main, ["keys", "create", "--scope", "read", "--name", "morning"])
    assert res.exit_code == 0, res.output
    key = res.output.splitlines()[0].strip()
    with app.extensions["hv_sessions"]() as s:
        row = s.execute(select(ApiKey).where(ApiKey.name == "morning")).scalar_one()
        assert row.key_sha256 == hash_key(key) and key not in (row.prefix, row.key_sha256)
    c = app.test_client()
    assert c.get("/api/v1/flags", headers={"X-API-Key": key}).status_code == 200
    res = CliRunner().invoke(main, ["keys", "revoke", key[:10]])
    assert res.exit_code == 0, res.output
    assert c.get("/api/v1/flags", headers={"X-API-Key": key}).status_code == 401
    bad = CliRunner().invoke(main, ["keys", "create", "--scope", "root"])
    assert bad.exit_code != 0 and "root" in bad.output


def test_audit_log_records_who_did_what(app, client, png_bytes) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        "/api/v1/batches",
        data={"mpp": "0.25", "files": [(io.BytesIO(png_bytes()), "a.png")]},
        content_type="multipart/form-data",
    )
    batch_id, job_id = r.json["id"], r.json["job_ids"][0]
    client.get("/api/v1/flags")
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    with app.extensions["hv_sessions"]() as s:
        rows = s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars().all()
    assert [(e.action, e.status) for e in rows] == [("submit", 202), ("read", 200), ("cancel", 200)]
    assert rows[0].resource == f"batch:{batch_id}" and rows[0].actor.startswith("key:tests:")
