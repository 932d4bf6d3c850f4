"""At submission, the intake says which slides the model they will be analysed with was not
validated on as stored or as scanned (the gate's STORAGE_UNVALIDATED and SCALE_UNVALIDATED rules,
before analysis): make-slide slides through ``POST /api/v1/batches`` on embedded defaults, the
shipped default model's ``model.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hematovision.core.flags import DEFAULT_RULES

MODELS = Path(__file__).resolve().parents[2] / "hemato_model/models"


@pytest.fixture(scope="module")
def made(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """make-slide slides: a 20x one and a 40x one stored as JPEG 85, a 40x one as JPEG 2000 at 1 bpp."""
    from hematovision.devtools.synthetic import make_slide

    out = tmp_path_factory.mktemp("notice")
    spec = {
        "x20_q85.tiff": dict(mpp=0.5, fmt="tiff", quality=85),
        "x40_q85.tiff": dict(mpp=0.25, fmt="tiff", quality=85),
        "x40_j1.svs": dict(mpp=0.25, fmt="svs", jpeg2000_bpp=1.0),
    }
    for name, kw in spec.items():
        make_slide(out / name, real_cells, 1024, 1024, n_wbc=4, seed=3, **kw)  # type: ignore[arg-type]
    return {name: out / name for name in spec}


def _submit(settings, made, make_key, names, **fields):  # type: ignore[no-untyped-def]
    from api.app import create_app, stop_app
    from hematovision.store.migrate import upgrade

    for name in names:
        (settings.import_root / name).write_bytes(made[name].read_bytes())
    upgrade(settings)
    app = create_app(settings)
    try:
        client = app.test_client()
        r = client.post(
            "/api/v1/batches",
            data=json.dumps({"paths": list(names), **fields}),
            content_type="application/json",
            headers={"X-API-Key": make_key(app=app)},
        )
        return r.status_code, r.json
    finally:
        stop_app(app)


def test_slides_outside_the_models_storage_record_get_a_notice_and_are_still_accepted(settings, made, make_key) -> None:  # type: ignore[no-untyped-def]
    status, body = _submit(settings, made, make_key, ["x20_q85.tiff", "x40_q85.tiff", "x40_j1.svs"])
    assert status == 202 and len(body["job_ids"]) == 3  # a notice never refuses a slide
    by_slide = {n["slide"]: n for n in body["notices"]}
    assert set(by_slide) == {"x20_q85.tiff", "x40_j1.svs"}  # JPEG 85 at 0.25 µm/px is validated
    x20 = by_slide["x20_q85.tiff"]
    assert x20["outcome"] == "outside" and x20["code"] == "STORAGE_UNVALIDATED" and x20["severity"] == "critical"
    assert x20["model"] == "wbc-effnetlite0:1.2.0"
    assert x20["evidence"]["jpeg_quality"] == 85 and x20["evidence"]["mpp"] == 0.5
    assert "held for review" in x20["message"] and "JPEG quality 85 at 0.5 µm/px" in x20["message"]
    j1 = by_slide["x40_j1.svs"]
    assert j1["evidence"]["jpeg2000_bpp"] < 1.5 and j1["evidence"]["validated_min_bpp"] == 1.5
    assert str(settings.import_root) not in json.dumps(body)


def test_a_model_without_a_storage_record_or_a_check_switched_off_says_it_was_not_judged(
    settings, made, make_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings.model_dir = MODELS / "wbc-effnetlite0-v1"  # nothing promoted: the configured one, no record
    status, body = _submit(settings, made, make_key, ["x40_q85.tiff"])
    assert status == 202
    by_check = {n["check"]: n for n in body["notices"]}
    assert set(by_check) == {"storage", "scale"}
    assert all(n["outcome"] == "not_judged" and "code" not in n for n in body["notices"])
    assert by_check["storage"]["model"] == "wbc-effnetlite0:1.0.0"
    assert "records no validated slide storage" in by_check["storage"]["message"]
    assert "records no validated scan scales" in by_check["scale"]["message"]

    rules = tmp_path / "rules.toml"
    rules.write_text(DEFAULT_RULES.read_text().replace("storage_check = true", "storage_check = false"))
    settings.model_dir = MODELS / "wbc-effnetlite0-v1.2"
    settings.flag_rules = rules
    status, body = _submit(settings, made, make_key, ["x20_q85.tiff"], name="second")
    (notice,) = body["notices"]
    assert notice["outcome"] == "not_judged" and "switched off" in notice["message"]


def test_a_lossless_upload_gets_no_notice_unless_scanned_coarser_than_validated(client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, ("a.png", png_bytes()), mpp=0.25)
    assert r.status_code == 202 and r.json["notices"] == []
    r = upload(client, ("b.png", png_bytes()), mpp=0.7)  # lossless, but a 0.7 µm/px scan: never validated
    assert r.status_code == 202
    (notice,) = r.json["notices"]
    assert notice["check"] == "scale" and notice["code"] == "SCALE_UNVALIDATED" and notice["outcome"] == "outside"
    assert notice["evidence"] == {"stated_mpp": 0.7, "validated_max_mpp": 0.55}


def test_an_unreadable_model_record_is_said_for_both_checks_without_its_path(
    settings, made, make_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings.model_dir = tmp_path / "no-model-here"  # nothing promoted, and the configured directory is not a model
    status, body = _submit(settings, made, make_key, ["x20_q85.tiff"])
    assert status == 202  # the intake still accepts the slide and says why it cannot check
    assert sorted(n["check"] for n in body["notices"]) == ["scale", "storage"]
    assert all(n["outcome"] == "not_judged" and "could not be read" in n["message"] for n in body["notices"])
    assert "no-model-here" not in json.dumps(body)
