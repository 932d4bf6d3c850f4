"""Exact intervals and flag rules: one test per rule and severity, the borderlines, and the cases of
issue 15 ("Clinical safety") that the rules of 2026.11-1 got wrong."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from hematovision.core.flags import (
    SEVERITY_RANK,
    Flag,
    RuleOutcome,
    age_partition,
    effective_rules,
    evaluate_flags,
    evaluate_rules,
    load_rules,
    max_severity,
    not_evaluated_lines,
    rules_sha256,
)
from hematovision.core.patient import PatientContext
from hematovision.core.stats import clopper_pearson, percent_interval
from hematovision.service.slide_results import differential, summarise_cells

ROOT = Path(__file__).resolve().parents[2]
V1_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
V2_CLASSES = sorted([*V1_CLASSES, "blast"])
#: A normal adult differential of 200 classified cells, as counted by a model with a blast class.
NORMAL = {"neutrophil": 120, "lymphocyte": 60, "monocyte": 14, "eosinophil": 4, "basophil": 2, "ig": 0, "blast": 0}


def test_clopper_pearson_matches_rumke_table() -> None:
    # Rümke table, n = 100: 10 % observed -> 95 % limits 4.9–17.6 %; n = 200, 50 % -> 42.9–57.1 %.
    assert percent_interval(10, 100) == (4.9, 17.6)
    assert percent_interval(100, 200) == (42.9, 57.1)


def test_interval_edges() -> None:
    assert clopper_pearson(0, 50)[0] == 0.0
    assert clopper_pearson(50, 50)[1] == 1.0
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)


def codes(flags: list[Flag]) -> dict[str, str]:
    """code -> severity."""
    return {f.code: f.severity for f in flags}


def diff(n: int = 200, blast_class: bool = True, **counts: int) -> dict[str, int]:
    """A differential of ``n`` cells: the given counts, neutrophils for the rest, every class listed
    (``blast`` only for a blast-capable model)."""
    out = {c: 0 for c in ("lymphocyte", "monocyte", "eosinophil", "basophil", "ig")} | counts
    if blast_class:
        out.setdefault("blast", 0)
    out["neutrophil"] = n - sum(out.values())
    assert out["neutrophil"] >= 0
    return out


# --- the normal slide, and what a model without a blast class cannot say ---------------------------


def test_normal_differential_with_a_blast_capable_model_has_no_flags() -> None:
    assert evaluate_flags(NORMAL, 200) == []


def test_a_model_without_a_blast_class_says_so_in_the_flags_and_the_rules_not_evaluated() -> None:
    no_blast = {k: v for k, v in NORMAL.items() if k != "blast"}
    out = evaluate_rules(no_blast, 200)
    assert [(f.code, f.severity) for f in out.flags] == [("BLAST_DETECTION_UNAVAILABLE", "info")]
    assert "cannot recognise blasts" in out.flags[0].message and "negative blast statement" in out.flags[0].message
    not_run = {e["rule"]: e["reason"] for e in out.not_evaluated}
    assert {"BLASTS_PRESENT", "BLASTS", "SUSPECTED_ACUTE_LEUKEMIA"} <= set(not_run)
    assert "cannot recognise blasts" in not_run["BLASTS"]
    # Without a WBC count no absolute rule ran; without an age, adult intervals were used.
    assert "no WBC count" in not_run["NEUTROPENIA"] and "no WBC count" in not_run["ABSOLUTE_LYMPHOCYTOSIS"]
    assert "no age given" in not_run["AGE_PARTITIONED_LIMITS"] and "adult" in not_run["AGE_PARTITIONED_LIMITS"]
    assert any(
        line.startswith("BLASTS_PRESENT, BLASTS, SUSPECTED_ACUTE_LEUKEMIA:")
        for line in not_evaluated_lines(out.not_evaluated)
    )


def test_a_reviewer_blast_makes_the_blast_rules_run_on_any_model() -> None:
    # A v1 slide where a reviewer labelled one cell a blast: the label enters the differential.
    d = differential(["neutrophil"] * 199 + ["blast"], V1_CLASSES)
    out = evaluate_rules(d.counts(), d.n_classified)
    assert codes(out.flags) == {"BLASTS_PRESENT": "review"}
    assert not any(e["rule"].startswith("BLAST") for e in out.not_evaluated)


# --- blasts ----------------------------------------------------------------------------------------


def test_one_blast_in_200_needs_image_confirmation() -> None:
    # Issue 15: 1-3 blasts in 200 raised nothing.
    for k in (1, 2, 3):
        flags = evaluate_flags(diff(blast=k), 200)
        assert codes(flags) == {"BLASTS_PRESENT": "review"}, k
        assert "image confirmation required" in flags[0].message


def test_blasts_at_5_percent_are_critical() -> None:
    flags = evaluate_flags(diff(blast=10), 200)
    assert codes(flags) == {"BLASTS": "critical"}


def test_blasts_under_5_percent_whose_interval_reaches_10_percent_are_critical() -> None:
    # 2/60 = 3.3 %, 95 % CI 0.4–11.5 %: the borderline of a critical rule is critical.
    flags = evaluate_flags(diff(60, blast=2), 60)
    assert codes(flags)["BLASTS_BORDERLINE"] == "critical"
    # 8/200 = 4 % (CI 1.7–7.7 %) reaches neither 5 % nor 10 %: image confirmation only.
    assert "BLASTS_PRESENT" in codes(evaluate_flags(diff(blast=8), 200))


def test_blasts_over_20_percent_is_critical_first() -> None:
    flags = evaluate_flags(diff(blast=60, lymphocyte=40), 200)
    assert flags[0].code == "SUSPECTED_ACUTE_LEUKEMIA" and flags[0].severity == "critical"
    assert flags[0].evidence["ci95"][0] > 20
    assert "BLASTS" not in codes(flags) and "BLASTS_PRESENT" not in codes(flags)


def test_leukemia_borderline_is_critical_not_below_review() -> None:
    # Issue 15: a borderline of the critical rule ranked below `review`. 36/200 = 18 %, CI reaches 20 %.
    flags = evaluate_flags(diff(blast=36), 200)
    assert codes(flags) == {"SUSPECTED_ACUTE_LEUKEMIA_BORDERLINE": "critical", "BLASTS": "critical"}
    assert max_severity(flags) == "critical"


def test_positive_blast_findings_are_kept_under_the_minimum_count() -> None:
    flags = codes(evaluate_flags(diff(50, blast=1), 50))
    assert flags["INSUFFICIENT_WBC"] == "review" and flags["BLASTS_BORDERLINE"] == "critical"  # 2 % [0.1–10.6]
    flags = codes(evaluate_flags(diff(20, blast=1), 20))
    assert flags["SUSPECTED_ACUTE_LEUKEMIA_BORDERLINE"] == "critical" and flags["BLASTS"] == "critical"


# --- unidentified cells --------------------------------------------------------------------------


def test_unrecognized_population_is_critical_and_ranks_above_a_few_unidentified() -> None:
    # Issue 15: 88 % unidentified (B-ALL on the default model) got the same `review` as 10.5 %.
    few = evaluate_rules(diff(blast_class=False), 200, unidentified=24)  # 24/224 = 10.7 % of cells seen
    assert codes(few.flags) == {"UNIDENTIFIED_CELLS": "review", "BLAST_DETECTION_UNAVAILABLE": "info"}
    many = evaluate_rules(diff(29, blast_class=False), 29, unidentified=211)  # 88 % of 240 seen
    assert codes(many.flags)["UNRECOGNIZED_POPULATION"] == "critical"
    assert "UNIDENTIFIED_CELLS" not in codes(many.flags)
    assert many.flags[0].code == "UNRECOGNIZED_POPULATION"
    assert many.flags[0].evidence["of"] == 240 and many.flags[0].evidence["percent"] == 87.9


def test_unrecognized_population_threshold_is_the_calibrated_one() -> None:
    rules = load_rules()
    assert rules["unrecognized_population"]["unidentified_pct"] == 30.0
    just_under = evaluate_rules(diff(blast_class=False), 200, unidentified=85)  # 85/285 = 29.8 %
    at = evaluate_rules(diff(blast_class=False), 200, unidentified=86)  # 86/286 = 30.07 %
    assert "UNRECOGNIZED_POPULATION" not in codes(just_under.flags)
    assert codes(at.flags)["UNRECOGNIZED_POPULATION"] == "critical"


def test_only_unidentified_cells_is_still_critical() -> None:
    out = evaluate_rules({"neutrophil": 0, "lymphocyte": 0}, 0, unidentified=12)
    assert codes(out.flags)["UNRECOGNIZED_POPULATION"] == "critical"
    assert codes(out.flags)["INSUFFICIENT_WBC"] == "review"
    assert {"LYMPHOCYTOSIS", "NEUTROPENIA"} <= {e["rule"] for e in out.not_evaluated}


def test_unidentified_are_not_in_the_denominator_nor_the_minimum() -> None:
    # Issue 15: 60 % lymphocytes placed, a fifth of the cells unidentified -> reported 47 %, no flag.
    cells = [("wbc", "lymphocyte")] * 120 + [("wbc", "neutrophil")] * 80 + [("wbc", None)] * 55
    rep = summarise_cells(cells, V1_CLASSES, patient=None, rules=load_rules())
    assert rep["differential"]["lymphocyte"]["percent"] == 60.0
    assert "unidentified" not in rep["differential"]
    assert rep["counts"]["wbc"] == 200 and rep["counts"]["wbc_seen"] == 255 and rep["unidentified"] == 55
    assert rep["unidentified_percent"] == 21.6
    assert {f["code"]: f["severity"] for f in rep["flags"]}["LYMPHOCYTOSIS"] == "review"
    # 190 classified + 30 unidentified is 220 cells seen but under the 200 classified minimum.
    rep = summarise_cells(
        [("wbc", "neutrophil")] * 190 + [("wbc", None)] * 30, V1_CLASSES, patient=None, rules=load_rules()
    )
    assert rep["differential_sufficient"] is False and "INSUFFICIENT_WBC" in {f["code"] for f in rep["flags"]}


# --- relative limits -------------------------------------------------------------------------------


def test_borderline_lymphocytosis_is_kept_under_the_minimum() -> None:
    # Issue 15: 48 % [40–57] lymphocytes of 147 cells got no flag at all.
    flags = evaluate_flags(diff(147, lymphocyte=71), 147)
    f = next(f for f in flags if f.code == "LYMPHOCYTOSIS_BORDERLINE")
    assert f.severity == "borderline" and f.evidence["percent"] == 48.3 and f.evidence["ci95"] == [40.0, 56.7]
    assert codes(flags)["INSUFFICIENT_WBC"] == "review"


def test_lymphocytosis() -> None:
    assert codes(evaluate_flags(diff(lymphocyte=130), 200))["LYMPHOCYTOSIS"] == "review"


def test_eosinophilia_at_24_percent() -> None:
    # Issue 15: 24 % eosinophils were not flagged.
    f = next(f for f in evaluate_flags(diff(eosinophil=48), 200) if f.code == "EOSINOPHILIA")
    assert f.severity == "review" and f.evidence["percent"] == 24.0 and f.evidence["threshold_pct"] == 7.0


def test_monocytosis_and_its_borderline() -> None:
    assert codes(evaluate_flags(diff(monocyte=30), 200))["MONOCYTOSIS"] == "review"  # 15 %
    assert codes(evaluate_flags(diff(monocyte=20), 200))["MONOCYTOSIS_BORDERLINE"] == "borderline"  # 10 % [6.2–15.0]


def test_basophilia_has_no_borderline() -> None:
    assert codes(evaluate_flags(diff(basophil=8), 200))["BASOPHILIA"] == "review"  # 4 %
    assert evaluate_flags(diff(basophil=5), 200) == []  # 2.5 % [0.8–5.7]: a rare class, no borderline


def test_immature_granulocytes_left_shift() -> None:
    f = next(f for f in evaluate_flags(diff(ig=20), 200) if f.code == "IMMATURE_GRANULOCYTES")
    assert f.severity == "review" and "left shift" in f.message


def test_a_value_just_under_a_threshold_that_rounds_up_to_it_is_not_flagged() -> None:
    # Issue 15: thresholds were compared on rounded values. 10/201 = 4.975 % prints as 5.0 %.
    flags = evaluate_flags(diff(201, ig=10), 201, erythroblasts=2)  # NRBC 2/201 = 0.995 per 100 WBC
    assert "IMMATURE_GRANULOCYTES" not in codes(flags) and "ERYTHROBLASTS" not in codes(flags)
    border = next(f for f in flags if f.code == "IMMATURE_GRANULOCYTES_BORDERLINE")
    assert "4.97% is below 5%" in border.message or "4.98% is below 5%" in border.message
    assert codes(evaluate_flags(diff(200, ig=10), 200))["IMMATURE_GRANULOCYTES"] == "review"  # exactly 5 %


def test_erythroblasts_per_100_classified_white_cells() -> None:
    f = next(f for f in evaluate_flags(NORMAL, 200, erythroblasts=6) if f.code == "ERYTHROBLASTS")
    assert f.severity == "review" and f.evidence["per_100_wbc"] == 3.0


def test_platelet_clumps() -> None:
    assert codes(evaluate_flags(NORMAL, 200, platelet_candidates=3)) == {"PLATELET_CLUMPS": "review"}
    assert evaluate_flags(NORMAL, 200, platelet_candidates=2) == []
    d = differential(["neutrophil"] * 200 + ["platelet"] * 4, V2_CLASSES)
    assert d.platelet_candidates == 4 and d.n_classified == 200


# --- absolute counts and age -----------------------------------------------------------------------


def adult(wbc: float) -> PatientContext:
    return PatientContext(age_years=40, wbc_10e9_per_l=wbc)


def test_severe_neutropenia_at_an_anc_of_0_15() -> None:
    # Issue 15: an ANC of 0.15 x10^9/L raised only "lymphocytosis".
    out = evaluate_rules(diff(lymphocyte=180), 200, patient=adult(1.5))  # 20/200 neutrophils x 1.5
    flags = codes(out.flags)
    assert flags["SEVERE_NEUTROPENIA"] == "critical" and "NEUTROPENIA" not in flags
    assert out.flags[0].code == "SEVERE_NEUTROPENIA"
    ev = out.flags[0].evidence
    assert ev["absolute_10e9_per_l"] == 0.15 and ev["ci95_10e9_per_l"][1] < 0.5 and ev["threshold_10e9_per_l"] == 0.5
    assert out.absolute is not None and out.absolute["neutrophil"]["value"] == 0.15


def test_neutropenia_and_the_borderline_of_the_critical_limit() -> None:
    flags = codes(evaluate_flags(diff(lymphocyte=100), 200, patient=adult(1.6)))  # ANC 0.8 [0.69–0.91]
    assert flags == {"NEUTROPENIA": "review", "LYMPHOCYTOSIS": "review"}
    flags = codes(evaluate_flags(diff(lymphocyte=100), 200, patient=adult(1.1)))  # ANC 0.55 [0.48–0.62]
    assert flags["SEVERE_NEUTROPENIA_BORDERLINE"] == "critical" and flags["NEUTROPENIA"] == "review"


def test_neutrophilia_and_absolute_high_limits() -> None:
    assert codes(evaluate_flags(NORMAL, 200, patient=adult(40.0)))["NEUTROPHILIA"] == "review"  # 24
    flags = codes(evaluate_flags(diff(lymphocyte=60, monocyte=20, eosinophil=20, basophil=4), 200, patient=adult(20.0)))
    # lymphocytes 6.0, monocytes 2.0, eosinophils 2.0, basophils 0.4 [0.12–1.0] x10^9/L
    assert flags["ABSOLUTE_LYMPHOCYTOSIS"] == "review" and flags["ABSOLUTE_MONOCYTOSIS"] == "review"
    assert flags["ABSOLUTE_EOSINOPHILIA"] == "review" and flags["ABSOLUTE_BASOPHILIA_BORDERLINE"] == "borderline"
    assert "ABSOLUTE_BASOPHILIA" not in flags
    assert codes(evaluate_flags(diff(basophil=6), 200, patient=adult(20.0)))["ABSOLUTE_BASOPHILIA"] == "review"


def test_infant_lymphocytes_are_not_flagged() -> None:
    # Issue 15: no age, so infant lymphocyte counts would flag. 62 % of 12 x10^9/L = 7.4 x10^9/L.
    counts = diff(lymphocyte=124)
    infant = evaluate_rules(counts, 200, patient=PatientContext(age_years=0.5, wbc_10e9_per_l=12.0))
    assert infant.flags == [] and infant.age_partition == "infant"
    assert not any(e["rule"] == "AGE_PARTITIONED_LIMITS" for e in infant.not_evaluated)
    grown = codes(evaluate_flags(counts, 200, patient=adult(12.0)))
    assert grown == {"LYMPHOCYTOSIS": "review", "ABSOLUTE_LYMPHOCYTOSIS": "review"}
    no_age = evaluate_rules(counts, 200, patient=PatientContext(wbc_10e9_per_l=12.0))
    assert codes(no_age.flags) == grown and no_age.age_partition == "adult"
    assert any(e["rule"] == "AGE_PARTITIONED_LIMITS" for e in no_age.not_evaluated)


def test_age_partitions() -> None:
    rules = load_rules()
    assert [age_partition(rules, a) for a in (None, 0.0, 14 / 365.25, 0.2, 2.0, 8.0, 12.0, 70.0)] == [
        "adult", "neonate", "neonate", "infant", "early_childhood", "child", "adult", "adult"
    ]  # fmt: skip
    with pytest.raises(ValueError):
        PatientContext(age_years=-1)
    assert PatientContext(wbc_10e9_per_l=7.5).wbc_10e9_per_l == 7.5


def test_absolute_counts_carry_exact_intervals_for_every_class() -> None:
    out = evaluate_rules(NORMAL, 200, patient=adult(8.0))
    assert out.absolute is not None and set(out.absolute) == set(NORMAL)
    lo, hi = clopper_pearson(60, 200)
    assert out.absolute["lymphocyte"] == {"value": 2.4, "ci95": [round(8 * lo, 3), round(8 * hi, 3)]}
    assert not any(e["rule"] in ("NEUTROPENIA", "ABSOLUTE_LYMPHOCYTOSIS") for e in out.not_evaluated)


# --- the rules file and its hash -------------------------------------------------------------------


def test_rules_file_is_versioned_and_every_rule_is_documented() -> None:
    rules = load_rules()
    assert rules["version"] == "2026.12-8"
    assert rules["insufficient"]["min_wbc"] == 200
    doc = (ROOT / "docs" / "clinical_rules.md").read_text()
    fixed = [
        "BLAST_DETECTION_UNAVAILABLE", "INSUFFICIENT_WBC", "UNRECOGNIZED_POPULATION", "UNIDENTIFIED_CELLS",
        "BLASTS_PRESENT", "BLASTS", "SUSPECTED_ACUTE_LEUKEMIA", "ERYTHROBLASTS", "PLATELET_CLUMPS",
    ]  # fmt: skip
    for code in [*fixed, *rules["relative"], *rules["absolute"]]:
        assert re.search(rf"`{code}`", doc), code
    for rule in [*rules["relative"].values(), *rules["absolute"].values()]:
        assert rule["severity"] in SEVERITY_RANK and rule["class"]


def test_rules_hash_changes_when_a_threshold_changes(settings) -> None:  # type: ignore[no-untyped-def]
    rules = load_rules()
    assert rules_sha256(rules) == rules_sha256(copy.deepcopy(rules)) and len(rules_sha256(rules)) == 64
    changed = copy.deepcopy(rules)
    changed["relative"]["EOSINOPHILIA"]["high_pct"] = 6.0
    assert rules_sha256(changed) != rules_sha256(rules)
    assert rules_sha256(effective_rules(settings)) == rules_sha256(rules)  # the default settings change nothing
    settings.min_wbc = 100
    assert rules_sha256(effective_rules(settings)) != rules_sha256(rules)
    rep = summarise_cells([("wbc", "neutrophil")] * 10, V1_CLASSES, patient=None, rules=changed)
    assert rep["rules_sha256"] == rules_sha256(changed) and rep["rules_version"] == rules["version"]


def test_labels_a_reviewer_may_give() -> None:
    d = differential(
        ["neutrophil"] * 90 + ["smudge"] * 5 + ["artefact"] * 3 + ["hairy_cell"] * 10 + ["unidentified"] * 4, V1_CLASSES
    )
    assert d.n_classified == 100 and d.table["hairy_cell"]["percent"] == 10.0
    assert "smudge" not in d.table and "artefact" not in d.table and "platelet" not in d.table
    assert (d.smudge, d.excluded, d.unidentified, d.n_seen) == (5, 3, 4, 104)
    rep = summarise_cells(
        [("wbc", lab) for lab in ["neutrophil"] * 190 + ["smudge"] * 10], V1_CLASSES, patient=None, rules=load_rules()
    )
    assert rep["smudge_per_100_wbc"] == 5.3 and rep["counts"]["smudge"] == 10


def test_outcome_is_sorted_most_severe_first() -> None:
    out = evaluate_rules(diff(60, blast_class=False, eosinophil=20), 60, unidentified=100, patient=adult(0.5))
    assert isinstance(out, RuleOutcome)
    ranks = [SEVERITY_RANK[f.severity] for f in out.flags]
    assert ranks == sorted(ranks, reverse=True) and out.flags[-1].code == "BLAST_DETECTION_UNAVAILABLE"
