"""Issue 13's hardening, on the embedded SQLite app (tests/integration/test_hardening_pg.py repeats
what differs on PostgreSQL): ids checked by shape before any query, strict query parameters,
Unicode upload names, no server paths in error messages, security headers, CJK glyphs in the PDFs,
and a schema that matches the models."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pypdf import PdfReader

from hematovision.store.models import CELL_ID_MAX, new_id

#: Malformed batch/slide/job ids, as they appear in a URL path.
BAD_IDS = [
    "%00",
    "%00" + "0" * 31,
    "x",
    "nope",
    "A" * 32,  # upper case: new_id never makes it
    "0" * 31,
    "0" * 33,
    "..%5Cjobs%5C" + "0" * 32,
    "%E8%A1%80%E6%B6%B2",  # 血液
    "%20" + "0" * 32,
]
#: Malformed cell ids: NUL, zero, negative, beyond 64 bits, non-ASCII digits, other spellings.
BAD_CELL_IDS = ["%00", "0", "-1", str(2**63), "9" * 30, "%E0%A5%A7%E0%A5%A8", "%C2%B3", "01", "1.0", "1e3", "x"]


def _id_routes(app: Flask) -> list[tuple[str, str]]:
    """(method, rule) of every route with an id in its path."""
    out = []
    for rule in app.url_map.iter_rules():
        if any(a.endswith("_id") for a in rule.arguments):
            out += [(m, rule.rule) for m in sorted(rule.methods or ()) if m in ("GET", "POST")]
    return out


def _url(rule: str, *, hexid: str | None = None, cellid: str | None = None) -> str:
    url = re.sub(r"<hexid:\w+>", hexid or new_id(), rule)
    url = re.sub(r"<cellid:\w+>", cellid or "1", url)
    return re.sub(r"<int:\w+>", "0", url)


def test_every_id_in_a_path_is_typed(app: Flask) -> None:
    """A route whose path holds an id declares its shape (``hexid`` or ``cellid``): none is a plain string."""
    routes = _id_routes(app)
    assert len({r for _, r in routes}) >= 13, routes  # 10 API routes and 3 review pages
    for _, rule in routes:
        for arg in re.findall(r"<([^>]+)>", rule):
            if arg.split(":")[-1].endswith("_id"):
                assert arg.split(":")[0] in ("hexid", "cellid"), f"{rule}: {arg} is not typed"


def test_malformed_ids_are_404_on_every_endpoint(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    routes = _id_routes(app)
    tried = 0
    for method, rule in routes:
        bad = BAD_CELL_IDS if "<cellid:" in rule else BAD_IDS
        for value in bad:
            url = _url(rule, hexid=value) if "<hexid:" in rule else _url(rule, cellid=value)
            r = client.open(url, method=method, json={"label": "neutrophil"} if method == "POST" else None)
            assert r.status_code == 404, (method, url, r.status_code)
            assert r.is_json and r.json["error"]["code"] == "not_found", (method, url)
            tried += 1
    assert tried >= 100


def test_well_formed_unknown_ids_are_404_not_500(client, person) -> None:  # type: ignore[no-untyped-def]
    """Ids of the right shape that do not exist, up to the largest 64-bit cell id."""
    x = new_id()
    for method, url in [
        ("GET", f"/api/v1/batches/{x}"),
        ("GET", f"/api/v1/jobs/{x}"),
        ("POST", f"/api/v1/jobs/{x}/cancel"),
        ("GET", f"/api/v1/slides/{x}/report"),
        ("GET", f"/api/v1/slides/{x}/cells"),
        ("GET", f"/api/v1/slides/{x}/audit"),
        ("GET", f"/api/v1/slides/{x}/dzi"),
        ("GET", f"/api/v1/slides/{x}/tiles/0/0_0.jpeg"),
        ("GET", f"/api/v1/cells/{2**31}/image"),
        ("GET", f"/api/v1/cells/{CELL_ID_MAX}/image"),
        ("POST", f"/api/v1/cells/{CELL_ID_MAX}/label"),
    ]:
        r = client.open(url, method=method, json={"label": "neutrophil"} if method == "POST" else None)
        assert r.status_code == 404 and r.json["error"]["code"] == "not_found", (method, url, r.json)
    # Sign-off is a person's act (keys get 403 whatever the id): a person signing an unknown slide gets 404.
    signer = person()
    r = signer.post(f"/api/v1/slides/{x}/signoff", json={"password": signer.password})
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found", r.json


def test_a_malformed_id_needs_no_key_to_be_refused(app: Flask) -> None:
    """No route matches a malformed id, so it is a 404 before authentication (nothing is revealed: the
    shape of an id is public); a well-formed one still needs a key."""
    anon = app.test_client()
    assert anon.get("/api/v1/slides/%00/report").status_code == 404
    assert anon.get(f"/api/v1/slides/{new_id()}/report").status_code == 401


@pytest.mark.parametrize("limit", ["³", "१", "1e3", "", "0", "501", "-1", " 5", "5 ", "0x10", "9" * 400, "%00"])
def test_limit_is_parsed_strictly(client, limit: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/batches?limit={limit}")
    assert r.status_code == 400, (limit, r.json)
    assert r.json["error"]["code"] == "invalid_limit" and "1 to 500" in r.json["error"]["message"]


def test_good_limits_and_other_query_parameters(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/batches?limit=500").status_code == 200
    assert client.get("/api/v1/batches").status_code == 200
    for url, code in [
        ("/api/v1/flags?batch=%00", "invalid_batch"),
        ("/api/v1/flags?batch=x", "invalid_batch"),
        (f"/api/v1/flags?batch={'A' * 32}", "invalid_batch"),
        ("/api/v1/flags?since=%00", "invalid_since"),
        (f"/api/v1/slides/{new_id()}/cells?label=%00", "invalid_label"),
        (f"/api/v1/slides/{new_id()}/cells?label={'x' * 51}", "invalid_label"),
    ]:
        r = client.get(url)
        if code == "invalid_label":  # the slide is looked up first: an unknown one is a 404
            assert r.status_code == 404, (url, r.json)
            continue
        assert r.status_code == 400 and r.json["error"]["code"] == code, (url, r.json)
    assert client.get("/api/v1/flags?batch=").status_code == 200  # empty means all batches
    r = client.get(f"/api/v1/flags?batch={new_id()}")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_label_filter_is_checked_on_a_real_slide(client, make_job) -> None:  # type: ignore[no-untyped-def]
    _, _, slide_id = make_job()
    assert client.get(f"/api/v1/slides/{slide_id}/cells?label=neutrophil").status_code == 200
    for label in ("%00", "x" * 51, "a%0Ab"):
        r = client.get(f"/api/v1/slides/{slide_id}/cells?label={label}")
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_label", label


# --------------------------------------------------------------------------------------------------
# upload names


def test_unicode_upload_names_are_kept_and_stored_safely(client, settings, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    names = ["血液.png", "Probe Müller.PNG", "scans/мазок.png", "a\x00b\u202e.png"]
    r = upload(client, *[(n, png_bytes()) for n in names], mpp=0.25)
    assert r.status_code == 202, r.json
    shown = [j["filename"] for j in r.json["jobs"]]
    assert shown == ["血液.png", "Probe Müller.PNG", "мазок.png", "ab.png"]
    batch_dir = settings.upload_dir / r.json["id"]
    stored = sorted(p.name for p in batch_dir.iterdir())
    assert stored == ["0000-slide.png", "0001-Probe_Muller.png", "0002-slide.png", "0003-ab.png"]
    assert all(n.isascii() for n in stored)
    listed = client.get(f"/api/v1/batches/{r.json['id']}").json
    assert [j["filename"] for j in listed["jobs"]] == shown


def test_a_name_that_climbs_out_of_its_folder_is_still_refused(client, png_bytes, upload) -> None:  # type: ignore[no-untyped-def]
    for name in ("../../etc/passwd.png", "scans/../x.png", "\x00\x01"):
        r = upload(client, (name, png_bytes()), mpp=0.25)
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_filename", name


# --------------------------------------------------------------------------------------------------
# no server paths in error messages


def _truncated_svs(tmp_path: Path) -> bytes:
    """An Aperio SVS cut after 1000 bytes: OpenSlide's error names the file by its full path."""
    from hematovision.devtools.synthetic import make_slide

    svs = tmp_path / "whole.svs"
    make_slide(svs, tmp_path / "no-data", 1024, 1024, mpp=0.25, n_wbc=2, seed=1, fmt="svs", source="procedural")
    return svs.read_bytes()[:1000]


