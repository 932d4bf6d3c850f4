"""Shared fixtures in the style of Flask's tutorial: settings -> app -> client.

Also the one rule for what a test needs but the machine may lack (shared data, a service, a tool):
:func:`require` skips the test with ``NOT RUN: <what>`` on a laptop and fails it under CI
(``CI=true``/``1``/``yes``), so that a green CI run never hides a test that did not run. Tests get it
as the ``require`` fixture, or as the ``needs`` marker for a condition known at import time::

    needs_cbc = pytest.mark.needs(CBC.is_dir(), f"CBC annotations under {CBC}")

    def test_reference_model(require) -> None:
        require(path.is_file(), f"the reference model at {path}")

Test modules import nothing from ``tests``: what they share are the fixtures here and in
``tests/unit/conftest.py`` (``make_key``, ``make_job``, ``png_bytes``, ``upload``, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy.orm import Session, sessionmaker

from hematovision.core.datasets import have_pbc
from hematovision.core.settings import Settings, load_settings

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Go on when ``condition`` holds; else skip (``NOT RUN: what``), or fail the test under CI."""
    __tracebackhide__ = True  # reports point at the test's line, not this one
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI needs {what}", pytrace=False)
    pytest.skip(f"NOT RUN: {what}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(condition, what): run only when condition holds; else skip locally, fail under CI (see require)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="needs"):
        require(*mark.args, **mark.kwargs)


@pytest.fixture(name="require", scope="session")
def require_fixture() -> Callable[[bool, str], None]:
    """:func:`require`, for tests and fixtures (test modules do not import from ``tests``)."""
    return require


@pytest.fixture(scope="session")
def data_root() -> Path:
    return load_settings().data_root


@pytest.fixture(scope="session")
def real_cells(data_root: Path) -> Path:
    """The data root to give ``make_slide`` for a slide of real cells: the shared PBC images where
    they are, else (source ``"auto"``) the sample of PBC cells packaged with HematoVision, which every
    checkout has. Tests that need the full data set (accuracy on the PBC test split, BCCD, CBC, ...)
    ``require`` it instead."""
    from hematovision.devtools.sample_build import have_sample, sample_root

    require(
        have_pbc(data_root) or have_sample(),
        f"real PBC images under {data_root} or the packaged sample at {sample_root()}",
    )
    return data_root


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "import").mkdir()
    return Settings(var_dir=tmp_path / "var", database_url="", broker_url="", import_root=tmp_path / "import")


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    from api.app import create_app, stop_app
    from hematovision.store.migrate import upgrade

    upgrade(settings)
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    stop_app(app)


