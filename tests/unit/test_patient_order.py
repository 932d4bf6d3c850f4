"""Patient and order data per slide (issue 15): worklist parsing, intake (JSON ``slides`` and the
multipart ``worklist`` part), ``PATCH /api/v1/slides/<id>`` before sign-off, lookup by accession,
the flag rules' patient context and the CLI's ``--manifest``."""

from __future__ import annotations

import io
import json
from datetime import date, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from hematovision.core.patient import OrderError, OrderInfo, parse_order, parse_worklist
from hematovision.store.models import AuditEntry, Batch, Slide, utcnow

WORKLIST = (
    "file,accession,patient_id,assigning_authority,birth_date,sex,collected_at,wbc_10e9_per_l\n"
    "a.png,ACC-1,P123,HOSP,1950-06-01,F,2026-12-01T08:30:00Z,25\n"
    "b.png,ACC-2,,,,M,,\n"
)


def test_worklist_rows_are_parsed_with_units_and_age() -> None:
    orders = parse_worklist(WORKLIST)
    a = orders["a.png"]
    assert a.accession == "ACC-1" and a.patient_id == "P123" and a.assigning_authority == "HOSP"
    assert a.birth_date == date(1950, 6, 1) and a.collected_at == datetime(2026, 12, 1, 8, 30)
    assert a.wbc_10e9_per_l == 25.0
    ctx = a.context()
    assert 76.4 < (ctx.age_years or 0) < 76.6 and ctx.sex == "F" and ctx.wbc_10e9_per_l == 25.0
    assert orders["b.png"] == OrderInfo(accession="ACC-2", sex="M")


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("a.png,A1,,,,,,25000", "×10⁹/L"),  # per µL
        ("a.png,A1,,,,,,0.01", "×10⁹/L"),
        ("a.png,A1,,,,X,,", "sex"),
        ("a.png,A1,,,1950-13-01,,,", "birth_date"),
        ("a.png,A1,,,,,2026-12-01T08:30:00,", "time zone"),
        ("a.png,A 1,,,,,,", "accession"),
        ("a.png,A1,,HOSP,,,,", "assigning_authority"),
        ("a.png,A1,,,2030-01-01,,2026-12-01T08:30:00Z,", "after the collection"),
    ],
)
def test_bad_worklist_rows_are_refused_naming_the_field(row: str, needle: str) -> None:
    with pytest.raises(OrderError, match="line 2") as e:
        parse_worklist(WORKLIST.splitlines()[0] + "\n" + row + "\n")
    assert needle in str(e.value)


def test_worklist_needs_known_columns_and_unique_files() -> None:
    with pytest.raises(OrderError, match="unknown column"):
        parse_worklist("file,accession,mrn\na.png,A1,X\n")
    with pytest.raises(OrderError, match="listed twice"):
        parse_worklist("file,accession\na.png,A1\na.png,A2\n")
    with pytest.raises(OrderError, match="not both"):
        parse_order({"birth_date": "2000-01-01", "age_years": 3})


def _post_with_worklist(client, files, worklist: str):  # type: ignore[no-untyped-def]
    data = {"mpp": "0.25", "files": [(io.BytesIO(b), n) for n, b in files]}
    data["worklist"] = (io.BytesIO(worklist.encode()), "worklist.csv")
    return client.post("/api/v1/batches", data=data, content_type="multipart/form-data")


def test_a_worklist_part_gives_each_uploaded_slide_its_order(app, client, png_bytes) -> None:  # type: ignore[no-untyped-def]
    r = _post_with_worklist(client, [("a.png", png_bytes()), ("b.png", png_bytes())], WORKLIST)
    assert r.status_code == 202, r.json
    with app.extensions["hv_sessions"]() as s:
        got = {sl.filename: sl for sl in s.scalars(select(Slide))}
        assert got["a.png"].accession == "ACC-1" and got["a.png"].wbc_10e9_per_l == 25.0
        assert got["a.png"].birth_date == date(1950, 6, 1) and got["b.png"].sex == "M"
    found = client.get("/api/v1/slides?accession=ACC-1").json
    assert [x["filename"] for x in found["slides"]] == ["a.png"]
    assert found["slides"][0]["order"]["patient_id"] == "P123"
    assert client.get("/api/v1/slides?accession=NOPE").json["slides"] == []