def _no_server_path(body: dict[str, Any], *dirs: Path) -> None:
    text = json.dumps(body, ensure_ascii=False)
    for d in dirs:
        assert str(d) not in text, f"{d} in {text}"
    assert "/tmp/" not in text and ".incoming-" not in text, text


def test_a_bad_upload_names_the_client_file_not_the_server_path(client, settings, upload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, ("血液 cut.svs", _truncated_svs(tmp_path)), mpp=0.25)
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_slide", r.json
    message = r.json["error"]["message"]
    assert message.startswith("血液 cut.svs") and "0000-" not in message, message
    _no_server_path(r.json, settings.upload_dir, settings.var_dir)


def test_a_bad_server_path_names_the_client_path_not_the_server_path(client, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = settings.import_root
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "real-name.svs").write_bytes(_truncated_svs(tmp_path))
    (root / "link.svs").symlink_to(root / "deep" / "er" / "real-name.svs")
    for given in ("link.svs", "deep/er/real-name.svs", "missing.svs"):
        r = client.post("/api/v1/batches", json={"paths": [given], "mpp": 0.25})
        assert r.status_code in (400, 422), r.json
        _no_server_path(r.json, root, settings.var_dir)
        assert "real-name" not in r.json["error"]["message"] or given.endswith("real-name.svs"), r.json


