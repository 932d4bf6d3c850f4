"""Reports a lab can file (issue 15): the machine report kept unchanged beside the reviewed one
(``?version=machine``), ``result_status`` (preliminary/final) in JSON and CSV, the order in the CSV,
and the limits statement taken from the model card rather than a fixed string."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sqlalchemy import select

from hematovision.core.settings import SHIPPED_MODEL_DIR
from hematovision.service.slide_results import LIMITS, model_card_limits
from hematovision.store.models import Cell, Slide, utcnow
from tests.unit.test_report_exports import REVIEW, slide_file, store_slide  # noqa: F401 - slide_file: a fixture


def test_the_machine_report_stays_beside_the_reviewed_one(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    slide_id, machine = store_slide(make_job, slide_file, REVIEW)
    url = f"/api/v1/slides/{slide_id}/report"
    assert client.get(url).json["result_status"] == "preliminary"
    with app.extensions["hv_sessions"]() as s:
        cell_id = s.scalars(select(Cell.id).where(Cell.slide_id == slide_id, Cell.label == "lymphocyte")).first()
    assert client.post(f"/api/v1/cells/{cell_id}/label", json={"label": "monocyte"}).status_code == 200
    current = client.get(url).json
    kept = client.get(url + "?version=machine").json
    assert current["differential"]["lymphocyte"]["count"] == machine["differential"]["lymphocyte"]["count"] - 1
    assert kept["differential"] == machine["differential"] and kept["result_status"] == "machine"
    assert client.get(url + "?version=nope").status_code == 400
    assert client.get(url + "?version=machine&format=hl7").status_code == 400
    with app.extensions["hv_sessions"]() as s:
        slide = s.get(Slide, slide_id)
        slide.verified_by, slide.verified_at, slide.accession = "Jane Doe", utcnow(), "ACC-9"
        s.commit()
    assert client.get(url).json["result_status"] == "final"
    rows = {r[0]: r[1:] for r in csv.reader(io.StringIO(client.get(url + "?format=csv").data.decode())) if r}
    assert rows["result_status"] == ["final"] and rows["accession"] == ["ACC-9"]
    assert rows["rules_version"] and rows["limits"][0].startswith("Decision support only")


def test_limits_come_from_the_model_card(tmp_path: Path) -> None:
    text = model_card_limits(SHIPPED_MODEL_DIR)
    assert text != LIMITS and "Model limits (wbc-effnetlite0-v1.2)" in text and "Healthy donors" in text
    (tmp_path / "MODEL_CARD.md").write_text("# m\n\n## Limits\n- only tested on one stain\n\n## Other\nx\n")
    assert model_card_limits(tmp_path).endswith("only tested on one stain")
    assert model_card_limits(tmp_path / "missing") == LIMITS


def test_the_pdf_carries_patient_lab_intervals_and_page_n_of_m(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.unit.test_report_exports import pdf_text

    slide_id, _ = store_slide(make_job, slide_file, REVIEW)
    cfg = app.extensions["hv_settings"]
    cfg.lab_name, cfg.lab_address = "Central Haematology Lab", "1 Main St, Springfield"
    with app.extensions["hv_sessions"]() as s:
        slide = s.get(Slide, slide_id)
        slide.accession, slide.patient_id, slide.assigning_authority, slide.sex = "ACC-3", "P77", "HOSP", "F"
        s.commit()
    text = pdf_text(client.get(f"/api/v1/slides/{slide_id}/report?format=pdf").data)
    assert "Central Haematology Lab" in text and "1 Main St, Springfield" in text
    assert "ACC-3" in text and "P77 (HOSP)" in text and "preliminary" in text
    assert "Ref. (%)" in text and "0-50" in text  # lymphocytes, adult limit from the rules
    pages = text.count("page ")
    assert pages >= 1 and f"page 1 of {pages}" in text
    assert "Red cells (RBC)" not in text and "Platelets\n" not in text  # no unitless object counts