@pytest.mark.parametrize(
    ("worklist", "needle"),
    [
        (WORKLIST.replace(",25\n", ",25000\n"), "×10⁹/L"),
        (WORKLIST.replace("b.png", "c.png"), "match no slide"),
    ],
)
def test_a_bad_worklist_leaves_nothing(app, client, png_bytes, worklist: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    r = _post_with_worklist(client, [("a.png", png_bytes()), ("b.png", png_bytes())], worklist)
    assert r.status_code == 422 and needle in r.json["error"]["message"], r.json
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(func.count()).select_from(Batch)).scalar_one() == 0


def test_json_slides_entries_and_the_old_per_litre_field(app, client, settings, png_bytes) -> None:  # type: ignore[no-untyped-def]
    (settings.import_root / "ok.png").write_bytes(png_bytes())
    body = {"paths": ["ok.png"], "mpp": 0.25, "slides": [{"path": "ok.png", "accession": "J1", "sex": "F"}]}
    r = client.post("/api/v1/batches", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 202, r.json
    r = client.post(
        "/api/v1/batches",
        data=json.dumps({"paths": ["ok.png"], "mpp": 0.25, "wbc_per_l": 25}),
        content_type="application/json",
    )
    assert r.status_code == 422 and "×10⁹/L" in r.json["error"]["message"]  # 25 per litre: a unit error
    r = client.post(
        "/api/v1/batches",
        data=json.dumps({"paths": ["ok.png"], "mpp": 0.25, "wbc_per_l": 7.5e9}),
        content_type="application/json",
    )
    assert r.status_code == 202
    with app.extensions["hv_sessions"]() as s:
        assert sorted((x.accession or "", x.wbc_10e9_per_l or 0) for x in s.scalars(select(Slide))) == [
            ("", 7.5),
            ("J1", 0),
        ]


def test_patch_corrects_the_order_audited_and_not_after_signoff(app, client, make_job) -> None:  # type: ignore[no-untyped-def]
    sessions, _, slide_id = make_job()
    r = client.patch(f"/api/v1/slides/{slide_id}", json={"accession": "X9", "wbc_10e9_per_l": 12.5})
    assert r.status_code == 200, r.json
    assert r.json["order"]["accession"] == "X9" and r.json["changed"] == ["accession", "wbc_10e9_per_l"]
    r = client.patch(f"/api/v1/slides/{slide_id}", json={"wbc_10e9_per_l": 12500})
    assert r.status_code == 422 and "×10⁹/L" in r.json["error"]["message"]
    assert client.patch(f"/api/v1/slides/{slide_id}", json={"mrn": "1"}).status_code == 422
    with sessions() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "order", AuditEntry.outcome == "allowed")).one()
        assert entry.slide_id == slide_id and entry.detail["changed"]["accession"] == [None, "X9"]
        s.get(Slide, slide_id).verified_at = utcnow()
        s.commit()
    r = client.patch(f"/api/v1/slides/{slide_id}", json={"accession": "Y"})
    assert r.status_code == 409 and r.json["error"]["code"] == "signed_off"
    with sessions() as s:
        assert s.get(Slide, slide_id).accession == "X9"


