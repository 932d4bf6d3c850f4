"""Report exports: the slide PDF, the HL7 v2.5 ORU^R01 message, the flag report as CSV and PDF.

Results are stored as a worker would store them (``workers.job_store.store_analysis``, no worker)
for a real small slide written by ``hematovision.devtools.synthetic.make_slide``; the labels come from the
slide's manifest, with some lymphocytes relabelled as blasts so that flags are raised.
"""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pypdf import PdfReader
from sqlalchemy import select

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.devtools.synthetic import make_slide
from hematovision.exports.flag_report import flag_report_csv
from hematovision.exports.hl7 import PreliminaryRefused, oru_r01
from hematovision.service.slide_results import build_report
from hematovision.store.models import AuditEntry, Cell, new_id
from tests.conftest import ack_flags_http
from workers.job_store import store_analysis

MODEL_VERSION = "9.8.7-test"
CLASSES = ["basophil", "blast", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]


def store_slide(
    make_job, path: Path, labels: list[str], filename: str = "smear.tiff", classes: list[str] = CLASSES
) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    """Insert a batch, slide and job (``make_job``), and store an analysis with ``labels`` on the slide's cells."""
    import json

    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    boxes = [c["bbox"] for c in manifest["cells"] if c["kind"] == "wbc"]
    cells = [
        CellResult("wbc", tuple(boxes[i % len(boxes)]), 0.9, lab, 0.5 + 0.4 * (i % 5) / 4)
        for i, lab in enumerate(labels)
    ]
    cells += [CellResult(c["kind"], tuple(c["bbox"]), 0.8) for c in manifest["cells"] if c["kind"] != "wbc"]
    analysis = SlideAnalysis(
        mpp=0.25,
        width=manifest["width"],
        height=manifest["height"],
        model_name="wbc-test",
        model_version=MODEL_VERSION,
        classes=classes,
        cells=cells,
    )
    factory, job_id, slide_id = make_job(path, filename=filename, name="night")
    report = build_report(analysis, slide_id=slide_id)
    assert store_analysis(factory, job_id, analysis, report)
    return slide_id, report


@pytest.fixture
def slide_file(tmp_path: Path, data_root: Path) -> Path:
    path = tmp_path / "s.tiff"
    make_slide(path, data_root, 1024, 1024, mpp=0.25, n_wbc=8, seed=1)
    return path


CRITICAL = ["blast"] * 30 + ["neutrophil"] * 50 + ["lymphocyte"] * 20  # 30 % blasts
REVIEW = ["lymphocyte"] * 60 + ["neutrophil"] * 40  # 60 % lymphocytes


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def test_slide_pdf_has_flags_model_and_pictures(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]
    slide_id, report = store_slide(make_job, slide_file, CRITICAL)
    r = client.get(f"/api/v1/slides/{slide_id}/report?format=pdf")
    assert r.status_code == 200 and r.mimetype == "application/pdf"
    assert r.data.startswith(b"%PDF") and b"%%EOF" in r.data[-1024:]
    text = pdf_text(r.data)
    assert "SUSPECTED_ACUTE_LEUKEMIA" in text and MODEL_VERSION in text and "2026.12" in text
    assert "not yet verified" in text and "Decision support only" in text
    assert "Blast" in text and "30.0" in text  # the differential row
    images = sum(len(p.images) for p in PdfReader(io.BytesIO(r.data)).pages)
    assert images >= 2  # the overview and at least one gallery crop
    with app.extensions["hv_sessions"]() as s:
        actions = [a.action for a in s.execute(select(AuditEntry)).scalars()]
    assert actions == ["export"]


