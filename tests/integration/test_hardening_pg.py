"""Issue 13's id hardening where PostgreSQL differs from SQLite: a NUL in a string parameter, an
integer beyond its column and a 32-bit ``cells.id`` were 500s there. Here, on a real PostgreSQL:
every endpoint with an id answers 404 to a malformed or oversized one, a text value PostgreSQL
refuses is a 400, a cell with id 2**40 is read, shown and reclassified through the API, and
revision 0007 widens an existing 0004 database to a schema that matches the models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import create_engine, select, text

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.core.settings import Settings
from hematovision.store.models import CELL_ID_MAX, Batch, Cell, CellReview, new_id

BAD_IDS = ["%00", "%00" + "0" * 31, "x", "A" * 32, "0" * 33, "..%5Cjobs%5C" + "0" * 32]
BAD_CELL_IDS = ["%00", "0", "-1", str(2**63), "9" * 30, "%E0%A5%A7", "01"]
CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


def _fresh_schema(url: str) -> None:
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()


def _settings(url: str, tmp_path: Path) -> Settings:
    (tmp_path / "import").mkdir(exist_ok=True)
    return Settings(var_dir=tmp_path / "var", database_url=url, broker_url="", import_root=tmp_path / "import")


@pytest.fixture
def pg_client(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Flask, FlaskClient]]:
    """The API on a freshly migrated PostgreSQL schema, and a client with an admin key."""
    from api.app import create_app, stop_app
    from hematovision.store.apikeys import create_key
    from hematovision.store.migrate import upgrade

    _fresh_schema(postgres_url)
    settings = _settings(postgres_url, tmp_path)
    upgrade(settings)
    app = create_app(settings)
    with app.extensions["hv_sessions"]() as s, s.begin():
        key = create_key(s, "hardening", "admin")
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = key
    yield app, client
    stop_app(app)


def _id_routes(app: Flask) -> list[tuple[str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        if any(a.endswith("_id") for a in rule.arguments):
            out += [(m, rule.rule) for m in sorted(rule.methods or ()) if m in ("GET", "POST")]
    return out


def _url(rule: str, *, hexid: str | None = None, cellid: str | None = None) -> str:
    url = re.sub(r"<hexid:\w+>", hexid or new_id(), rule)
    url = re.sub(r"<cellid:\w+>", cellid or "1", url)
    return re.sub(r"<int:\w+>", "0", url)


PASSWORD = "pg hardening pw"


def _open(client: FlaskClient, method: str, url: str) -> Any:
    body = {"password": PASSWORD} if url.endswith("/signoff") else {"label": "neutrophil"}
    return client.open(url, method=method, json=body if method == "POST" else None)


def _person(app: Flask, login_form: Any) -> FlaskClient:
    """A client logged in as an admin person, sending the session's CSRF token on every request."""
    from hematovision.store.users import create_user

    with app.extensions["hv_sessions"]() as s, s.begin():
        create_user(s, "pgadmin", "Pg Admin", "admin", PASSWORD)
    c = app.test_client()
    assert login_form(c, "pgadmin", PASSWORD).status_code == 302
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/ui/").get_data(as_text=True))
    assert token
    c.environ_base["HTTP_X_CSRFTOKEN"] = token.group(1)
    return c


def test_malformed_and_oversized_ids_are_404_on_postgres(pg_client: tuple[Flask, FlaskClient], login_form) -> None:  # type: ignore[no-untyped-def]
    app, client = pg_client
    person = _person(app, login_form)  # the review pages and sign-off are a person's (keys: 302/403)
    routes = _id_routes(app)
    assert len({r for _, r in routes}) >= 13
    for method, rule in routes:
        cell = "<cellid:" in rule
        for value in BAD_CELL_IDS if cell else BAD_IDS:
            url = _url(rule, cellid=value) if cell else _url(rule, hexid=value)
            r = _open(client, method, url)
            assert r.status_code == 404 and r.json["error"]["code"] == "not_found", (method, url, r.status_code)
        # well-formed but absent (2**31 was past int4; 2**63 - 1 is the last BIGINT): 404 from the API,
        # the empty shell from a review page (its script then asks the API)
        for value in [str(2**31), str(CELL_ID_MAX)] if cell else [new_id()]:
            url = _url(rule, cellid=value) if cell else _url(rule, hexid=value)
            r = _open(person if rule.startswith("/ui/") or rule.endswith("/signoff") else client, method, url)
            expected = 200 if rule.startswith("/ui/") else 404
            assert r.status_code == expected, (method, url, r.status_code, r.get_data(as_text=True)[:200])


def test_query_parameters_and_refused_text_are_4xx_on_postgres(pg_client: tuple[Flask, FlaskClient]) -> None:
    app, client = pg_client
    for url, code in [
        ("/api/v1/batches?limit=%C2%B3", "invalid_limit"),
        ("/api/v1/flags?batch=%00", "invalid_batch"),
        ("/api/v1/flags?since=%00", "invalid_since"),
    ]:
        r = client.get(url)
        assert r.status_code == 400 and r.json["error"]["code"] == code, (url, r.json)
    settings: Settings = app.extensions["hv_settings"]
    assert settings.import_root is not None
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(settings.import_root / "ok.png")
    # A NUL in a text value reaches PostgreSQL only where no check stops it first (the batch name,
    # here): the database refuses it, and that is a 4xx with nothing written, not a 500.
    r = client.post("/api/v1/batches", json={"paths": ["ok.png"], "mpp": 0.25, "name": "night\x00shift"})
    assert 400 <= r.status_code < 500, r.get_data(as_text=True)[:300]
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(Batch)).scalars().all() == []


