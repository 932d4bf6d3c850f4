"""LIS-grade HL7 (issue 15): v2.5.1 ORU^R01 with ORC, the patient and accession from the slide's
order, LOINC codes from the code map, OBX-7 reference intervals from the lab's rules and OBX-8
abnormal flags, unidentified cells as a note, unverified results refused unless allowed."""

from __future__ import annotations

from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hematovision.core.flags import load_rules
from hematovision.exports.hl7 import PreliminaryRefused, abnormal_flag, oru_r01, reference_interval


def _report(**over: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "slide_id": "0" * 32,
        "model": {"name": "m", "version": "1"},
        "counts": {"wbc": 200, "wbc_seen": 210},
        "differential": {
            "neutrophil": {"count": 2, "percent": 1.0, "ci95": [0.1, 3.6]},
            "lymphocyte": {"count": 120, "percent": 60.0, "ci95": [52.9, 66.8]},
            "monocyte": {"count": 20, "percent": 10.0, "ci95": [6.2, 15.0]},
            "blast": {"count": 58, "percent": 29.0, "ci95": [22.8, 35.8]},
        },
        "absolute_10e9_per_l": {
            "neutrophil": {"value": 0.3, "ci95": [0.03, 1.1]},
            "lymphocyte": {"value": 18.0, "ci95": [15.9, 20.0]},
        },
        "age_partition": "adult",
        "unidentified": 10,
        "unidentified_percent": 4.8,
        "nrbc_per_100_wbc": 1.0,
        "flags": [],
        "limits": "decision support",
        "verified_by": "Jane Doe",
        "verified_by_id": "jdoe",
        "verified_at": "2026-12-01T09:00:00Z",
        "order": {
            "accession": "ACC-77",
            "patient_id": "P123",
            "assigning_authority": "HOSP",
            "birth_date": "1950-06-01",
            "sex": "F",
            "collected_at": "2026-12-01T08:30:00Z",
            "wbc_10e9_per_l": 30.0,
        },
    }
    report.update(over)
    return report


def _obx(er7: str) -> dict[str, list[str]]:
    out = {}
    for seg in er7.split("\r"):
        if seg.startswith("OBX|"):
            f = seg.split("|")
            out[f[3].split("^")[0]] = f
    return out


def test_a_final_message_carries_patient_order_loinc_and_abnormal_flags() -> None:
    er7 = oru_r01(_report(), control_id="c1")
    msg = parse_message(er7, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.validate() and msg.msh.msh_12.to_er7() == "2.5.1"
    pid = msg.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "P123^^^HOSP^MR" and pid.pid_7.to_er7() == "19500601" and pid.pid_8.to_er7() == "F"
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert order.orc.orc_1.to_er7() == "RE" and order.orc.orc_2.to_er7() == "ACC-77"
    assert order.obr.obr_2.to_er7() == "ACC-77" and order.obr.obr_3.to_er7().startswith("ACC-77^")
    assert order.obr.obr_7.to_er7() == "20261201083000+0000" and order.obr.obr_25.to_er7() == "F"
    obx = _obx(er7)
    assert obx["770-8"][3].startswith("770-8^Neutrophils^LN^HV-NEUTROPHIL^")
    assert obx["736-9"][7] == "0-50" and obx["736-9"][8] == "H"  # lymphocytes 60 % > 50 % (adult)
    assert obx["5905-5"][7] == "0-12" and obx["5905-5"][8] == "N"
    assert obx["751-8"][7] == "1-20" and obx["751-8"][8] == "LL"  # ANC 0.3 < critical 0.5
    assert obx["731-0"][8] == "H" and obx["26446-5"][3].startswith("26446-5^")  # blasts, automated
    assert obx["58413-6"][5] == "1"  # NRBC per 100 WBC
    assert all(f[11] == "F" and f[16] == "jdoe^Doe^Jane" for f in obx.values())
    assert "HV-UNID" not in er7 and "NTE|" in er7 and "Unidentified white cells: 10" in er7
    spm = next(s for s in er7.split("\r") if s.startswith("SPM|"))
    assert spm.split("|")[2] == "ACC-77&" + "0" * 32 or spm.split("|")[2].startswith("ACC-77")


def test_reviewed_blasts_use_the_manual_code_and_children_their_limits() -> None:
    er7 = oru_r01(_report(reviewed_cells=3, age_partition="child"), control_id="c1")
    obx = _obx(er7)
    assert "709-6" in obx and "26446-5" not in obx
    assert obx["736-9"][7] == "0-60" and obx["736-9"][8] == "N"  # child lymphocyte limit 60 %


def test_unverified_results_are_refused_unless_preliminary_is_allowed() -> None:
    unsigned = _report(verified_by=None, verified_by_id=None)
    with pytest.raises(PreliminaryRefused, match="not signed off"):
        oru_r01(unsigned)
    er7 = oru_r01(unsigned, allow_preliminary=True)
    assert all(f[11] == "P" for f in _obx(er7).values())


def test_reference_interval_and_flags_follow_the_rules_file() -> None:
    rules = load_rules()
    assert reference_interval(rules, "neutrophil", "adult", absolute=True) == (1.0, 20.0, 0.5, None)
    assert reference_interval(rules, "neutrophil", "neonate", absolute=True)[1] == 28.0
    assert abnormal_flag(0.7, (1.0, 20.0, 0.5, None)) == "L"
    assert abnormal_flag(25, (1.0, 20.0, 0.5, None)) == "H"
    assert abnormal_flag(5, (None, None, None, None)) == ""