def test_job_errors_are_shown_without_server_paths(client, make_job, settings) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job()
    from hematovision.store.models import Job

    with factory() as s, s.begin():
        s.get(
            Job, job_id
        ).error = f"prepare: FileNotFoundError: [Errno 2] No such file: '{settings.upload_dir}/x/0000-a.svs'"
    body = client.get(f"/api/v1/jobs/{job_id}").json
    assert body["error"] == "prepare: FileNotFoundError: [Errno 2] No such file: '0000-a.svs'"


# --------------------------------------------------------------------------------------------------
# security headers


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
        self.inline += [f"{tag} {k}" for k in a if k == "style" or k.startswith("on")]


def test_security_headers_on_pages_and_api(client, person, make_job) -> None:  # type: ignore[no-untyped-def]
    _, job_id, slide_id = make_job()
    responses = {
        "page": person().get(f"/ui/slides/{slide_id}"),
        "login page": client.get("/ui/login"),
        "api": client.get(f"/api/v1/jobs/{job_id}"),
        "api error": client.get(f"/api/v1/jobs/{new_id()}"),
        "script": client.get("/ui/static/boot.js"),
    }
    for what, r in responses.items():
        csp = r.headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, what
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, what
        assert r.headers.get("X-Content-Type-Options") == "nosniff", what
        assert r.headers.get("Referrer-Policy") == "same-origin", what
        assert r.headers.get("X-Frame-Options") == "DENY", what
    for what in ("api", "api error"):
        assert responses[what].is_json and responses[what].headers["Cache-Control"] == "no-store", what
    assert responses["page"].status_code == 200 and responses["script"].status_code == 200


@pytest.mark.parametrize(
    ("page", "call"),
    [
        ("/ui/", "pages.batches"),
        ("/ui/flags", "pages.flags"),
        ("/ui/batches/{batch}", "pages.batch"),
        ("/ui/slides/{slide}", "review.start"),
        ("/ui/slides/{slide}/gallery", "review.start"),
    ],
)
def test_pages_run_no_inline_script(person, make_job, page: str, call: str) -> None:  # type: ignore[no-untyped-def]
    """What the policy forbids is not in the pages: every script has a src; no style or on* attribute;
    each page starts through boot.js with its call and arguments as data."""
    factory, _, slide_id = make_job()
    from hematovision.store.models import Slide

    with factory() as s:
        batch_id = s.get(Slide, slide_id).batch_id
    r = person().get(page.format(batch=batch_id, slide=slide_id))
    assert r.status_code == 200
    tags = _Tags()
    tags.feed(r.get_data(as_text=True))
    assert tags.scripts and all(s.get("src") for s in tags.scripts), tags.scripts
    assert tags.inline == []
    boot = [s for s in tags.scripts if (s.get("src") or "").endswith("/boot.js")]
    assert len(boot) == 1 and boot[0]["data-call"] == call
    args = json.loads(boot[0]["data-args"] or "")
    if "{slide}" in page:
        assert args[0] == slide_id
    if "{batch}" in page:
        assert args == [batch_id]