def _analysed_slide(app: Flask, tmp_path: Path) -> tuple[str, int]:
    """A small field image with three white cells, analysed and stored; returns (slide id, a cell id)."""
    from hematovision.service.slide_results import build_report
    from hematovision.service.submission import NewSlide, add_batch
    from workers.job_store import store_analysis

    path = tmp_path / "field.png"
    Image.fromarray(np.full((256, 256, 3), 210, np.uint8)).save(path)
    factory = app.extensions["hv_sessions"]
    with factory() as s, s.begin():
        _, (job,) = add_batch(
            s, [NewSlide(filename="血液.png", path=str(path), mpp=0.25, width=256, height=256)], queue=False
        )
        job.state = "running"
        job_id, slide_id = job.id, job.slide_id
    cells = [CellResult("wbc", (10 + 60 * i, 10, 50 + 60 * i, 50), 0.9, "neutrophil", 0.9) for i in range(3)]
    analysis = SlideAnalysis(
        mpp=0.25, width=256, height=256, model_name="t", model_version="1", classes=CLASSES, cells=cells
    )
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    with factory() as s:
        first = s.execute(select(Cell.id).where(Cell.slide_id == slide_id).order_by(Cell.id)).scalars().first()
    assert first is not None
    return slide_id, first


def test_a_cell_with_id_2_to_the_40_through_the_api(pg_client: tuple[Flask, FlaskClient], tmp_path: Path) -> None:
    app, client = pg_client
    slide_id, first = _analysed_slide(app, tmp_path)
    big = 2**40
    factory = app.extensions["hv_sessions"]
    with factory() as s, s.begin():
        s.execute(text("UPDATE cells SET id = :big WHERE id = :first"), {"big": big, "first": first})
        # the sequence is BIGINT too: the next cell is numbered past 2**40
        s.execute(text("SELECT setval(pg_get_serial_sequence('cells', 'id'), :v)"), {"v": big + 10})
        s.add(Cell(slide_id=slide_id, kind="rbc", x0=0, y0=0, x1=4, y1=4, score=0.5))
    with factory() as s:
        assert max(s.execute(select(Cell.id)).scalars()) == big + 11
    body = client.get(f"/api/v1/slides/{slide_id}/cells?kind=all").json
    assert big in [c["id"] for c in body["cells"]] and body["filename"] == "血液.png"
    shown = next(c for c in body["cells"] if c["id"] == big)
    assert shown["image_url"] == f"/api/v1/cells/{big}/image"
    r = client.get(shown["image_url"])
    assert r.status_code == 200 and r.data[:2] == b"\xff\xd8"
    r = client.post(f"/api/v1/cells/{big}/label", json={"label": "monocyte"})
    assert r.status_code == 200, r.json
    assert r.json["cell"]["id"] == big and r.json["cell"]["label"] == "monocyte"
    with factory() as s:
        assert s.execute(select(CellReview.cell_id)).scalars().all() == [big]


def test_revision_0007_widens_an_existing_database(postgres_url: str, tmp_path: Path) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from hematovision.store.migrate import alembic_config
    from hematovision.store.models import Base

    _fresh_schema(postgres_url)
    settings = _settings(postgres_url, tmp_path)
    settings.ensure_dirs()
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0004")
    eng = create_engine(postgres_url)

    def column_types() -> dict[str, str]:
        with eng.connect() as c:
            rows = c.execute(
                text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE (table_name, column_name) IN (('cells', 'id'), ('cell_reviews', 'cell_id')) "
                    "UNION ALL SELECT 'cells_id_seq', data_type FROM information_schema.sequences "
                    "WHERE sequence_name = 'cells_id_seq'"
                )
            )
            return dict(rows.all())

    def drift() -> list[Any]:
        with eng.connect() as c:
            return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)

    try:
        assert set(column_types().values()) == {"integer"}
        with eng.begin() as c:  # a 0004 database with a slide and a cell in it
            c.execute(text("INSERT INTO batches (id, priority, created_at) VALUES (:b, 5, now())"), {"b": "b" * 32})
            c.execute(
                text("INSERT INTO slides (id, batch_id, filename, path, created_at) VALUES (:s, :b, 'x', 'x', now())"),
                {"s": "a" * 32, "b": "b" * 32},
            )
            c.execute(
                text("INSERT INTO cells (slide_id, kind, x0, y0, x1, y1, score) VALUES (:s, 'rbc', 0, 0, 1, 1, 1)"),
                {"s": "a" * 32},
            )
        assert drift() != []  # the check sees the narrow columns
        command.upgrade(cfg, "head")
        assert column_types() == {"cells.id": "bigint", "cell_reviews.cell_id": "bigint", "cells_id_seq": "bigint"}
        assert drift() == []
        with eng.connect() as c:
            assert c.execute(text("SELECT count(*) FROM cells")).scalar() == 1
        command.downgrade(cfg, "0004")
        assert set(column_types().values()) == {"integer"}
        command.upgrade(cfg, "head")
        assert drift() == []
    finally:
        eng.dispose()
