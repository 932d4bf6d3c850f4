"""Red-cell morphology of a slide: ICSH grades, the SCHISTOCYTES rule (with the CI rule), size
figures, the report section and why it is empty or uncertain (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemato_model.classifier import read_model_spec
from hemato_model.handoff import read_prepared, write_prepared
from hemato_model.rbc.morphology import RedCellSampler
from hematovision.core.flags import load_rules
from hematovision.core.rbc_grading import grade, size_figures, summarise_red_cells
from hematovision.core.results import RBC, CellResult, SlideAnalysis
from hematovision.core.settings import RBC_MODEL_DIR
from hematovision.service.slide_results import build_report

CLASSES = list(read_model_spec(RBC_MODEL_DIR).classes)
CTX = {"status": "classified", "model": {"name": "rbc-effnetlite0", "classes": CLASSES}, "scale_known": True}


def _labels(**counts: int) -> list[str | None]:
    out: list[str | None] = []
    for cls, k in counts.items():
        out += [cls] * k
    return out


def _summary(labels: list[str | None], context: dict | None = CTX, diameters: list[float] | None = None):  # type: ignore[no-untyped-def]
    named = [x for x in labels if x not in (None, "unidentified")]
    return summarise_red_cells(
        labels, diameters or [7.5] * len(named), classes=CLASSES, rules=load_rules(), context=context
    )


def test_rules_file_has_the_icsh_bands_with_their_source() -> None:
    rules = load_rules()
    assert rules["version"] == "2026.12-8"
    r = rules["rbc"]
    assert "Palmer" in r["source"] and "2015;37:287-303" in r["source"] and r["min_cells"] == 1000
    assert r["schistocytes"]["critical_pct"] == 1.0
    assert r["grades"]["macrocyte"]["grade_pct"] == [10.5, 20.5, 40.5]
    assert r["grades"]["target"]["grade_pct"] == [4.5, 20.5, 50.5]
    assert set(r["grades"]) <= set(CLASSES)


@pytest.mark.parametrize(
    ("pct", "bands", "expected"),
    [
        (10.4, [10.5, 20.5, 40.5], None),
        (10.5, [10.5, 20.5, 40.5], "1+"),
        (20.6, [10.5, 20.5, 40.5], "2+"),
        (40.5, [10.5, 20.5, 40.5], "3+"),
        (4.4, [4.5, 20.5, 50.5], None),
        (4.5, [4.5, 20.5, 50.5], "1+"),
        (50.0, [4.5, 20.5, 50.5], "2+"),
    ],
)
def test_grade_bands(pct: float, bands: list[float], expected: str | None) -> None:
    assert grade(pct, bands) == expected


def test_schistocytes_over_one_percent_are_critical() -> None:
    section, flags, not_run = _summary(_labels(normal=988, schistocyte=12))
    assert section["status"] == "ok" and section["n_classified"] == 1000
    f = next(f for f in flags if f.code == "SCHISTOCYTES")
    assert f.severity == "critical" and f.evidence["count"] == 12 and f.evidence["percent"] == 1.2
    assert section["findings"]["schistocyte"]["ci95"][0] < 1.2 < section["findings"]["schistocyte"]["ci95"][1]
    assert [e["rule"] for e in not_run] == ["RBC_MORPHOLOGY (elliptocyte)"]


def test_schistocyte_interval_reaching_one_percent_is_a_critical_borderline() -> None:
    # 5 of 1000 = 0.5 %, exact 95 % CI up to 1.16 %: the CI rule makes it critical
    _, flags, _ = _summary(_labels(normal=995, schistocyte=5))
    f = next(f for f in flags if f.code.startswith("SCHISTOCYTES"))
    assert f.code == "SCHISTOCYTES_BORDERLINE" and f.severity == "critical" and f.evidence["borderline"]
    # 2 of 1000: CI up to 0.72 %: no flag
    _, flags, _ = _summary(_labels(normal=998, schistocyte=2))
    assert not [f for f in flags if f.code.startswith("SCHISTOCYTES")]


def test_graded_findings_raise_one_review_flag_and_unidentified_are_not_in_the_denominator() -> None:
    section, flags, _ = _summary(_labels(normal=700, spherocyte=60, target=240, unidentified=400))
    assert section["n_classified"] == 1000 and section["unidentified"] == 400
    assert section["findings"]["spherocyte"]["grade"] == "1+" and section["findings"]["target"]["grade"] == "2+"
    assert section["findings"]["normal"]["grade"] is None
    f = next(f for f in flags if f.code == "RBC_MORPHOLOGY")
    assert f.severity == "review" and "Spherocytes 1+" in f.message and "Target cells 2+" in f.message
    assert set(f.evidence["findings"]) == {"spherocyte", "target"}


def test_too_few_cells_keep_positive_findings_but_say_so() -> None:
    section, flags, _ = _summary(_labels(normal=280, schistocyte=20))
    assert section["status"] == "insufficient" and "only 300" in section["reason"]
    assert any(f.code == "SCHISTOCYTES" for f in flags)


def test_no_model_no_cells_unknown_scale_are_reported_not_invented() -> None:
    section, flags, not_run = _summary([], context={"status": "not_evaluated", "reason": "no red-cell model"})
    assert section["status"] == "not_evaluated" and section["reason"] == "no red-cell model" and not flags
    assert {e["rule"] for e in not_run} == {"SCHISTOCYTES", "RBC_MORPHOLOGY"}
    section, flags, not_run = _summary([None] * 50, context=CTX | {"reason": "every field was too thick"})
    assert section["status"] == "empty" and "thick" in section["reason"] and not flags and not_run
    section, flags, not_run = _summary(
        _labels(normal=900, schistocyte=100), context=CTX | {"scale_known": False, "scale_reason": "no µm/px"}
    )
    assert section["status"] == "uncertain" and "no µm/px" in section["reason"] and not flags
    assert section["size"] is None and section["findings"]["schistocyte"]["grade"] is None
    assert {e["rule"] for e in not_run} == {"SCHISTOCYTES", "RBC_MORPHOLOGY"}


def test_size_figures() -> None:
    d = [7.0, 7.5, 8.0, 8.5, 20.0]
    s = size_figures(d)
    assert s is not None and s["n"] == 5 and s["median_diameter_um"] == 8.0
    assert s["cv_diameter_pct"] == round(100 * float(np.std(d, ddof=1)) / float(np.mean(d)), 1)
    assert sum(s["histogram"]["counts"]) == 5 and s["histogram"]["counts"][-1] == 1  # 20 µm in the end bin
    assert size_figures([]) is None


def _analysis(n_normal: int, n_schisto: int, *, mpp: float = 0.25) -> SlideAnalysis:
    a = SlideAnalysis(mpp=mpp, width=1000, height=1000, model_name="m", model_version="1", classes=["neutrophil"])
    for i in range(n_normal + n_schisto):
        label = "schistocyte" if i < n_schisto else "normal"
        a.cells.append(CellResult(RBC, (0, 0, 30, 30), 0.9, label, 0.95))
    a.cells.append(CellResult(RBC, (0, 0, 30, 30), 0.9))  # detected, not sampled
    a.rbc = dict(CTX)
    return a


def test_report_has_the_section_and_the_critical_flag() -> None:
    rep = build_report(_analysis(980, 20), slide_id="s")
    m = rep["rbc_morphology"]
    assert m["status"] == "ok" and m["n_classified"] == 1000 and m["findings"]["schistocyte"]["percent"] == 2.0
    assert m["size"]["median_diameter_um"] == 7.5  # 30 px at 0.25 µm/px
    assert rep["flags"][0]["code"] == "SCHISTOCYTES" and rep["max_severity"] == "critical"
    assert rep["counts"]["rbc"] == 1001
    rep = build_report(_analysis(0, 0), slide_id="s")
    assert rep["rbc_morphology"]["status"] == "empty"
    assert any(e["rule"] == "SCHISTOCYTES" for e in rep["rules_not_evaluated"])


def test_a_scale_mismatch_makes_the_section_uncertain() -> None:
    a = _analysis(980, 20)
    a.quality = {
        "fields_sampled": 4,
        "fields_measured": 4,
        "scale": {"stated_mpp": 0.25, "measured_mpp": 0.5, "ratio": 2.0, "fields_measured": 4},
    }
    rep = build_report(a, slide_id="s")
    assert rep["rbc_morphology"]["status"] == "uncertain" and "SCALE_MISMATCH" in rep["rbc_morphology"]["reason"]
    assert not any(f["code"].startswith("SCHISTOCYTES") for f in rep["flags"])


def test_handoff_keeps_red_cell_labels_and_context(tmp_path: Path) -> None:
    a = _analysis(3, 2)
    write_prepared(tmp_path, a, [], read_model_spec(RBC_MODEL_DIR))
    back = read_prepared(tmp_path).analysis
    assert [c.label for c in back.cells] == [c.label for c in a.cells]
    assert back.rbc == a.rbc


def _field(n_cells: int, side_px: int = 400, d_px: int = 30) -> tuple[np.ndarray, list[CellResult]]:
    region = np.full((side_px, side_px, 3), 230, np.uint8)
    cells = []
    per_row = side_px // d_px
    for i in range(n_cells):
        x, y = (i % per_row) * d_px, (i // per_row) * d_px
        cells.append(CellResult(RBC, (x, y, x + d_px, y + d_px), 0.9))
    return region, cells


def test_sampler_skips_thick_fields_and_overlapping_cells_and_bounds_the_sample() -> None:
    spec = read_model_spec(RBC_MODEL_DIR)
    s = RedCellSampler(spec, mpp=0.25, mpp_source="slide", target=50)  # type: ignore[arg-type]
    region, cells = _field(169)  # 13 x 13 boxes of 30 px: covers 0.83 of the field
    s.offer(region, (0, 0), cells, float(400 * 400))
    assert s.fields_thick == 1 and s.seen == 0
    region, cells = _field(60)
    cells.append(CellResult(RBC, (0, 300, 60, 360), 0.9))  # 15 µm across: overlapping cells
    for _ in range(3):
        s.offer(region, (0, 0), cells, float(400 * 400))
    assert s.seen == 180 and s.cells_overlapping == 3 and len(s._sample) == 50 and not s.wants_more
    ctx = RedCellSampler(spec, mpp=0.25, mpp_source="default").finish()  # type: ignore[arg-type]
    assert ctx["status"] == "empty" and ctx["reason"] == "no red cells were found in the fields read"
    assert ctx["scale_known"] is False


def test_sampler_leaves_out_cut_cells_and_split_pieces_and_crops_at_the_centroid() -> None:
    from hemato_model.detection import Detection
    from hemato_model.detection.red_cells import RedCellShape
    from hemato_model.rbc.morphology import MAX_CONTACT

    spec = read_model_spec(RBC_MODEL_DIR)
    s = RedCellSampler(spec, mpp=0.25, mpp_source="slide", target=50)  # type: ignore[arg-type]
    region = np.full((400, 400, 3), 230, np.uint8)
    region[200:204, 200:204] = (10, 20, 30)  # a dark mark at the lone cell's centroid, off its box centre
    box = (180, 180, 212, 212)  # box centre (196, 196)
    shapes = {
        "lone": RedCellShape((0, 0), 0.0, False, False),
        "touching": RedCellShape((0, 0), 0.4 * MAX_CONTACT, False, True),
        "cut": RedCellShape((0, 0), 0.0, True, False),
        "split": RedCellShape((0, 0), 1.4 * MAX_CONTACT, False, True),
    }
    dets = [Detection("rbc", box, 0.9, (202.0, 202.0), shape) for shape in shapes.values()]
    cells = [CellResult(RBC, box, 0.9) for _ in dets]
    s.offer(region, (0, 0), cells, float(400 * 400), dets)
    assert s.seen == 2 and s.cells_cut == 1 and s.cells_split == 1
    crop = s._sample[0][1]
    mid = crop.shape[0] // 2
    assert crop[mid - 1 : mid + 1, mid - 1 : mid + 1].max() < 100  # the mark is at the crop's centre


def test_a_finding_the_rules_do_not_grade_is_shown_and_listed_as_not_evaluated() -> None:
    section, flags, not_run = _summary(_labels(normal=500, elliptocyte=500))
    assert section["findings"]["elliptocyte"]["percent"] == 50.0 and section["findings"]["elliptocyte"]["grade"] is None
    assert "background" in section["findings"]["elliptocyte"]["not_graded"]
    assert not flags and not_run[0]["rule"] == "RBC_MORPHOLOGY (elliptocyte)"