def test_review_script_sets_styles_through_the_cssom() -> None:
    """``el(..., {style})`` would be refused by the policy as a style attribute; hv.js assigns it to
    ``element.style`` instead (which the policy allows)."""
    hv = (Path(__file__).resolve().parents[2] / "api" / "static" / "hv.js").read_text()
    assert 'else if (k === "style") e.style.cssText = v;' in hv


# --------------------------------------------------------------------------------------------------
# PDF glyphs


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _report(filename: str) -> dict[str, Any]:
    return {
        "slide_id": new_id(),
        "filename": filename,
        "model": {"name": "m", "version": "1"},
        "counts": {"wbc": 0},
        "differential": {},
        "flags": [{"severity": "review", "code": "NOTE", "message": "Проверка: 血液 검사"}],
        "verified_by": "山田 太郎",
        "verified_at": "2026-11-27T07:30:00Z",
    }


def test_pdfs_print_cjk_names(require) -> None:  # type: ignore[no-untyped-def]
    from hematovision.exports.flag_report import flag_report_pdf
    from hematovision.exports.pdf_style import unicode_font_file
    from hematovision.exports.slide_pdf import slide_report_pdf

    require(unicode_font_file() is not None, "a CJK TrueType font (apt-get install fonts-wqy-microhei)")
    buf = io.BytesIO()
    slide_report_pdf(_report("血液.svs"), buf, thumbnail=None, invariant=1)
    text = _pdf_text(buf.getvalue())
    for expected in ("血液.svs", "山田 太郎", "Проверка: 血液 검사"):
        assert expected in text, (expected, text)
    assert "?" not in text and "could not be printed" not in text
    doc = {
        "batch": None,
        "since": None,
        "count": 1,
        "slides": [
            {
                "slide_id": "s1",
                "batch_id": "b1",
                "filename": "血液.svs",
                "max_severity": "review",
                "analysed_at": "2026-11-27T07:00:00Z",
                "counts": {"wbc": 100, "rbc": 0, "platelets": 0},
                "flags": [{"code": "C", "severity": "review", "message": "血液", "evidence": {}}],
            }
        ],
    }
    buf = io.BytesIO()
    flag_report_pdf(doc, buf, invariant=1)
    assert "血液.svs" in _pdf_text(buf.getvalue())


def test_pdfs_without_a_cjk_font_print_question_marks_and_say_so(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.exports import pdf_style
    from hematovision.exports.slide_pdf import slide_report_pdf

    pdf_style.register_fonts()
    monkeypatch.setattr(pdf_style._FONTS, "unicode", frozenset())
    buf = io.BytesIO()
    slide_report_pdf(_report("血液.svs"), buf, thumbnail=None, invariant=1)
    text = _pdf_text(buf.getvalue())
    assert "??.svs" in text and "血" not in text
    assert "could not be printed" in text and "fonts-wqy-microhei" in text
    buf = io.BytesIO()
    slide_report_pdf(_report("plain.svs") | {"verified_by": "Jo", "flags": []}, buf, thumbnail=None, invariant=1)
    assert "could not be printed" not in _pdf_text(buf.getvalue())  # the note is per document


# --------------------------------------------------------------------------------------------------
# schema


def test_sqlite_schema_matches_the_models(make_job) -> None:  # type: ignore[no-untyped-def]
    """``alembic check`` in a test: the migrated SQLite database and the models do not differ (cell ids
    stay INTEGER there, which SQLite stores as 64-bit and autoincrements past 2**40)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import select

    from hematovision.store.models import Base, Cell

    factory, _, slide_id = make_job()
    with factory() as s:
        context = MigrationContext.configure(s.connection(), opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    box = {"slide_id": slide_id, "kind": "rbc", "x0": 0, "y0": 0, "x1": 1, "y1": 1, "score": 1.0}
    with factory() as s, s.begin():
        s.add(Cell(id=2**40, **box))
        s.flush()
        s.add(Cell(**box))
    with factory() as s:
        assert s.execute(select(Cell.id).order_by(Cell.id)).scalars().all() == [2**40, 2**40 + 1]
