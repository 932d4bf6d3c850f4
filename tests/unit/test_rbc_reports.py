"""The red-cell section in the CSV, HL7 and PDF reports (issue 17)."""

from __future__ import annotations

import csv
import io

from hematovision.core.results import RBC, CellResult, SlideAnalysis
from hematovision.exports.hl7 import oru_r01
from hematovision.exports.report_csv import report_csv
from hematovision.exports.slide_pdf import slide_report_pdf
from hematovision.service.slide_results import build_report

CLASSES = [
    "normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte",
    "teardrop", "burr", "schistocyte", "uncategorised", "hypochromia", "elliptocyte",
]  # fmt: skip


def _report() -> dict:  # type: ignore[type-arg]
    a = SlideAnalysis(mpp=0.25, width=1000, height=1000, model_name="m", model_version="1", classes=["neutrophil"])
    labels = ["schistocyte"] * 20 + ["target"] * 80 + ["normal"] * 900
    a.cells = [CellResult(RBC, (0, 0, 30 + i % 5, 30), 0.9, lab, 0.95) for i, lab in enumerate(labels)]
    a.rbc = {"status": "classified", "model": {"classes": CLASSES}, "scale_known": True}
    return build_report(a, slide_id="s1")


def test_csv_has_the_red_cell_rows() -> None:
    rows = list(csv.reader(io.StringIO(report_csv(_report()))))
    assert ["rbc_morphology_status", "ok", ""] in rows
    by_first = {r[0]: r for r in rows if r}
    assert by_first["schistocyte"][1:] == ["20", "2.0", "1.2", "3.1", "2.0%"]
    assert by_first["target"][-1] == "1+"
    assert by_first["rbc_median_diameter_um"][1] == "7.75"
    assert sum(int(x) for x in by_first["rbc_diameter_histogram_count"][1:]) == 1000


def test_hl7_has_obx_lines_for_schistocytes_and_graded_findings_with_local_codes() -> None:
    er7 = oru_r01(_report(), control_id="c1", allow_preliminary=True)
    obx = [seg for seg in er7.split("\r") if seg.startswith("OBX")]
    schisto = next(seg for seg in obx if "HV-RBC-SCHISTOCYTE" in seg)
    assert "|2|%^percent^UCUM|" in schisto and "|A|" in schisto and "^L|" in schisto
    target = next(seg for seg in obx if "HV-RBC-TARGET" in seg)
    assert "|8|" in target
    assert not any("HV-RBC-NORMAL" in seg for seg in obx)  # ungraded findings are not results
    assert "ICSH 2015 grade 1+" in er7 and "Red-cell morphology: ok" in er7


def test_pdf_has_the_red_cell_section() -> None:
    buf = io.BytesIO()
    slide_report_pdf(_report(), buf, thumbnail=None, invariant=1)
    assert buf.getvalue().startswith(b"%PDF") and len(buf.getvalue()) > 2000
    from reportlab.lib.styles import ParagraphStyle

    from hematovision.exports.pdf_style import styles
    from hematovision.exports.rbc_pdf import red_cell_section

    flow = red_cell_section(_report(), styles())
    texts = " ".join(getattr(f, "text", "") for f in flow if isinstance(getattr(f, "style", None), ParagraphStyle))
    assert "Red-cell morphology" in texts and "Status: ok" in texts and "median diameter 7.75" in texts
    assert red_cell_section({}, styles()) == []
