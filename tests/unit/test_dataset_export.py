"""``hematovision dataset export``: reviewed cells leave the database as an image folder, without
any patient identifier."""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from hematovision.cli import main
from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.devtools.synthetic import make_slide
from hematovision.service.dataset_export import ExportError, export_reviewed_cells
from hematovision.service.review import Signer, reclassify, sign_off
from hematovision.service.slide_results import build_report
from hematovision.store.models import Cell, Slide
from tests.conftest import ack_flags
from workers.job_store import store_analysis

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
PHI = {
    "patient_id": "MRN-5550123",
    "accession": "ACC-778899",
    "assigning_authority": "HOSP-AUTH-XYZ",
    "birth_date": date(1951, 3, 14),
}
PHI_FILENAME = "ACC-778899_DOE-JANE.tiff"


def _analysed(app, make_job, tmp_path: Path, data_root: Path, name: str, seed: int) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    manifest = make_slide(path, data_root, 768, 768, mpp=0.25, n_wbc=5, seed=seed)
    cells = []
    for c in manifest["cells"]:
        if c["kind"] != "wbc":
            continue
        label = c["class"] if c["class"] in CLASSES else "neutrophil"
        cells.append(CellResult("wbc", tuple(int(v) for v in c["bbox"]), 0.9, label, 0.93))
    analysis = SlideAnalysis(
        mpp=0.25, width=768, height=768, model_name="wbc-test", model_version="1", classes=CLASSES, cells=cells
    )
    factory, job_id, slide_id = make_job(path, name="export", width=768, height=768, state="running")
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    with factory() as s, s.begin():
        slide = s.get(Slide, slide_id)
        for k, v in PHI.items():
            setattr(slide, k, v)
    return slide_id


