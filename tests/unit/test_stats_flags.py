"""Exact intervals and flag rules."""

from __future__ import annotations

import pytest

from hematovision.core.flags import evaluate_flags, load_rules
from hematovision.core.stats import clopper_pearson, percent_interval


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


def codes(flags) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.code for f in flags}


def test_normal_differential_has_no_flags() -> None:
    diff = {"neutrophil": 120, "lymphocyte": 60, "monocyte": 14, "eosinophil": 4, "basophil": 2}
    assert evaluate_flags(diff, 200) == []


def test_blasts_over_20_percent_is_critical_first() -> None:
    diff = {"blast": 60, "neutrophil": 100, "lymphocyte": 40}
    flags = evaluate_flags(diff, 200)
    assert flags[0].code == "SUSPECTED_ACUTE_LEUKEMIA"
    assert flags[0].severity == "critical"
    assert flags[0].evidence["ci95"][0] > 20


def test_blasts_near_threshold_is_borderline_not_silent() -> None:
    # 18/200 = 9 %: over the 5 % review line; CI reaches 20 %? no. 36/200 = 18 %: CI reaches 20 %.
    flags = evaluate_flags({"blast": 36, "neutrophil": 164}, 200)
    assert "SUSPECTED_ACUTE_LEUKEMIA_BORDERLINE" in codes(flags)
    assert "BLASTS" in codes(flags)


def test_insufficient_count_makes_no_negative_statement() -> None:
    flags = evaluate_flags({"neutrophil": 50, "blast": 0}, 50)
    assert flags[0].code == "INSUFFICIENT_WBC"
    assert "no negative statement" in flags[0].message


def test_lymphocytosis_and_ig_and_nrbc_and_absolute() -> None:
    diff = {"lymphocyte": 130, "neutrophil": 50, "ig": 20}
    flags = evaluate_flags(diff, 200, erythroblasts=6, wbc_per_l=12e9)
    assert {"LYMPHOCYTOSIS", "IMMATURE_GRANULOCYTES", "ERYTHROBLASTS", "ABSOLUTE_LYMPHOCYTOSIS"} <= codes(flags)


def test_rules_file_is_versioned() -> None:
    rules = load_rules()
    assert rules["version"]
    assert rules["insufficient"]["min_wbc"] == 200


def test_no_blast_statement_without_a_blast_class() -> None:
    assert not any("BLAST" in f.code for f in evaluate_flags({"neutrophil": 190, "lymphocyte": 10}, 200))
    assert "BLASTS" in codes(evaluate_flags({"neutrophil": 180, "blast": 20}, 200))
