"""The model registry (issue 18): registering is idempotent, promotion needs a validation verdict
(or an override reason), rollback walks back along the promotions, at most one model is promoted,
a slide keeps the model it was assigned; the CLI, the API and the UI page show the same registry;
migration 0011 downgrades and upgrades again on SQLite."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hematovision.core.settings import SHIPPED_MODEL_DIR, Settings
from hematovision.service import model_registry as reg
from hematovision.service.model_registry import RegistryError
from hematovision.store.db import make_engine, make_session_factory, transaction
from hematovision.store.migrate import alembic_config, upgrade
from hematovision.store.models import ModelPromotion, ModelVersion, Slide

#: The configured (default) model as the registry names it.
SHIPPED_REF = "wbc-effnetlite0:" + json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())["version"]


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    upgrade(settings)
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def model_dir(tmp_path: Path) -> Callable[..., Path]:
    """``model_dir(version, weights=b"A", validation=None) -> Path``: a model directory the registry
    can read (the registry reads files; it never loads the network)."""

    def make(version: str, weights: bytes = b"weights A", validation: dict | None = None, **meta: object) -> Path:
        d = tmp_path / f"model-{version}-{hashlib.sha256(weights).hexdigest()[:8]}"
        d.mkdir()
        (d / "model.keras").write_bytes(weights)
        doc = {"name": "wbc-test", "version": version, "classes": ["a", "b"], "input_px": 8, "crop_um": 24.0}
        doc |= {"threshold": 0.5, "sha256": reg.sha256_of(d / "model.keras"), **meta}
        (d / "model.json").write_text(json.dumps(doc))
        if validation is not None:
            (d / "validation.json").write_text(json.dumps(validation))
        return d

    return make


def _register(sessions: sessionmaker[Session], d: Path) -> tuple[int, bool]:
    with transaction(sessions) as s:
        mv, created = reg.register(s, d, "tester")
        return mv.id, created


def test_register_twice_is_idempotent_and_a_version_names_one_set_of_weights(sessions, model_dir) -> None:  # type: ignore[no-untyped-def]
    d = model_dir("1.1.0", parent={"name": "wbc-effnetlite0", "version": "1.0.0", "sha256": "ab" * 32})
    d_meta = json.loads((d / "model.json").read_text())
    first = _register(sessions, d)
    (d / "validation.json").write_text(json.dumps({"promotable": True}))  # validated after registering
    second = _register(sessions, d)
    assert first[1] is True and second == (first[0], False)
    with sessions() as s:
        rows = s.scalars(select(ModelVersion)).all()
        assert len(rows) == 1
        mv = rows[0]
        assert (mv.sha256, mv.path, mv.status) == (d_meta["sha256"], str(d.resolve()), "registered")
        assert (mv.parent_name, mv.parent_sha256) == ("wbc-effnetlite0:1.0.0", "ab" * 32)
        assert mv.validation == {"promotable": True} and mv.registered_by == "tester"
    other = model_dir("1.1.0", weights=b"weights B")
    with pytest.raises(RegistryError) as e:
        _register(sessions, other)
    assert e.value.code == "version_conflict"
    (d / "model.keras").write_bytes(b"tampered")
    with pytest.raises(RegistryError) as e:
        _register(sessions, d)
    assert e.value.code == "checksum_mismatch"


def test_promotion_needs_a_promotable_validation_report_or_an_override(sessions, model_dir) -> None:  # type: ignore[no-untyped-def]
    _register(sessions, model_dir("1.0.0"))
    _register(sessions, model_dir("2.0.0", b"weights B", validation={"promotable": False, "dropped": ["pbc_accuracy"]}))
    _register(sessions, model_dir("3.0.0", b"weights C", validation={"promotable": True}))
    for ref, why in [("wbc-test:1.0.0", "no validation report"), ("wbc-test:2.0.0", "not promotable")]:
        with pytest.raises(RegistryError) as e, transaction(sessions) as s:
            reg.promote(s, ref, "director", "new lab model")
        assert e.value.code == "not_promotable" and why in e.value.message
    with sessions() as s:
        assert reg.promoted(s) is None and s.scalars(select(ModelPromotion)).all() == []
    with transaction(sessions) as s:
        reg.promote(s, "wbc-test:3.0.0", "director", "validated on our cells")
    with transaction(sessions) as s:
        reg.promote(
            s, "wbc-test:2.0.0", "director", "stain change", override_reason="PBC drop accepted by the director"
        )
    with sessions() as s:
        current = reg.promoted(s)
        assert current is not None and reg.ref_of(current) == "wbc-test:2.0.0"
        assert (current.promoted_by, current.reason) == ("director", "stain change")
        hist = reg.history(s)
        assert [(h["from"], h["to"], h["override_reason"]) for h in hist] == [
            ("wbc-test:3.0.0", "wbc-test:2.0.0", "PBC drop accepted by the director"),
            (None, "wbc-test:3.0.0", None),
        ]
    for bad in [("nope", "x"), ("wbc-test:9.9.9", "x"), ("wbc-test:3.0.0", "")]:
        with pytest.raises(RegistryError), transaction(sessions) as s:
            reg.promote(s, bad[0], "director", bad[1])


def test_rollback_goes_back_along_the_promotions_and_retires(sessions, model_dir) -> None:  # type: ignore[no-untyped-def]
    for i, w in enumerate((b"A", b"B", b"C"), start=1):
        _register(sessions, model_dir(f"{i}.0.0", w, validation={"promotable": True}))
        with transaction(sessions) as s:
            reg.promote(s, f"wbc-test:{i}.0.0", "director", f"release {i}")

    def current() -> str:
        with sessions() as s:
            mv = reg.promoted(s)
            return reg.ref_of(mv) if mv else ""

    with transaction(sessions) as s:
        reg.rollback(s, "director", "flags changed on slide 17")
    assert current() == "wbc-test:2.0.0"
    with transaction(sessions) as s:
        reg.rollback(s, "director", "again")
    assert current() == "wbc-test:1.0.0"
    with pytest.raises(RegistryError) as e, transaction(sessions) as s:
        reg.rollback(s, "director", "once more")
    assert e.value.code == "no_previous"
    with sessions() as s:
        status = {mv.version: mv.status for mv in reg.list_versions(s)}
        assert status == {"1.0.0": "promoted", "2.0.0": "retired", "3.0.0": "retired"}
        actions = [h["action"] for h in reg.history(s)]
        assert actions == ["rollback", "rollback", "promote", "promote", "promote"]


def test_one_promoted_model_at_most(sessions, model_dir) -> None:  # type: ignore[no-untyped-def]
    a, _ = _register(sessions, model_dir("1.0.0"))
    b, _ = _register(sessions, model_dir("2.0.0", b"B"))
    with transaction(sessions) as s:
        s.execute(text("UPDATE model_versions SET status = 'promoted' WHERE id = :id"), {"id": a})
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.execute(text("UPDATE model_versions SET status = 'promoted' WHERE id = :id"), {"id": b})


def test_a_slide_keeps_the_model_it_was_assigned(sessions, model_dir, make_job) -> None:  # type: ignore[no-untyped-def]
    first, second = make_job(), make_job()
    with transaction(sessions) as s:
        mv = reg.assign_model(s, s.get(Slide, first.slide_id), SHIPPED_MODEL_DIR)  # first use: the default
        shipped = json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())["version"]
        assert (mv.name, mv.version, mv.status, mv.promoted_by) == ("wbc-effnetlite0", shipped, "promoted", "system")
        v1 = mv.id
    _register(sessions, model_dir("2.0.0", validation={"promotable": True}))
    with transaction(sessions) as s:
        reg.promote(s, "wbc-test:2.0.0", "director", "lab model")
    with transaction(sessions) as s:
        assert reg.assign_model(s, s.get(Slide, first.slide_id), SHIPPED_MODEL_DIR).id == v1  # re-delivered
        assert reg.ref_of(reg.assign_model(s, s.get(Slide, second.slide_id), SHIPPED_MODEL_DIR)) == "wbc-test:2.0.0"
    with sessions() as s:
        assert s.get(Slide, first.slide_id).model_version_id == v1  # type: ignore[union-attr]


def test_model_dir_of_falls_back_to_the_configured_copy(sessions, model_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = model_dir("1.0.0")
    _register(sessions, d)
    moved = tmp_path / "elsewhere"
    shutil.move(d, moved)
    with sessions() as s:
        mv = s.scalars(select(ModelVersion)).one()
        assert reg.model_dir_of(mv, moved) == moved
        with pytest.raises(RegistryError) as e:
            reg.model_dir_of(mv, SHIPPED_MODEL_DIR)
        assert e.value.code == "model_missing"


def test_models_cli(settings: Settings, model_dir, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("HEMATOVISION_DATABASE_URL", "")
    runner = CliRunner()
    up = runner.invoke(main, ["db", "upgrade"])
    assert up.exit_code == 0 and f"promoted model: {SHIPPED_REF}" in up.output, up.output
    d = model_dir("2.0.0", validation={"promotable": False})
    out = runner.invoke(main, ["models", "register", str(d), "--by", "alice"])
    assert out.exit_code == 0 and out.output.startswith("registered wbc-test:2.0.0"), out.output
    assert "already registered" in runner.invoke(main, ["models", "register", str(d)]).output
    refused = runner.invoke(main, ["models", "promote", "wbc-test:2.0.0", "--by", "alice", "--reason", "r"])
    assert refused.exit_code == 1 and "not_promotable" in refused.output
    ok = runner.invoke(
        main, ["models", "promote", "wbc-test:2.0.0", "--by", "alice", "--reason", "r", "--override-reason", "o"]
    )
    assert ok.exit_code == 0 and f"promote: {SHIPPED_REF} -> wbc-test:2.0.0 by alice" in ok.output, ok.output
    doc = json.loads(runner.invoke(main, ["models", "list", "--json"]).output)
    assert doc["promoted"] == "wbc-test:2.0.0"
    assert {m["ref"]: m["status"] for m in doc["models"]} == {
        SHIPPED_REF: "registered",
        "wbc-test:2.0.0": "promoted",
    }
    back = runner.invoke(main, ["models", "rollback", "--by", "alice", "--reason", "flags changed"])
    assert back.exit_code == 0 and f"rollback: wbc-test:2.0.0 -> {SHIPPED_REF}" in back.output, back.output
    assert runner.invoke(main, ["models", "list"]).output.startswith(f"* {SHIPPED_REF}")
    assert runner.invoke(main, ["models", "promote", "bad", "--by", "a", "--reason", "r"]).exit_code == 1


def test_registry_api_and_pages(app, client, make_key, person, make_job) -> None:  # type: ignore[no-untyped-def]
    job = make_job()
    with transaction(app.extensions["hv_sessions"]) as s:
        reg.assign_model(s, s.get(Slide, job.slide_id), SHIPPED_MODEL_DIR)
    got = client.get("/api/v1/models")
    assert got.status_code == 200
    doc = got.get_json()
    assert doc["promoted"] == SHIPPED_REF
    (m,) = doc["models"]
    assert m["sha256"] == json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())["sha256"]
    assert m["validation"]["promotable"] is None and m["promoted_by"] == "system"
    assert doc["history"][0]["to"] == SHIPPED_REF
    reader = app.test_client()
    reader.environ_base["HTTP_X_API_KEY"] = make_key("read", "reader")
    assert reader.get("/api/v1/models").status_code == 200
    assert app.test_client().get("/api/v1/models").status_code == 401
    tech = person("technologist")
    page = tech.get("/ui/models")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'data-ref="{SHIPPED_REF}"' in html and "system" in html and m["sha256"][:12] in html
    slide_page = tech.get(f"/ui/slides/{job.slide_id}").get_data(as_text=True)
    assert 'id="slide-model"' in slide_page and SHIPPED_REF.replace(":", " ") in slide_page


def test_0011_downgrades_and_upgrades_again(settings: Settings) -> None:
    upgrade(settings)
    engine = make_engine(settings)
    try:
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO model_versions (name, version, sha256, created_at) "
                    "VALUES ('m', '1', 'x', '2026-12-01')"
                )
            )
            assert c.execute(text("SELECT status FROM model_versions")).scalar_one() == "registered"
        command.downgrade(alembic_config(settings), "0009")
        with engine.connect() as c:
            assert c.execute(text("SELECT name FROM model_versions")).scalar_one() == "m"
            tables = set(c.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
        assert "model_promotions" not in tables
        upgrade(settings)
        with engine.connect() as c:
            assert c.execute(text("SELECT status FROM model_versions")).scalar_one() == "registered"
    finally:
        engine.dispose()