def test_submit_manifest_refuses_bad_rows_before_sending(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main as cli

    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "w.csv").write_text(WORKLIST.replace(",25\n", ",25000\n"))
    # nothing listens on this port: a bad row must stop the command before any request
    res = CliRunner().invoke(cli, ["submit", "--api", "http://127.0.0.1:9", "--manifest", str(tmp_path / "w.csv")])
    assert res.exit_code != 0 and "line 2" in res.output and "nothing was submitted" in res.output
    help_text = CliRunner().invoke(cli, ["submit", "--help"]).output
    assert "--manifest" in help_text
    help_text = CliRunner().invoke(cli, ["process", "--help"]).output
    assert "--manifest" in help_text and "--out" in help_text


def test_the_slide_page_header_shows_the_order_escaped_and_find_by_accession(app, person, make_job) -> None:  # type: ignore[no-untyped-def]
    sessions, _, slide_id = make_job()
    with sessions() as s:
        slide = s.get(Slide, slide_id)
        slide.accession, slide.patient_id, slide.sex, slide.wbc_10e9_per_l = "ACC-<b>", "P9", "F", 6.5
        s.commit()
    tech = person("technologist", username="jdoe", full_name="Jane Doe")
    html = tech.get(f"/ui/slides/{slide_id}").get_data(as_text=True)
    assert 'id="slide-order"' in html and "ACC-&lt;b&gt;" in html and "P9" in html and "6.5 ×10⁹/L" in html
    r = tech.get("/ui/find?accession=ACC-<b>")
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/ui/slides/{slide_id}")
    r = tech.get("/ui/find?accession=none")
    assert r.status_code == 302 and "not_found=none" in r.headers["Location"]


def test_submit_manifest_sends_the_worklist_over_http(app, client, tmp_path, png_bytes) -> None:  # type: ignore[no-untyped-def]
    import threading

    from werkzeug.serving import make_server

    from hematovision.cli import main as cli

    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.png").write_bytes(png_bytes())
    (tmp_path / "w.csv").write_text(WORKLIST)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = ["--api", f"http://127.0.0.1:{server.server_port}", "--api-key", client.environ_base["HTTP_X_API_KEY"]]
    try:
        res = CliRunner().invoke(cli, ["submit", "--manifest", str(tmp_path / "w.csv"), "--mpp", "0.25", *api])
        assert res.exit_code == 0, res.output
        assert "2 job(s)" in res.output
    finally:
        server.shutdown()
    with app.extensions["hv_sessions"]() as s:
        got = {sl.filename: (sl.accession, sl.wbc_10e9_per_l) for sl in s.scalars(select(Slide))}
    assert got == {"a.png": ("ACC-1", 25.0), "b.png": ("ACC-2", None)}


def test_patch_evaluates_the_flags_again_with_the_new_wbc(app, client, make_job) -> None:  # type: ignore[no-untyped-def]
    from hematovision.core.flags import load_rules
    from hematovision.service.slide_results import replace_result_rows, summarise_cells
    from hematovision.store.models import Cell

    sessions, _, slide_id = make_job()
    labels = ["neutrophil"] * 2 + ["lymphocyte"] * 198
    with sessions() as s:
        slide = s.get(Slide, slide_id)
        s.add_all(Cell(slide_id=slide_id, kind="wbc", x0=0, y0=0, x1=1, y1=1, score=0.9, label=lab) for lab in labels)
        report = summarise_cells(
            (("wbc", lab) for lab in labels), ["lymphocyte", "neutrophil"], patient=None, rules=load_rules()
        )
        replace_result_rows(s, slide, {**report, "slide_id": slide_id})
        s.commit()
    before = client.get(f"/api/v1/slides/{slide_id}/report").json
    assert before["absolute_10e9_per_l"] is None
    assert client.patch(f"/api/v1/slides/{slide_id}", json={"wbc_10e9_per_l": 5.0}).status_code == 200
    after = client.get(f"/api/v1/slides/{slide_id}/report").json
    assert after["patient"]["wbc_10e9_per_l"] == 5.0 and after["absolute_10e9_per_l"]["neutrophil"]["value"] == 0.05
    assert "SEVERE_NEUTROPENIA" in {f["code"] for f in after["flags"]}
