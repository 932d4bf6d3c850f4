"""Technologist review: reclassification recomputes the differential and flags, sign-off locks the slide."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.devtools.synthetic import make_slide
from hematovision.service.review import ReviewError, Signer, reclassify, sign_off, slide_classes
from hematovision.service.slide_results import build_report
from hematovision.store.models import (
    AuditEntry,
    Cell,
    CellReview,
    DifferentialEntry,
    FlagRecord,
    Signature,
    Slide,
    new_id,
)
from tests.conftest import ack_flags, ack_flags_http
from workers.job_store import store_analysis

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


@pytest.fixture
def analysed(app, make_job, tmp_path: Path, data_root: Path) -> str:  # type: ignore[no-untyped-def]
    """A small real slide, analysed from its manifest (one cell left unidentified) and stored."""
    path = tmp_path / "s.tiff"
    manifest = make_slide(path, data_root, 1024, 1024, mpp=0.25, n_wbc=6)
    cells = []
    for i, c in enumerate(manifest["cells"]):
        kind = {"platelet": "platelet"}.get(c["kind"], c["kind"])
        label = (c["class"] or "neutrophil") if kind == "wbc" else None
        if kind == "wbc" and label not in CLASSES:
            label = "neutrophil"
        if kind == "wbc" and i == 0:
            label = None  # the model was unsure
        cells.append(CellResult(kind, tuple(int(v) for v in c["bbox"]), 0.9, label, 0.9 if label else 0.4))
    if not any(c.kind == "wbc" and c.label is None for c in cells):
        first = next(c for c in cells if c.kind == "wbc")
        first.label, first.probability = None, 0.4
    analysis = SlideAnalysis(
        mpp=0.25, width=1024, height=1024, model_name="wbc-test", model_version="1", classes=CLASSES, cells=cells
    )
    factory, job_id, slide_id = make_job(path, name="review", width=1024, height=1024, state="running")
    assert factory is app.extensions["hv_sessions"]
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    return slide_id


def _wbc(client, slide_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/slides/{slide_id}/cells?kind=wbc")
    assert r.status_code == 200, r.get_json()
    return r.get_json()["cells"]


def test_slide_classes_in_pbc_order() -> None:
    report = {"differential": {"neutrophil": {}, "lymphocyte": {}, "unidentified": {}, "blast": {}}}
    assert slide_classes(report) == ["erythroblast", "lymphocyte", "neutrophil", "platelet", "blast"]


def test_reclassify_recomputes_and_records(app, analysed: str) -> None:  # type: ignore[no-untyped-def]
    factory = app.extensions["hv_sessions"]
    with factory() as s:
        before = s.get(Slide, analysed).report
    with factory() as s:
        cell = (
            s.execute(
                select(Cell)
                .where(Cell.slide_id == analysed, Cell.kind == "wbc", Cell.label.is_not(None))
                .order_by(Cell.id)
            )
            .scalars()
            .first()
        )
        cell_id, old = cell.id, cell.label
    new = "lymphocyte" if old != "lymphocyte" else "monocyte"
    raised = datetime(2026, 11, 26, 23, 0, 0)
    with factory() as s, s.begin():
        s.execute(update(FlagRecord).where(FlagRecord.slide_id == analysed).values(created_at=raised))
    with factory() as s, s.begin():
        cell, report = reclassify(s, cell_id, new, "user:alice")
    assert report["differential"][new]["count"] == before["differential"].get(new, {"count": 0})["count"] + 1
    assert report["differential"][old]["count"] == before["differential"][old]["count"] - 1
    assert report["reviewed_cells"] == 1
    with factory() as s:
        slide = s.get(Slide, analysed)
        assert slide.report["differential"][new] == report["differential"][new]
        row = s.get(DifferentialEntry, (analysed, new))
        assert row.count == report["differential"][new]["count"]
        flags = s.execute(select(FlagRecord).where(FlagRecord.slide_id == analysed)).scalars().all()
        assert {f.code for f in flags} == {f["code"] for f in report["flags"]}
        # INSUFFICIENT_WBC stands before and after: it keeps the time it was first raised.
        assert {f.code: f.created_at for f in flags}["INSUFFICIENT_WBC"] == raised
        rev = s.execute(select(CellReview)).scalar_one()
        assert (rev.cell_id, rev.from_label, rev.to_label, rev.actor) == (cell_id, old, new, "user:alice")
    # Unknown labels, unknown cells.
    with factory() as s, s.begin(), pytest.raises(ReviewError) as e:
        reclassify(s, cell_id, "dragon", "x")
    assert e.value.kind == "invalid"
    with factory() as s, s.begin(), pytest.raises(ReviewError) as e:
        reclassify(s, 10**9, "lymphocyte", "x")
    assert e.value.kind == "not_found"


def test_signoff_needs_no_unidentified_then_locks(app, analysed: str, make_user) -> None:  # type: ignore[no-untyped-def]
    factory = app.extensions["hv_sessions"]
    bob = Signer(make_user("bob", "pathologist", "Bob Smith"), "bob", "Bob Smith", "pathologist")
    with factory() as s, s.begin(), pytest.raises(ReviewError) as e:
        sign_off(s, analysed, bob)
    assert e.value.kind == "conflict" and "unidentified" in e.value.message
    with factory() as s:
        open_ids = (
            s.execute(select(Cell.id).where(Cell.slide_id == analysed, Cell.kind == "wbc", Cell.label.is_(None)))
            .scalars()
            .all()
        )
    for cid in open_ids:
        with factory() as s, s.begin():
            reclassify(s, cid, "monocyte", "user:bob")
    ack_flags(factory, analysed)
    with factory() as s, s.begin():
        sign_off(s, analysed, bob, reason="few cells on a small test slide")
    with factory() as s:
        slide = s.get(Slide, analysed)
        assert slide.verified_by == "Bob Smith" and slide.verified_at is not None
        assert slide.report["verified_by"] == "Bob Smith" and slide.report["verified_at"].endswith("Z")
        assert slide.report["verified_by_id"] == "bob"
        assert slide.report["signature"] == {
            "user_id": bob.user_id,
            "username": "bob",
            "name": "Bob Smith",
            "role": "pathologist",
            "meaning": "verified: results reviewed and released",
            "signed_at": slide.report["verified_at"],
        }
        assert slide.report["unidentified"] == 0
        sig = s.execute(select(Signature)).scalar_one()
        assert (sig.slide_id, sig.user_id, sig.full_name, sig.meaning, sig.reason) == (
            analysed,
            bob.user_id,
            "Bob Smith",
            "verified: results reviewed and released",
            "few cells on a small test slide",
        )
    with factory() as s, s.begin(), pytest.raises(ReviewError) as e:
        reclassify(s, open_ids[0], "lymphocyte", "x")
    assert e.value.kind == "conflict"
    with factory() as s, s.begin(), pytest.raises(ReviewError) as e:
        sign_off(s, analysed, bob)
    assert e.value.kind == "conflict"


def test_review_api_end_to_end(app, client, person, analysed: str) -> None:  # type: ignore[no-untyped-def]
    cells = _wbc(client, analysed)
    assert cells and all(c["kind"] == "wbc" for c in cells)
    meta = client.get(f"/api/v1/slides/{analysed}/cells").get_json()
    assert "neutrophil" in meta["classes"] and meta["verified_by"] is None
    tech = person("technologist", username="jdoe", full_name="Jane Doe")
    # Sign-off refused while a cell is unidentified.
    r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": tech.password})
    assert r.status_code == 409 and "unidentified" in r.get_json()["error"]["message"]
    before = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    for c in cells:
        if c["label"] is None:  # a person reclassifies in a session (CSRF token sent)
            r = tech.post(f"/api/v1/cells/{c['id']}/label", json={"label": "eosinophil"})
            assert r.status_code == 200, r.get_json()
            body = r.get_json()
            assert body["cell"]["label"] == "eosinophil" and "differential" in body and "flags" in body
    ack_flags_http(tech, analysed)
    assert client.post(f"/api/v1/cells/{cells[0]['id']}/label", json={"label": "nope"}).status_code == 400
    assert client.post(f"/api/v1/cells/{cells[0]['id']}/label", data="x").status_code == 400
    assert client.post("/api/v1/cells/999999/label", json={"label": "monocyte"}).status_code == 404
    filtered = client.get(f"/api/v1/slides/{analysed}/cells?label=eosinophil").get_json()["cells"]
    assert filtered and all(c["label"] == "eosinophil" for c in filtered) and any(c["reviewed"] for c in filtered)
    # Keys never sign; a person signs only with their password re-entered.
    assert client.post(f"/api/v1/slides/{analysed}/signoff", json={"password": "x"}).status_code == 403
    r = tech.post(f"/api/v1/slides/{analysed}/signoff")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "reauthentication_required"
    r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "reauthentication_required"
    r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": "not my password"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "reauthentication_failed"
    r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": tech.password}, csrf=False)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "csrf_failed"
    assert client.get(f"/api/v1/slides/{analysed}/report").get_json().get("verified_by") is None
    r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": tech.password, "reason": "small slide"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["verified_by"] == "Jane Doe" and r.get_json()["verified_by_id"] == "jdoe"
    after = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert after["verified_by"] == "Jane Doe" and after["verified_by_id"] == "jdoe" and after["verified_at"]
    assert after["signature"]["meaning"] == "verified: results reviewed and released"
    assert after["signature"]["user_id"] == tech.user_id
    assert after["differential"]["eosinophil"]["count"] > before["differential"]["eosinophil"]["count"]
    # Read-only afterwards.
    assert client.post(f"/api/v1/cells/{cells[0]['id']}/label", json={"label": "monocyte"}).status_code == 409
    assert tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": tech.password}).status_code == 409
    hl7 = client.get(f"/api/v1/slides/{analysed}/report?format=hl7").get_data(as_text=True)
    assert "Verified by Jane Doe (ID jdoe)" in hl7 and "|jdoe^Doe^Jane|" in hl7
    with app.extensions["hv_sessions"]() as s:
        rows = s.execute(select(AuditEntry).where(AuditEntry.action == "signoff").order_by(AuditEntry.id)).scalars()
        signoffs = [(e.actor, e.status, e.outcome, (e.detail or {}).get("reason")) for e in rows]
    assert signoffs == [
        ("user:jdoe", 409, "failed", None),
        ("key:tests", 403, "refused", "sign-off with an API key"),
        ("user:jdoe", 401, "refused", "sign-off without re-authentication"),
        ("user:jdoe", 401, "refused", "sign-off without re-authentication"),
        ("user:jdoe", 403, "refused", "re-authentication failed: wrong password"),
        ("user:jdoe", 400, "refused", signoffs[5][3]),
        ("user:jdoe", 200, "allowed", None),
        ("user:jdoe", 409, "failed", None),
    ]
    assert "CSRF" in signoffs[5][3]
    # The slide's audit history: reclassifications (from/to), sign-off attempts, reads and exports.
    hist = client.get(f"/api/v1/slides/{analysed}/audit").get_json()
    actions = [e["action"] for e in hist["entries"]]
    assert hist["slide_id"] == analysed and hist["count"] == len(actions)
    assert "reclassify" in actions and "signoff" in actions and actions[-1] == "export"
    rec = next(e for e in hist["entries"] if e["action"] == "reclassify" and e["outcome"] == "allowed")
    assert rec["actor"] == "user:jdoe" and rec["detail"]["to"] == "eosinophil" and rec["detail"]["from"] is None
    signed = next(e for e in hist["entries"] if e["action"] == "signoff" and e["outcome"] == "allowed")
    assert signed["detail"]["meaning"] == "verified: results reviewed and released"
    assert signed["detail"]["signer"] == "Jane Doe" and signed["detail"]["user_id"] == tech.user_id
    assert "audit" not in actions, "reading the history is audited, but not as part of it"
    assert client.get("/api/v1/slides/nope/audit").status_code == 404
    assert client.get(f"/api/v1/slides/{analysed}/audit?limit=0").status_code == 400
    assert client.get(f"/api/v1/slides/{analysed}/audit?limit=2").get_json()["count"] == 2


def test_wrong_signoff_passwords_lock_the_account(app, person, analysed: str) -> None:  # type: ignore[no-untyped-def]
    from hematovision.store.users import MAX_FAILED

    tech = person()
    for _ in range(MAX_FAILED):
        r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": "guess guess guess"})
        assert r.status_code == 403
    r = tech.post(f"/api/v1/slides/{analysed}/signoff", json={"password": tech.password})
    assert r.status_code == 403 and "locked" in r.get_json()["error"]["message"]


def test_images_and_tiles(client, analysed: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/slides/{analysed}/dzi")
    assert r.status_code == 200 and b'Width="1024"' in r.data
    top = 11  # ceil(log2(1024)) + 1 levels: 0..10
    r = client.get(f"/api/v1/slides/{analysed}/tiles/10/0_0.jpeg")
    assert r.status_code == 200 and r.content_type == "image/jpeg" and r.data[:2] == b"\xff\xd8"
    assert client.get(f"/api/v1/slides/{analysed}/tiles/{top}/0_0.jpeg").status_code == 404
    assert client.get(f"/api/v1/slides/{analysed}/tiles/10/99_0.jpeg").status_code == 404
    cid = _wbc(client, analysed)[0]["id"]
    r = client.get(f"/api/v1/cells/{cid}/image")
    assert r.status_code == 200 and r.data[:2] == b"\xff\xd8"
    assert client.get("/api/v1/slides/nope/dzi").status_code == 404


def test_keys_scopes_and_pages(app, make_key, person, analysed: str) -> None:  # type: ignore[no-untyped-def]
    anon = app.test_client()
    assert anon.get(f"/api/v1/slides/{analysed}/cells").status_code == 401
    pages = ("/ui/", "/ui/flags", f"/ui/slides/{analysed}", f"/ui/slides/{analysed}/gallery", f"/ui/batches/{new_id()}")
    for page in pages:
        assert anon.get(page).status_code == 302, page
    assert anon.get("/ui/static/hv.js").status_code == 200
    tech = person()
    for page in pages:
        r = tech.get(page)
        assert r.status_code == 200 and b"HematoVision" in r.data, page
    assert b'id="signoff-password"' in tech.get(f"/ui/slides/{analysed}").data
    reader = app.test_client()
    reader.environ_base["HTTP_X_API_KEY"] = make_key("read", "reader")
    assert reader.get(f"/api/v1/slides/{analysed}/cells").status_code == 200
    assert reader.get("/api/v1/batches").get_json()["count"] == 1
    assert reader.post(f"/api/v1/slides/{analysed}/signoff").status_code == 403
    assert reader.get("/ui/").status_code == 302, "a key does not open the review pages"


#: The review endpoints: the method each answers and the media type of its 200 answer.
REVIEW_ENDPOINTS = {
    "/api/v1/slides/{slide_id}/cells": ("get", "application/json"),
    "/api/v1/cells/{cell_id}/label": ("post", "application/json"),
    "/api/v1/slides/{slide_id}/signoff": ("post", "application/json"),
    "/api/v1/slides/{slide_id}/audit": ("get", "application/json"),
    "/api/v1/slides/{slide_id}/dzi": ("get", "application/xml"),
    "/api/v1/slides/{slide_id}/tiles/{level}/{col}_{row}.jpeg": ("get", "image/jpeg"),
    "/api/v1/cells/{cell_id}/image": ("get", "image/jpeg"),
}


def test_openapi_lists_review_endpoints(client) -> None:  # type: ignore[no-untyped-def]
    """Each review endpoint is in the document under the route the app serves, with its method, every
    path parameter declared and required, and the media type it answers."""
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    served = {
        re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule): {m.lower() for m in rule.methods or ()}
        for rule in client.application.url_map.iter_rules()
    }
    for path, (method, media) in REVIEW_ENDPOINTS.items():
        assert path in paths, path
        assert method in served.get(path, set()), f"the app serves no {method.upper()} {path}"
        op = paths[path].get(method)
        assert op is not None, f"{method.upper()} {path} is not documented"
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path" and p["required"]}
        assert declared == set(re.findall(r"{(\w+)}", path)), (path, declared)
        assert media in op["responses"]["200"]["content"], (path, op["responses"]["200"])
