"""API keys and people: hashed storage, 401 without credentials, the scope and role matrix, CSRF, the
audit log (refusals included, failures fail the request)."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from hematovision.store.apikeys import hash_key
from hematovision.store.models import ApiKey, AuditEntry, Job, new_id

#: (action, method, url template) of one endpoint per action; ``{job}`` is a queued job's id.
ACTIONS = {
    "read": ("get", "/api/v1/flags"),
    "submit": ("post", "/api/v1/batches"),
    "cancel": ("post", "/api/v1/jobs/{job}/cancel"),
    "reclassify": ("post", "/api/v1/cells/999999/label"),
    "signoff": ("post", "/api/v1/slides/0123456789abcdef0123456789abcdef/signoff"),
}
#: What each key scope may do. No key signs off.
KEY_MATRIX = {
    "read": {"read"},
    "submit": {"read", "submit", "cancel"},
    "review": {"read", "reclassify"},
    "admin": {"read", "submit", "cancel", "reclassify"},
}
#: What each person role may do.
ROLE_MATRIX = {
    "technologist": {"read", "reclassify", "signoff"},
    "pathologist": {"read", "reclassify", "signoff"},
    "admin": {"read", "submit", "cancel", "reclassify", "signoff"},
}


def _audit(app) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    with app.extensions["hv_sessions"]() as s:
        return list(s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars())


def test_every_endpoint_but_healthz_needs_credentials(app) -> None:  # type: ignore[no-untyped-def]
    c = app.test_client()
    x = new_id()  # an id of the right shape (another shape matches no route: 404)
    assert c.get("/healthz").status_code == 200
    for method, url in [
        ("get", "/api/v1/openapi.json"),
        ("get", f"/api/v1/batches/{x}"),
        ("get", f"/api/v1/jobs/{x}"),
        ("post", f"/api/v1/jobs/{x}/cancel"),
        ("get", f"/api/v1/slides/{x}/report"),
        ("get", f"/api/v1/slides/{x}/audit"),
        ("get", "/api/v1/flags"),
        ("post", "/api/v1/batches"),
        ("post", f"/api/v1/slides/{x}/signoff"),
        ("get", "/metrics"),
    ]:
        r = getattr(c, method)(url)
        assert r.status_code == 401, url
        assert r.json["error"]["code"] == "unauthorized"
    r = c.get("/api/v1/flags", headers={"X-API-Key": "hv_not-a-real-key"})
    assert r.status_code == 401
    # Every refusal is audited, the invalid key by no part of it.
    rows = _audit(app)
    assert len(rows) == 11 and all(e.outcome == "refused" and e.status == 401 for e in rows)
    assert rows[-1].actor == "key:?" and rows[0].actor == "anonymous"
    assert "hv_not" not in repr([(e.actor, e.resource, e.detail) for e in rows])


@pytest.mark.parametrize("scope", sorted(KEY_MATRIX))
def test_key_scope_matrix(app, make_key, make_job, scope: str) -> None:  # type: ignore[no-untyped-def]
    key = make_key(scope, f"{scope}-machine")
    job = make_job(state="queued").job_id
    c = app.test_client()
    for action, (method, url) in ACTIONS.items():
        kw = {"json": {}} if method == "post" else {}
        r = getattr(c, method)(url.format(job=job), headers={"X-API-Key": key}, **kw)
        allowed = action in KEY_MATRIX[scope]
        if allowed:
            assert r.status_code not in (401, 403), (scope, action, r.status_code, r.json)
        else:
            assert r.status_code == 403, (scope, action, r.status_code)
            assert r.json["error"]["code"] == "forbidden"
    with app.extensions["hv_sessions"]() as s:
        state = s.get(Job, job).state
    assert state == ("cancelled" if "cancel" in KEY_MATRIX[scope] else "queued")
    refused = [e for e in _audit(app) if e.outcome == "refused"]
    assert {e.action for e in refused} == set(ACTIONS) - KEY_MATRIX[scope]
    assert {e.actor for e in refused} == {f"key:{scope}-machine"} and all(e.status == 403 for e in refused)
    assert key not in repr([(e.actor, e.resource, e.detail) for e in _audit(app)])


@pytest.mark.parametrize("role", sorted(ROLE_MATRIX))
def test_person_role_matrix(app, person, make_job, role: str) -> None:  # type: ignore[no-untyped-def]
    p = person(role)
    job = make_job(state="queued").job_id
    for action, (method, url) in ACTIONS.items():
        body = {"password": p.password} if action == "signoff" else {}
        r = p.get(url) if method == "get" else p.post(url.format(job=job), json=body)
        if action in ROLE_MATRIX[role]:
            assert r.status_code not in (401, 403), (role, action, r.status_code, r.json)
        else:
            assert r.status_code == 403, (role, action, r.status_code)
    refused = [e for e in _audit(app) if e.outcome == "refused"]
    assert {e.action for e in refused} == set(ACTIONS) - ROLE_MATRIX[role]
    assert {e.actor for e in refused} <= {f"user:{p.username}"}


def test_submit_key_cannot_reclassify_or_sign_off(app, make_key) -> None:  # type: ignore[no-untyped-def]
    intake = make_key("submit", "lis-intake")
    c = app.test_client()
    r = c.post("/api/v1/cells/1/label", headers={"X-API-Key": intake}, json={"label": "lymphocyte"})
    assert r.status_code == 403 and "reclassify" in r.json["error"]["message"]
    r = c.post("/api/v1/slides/0123456789abcdef0123456789abcdef/signoff", headers={"X-API-Key": intake}, json={})
    assert r.status_code == 403 and "person" in r.json["error"]["message"]
    admin = make_key("admin", "root-machine")
    r = c.post("/api/v1/slides/0123456789abcdef0123456789abcdef/signoff", headers={"X-API-Key": admin}, json={})
    assert r.status_code == 403, "not even an admin key signs off"
    rows = _audit(app)
    assert [(e.actor, e.action, e.outcome) for e in rows] == [
        ("key:lis-intake", "reclassify", "refused"),
        ("key:lis-intake", "signoff", "refused"),
        ("key:root-machine", "signoff", "refused"),
    ]
    assert rows[1].slide_id == "0123456789abcdef0123456789abcdef"
    assert rows[1].detail["reason"] == "sign-off with an API key"


def test_submission_with_a_submit_key(app, make_key, png_bytes) -> None:  # type: ignore[no-untyped-def]
    c = app.test_client()
    submit = make_key("submit", "intake")
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
    res = CliRunner().invoke(main, ["keys", "create", "--scope", "review", "--name", "morning"])
    assert res.exit_code == 0, res.output
    key = res.output.splitlines()[0].strip()
    with app.extensions["hv_sessions"]() as s:
        row = s.execute(select(ApiKey).where(ApiKey.name == "morning")).scalar_one()
        assert row.key_sha256 == hash_key(key) and key not in (row.prefix, row.key_sha256)
        assert row.scope == "review"
    c = app.test_client()
    assert c.get("/api/v1/flags", headers={"X-API-Key": key}).status_code == 200
    res = CliRunner().invoke(main, ["keys", "revoke", key[:10]])
    assert res.exit_code == 0, res.output
    assert c.get("/api/v1/flags", headers={"X-API-Key": key}).status_code == 401
    bad = CliRunner().invoke(main, ["keys", "create", "--scope", "root"])
    assert bad.exit_code != 0 and "root" in bad.output


def test_keys_create_help_names_every_scope() -> None:
    from hematovision.cli import main

    res = CliRunner().invoke(main, ["keys", "create", "--help"])
    assert res.exit_code == 0
    flat = " ".join(res.output.split())
    assert "read|submit|review|admin" in flat and "No key can sign off" in flat


@pytest.mark.parametrize(
    ("name", "why"),
    [("x" * 65, "too long"), ("lis\r\nMSH|^~\\&|EVIL", "control character"), ("", "empty"), ("   ", "empty")],
)
def test_key_names_are_checked(app, settings, monkeypatch, name: str, why: str) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(settings.var_dir))
    res = CliRunner().invoke(main, ["keys", "create", "--scope", "read", "--name", name])
    assert res.exit_code != 0 and why in res.output, res.output
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(ApiKey)).first() is None  # nothing half-written
    ok = CliRunner().invoke(main, ["keys", "create", "--scope", "read", "--name", "y" * 64])
    assert ok.exit_code == 0, ok.output


def test_audit_log_records_who_did_what(app, client, png_bytes) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        "/api/v1/batches",
        data={"mpp": "0.25", "files": [(io.BytesIO(png_bytes()), "a.png")]},
        content_type="multipart/form-data",
    )
    batch_id, job_id = r.json["id"], r.json["job_ids"][0]
    client.get("/api/v1/flags")
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    client.post(f"/api/v1/jobs/{job_id}/cancel")  # already final: 409, audited as failed
    rows = _audit(app)
    assert [(e.action, e.status, e.outcome) for e in rows] == [
        ("submit", 202, "allowed"),
        ("read", 200, "allowed"),
        ("cancel", 200, "allowed"),
        ("cancel", 409, "failed"),
    ]
    assert rows[0].resource == f"batch:{batch_id}" and all(e.actor == "key:tests" for e in rows)
    assert rows[2].detail["job_id"] == job_id and rows[2].slide_id is not None
    key = client.environ_base["HTTP_X_API_KEY"]
    assert key[:6] not in repr([(e.actor, e.resource, e.detail) for e in rows])


def _break_audit_inserts(app) -> None:  # type: ignore[no-untyped-def]
    """Make every insert into audit_log fail in the database itself (a trigger that aborts)."""
    with app.extensions["hv_engine"].begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is read-only'); END"
            )
        )


def test_a_failed_audit_write_fails_the_request(app, client, make_job, person) -> None:  # type: ignore[no-untyped-def]
    job = make_job(state="queued").job_id
    tech = person("technologist")
    _break_audit_inserts(app)
    # A change: refused as a whole (the job stays queued).
    r = client.post(f"/api/v1/jobs/{job}/cancel")
    assert r.status_code == 500 and r.json["error"]["code"] == "audit_failed"
    with app.extensions["hv_sessions"]() as s:
        assert s.get(Job, job).state == "queued"
    # A read: the answer is not sent.
    r = client.get("/api/v1/flags?format=csv")
    assert r.status_code == 500 and r.json["error"]["code"] == "audit_failed"
    # A refusal: not silently answered either.
    r = app.test_client().get("/api/v1/flags")
    assert r.status_code == 500 and r.json["error"]["code"] == "audit_failed"
    # A session request without its CSRF token, and a login.
    r = tech.post(f"/api/v1/jobs/{job}/cancel", csrf=False)
    assert r.status_code == 500
    with app.extensions["hv_engine"].begin() as conn:
        conn.execute(text("DROP TRIGGER audit_refuses"))
    assert client.get("/api/v1/flags").status_code == 200