@pytest.fixture
def make_key(request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make_key(scope="admin", name="tests", app=None) -> str``: a new API key, stored in ``app``'s
    database (the ``app`` fixture's unless another app is given)."""

    def make(scope: str = "admin", name: str = "tests", *, app=None) -> str:  # type: ignore[no-untyped-def]
        from hematovision.store.apikeys import create_key

        app = app if app is not None else request.getfixturevalue("app")
        with app.extensions["hv_sessions"]() as s, s.begin():
            return create_key(s, name, scope)

    return make


@pytest.fixture
def client(app, make_key):  # type: ignore[no-untyped-def]
    """A test client that presents an admin key."""
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = make_key()
    return c


#: The password the ``make_user`` and ``person`` fixtures give people unless told otherwise.
TEST_PASSWORD = "correct horse battery"
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@pytest.fixture
def make_user(request: pytest.FixtureRequest) -> Callable[..., int]:
    """``make_user(username="tess", role="technologist", full_name="Tess Tech", password=TEST_PASSWORD,
    app=None) -> user id``: a person stored in ``app``'s database (the ``app`` fixture's unless given)."""

    def make(  # type: ignore[no-untyped-def]
        username: str = "tess",
        role: str = "technologist",
        full_name: str = "Tess Tech",
        password: str = TEST_PASSWORD,
        *,
        app=None,
    ) -> int:
        from hematovision.store.users import create_user

        app = app if app is not None else request.getfixturevalue("app")
        with app.extensions["hv_sessions"]() as s, s.begin():
            return create_user(s, username, full_name, role, password).id

    return make


class PersonClient:
    """A test client logged in to the review UI as a person: ``post``/``get`` send the session cookie,
    and ``post`` the session's CSRF token (header ``X-CSRFToken``) unless ``csrf=False``."""

    def __init__(self, client, username: str, full_name: str, password: str, user_id: int) -> None:  # type: ignore[no-untyped-def]
        self.client, self.username, self.full_name, self.password, self.user_id = (
            client,
            username,
            full_name,
            password,
            user_id,
        )
        self.csrf = ""

    def refresh_csrf(self) -> str:
        page = self.client.get("/ui/")
        assert page.status_code == 200, page.status_code
        found = _CSRF_META.search(page.get_data(as_text=True))
        assert found, "no CSRF token on the page"
        self.csrf = found.group(1)
        return self.csrf

    def get(self, url: str, **kw):  # type: ignore[no-untyped-def]
        return self.client.get(url, **kw)

    def post(self, url: str, *, csrf: bool = True, **kw):  # type: ignore[no-untyped-def]
        headers = dict(kw.pop("headers", {}))
        if csrf:
            headers["X-CSRFToken"] = self.csrf
        return self.client.post(url, headers=headers, **kw)


def login_form(client, username: str, password: str, *, next_url: str | None = None):  # type: ignore[no-untyped-def]
    """POST the login form with the token of a freshly served login page; returns the response."""
    page = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token, "no CSRF field on the login page"
    data = {"username": username, "password": password, "csrf_token": token.group(1)}
    if next_url:
        data["next"] = next_url
    return client.post("/ui/login", data=data)


@pytest.fixture(name="login_form", scope="session")
def login_form_fixture() -> Callable[..., object]:
    """``login_form(client, username, password, next_url=None)``: submit the login form as a browser does."""
    return login_form


@pytest.fixture
def person(app, make_user) -> Callable[..., PersonClient]:  # type: ignore[no-untyped-def]
    """``person(role="technologist", username=None, full_name=None) -> PersonClient``: a new person,
    logged in through the login form on a new test client."""
    made = 0

    def make(role: str = "technologist", username: str | None = None, full_name: str | None = None) -> PersonClient:
        nonlocal made
        made += 1
        username = username or f"{role[:4]}{made}"
        full_name = full_name or f"{role.capitalize()} Number{made}"
        user_id = make_user(username, role, full_name)
        c = app.test_client()
        r = login_form(c, username, TEST_PASSWORD)
        assert r.status_code == 302, r.get_data(as_text=True)
        p = PersonClient(c, username, full_name, TEST_PASSWORD, user_id)
        p.refresh_csrf()
        return p

    return make


class JobRows(NamedTuple):
    """The rows :func:`make_job` wrote, and where: unpacks as ``sessions, job_id, slide_id``."""

    sessions: sessionmaker[Session]
    job_id: str
    slide_id: str


@pytest.fixture
def make_job(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Callable[..., JobRows]]:
    """``make_job(path="/nonexistent/slide.tiff", *, filename=None, mpp=0.25, name="t", priority=5,
    width=None, height=None, state=None) -> JobRows``: one batch with one slide and its job, added
    through ``hematovision.service.submission.add_batch`` as the API adds them (committed; nothing
    queued, no outbox row). ``state`` sets the job's state afterwards (a new job is ``queued``).

    The rows go to the test's database: the ``app`` fixture's sessions when the test uses ``app``,
    else a database migrated here under ``settings.var_dir``.
    """
    from hematovision.service.submission import NewSlide, add_batch

    engines = []
    found: list[sessionmaker[Session]] = []

    def sessions() -> sessionmaker[Session]:
        if not found:
            if "app" in request.fixturenames:
                found.append(request.getfixturevalue("app").extensions["hv_sessions"])
            else:
                from hematovision.store.db import make_engine, make_session_factory
                from hematovision.store.migrate import upgrade

                upgrade(settings)
                engines.append(make_engine(settings))
                found.append(make_session_factory(engines[0]))
        return found[0]

    def make(
        path: str | Path = "/nonexistent/slide.tiff",
        *,
        filename: str | None = None,
        mpp: float | None = 0.25,
        name: str | None = "t",
        priority: int = 5,
        width: int | None = None,
        height: int | None = None,
        state: str | None = None,
    ) -> JobRows:
        factory = sessions()
        entry = NewSlide(filename=filename or Path(path).name, path=str(path), mpp=mpp, width=width, height=height)
        with factory() as s, s.begin():
            _, (job,) = add_batch(s, [entry], name=name, priority=priority, queue=False)
            if state is not None:
                job.state = state
            job_id, slide_id = job.id, job.slide_id
        return JobRows(factory, job_id, slide_id)

    yield make
    for engine in engines:
        engine.dispose()


ACK_COMMENT = "checked on the smear"


def ack_flags(factory, slide_id: str, actor: str = "user:tests") -> list[str]:  # type: ignore[no-untyped-def]
    """Acknowledge every flag raised on the slide (service level, as a reviewer with a comment);
    returns the codes."""
    from hematovision.service.workflow import Author, acknowledge_flag
    from hematovision.store.models import Slide

    with factory() as s, s.begin():
        codes = list(dict.fromkeys(f["code"] for f in (s.get(Slide, slide_id).report or {}).get("flags", [])))
        for code in codes:
            acknowledge_flag(s, slide_id, code, ACK_COMMENT, Author(actor))
    return codes


def ack_flags_http(person, slide_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Acknowledge every flag raised on the slide through the API, as ``person`` (a PersonClient)."""
    codes = list(dict.fromkeys(f["code"] for f in person.get(f"/api/v1/slides/{slide_id}/report").get_json()["flags"]))
    for code in codes:
        r = person.post(f"/api/v1/slides/{slide_id}/flags/{code}/ack", json={"comment": ACK_COMMENT})
        assert r.status_code == 201, r.get_json()
    return codes