@pytest.fixture
def reviewed(app, make_job, make_user, tmp_path: Path, real_cells: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """One signed-off slide (a cell reclassified to blast) and one unsigned slide with one reclassification."""
    factory = app.extensions["hv_sessions"]
    signed = _analysed(app, make_job, tmp_path, real_cells, PHI_FILENAME, 1)
    unsigned = _analysed(app, make_job, tmp_path, real_cells, "ACC-778899_second.tiff", 2)
    uid = make_user("bob", "pathologist", "Bob Smith")
    tech = make_user("amy", "technologist", "Amy Jones")
    with factory() as s:
        first = s.execute(select(Cell.id).where(Cell.slide_id == signed).order_by(Cell.id)).scalars().first()
        other = s.execute(select(Cell.id).where(Cell.slide_id == unsigned).order_by(Cell.id)).scalars().first()
    with factory() as s, s.begin():
        reclassify(s, first, "blast", "user:bob", at=datetime(2026, 3, 2, 9, 0))
    ack_flags(factory, signed, "user:amy")
    with factory() as s, s.begin():  # a blast: the technologist signs first, the pathologist releases it
        amy = Signer(tech, "amy", "Amy Jones", "technologist")
        sign_off(s, signed, amy, reason="small test slide", at=datetime(2026, 3, 2, 9, 20))
    with factory() as s, s.begin():
        sign_off(s, signed, Signer(uid, "bob", "Bob Smith", "pathologist"), at=datetime(2026, 3, 2, 9, 30))
    with factory() as s, s.begin():
        reclassify(s, other, "smudge", "user:bob", at=datetime(2026, 3, 3, 8, 0))
    return {"signed": signed, "unsigned": unsigned}


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_folders_manifest_and_crops(app, reviewed: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    factory = app.extensions["hv_sessions"]
    out = tmp_path / "export"
    with factory() as s:
        n_signed = len(s.execute(select(Cell).where(Cell.slide_id == reviewed["signed"])).scalars().all())
        result = export_reviewed_cells(s, out, crop_um=24.0)
    rows = _rows(out)
    assert result.n_cells == len(rows) == n_signed + 1  # every cell of the signed slide + the reviewed one
    assert result.n_slides == 2
    assert {p.name for p in out.iterdir() if p.is_dir()} == {r["class"] for r in rows}
    blast = [r for r in rows if r["class"] == "blast"]
    assert len(blast) == 1 and blast[0]["reclassified"] == "1"
    assert blast[0]["model_label"] in CLASSES and blast[0]["model_probability"] == "0.9300"
    assert blast[0]["reviewer_role"] == "pathologist" and blast[0]["signed_off_at"] == "2026-03-02T09:30:00Z"
    smudge = [r for r in rows if r["class"] == "smudge"]
    assert len(smudge) == 1 and smudge[0]["signed_off_at"] == "" and smudge[0]["reviewer_role"] == "pathologist"
    # crops at the model's physical size: 24 µm at 0.25 µm/px = 96 px
    for r in rows:
        assert r["crop_px"] == "96" and r["mpp"] == "0.25"
        with Image.open(out / r["file"]) as im:
            assert im.size == (96, 96)
    # the slide is a salted hash: the same for one slide's cells, never the id
    hashes = {r["slide"] for r in rows}
    assert len(hashes) == 2 and all(len(h) == 16 for h in hashes)
    assert not hashes & {reviewed["signed"], reviewed["unsigned"]}


def test_no_patient_identifier_leaves_the_database(app, reviewed: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export"
    with app.extensions["hv_sessions"]() as s:
        export_reviewed_cells(s, out, crop_um=24.0)
    needles = [
        PHI["patient_id"],
        PHI["accession"],
        PHI["assigning_authority"],
        "1951-03-14",
        "19510314",
        "DOE-JANE",
        "Bob Smith",
        reviewed["signed"],
        reviewed["unsigned"],
    ]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 3
    for p in files:
        blob = p.read_bytes().decode("latin-1").lower()
        for needle in needles:
            assert needle.lower() not in blob, f"{needle!r} found in {p.relative_to(out)}"
            assert needle.lower() not in str(p.relative_to(out)).lower()


def test_signed_only_and_since(app, reviewed: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    factory = app.extensions["hv_sessions"]
    with factory() as s:
        export_reviewed_cells(s, tmp_path / "a", crop_um=24.0, signed_only=True)
        export_reviewed_cells(s, tmp_path / "b", crop_um=24.0, since=datetime(2026, 3, 3))
    assert "smudge" not in {r["class"] for r in _rows(tmp_path / "a")}
    assert [r["class"] for r in _rows(tmp_path / "b")] == ["smudge"]  # only the later review
    with factory() as s, pytest.raises(ExportError, match="no reviewed"):
        export_reviewed_cells(s, tmp_path / "c", crop_um=24.0, since=datetime(2027, 1, 1))
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()  # nothing half-written


def test_cli_refuses_a_non_empty_folder_and_prints_json(app, settings, reviewed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    runner = CliRunner()
    url = settings.sqlalchemy_url
    r = runner.invoke(main, ["dataset", "export", "--out", str(busy), "--database-url", url])
    assert r.exit_code != 0 and "not an empty folder" in r.output
    assert (busy / "keep.txt").read_text() == "x"
    r = runner.invoke(main, ["dataset", "export", "--out", str(tmp_path / "new"), "--since", "yesterday"])
    assert r.exit_code == 2 and "--since" in r.output
    r = runner.invoke(main, ["dataset", "export", "--out", str(tmp_path / "ok"), "--database-url", url])
    assert r.exit_code == 0, r.output
    import json

    doc = json.loads(r.stdout)
    assert doc["n_cells"] == len(_rows(tmp_path / "ok")) and doc["per_class"]["blast"] == 1


@pytest.mark.slow
def test_flag_changes_re_run_signed_slides(app, reviewed: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """``validate-model --slides``: the signed slide is re-classified by both models and its flags
    re-evaluated; the same model twice changes nothing, and the flags of the signed-off labels are
    the ones the review stored."""
    from hemato_model.classifier import Classifier
    from hemato_model.training.model_comparison import flag_change_summary
    from hematovision.core.flags import load_rules
    from hematovision.core.settings import SHIPPED_MODEL_DIR
    from hematovision.service.flag_changes import slide_flag_changes

    clf = Classifier.load(SHIPPED_MODEL_DIR)
    with app.extensions["hv_sessions"]() as s:
        per_slide = slide_flag_changes(s, clf, clf, 5, load_rules())
    assert [p["slide"] for p in per_slide] == [reviewed["signed"]]  # signed-off slides only
    summary = flag_change_summary(per_slide)
    assert summary["slides"] == 1 and summary["slides_with_changed_flags"] == 0
    with app.extensions["hv_sessions"]() as s:
        stored = sorted({f["code"] for f in s.get(Slide, reviewed["signed"]).report["flags"]})
    assert per_slide[0]["signed"] == stored and stored
    assert per_slide[0]["current"] == per_slide[0]["candidate"]
