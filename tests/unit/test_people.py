"""People: scrypt password hashes, the users CLI, login and logout, CSRF on session requests,
disabled and locked accounts, and the review pages behind the login."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from hematovision.store.models import AuditEntry, User, new_id
from hematovision.store.users import (
    MAX_FAILED,
    check_password,
    create_user,
    hash_password,
    verify_password,
)


def _audit(app) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    with app.extensions["hv_sessions"]() as s:
        return list(s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars())


def test_password_hashes_are_salted_scrypt_with_their_parameters() -> None:
    a, b = hash_password("a long enough secret"), hash_password("a long enough secret")
    assert a != b, "a new random salt each time"
    kind, n, r, p, salt, digest = a.split("$")
    assert (kind, n, r, p) == ("scrypt", "32768", "8", "1") and len(salt) >= 22 and len(digest) >= 43
    assert "a long enough secret" not in a
    assert check_password(a, "a long enough secret") and not check_password(a, "a long enough secreT")
    assert not check_password("plain", "plain") and not check_password("scrypt$1$2$3$!!$!!", "x")
    # Stored parameters are honoured: a hash made with other parameters still verifies.
    cheap = hash_password.__globals__["_scrypt"]("pw-0123456789", b"0123456789abcdef", 1024, 8, 1)
    import base64

    stored = f"scrypt$1024$8$1${base64.b64encode(b'0123456789abcdef').decode()}${base64.b64encode(cheap).decode()}"
    assert check_password(stored, "pw-0123456789")


def test_create_user_checks_its_input(app) -> None:  # type: ignore[no-untyped-def]
    factory = app.extensions["hv_sessions"]
    bad = [
        (("a", "Name", "technologist", "0123456789"), "username"),
        (("u" * 65, "Name", "technologist", "0123456789"), "too long"),
        (("ok.name", "Jane\r\nMSH|x", "technologist", "0123456789"), "control character"),
        (("ok.name", "N" * 101, "technologist", "0123456789"), "too long"),
        (("ok.name", "Name", "root", "0123456789"), "role"),
        (("ok.name", "Name", "admin", "short"), "password"),
        (("bad name", "Name", "admin", "0123456789"), "username"),
    ]
    for args, why in bad:
        with factory() as s, s.begin(), pytest.raises(ValueError, match=why):
            create_user(s, *args)
    with factory() as s, s.begin():
        create_user(s, "ok.name", "  Jane Doe ", "pathologist", "0123456789")
    with factory() as s, s.begin(), pytest.raises(ValueError, match="taken"):
        create_user(s, "ok.name", "Other", "admin", "0123456789")
    with factory() as s:
        (u,) = s.execute(select(User)).scalars().all()
        assert (u.username, u.full_name, u.role) == ("ok.name", "Jane Doe", "pathologist")


def test_users_cli(app, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(settings.var_dir))
    runner = CliRunner()
    res = runner.invoke(
        main,
        ["users", "create", "--username", "jdoe", "--name", "Jane Doe", "--role", "technologist", "--password-stdin"],
        input="a good password\n",
    )
    assert res.exit_code == 0, res.output
    assert "a good password" not in res.output
    res = runner.invoke(
        main,
        ["users", "create", "--username", "pat", "--name", "Pat Hologist", "--role", "pathologist"],
        input="another password\nanother password\n",
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["users", "list"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert len(lines) == 2 and lines[0].split()[:3] == ["jdoe", "technologist", "active"]
    assert lines[1].split()[:3] == ["pat", "pathologist", "active"]
    # Bad input: a message and a non-zero exit, nothing stored.
    for args, stdin, why in [
        (["--username", "jdoe", "--name", "J", "--role", "admin"], "a good password\n", "taken"),
        (["--username", "x\ty", "--name", "J", "--role", "admin"], "a good password\n", "control character"),
        (["--username", "new", "--name", "J\x1b[2J", "--role", "admin"], "a good password\n", "control character"),
        (["--username", "new", "--name", "J", "--role", "admin"], "short\n", "password"),
        (["--username", "new", "--name", "J", "--role", "god"], "a good password\n", "god"),
    ]:
        res = runner.invoke(main, ["users", "create", *args, "--password-stdin"], input=stdin)
        assert res.exit_code != 0 and why in res.output, (args, res.output)
    assert len(runner.invoke(main, ["users", "list"]).output.splitlines()) == 2
    res = runner.invoke(main, ["users", "disable", "jdoe"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(main, ["users", "list"]).output.splitlines()[0].split()[2] == "disabled"
    res = runner.invoke(main, ["users", "disable", "nobody"])
    assert res.exit_code != 0 and "nobody" in res.output


def test_pages_need_a_login(app, make_user, login_form) -> None:  # type: ignore[no-untyped-def]
    c = app.test_client()
    x = new_id()
    for page in ("/ui/", "/ui/flags", f"/ui/slides/{x}", f"/ui/slides/{x}/gallery", f"/ui/batches/{x}", "/"):
        r = c.get(page)
        assert r.status_code == 302, page
        if page != "/":
            assert r.headers["Location"].startswith("/ui/login?next="), r.headers["Location"]
    login = c.get("/ui/login")
    assert login.status_code == 200 and b"HematoVision" in login.data and b"not yet available" in login.data
    assert c.get("/ui/static/hv.js").status_code == 200
    make_user("jdoe", "technologist", "Jane Doe")
    r = login_form(c, "jdoe", "wrong password!!")
    assert r.status_code == 401 and b"Wrong username or password" in r.data
    r = login_form(c, "jdoe", "correct horse battery", next_url="/ui/flags")
    assert r.status_code == 302 and r.headers["Location"] == "/ui/flags"
    page = c.get("/ui/flags")
    assert page.status_code == 200 and b"Jane Doe" in page.data and b"jdoe" in page.data
    assert re.search(rb'<meta name="csrf-token" content="[^"]+">', page.data)
    rows = _audit(app)
    assert [(e.actor, e.action, e.outcome, e.status) for e in rows] == [
        ("user:jdoe", "login", "refused", 401),
        ("user:jdoe", "login", "allowed", 302),
    ]
    assert rows[0].detail["reason"] == "login failed: wrong password"
    assert "wrong password!!" not in repr([(e.actor, e.resource, e.detail) for e in rows])


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/ui/", "/ui/..\\..\\evil", "/api/v1/jobs/x/cancel"]
)
def test_login_never_redirects_off_the_review_pages(app, make_user, login_form, target: str) -> None:  # type: ignore[no-untyped-def]
    make_user("jdoe")
    r = login_form(app.test_client(), "jdoe", "correct horse battery", next_url=target)
    assert r.status_code == 302 and r.headers["Location"] == "/ui/"


def test_login_form_needs_its_csrf_token(app, make_user) -> None:  # type: ignore[no-untyped-def]
    make_user("jdoe")
    c = app.test_client()
    r = c.post("/ui/login", data={"username": "jdoe", "password": "correct horse battery"})
    assert r.status_code == 400 and b"CSRF" in r.data
    assert c.get("/ui/").status_code == 302, "not logged in"
    assert [(e.action, e.outcome) for e in _audit(app)] == [("login", "refused")]


def test_session_api_requests_need_the_csrf_token(app, person, make_job) -> None:  # type: ignore[no-untyped-def]
    p = person("admin")
    job = make_job(state="queued").job_id
    assert p.get("/api/v1/flags").status_code == 200, "safe requests need no token"
    r = p.post(f"/api/v1/jobs/{job}/cancel", csrf=False)
    assert r.status_code == 400 and r.json["error"]["code"] == "csrf_failed"
    r = p.post(f"/api/v1/jobs/{job}/cancel", csrf=False, headers={"X-CSRFToken": "forged"})
    assert r.status_code == 400 and r.json["error"]["code"] == "csrf_failed"
    other = person("admin")  # another session's token is no good here
    r = p.post(f"/api/v1/jobs/{job}/cancel", csrf=False, headers={"X-CSRFToken": other.csrf})
    assert r.status_code == 400
    r = p.post(f"/api/v1/jobs/{job}/cancel")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    refusals = [e for e in _audit(app) if e.action == "cancel"]
    assert [(e.actor, e.outcome, e.status) for e in refusals] == [
        (f"user:{p.username}", "refused", 400),
        (f"user:{p.username}", "refused", 400),
        (f"user:{p.username}", "refused", 400),
        (f"user:{p.username}", "allowed", 200),
    ]
    assert "CSRF" in refusals[0].detail["reason"]


def test_logout_ends_the_session(app, person) -> None:  # type: ignore[no-untyped-def]
    p = person()
    assert p.post("/ui/logout", csrf=False).status_code == 400, "logout needs the token too"
    r = p.client.post("/ui/logout", data={"csrf_token": p.csrf})
    assert r.status_code == 302 and r.headers["Location"] == "/ui/login"
    assert p.get("/ui/").status_code == 302
    assert p.get("/api/v1/flags").status_code == 401
    assert [e.action for e in _audit(app)][-2:] == ["logout", "read"]


def test_disabled_person_is_refused(app, person, login_form, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    p = person(username="leaver")
    assert p.get("/api/v1/flags").status_code == 200
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(settings.var_dir))
    assert CliRunner().invoke(main, ["users", "disable", "leaver"]).exit_code == 0
    assert p.get("/api/v1/flags").status_code == 401, "the open session ends"
    assert p.get("/ui/").status_code == 302
    r = login_form(app.test_client(), "leaver", p.password)
    assert r.status_code == 401
    assert _audit(app)[-1].detail["reason"] == "login failed: account disabled"


def test_repeated_wrong_passwords_lock_the_account(app, make_user, login_form) -> None:  # type: ignore[no-untyped-def]
    make_user("jdoe")
    c = app.test_client()
    for _ in range(MAX_FAILED):
        assert login_form(c, "jdoe", "not the password").status_code == 401
    r = login_form(c, "jdoe", "correct horse battery")
    assert r.status_code == 401 and b"Too many wrong passwords" in r.data
    assert _audit(app)[-1].detail["reason"].endswith("locked after repeated wrong passwords")
    with app.extensions["hv_sessions"]() as s, s.begin():
        user = s.execute(select(User).where(User.username == "jdoe")).scalar_one()
        assert user.locked_until is not None
        user.locked_until = None  # the lock has run out
    assert login_form(c, "jdoe", "correct horse battery").status_code == 302


def test_verify_password_counts_only_wrong_passwords(app, make_user) -> None:  # type: ignore[no-untyped-def]
    uid = make_user("jdoe")
    with app.extensions["hv_sessions"]() as s, s.begin():
        user = s.get(User, uid)
        assert verify_password(s, user, "nope nope nope").reason == "wrong password"
        assert user.failed_logins == 1
        assert verify_password(s, user, "correct horse battery").user is user
        assert user.failed_logins == 0
        assert verify_password(s, None, "x").reason == "unknown username"
