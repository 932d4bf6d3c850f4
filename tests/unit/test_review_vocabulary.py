"""The review vocabulary: labels a technologist may give independent of the model, and how each counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from hematovision.core.flags import BLAST_RULES, effective_rules, load_rules
from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.core.settings import Settings
from hematovision.core.vocabulary import Vocabulary, VocabularyError, parse_terms
from hematovision.service.slide_results import build_report, differential
from hematovision.store.models import AuditEntry, Cell
from workers.job_store import store_analysis

V1_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


@pytest.fixture
def v1_slide(app, make_job) -> str:  # type: ignore[no-untyped-def]
    """A slide analysed by a model without a blast class: 20 neutrophils, 10 lymphocytes, 2 platelets."""
    labels = ["neutrophil"] * 20 + ["lymphocyte"] * 10
    cells = [CellResult("wbc", (10 * i, 0, 10 * i + 8, 8), 0.9, lab, 0.9) for i, lab in enumerate(labels)]
    cells += [CellResult("platelet", (10 * i, 50, 10 * i + 3, 53), 0.9) for i in range(2)]
    analysis = SlideAnalysis(
        mpp=0.25, width=512, height=512, model_name="wbc-v1", model_version="1", classes=V1_CLASSES, cells=cells
    )
    factory, job_id, slide_id = make_job(name="vocab", width=512, height=512, state="running")
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    return slide_id


def _cells(app, slide_id: str, label: str) -> list[int]:  # type: ignore[no-untyped-def]
    with app.extensions["hv_sessions"]() as s:
        return list(
            s.execute(select(Cell.id).where(Cell.slide_id == slide_id, Cell.label == label).order_by(Cell.id)).scalars()
        )


def test_default_vocabulary_terms() -> None:
    vocab = Vocabulary.from_rules(load_rules())
    codes = set(vocab.codes())
    assert {
        "blast", "promyelocyte", "myelocyte", "metamyelocyte", "band", "reactive_lymphocyte", "abnormal_lymphocyte",
        "plasma_cell", "smudge", "artefact", "not_classed", "giant_platelet", "platelet_clump",
    } <= codes  # fmt: skip
    keys = [t.key for t in vocab.terms if t.key]
    assert len(keys) == len(set(keys)) and not any(k.isdigit() or k in "unjkUNJK" for k in keys)
    assert vocab.category("band") == "neutrophil" and vocab.category("metamyelocyte") == "ig"
    assert vocab.category("smudge") == "smudge" and vocab.category("not_classed") == "excluded"
    assert vocab.category("platelet") == "platelet_clump"  # the model's class on a white-cell candidate


def test_bad_vocabulary_is_refused() -> None:
    with pytest.raises(VocabularyError, match="counts_as"):
        parse_terms([{"code": "x", "in_differential": False, "counts_as": "lymphocyte"}])
    with pytest.raises(VocabularyError, match="key"):
        parse_terms([{"code": "x", "in_differential": True, "key": "3"}])
    with pytest.raises(VocabularyError, match="code"):
        parse_terms([{"code": "Bad Code", "in_differential": True}])


def test_band_and_metamyelocyte_count_as_the_vocabulary_says(tmp_path: Path) -> None:
    labels = ["neutrophil"] * 6 + ["band"] * 2 + ["metamyelocyte"] * 2 + ["ig"]
    d = differential(labels, V1_CLASSES, Vocabulary.from_rules(load_rules()))
    assert d.n_classified == 11
    assert d.table["neutrophil"]["count"] == 8 and d.table["ig"]["count"] == 3
    assert "band" not in d.table and d.terms["band"] == {"count": 2, "counts_as": "neutrophil"}
    # A lab that reports bands and metamyelocytes on their own lines.
    own = tmp_path / "vocab.toml"
    own.write_text(
        '[[term]]\ncode = "band"\nname = "Band"\ngroup = "g"\nin_differential = true\nkey = "d"\n'
        '[[term]]\ncode = "metamyelocyte"\nname = "Meta"\ngroup = "g"\nin_differential = true\n'
    )
    rules = effective_rules(Settings(review_vocabulary=own))
    d = differential(labels, V1_CLASSES, Vocabulary.from_rules(rules))
    assert d.table["neutrophil"]["count"] == 6 and d.table["band"]["count"] == 2
    assert d.table["metamyelocyte"]["count"] == 2 and d.table["ig"]["count"] == 1 and d.n_classified == 11


def test_smudge_per_100_wbc_not_in_differential() -> None:
    cells = [CellResult("wbc", (0, 0, 8, 8), 0.9, "neutrophil", 0.9) for _ in range(20)]
    cells += [CellResult("wbc", (0, 0, 8, 8), 0.9, "smudge", None) for _ in range(5)]
    cells += [CellResult("wbc", (0, 0, 8, 8), 0.9, "artefact", None)]
    a = SlideAnalysis(mpp=0.25, width=64, height=64, model_name="m", model_version="1", classes=V1_CLASSES, cells=cells)
    rep = build_report(a, slide_id="s")
    assert rep["counts"]["wbc"] == 20 and rep["counts"]["smudge"] == 5 and rep["counts"]["excluded"] == 1
    assert rep["smudge_per_100_wbc"] == 25.0 and "smudge" not in rep["differential"]


def test_reviewer_blast_with_v1_model_fires_blast_rules(client, v1_slide: str) -> None:  # type: ignore[no-untyped-def]
    before = client.get(f"/api/v1/slides/{v1_slide}/report").get_json()
    codes = {f["code"] for f in before["flags"]}
    assert "BLAST_DETECTION_UNAVAILABLE" in codes and not codes & {c for c in BLAST_RULES}
    meta = client.get(f"/api/v1/slides/{v1_slide}/cells").get_json()
    assert "blast" in meta["labels"] and "band" in meta["labels"] and "blast" not in meta["classes"]
    assert {t["code"] for t in meta["vocabulary"]} >= {"blast", "smudge", "platelet_clump"}
    cell = _cells(client.application, v1_slide, "lymphocyte")[0]
    r = client.post(f"/api/v1/cells/{cell}/label", json={"label": "blast"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    codes = {f["code"] for f in body["flags"]}
    assert "BLAST_DETECTION_UNAVAILABLE" not in codes
    assert "BLASTS_BORDERLINE" in codes  # 1 of 30: 3.3 %, its 95 % CI reaches 10 %
    assert body["max_severity"] == "critical" and body["differential"]["blast"]["count"] == 1
    assert not [e for e in body["rules_not_evaluated"] if e["rule"] in BLAST_RULES]
    # band, smudge are vocabulary codes now; a made-up label is still refused.
    assert client.post(f"/api/v1/cells/{cell}/label", json={"label": "band"}).status_code == 200
    r = client.post(f"/api/v1/cells/{cell}/label", json={"label": "dragon"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_label"


def test_platelet_relabel_leaves_the_wbc_count_visibly(client, v1_slide: str) -> None:  # type: ignore[no-untyped-def]
    app = client.application
    neutros = _cells(app, v1_slide, "neutrophil")
    r = client.post(f"/api/v1/cells/{neutros[0]}/label", json={"label": "giant_platelet"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["effect"]["wbc_change"] == -1 and "removed from the white-cell count" in body["effect"]["message"]
    assert body["counts"]["wbc"] == 29 and body["counts"]["platelets"] == 3
    assert body["differential"]["neutrophil"]["count"] == 19
    assert "PLATELET_CLUMPS" not in {f["code"] for f in body["flags"]}  # a giant platelet is no clump
    for cid in neutros[1:4]:
        body = client.post(f"/api/v1/cells/{cid}/label", json={"label": "platelet_clump"}).get_json()
    assert body["counts"]["wbc"] == 26 and body["counts"]["platelet_candidates"] == 3
    assert "PLATELET_CLUMPS" in {f["code"] for f in body["flags"]}
    with app.extensions["hv_sessions"]() as s:
        entry = (
            s.execute(select(AuditEntry).where(AuditEntry.action == "reclassify").order_by(AuditEntry.id))
            .scalars()
            .first()
        )
    assert entry is not None and entry.detail["wbc_change"] == -1
    assert "removed from the white-cell count" in entry.detail["effect"]
    # And back: a white cell again.
    body = client.post(f"/api/v1/cells/{neutros[0]}/label", json={"label": "neutrophil"}).get_json()
    assert body["effect"]["wbc_change"] == 1 and body["counts"]["wbc"] == 27