def test_slide_pdf_still_renders_when_the_slide_file_is_gone(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]
    slide_id, _ = store_slide(make_job, slide_file, REVIEW)
    slide_file.unlink()
    r = client.get(f"/api/v1/slides/{slide_id}/report?format=pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
    text = pdf_text(r.data)
    assert "could not be read" in text and "LYMPHOCYTOSIS" in text
    assert str(slide_file) not in text  # the server path is not disclosed


def test_verified_report_says_who(slide_file: Path) -> None:
    from hematovision.exports.slide_pdf import slide_report_pdf

    report = {
        "slide_id": "x1",
        "model": {"name": "m", "version": "1"},
        "counts": {"wbc": 0},
        "differential": {},
        "flags": [],
        "verified_by": "J. Doe, MLS",
        "verified_at": "2026-11-27T07:30:00Z",
    }
    buf = io.BytesIO()
    slide_report_pdf(report, buf, thumbnail=None, invariant=1)
    assert "VERIFIED by J. Doe, MLS" in pdf_text(buf.getvalue())


def test_hl7_message_parses_back_with_one_obx_per_class(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]
    slide_id, report = store_slide(make_job, slide_file, CRITICAL)
    r = client.get(f"/api/v1/slides/{slide_id}/report?format=hl7")
    assert r.status_code == 409 and r.json["error"]["code"] == "not_verified"  # unverified: refused by default
    app.extensions["hv_settings"].hl7_allow_preliminary = True
    r = client.get(f"/api/v1/slides/{slide_id}/report?format=hl7")
    assert r.status_code == 200 and r.mimetype == "x-application/hl7-v2+er7"
    er7 = r.data.decode("utf-8")
    assert er7.startswith("MSH|^~\\&|") and "\n" not in er7
    msg = parse_message(er7, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.name == "ORU_R01" and msg.validate()
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and msg.msh.msh_12.to_er7() == "2.5.1"
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_3.to_er7().startswith(slide_id) and order.obr.obr_25.to_er7() == "P"
    values = {}
    for obs in order.children.get("ORU_R01_OBSERVATION"):
        local = obs.obx.obx_3.to_er7().split("^")
        code = local[3] if len(local) > 3 and local[2] == "LN" else local[0]  # LOINC first, local alternate
        values[code] = (obs.obx.obx_5.to_er7(), obs.obx.obx_6.obx_6_1.to_er7())
    diff_codes = {c for c in values if c not in ("HV-WBCN", "HV-NRBC100")}
    assert len(diff_codes) == len(report["differential"]) - ("unidentified" in report["differential"])
    assert values["HV-BLAST"] == ("30", "%") and values["HV-NEUTROPHIL"] == ("50", "%")
    assert values["HV-WBCN"][0] == "100"
    notes = [n.nte_3.to_er7() for n in order.children.get("NTE")]
    assert any("SUSPECTED_ACUTE_LEUKEMIA" in n for n in notes)
    assert any(MODEL_VERSION in n for n in notes) and any("Decision support only" in n for n in notes)


V1_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def test_a_v1_report_says_it_cannot_see_blasts_in_every_format(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]
    """The default model has no blast class: JSON, CSV, PDF and HL7 each carry BLAST_DETECTION_UNAVAILABLE
    and the rules that could not run, also when no other flag is raised."""
    labels = ["neutrophil"] * 120 + ["lymphocyte"] * 60 + ["monocyte"] * 12 + ["eosinophil"] * 6 + ["basophil"] * 2
    slide_id, report = store_slide(make_job, slide_file, labels, classes=V1_CLASSES)
    url = f"/api/v1/slides/{slide_id}/report"
    body = client.get(url).json
    assert [(f["code"], f["severity"]) for f in body["flags"]] == [("BLAST_DETECTION_UNAVAILABLE", "info")]
    assert {"BLASTS", "SUSPECTED_ACUTE_LEUKEMIA", "NEUTROPENIA"} <= {e["rule"] for e in body["rules_not_evaluated"]}
    assert body["rules_version"] == "2026.12-8" and len(body["rules_sha256"]) == 64
    text = client.get(url + "?format=csv").data.decode("utf-8")
    assert "BLAST_DETECTION_UNAVAILABLE,info" in text and "cannot recognise blasts" in text
    assert "rule_not_evaluated,reason" in text and "SUSPECTED_ACUTE_LEUKEMIA," in text
    assert body["rules_sha256"] in text
    pdf = pdf_text(client.get(url + "?format=pdf").data)
    assert "BLAST_DETECTION_UNAVAILABLE" in pdf and "cannot recognise blasts" in pdf
    assert "Rules not evaluated" in pdf and "no WBC count given" in pdf
    app.extensions["hv_settings"].hl7_allow_preliminary = True
    er7 = client.get(url + "?format=hl7").data.decode("utf-8")
    order = parse_message(er7, find_groups=True).oru_r01_patient_result.oru_r01_order_observation
    notes = [n.nte_3.to_er7() for n in order.children.get("NTE")]
    assert any("BLAST_DETECTION_UNAVAILABLE" in n and "cannot recognise blasts" in n for n in notes)
    assert any(n.startswith("NOT EVALUATED BLASTS_PRESENT, BLASTS, SUSPECTED_ACUTE_LEUKEMIA") for n in notes)
    assert any(body["rules_sha256"] in n for n in notes)
    # The review UI's flag list gets the same (the slide page renders flags and rules_not_evaluated).
    with app.extensions["hv_sessions"]() as s:
        cell_id = s.execute(select(Cell.id).where(Cell.slide_id == slide_id, Cell.kind == "wbc")).scalars().first()
    r = client.post(f"/api/v1/cells/{cell_id}/label", json={"label": "lymphocyte"})
    assert r.status_code == 200, r.json
    assert "BLAST_DETECTION_UNAVAILABLE" in {f["code"] for f in r.json["flags"]} and r.json["rules_not_evaluated"]


def test_absolute_counts_and_unidentified_in_the_exports() -> None:
    from hematovision.core.flags import load_rules
    from hematovision.core.patient import PatientContext
    from hematovision.exports.report_csv import report_csv
    from hematovision.exports.slide_pdf import slide_report_pdf
    from hematovision.service.slide_results import summarise_cells

    cells = [("wbc", "neutrophil")] * 20 + [("wbc", "lymphocyte")] * 180 + [("wbc", None)] * 10
    summary = summarise_cells(cells, V1_CLASSES, patient=PatientContext(wbc_10e9_per_l=1.5), rules=load_rules())
    report = {"slide_id": "abs", "model": {"name": "m", "version": "1"}, "mpp": 0.25, **summary}
    assert report["flags"][0]["code"] == "SEVERE_NEUTROPENIA"
    text = report_csv(report)
    assert "neutrophil,0.15," in text and "unidentified,10,4.8," in text
    buf = io.BytesIO()
    slide_report_pdf(report, buf, thumbnail=None, invariant=1)
    pdf = pdf_text(buf.getvalue())
    assert (
        "Absolute counts" in pdf
        and "0.15" in pdf
        and "SEVERE_NEUTROPENIA" in pdf
        and "Unidentified (of 210 seen)" in pdf
    )
    er7 = oru_r01(report, control_id="c2", allow_preliminary=True)
    assert "HV-NEUTROPHIL#" in er7 and "10*9/L" in er7 and "|751-8^" in er7
    assert "HV-UNID" not in er7 and "Unidentified white cells:" in er7  # a note, not an OBX


def test_hl7_escapes_delimiters_in_free_text() -> None:
    report = {
        "slide_id": "s|1",
        "model": {"name": "m", "version": "1"},
        "counts": {"wbc": 10},
        "differential": {"neutrophil": {"count": 10, "percent": 100.0, "ci95": [69.2, 100.0]}},
        "flags": [{"code": "X", "severity": "review", "message": "a|b^c&d~e\\f"}],
        "limits": "decision support",
    }
    er7 = oru_r01(report, control_id="c1", ascii_only=True, allow_preliminary=True)
    msg = parse_message(er7, find_groups=True)
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert order.nte.nte_3.to_er7() == "FLAG [review] X: a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert msg.oru_r01_patient_result.oru_r01_patient.pid.pid_3.cx_1.to_er7() == "s\\F\\1"
    assert "MSH-18" not in er7 and er7.split("\r")[0].count("|") == 11  # no MSH-18 when ASCII only


def test_flag_report_csv_and_pdf_most_severe_first(app, client, make_job, slide_file: Path) -> None:  # type: ignore[no-untyped-def]
    review_id, _ = store_slide(make_job, slide_file, REVIEW, filename="=HYPERLINK(x).tiff")
    critical_id, _ = store_slide(make_job, slide_file, CRITICAL, filename="critical.tiff")
    r = client.get("/api/v1/flags?format=csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.data.decode("utf-8"))))
    assert [row["slide_id"] for row in rows][0] == critical_id and rows[-1]["slide_id"] == review_id
    assert rows[0]["severity"] == "critical" and rows[0]["code"] == "SUSPECTED_ACUTE_LEUKEMIA"
    assert rows[0]["percent"] == "30.0" and float(rows[0]["ci95_low"]) < 30.0 < float(rows[0]["ci95_high"])
    assert {row["filename"] for row in rows if row["slide_id"] == review_id} == {"'=HYPERLINK(x).tiff"}
    r = client.get("/api/v1/flags?format=pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
    text = pdf_text(r.data)
    assert text.index("critical.tiff") < text.index("HYPERLINK") and "LYMPHOCYTOSIS" in text
    with app.extensions["hv_sessions"]() as s:
        assert [a.action for a in s.execute(select(AuditEntry)).scalars()] == ["export", "export"]


def test_flag_report_csv_sorts_a_document_in_any_order() -> None:
    doc = {
        "slides": [
            {"slide_id": "b", "max_severity": "borderline", "flags": [{"severity": "borderline", "code": "B"}]},
            {
                "slide_id": "c",
                "max_severity": "critical",
                "flags": [{"severity": "review", "code": "R"}, {"severity": "critical", "code": "C"}],
            },
            {"slide_id": "r", "max_severity": "review", "flags": [{"severity": "review", "code": "R"}]},
        ]
    }
    rows = list(csv.DictReader(io.StringIO(flag_report_csv(doc))))
    assert [(r["slide_id"], r["code"]) for r in rows] == [("c", "C"), ("c", "R"), ("r", "R"), ("b", "B")]


def test_bad_formats_are_json_400(client) -> None:  # type: ignore[no-untyped-def]
    for url in (
        f"/api/v1/slides/{new_id()}/report?format=docx",
        "/api/v1/flags?format=hl7",
        "/api/v1/flags?format=xml",
    ):
        r = client.get(url)
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_format", url
    doc = client.get("/api/v1/openapi.json").json
    params = doc["paths"]["/api/v1/slides/{slide_id}/report"]["get"]["parameters"]
    assert params[1]["schema"]["enum"] == ["json", "csv", "pdf", "hl7"]
    assert "application/pdf" in doc["paths"]["/api/v1/flags"]["get"]["responses"]["200"]["content"]


def test_cli_writes_pdf_and_hl7_over_http(app, client, make_job, slide_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from werkzeug.serving import make_server

    from hematovision.cli import main

    slide_id, _ = store_slide(make_job, slide_file, CRITICAL)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = ["--api", f"http://127.0.0.1:{server.server_port}", "--api-key", client.environ_base["HTTP_X_API_KEY"]]
    try:
        runner = CliRunner()
        res = runner.invoke(main, ["report", slide_id, "--format", "pdf", *api])
        assert res.exit_code != 0 and "--out" in res.output
        out = tmp_path / "r.pdf"
        res = runner.invoke(main, ["report", slide_id, "--format", "pdf", "--out", str(out), *api])
        assert res.exit_code == 0, res.output
        assert out.read_bytes().startswith(b"%PDF") and "SUSPECTED_ACUTE_LEUKEMIA" in pdf_text(out.read_bytes())
        hl7 = tmp_path / "r.hl7"
        app.extensions["hv_settings"].hl7_allow_preliminary = True  # the slide is not signed off
        assert runner.invoke(main, ["report", slide_id, "--format", "hl7", "--out", str(hl7), *api]).exit_code == 0
        assert hl7.read_bytes().count(b"\rOBX|") >= len(CLASSES) - 1
        res = runner.invoke(main, ["flags", "--format", "csv", *api])
        assert res.exit_code == 0 and "SUSPECTED_ACUTE_LEUKEMIA" in res.output
        flags_pdf = tmp_path / "f.pdf"
        res = runner.invoke(main, ["flags", "--format", "pdf", "--out", str(flags_pdf), *api])
        assert res.exit_code == 0 and flags_pdf.read_bytes().startswith(b"%PDF")
        res = runner.invoke(main, ["flags", *api])
        assert res.exit_code == 0 and res.output.startswith("CRITICAL")
    finally:
        server.shutdown()
        thread.join(5)


def _signed_report(**over) -> dict:  # type: ignore[no-untyped-def]
    report = {
        "slide_id": "0123456789abcdef0123456789abcdef",
        "model": {"name": "m", "version": "1"},
        "counts": {"wbc": 10},
        "differential": {
            "neutrophil": {"count": 9, "percent": 90.0, "ci95": [55.5, 99.7]},
            "lymphocyte": {"count": 1, "percent": 10.0, "ci95": [0.3, 44.5]},
        },
        "flags": [],
        "limits": "decision support",
        "verified_by": "Jane Doe",
        "verified_by_id": "jdoe",
        "verified_at": "2026-11-27T07:30:00Z",
        "signature": {
            "user_id": 7,
            "username": "jdoe",
            "name": "Jane Doe",
            "role": "technologist",
            "meaning": "verified: results reviewed and released",
            "signed_at": "2026-11-27T07:30:00Z",
        },
    }
    report.update(over)
    return report


def test_hl7_verifier_is_the_person_in_obx16() -> None:
    er7 = oru_r01(_signed_report(), control_id="c1")
    msg = parse_message(er7, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.validate()
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.to_er7() == "F"
    for obs in order.children.get("ORU_R01_OBSERVATION"):
        assert obs.obx.obx_16.to_er7() == "jdoe^Doe^Jane" and obs.obx.obx_11.to_er7() == "F"
    notes = [n.nte_3.to_er7() for n in order.children.get("NTE")]
    assert "Verified by Jane Doe (ID jdoe) at 2026-11-27T07:30:00Z: verified: results reviewed and released." in notes
    # Unsigned: preliminary, no responsible observer.
    unsigned = _signed_report(verified_by=None, signature=None, verified_by_id=None)
    with pytest.raises(PreliminaryRefused):
        oru_r01(unsigned, control_id="c2")
    er7 = oru_r01(unsigned, control_id="c2", allow_preliminary=True)
    assert "jdoe" not in er7 and "|P|" in er7


def test_hl7_escapes_every_delimiter_and_line_break_in_names() -> None:
    evil = "Eve\r\nMSH|^~\\&|EVIL|X\rPID|1||666^^^^MR\nOBX|9|ST|x^y"
    report = _signed_report(
        slide_id="slide\rMSH|1",
        verified_by=evil,
        verified_by_id="jd\roe|^~\\&",
        signature={**_signed_report()["signature"], "name": evil, "username": "jd\roe|^~\\&"},
        flags=[{"code": "X", "severity": "review", "message": "line one\r\nline two | ^ ~ \\ &"}],
        model={"name": "m\rMSH|", "version": "1\n"},
    )
    er7 = oru_r01(report, control_id="c\r1|", placer_order="acc\n|9", patient_id="p\r^1", sending_facility="F\r|")
    segments = er7.split("\r")
    assert sum(1 for seg in segments if seg.startswith("MSH")) == 1
    assert not any(seg.startswith(("PID|1||666", "OBX|9")) for seg in segments)
    assert "\n" not in er7 and "EVIL" in er7
    msg = parse_message(er7, find_groups=True)
    assert len(msg.children.get("MSH")) == 1 and msg.validate()
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert len(order.children.get("ORU_R01_OBSERVATION")) == 3  # two classes and the white-cell count
    obx = next(seg for seg in segments if seg.startswith("OBX|1|"))
    ident, family, given = obx.split("|")[16].split("^")
    assert ident == "jd\\X0D\\oe\\F\\\\S\\\\R\\\\E\\\\T\\"
    assert family == "OBX\\F\\9\\F\\ST\\F\\x\\S\\y" and given.startswith("Eve MSH\\F\\\\S\\")
    assert "NTE|1|L|FLAG [review] X: line one\\X0D\\\\X0A\\line two \\F\\ \\S\\ \\R\\ \\E\\ \\T\\" in segments
    assert segments[0].split("|")[9] == "c\\X0D\\1\\F\\"
    obr = next(seg for seg in segments if seg.startswith("OBR|"))
    assert obr.split("|")[3].startswith("acc\\X0A\\\\F\\9^")  # the accession (placer_order) in OBR-2 and 3
    spm = next(seg for seg in segments if seg.startswith("SPM|"))
    assert "slide\\X0D\\MSH\\F\\1" in spm  # the slide stays in SPM-2


def test_csv_and_pdf_name_the_verifier() -> None:
    from hematovision.exports.report_csv import report_csv
    from hematovision.exports.slide_pdf import slide_report_pdf

    rows = list(csv.reader(io.StringIO(report_csv(_signed_report()))))
    assert ["verified_by", "Jane Doe"] in rows and ["verified_by_id", "jdoe"] in rows
    assert ["signature_meaning", "verified: results reviewed and released"] in rows
    rows = list(csv.reader(io.StringIO(report_csv(_signed_report(verified_by="=cmd|x", verified_by_id="@a")))))
    assert ["verified_by", "'=cmd|x"] in rows
    buf = io.BytesIO()
    slide_report_pdf(_signed_report(), buf, thumbnail=None, invariant=1)
    text = " ".join(pdf_text(buf.getvalue()).split())
    assert "VERIFIED by Jane Doe (ID jdoe)" in text and "verified: results reviewed and released" in text


def test_no_key_or_part_of_one_in_reports_exports_audit_or_logs(  # type: ignore[no-untyped-def]
    app, make_key, person, make_job, slide_file: Path, caplog
) -> None:
    """Reclassified with a review key, signed off by a person, exported with an admin key: the keys
    (or any 6+ character piece of them) appear in no report, export, audit entry or log line."""
    import logging

    from hematovision.store.models import Cell

    caplog.set_level(logging.DEBUG)
    slide_id, _ = store_slide(make_job, slide_file, REVIEW)
    review_key, admin_key = make_key("review", "middleware"), make_key("admin", "lis")
    c = app.test_client()
    with app.extensions["hv_sessions"]() as s:
        cell_id = s.execute(select(Cell.id).where(Cell.slide_id == slide_id, Cell.kind == "wbc")).scalars().first()
    r = c.post(f"/api/v1/cells/{cell_id}/label", headers={"X-API-Key": review_key}, json={"label": "monocyte"})
    assert r.status_code == 200, r.json
    c.post(f"/api/v1/slides/{slide_id}/signoff", headers={"X-API-Key": admin_key}, json={"password": "x"})
    wrong = review_key[:-1] + ("B" if review_key.endswith("A") else "A")  # never the key itself
    assert c.get("/api/v1/flags", headers={"X-API-Key": wrong}).status_code == 401  # a wrong key, refused
    tech = person(username="jdoe", full_name="Jane Doe")
    ack_flags_http(tech, slide_id)
    r = tech.post(f"/api/v1/slides/{slide_id}/signoff", json={"password": tech.password, "reason": "test slide"})
    assert r.status_code == 200, r.get_json()
    outputs: dict[str, bytes] = {}
    for fmt in ("json", "csv", "pdf", "hl7"):
        r = c.get(f"/api/v1/slides/{slide_id}/report?format={fmt}", headers={"X-API-Key": admin_key})
        assert r.status_code == 200, fmt
        outputs[fmt] = r.data
    outputs["pdf text"] = pdf_text(outputs["pdf"]).encode()
    outputs["flags csv"] = c.get("/api/v1/flags?format=csv", headers={"X-API-Key": admin_key}).data
    outputs["audit api"] = c.get(f"/api/v1/slides/{slide_id}/audit", headers={"X-API-Key": admin_key}).data
    with app.extensions["hv_sessions"]() as s:
        rows = s.execute(select(AuditEntry)).scalars().all()
        outputs["audit table"] = repr([(e.actor, e.action, e.resource, e.detail) for e in rows]).encode()
    outputs["logs"] = caplog.text.encode()
    assert b"Jane Doe" in outputs["pdf text"] and b"jdoe" in outputs["hl7"] and b"Jane Doe" in outputs["csv"]
    assert b"key:middleware" in outputs["audit table"] and b"key:?" in outputs["audit table"]
    for key in (review_key, admin_key):
        pieces = {key, key[:6], key[:10], key[3:9], key[-6:]} | {key[i : i + 8] for i in range(0, len(key) - 8, 4)}
        for name, data in outputs.items():
            for piece in pieces:
                assert piece.encode() not in data, f"a piece of a key ({len(piece)} characters) in the {name}"
