"""The review workflow (issue 15, item 2): flag acknowledgements with comments, a pathologist's
second signature for critical flags and blasts, comments on slides and cells, a reason for an
insufficient differential, and amendments that keep the released report and send a corrected result."""

from __future__ import annotations

import io

from pypdf import PdfReader
from sqlalchemy import func, select

from hematovision.service.review import unacknowledged_flags
from hematovision.store.models import (
    AuditEntry,
    Cell,
    FlagAcknowledgement,
    LisMessage,
    ReportVersion,
    ReviewComment,
    Signature,
    Slide,
)
from tests.conftest import ACK_COMMENT, ack_flags_http
from tests.unit.test_review import _wbc, analysed  # noqa: F401  (the analysed-slide fixture)


def _classify_open(person, slide_id: str, label: str = "lymphocyte") -> None:  # type: ignore[no-untyped-def]
    for c in _wbc(person, slide_id):
        if c["label"] is None:
            r = person.post(f"/api/v1/cells/{c['id']}/label", json={"label": label})
            assert r.status_code == 200, r.get_json()


def _blast(person, slide_id: str) -> None:  # type: ignore[no-untyped-def]
    cell = _wbc(person, slide_id)[-1]
    r = person.post(f"/api/v1/cells/{cell['id']}/label", json={"label": "blast"})
    assert r.status_code == 200, r.get_json()


def _sign(person, slide_id: str, **extra):  # type: ignore[no-untyped-def]
    return person.post(f"/api/v1/slides/{slide_id}/signoff", json={"password": person.password, **extra})


def _pdf_text(client, slide_id: str, query: str = "") -> str:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/slides/{slide_id}/report?format=pdf{query}")
    assert r.status_code == 200
    return " ".join(" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(r.data)).pages)


def test_each_flag_needs_an_acknowledgement_with_a_comment(app, client, person, analysed: str) -> None:  # noqa: F811
    tech = person("technologist", username="ann", full_name="Ann Lee")
    _classify_open(tech, analysed)
    codes = [f["code"] for f in tech.get(f"/api/v1/slides/{analysed}/report").get_json()["flags"]]
    assert codes, "the test slide raises flags"
    r = _sign(tech, analysed, reason="small slide")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "unacknowledged_flags"
    assert all(code in r.get_json()["error"]["message"] for code in codes)
    # Refusals: no comment, a blank one, a flag not raised, a key.
    url = f"/api/v1/slides/{analysed}/flags/{codes[0]}/ack"
    assert tech.post(url, json={}).status_code == 400
    assert tech.post(url, json={"comment": "   "}).get_json()["error"]["code"] == "comment_required"
    assert tech.post(f"/api/v1/slides/{analysed}/flags/NOT_A_FLAG/ack", json={"comment": "x"}).status_code == 404
    assert tech.post(f"/api/v1/slides/{analysed}/flags/bad-code/ack", json={"comment": "x"}).status_code == 400
    assert client.post(url, json={"comment": "a key"}).status_code == 403
    r = tech.post(url, json={"comment": "seen <b>on</b> the smear"})
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert (
        body["acknowledgement"]["by"] == "Ann Lee" and body["acknowledgement"]["comment"] == "seen <b>on</b> the smear"
    )
    assert codes[0] not in body["unacknowledged"] and set(body["unacknowledged"]) == set(codes[1:])
    r = _sign(tech, analysed, reason="small slide")
    assert r.status_code == 409 and codes[0] not in r.get_json()["error"]["message"]
    ack_flags_http(tech, analysed)
    listed = tech.get(f"/api/v1/slides/{analysed}/flags/acks").get_json()
    assert listed["unacknowledged"] == [] and {a["code"] for a in listed["acknowledgements"]} == set(codes)
    with app.extensions["hv_sessions"]() as s:
        row = s.execute(select(FlagAcknowledgement).order_by(FlagAcknowledgement.id)).scalars().first()
        assert (row.code, row.actor, row.full_name) == (codes[0], "user:ann", "Ann Lee")
        audited = s.execute(select(AuditEntry).where(AuditEntry.action == "acknowledge")).scalars().all()
        assert any(e.outcome == "allowed" and e.detail["code"] == codes[0] for e in audited)
    assert _sign(tech, analysed, reason="small slide").status_code == 200
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert {a["code"] for a in report["flag_acknowledgements"]} == set(codes)
    assert "seen <b>on</b> the smear" in report["flag_acknowledgements"][0]["comment"]


def test_a_newly_raised_flag_needs_its_own_acknowledgement(app, person, analysed: str) -> None:  # noqa: F811
    tech = person()
    _classify_open(tech, analysed)
    before = ack_flags_http(tech, analysed)
    _blast(tech, analysed)  # raises the blast rules
    with app.extensions["hv_sessions"]() as s:
        slide = s.get(Slide, analysed)
        pending = unacknowledged_flags(s, slide, slide.report)
        now = {f["code"] for f in slide.report["flags"]}
    assert pending and set(pending) == now - set(before), "only the new flags wait; the standing ones hold"
    assert "BLASTS_PRESENT" in pending or "BLASTS" in pending
    r = _sign(tech, analysed, reason="small slide")
    assert r.status_code == 409 and all(c in r.get_json()["error"]["message"] for c in pending)


def test_insufficient_differential_needs_a_reason(app, client, person, analysed: str) -> None:  # noqa: F811
    tech = person(full_name="Ann Lee")
    _classify_open(tech, analysed)
    ack_flags_http(tech, analysed)
    assert client.get(f"/api/v1/slides/{analysed}/report").get_json()["differential_sufficient"] is False
    r = _sign(tech, analysed)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "reason_required"
    assert _sign(tech, analysed, reason=" ").status_code == 400
    assert _sign(tech, analysed, reason="x" * 1001).status_code == 400
    r = _sign(tech, analysed, reason="leukopenic sample; all cells on the slide counted")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["signatures"][0]["reason"] == "leukopenic sample; all cells on the slide counted"
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(Signature.reason)).scalar_one() == "leukopenic sample; all cells on the slide counted"
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert report["signoff_reason"] == "leukopenic sample; all cells on the slide counted"
    assert "leukopenic sample" in client.get(f"/api/v1/slides/{analysed}/report?format=csv").get_data(as_text=True)
    assert "leukopenic sample; all cells on the slide counted" in _pdf_text(client, analysed)
    assert "leukopenic sample" in client.get(f"/api/v1/slides/{analysed}/report?format=hl7").get_data(as_text=True)


def test_a_blast_needs_a_second_signature_by_another_pathologist(app, client, person, analysed: str) -> None:  # noqa: F811
    cfg = app.extensions["hv_settings"]
    cfg.lis_host, cfg.lis_port = "127.0.0.1", 9  # queued at release; nothing listens (the outbox keeps it)
    first = person("pathologist", username="drone", full_name="Ada One")
    _classify_open(first, analysed)
    _blast(first, analysed)
    ack_flags_http(first, analysed)
    r = _sign(first, analysed, reason="small slide")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["result_status"] == "awaiting_pathologist" and body["verified_by"] is None
    assert any("blast" in why for why in body["pathologist_reasons"])
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert report["result_status"] == "awaiting_pathologist" and report.get("verified_by") is None
    assert client.get(f"/api/v1/slides/{analysed}/report?format=hl7").status_code == 409  # not final: not sent
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(func.count()).select_from(LisMessage)).scalar_one() == 0
    cell = _wbc(first, analysed)[0]
    assert first.post(f"/api/v1/cells/{cell['id']}/label", json={"label": "monocyte"}).status_code == 409
    # A technologist cannot give the second signature; nor can the first signer.
    tech = person("technologist")
    r = _sign(tech, analysed)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "pathologist_required"
    r = _sign(first, analysed)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "same_signer"
    second = person("pathologist", username="drtwo", full_name="Bea Two")
    r = _sign(second, analysed)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["result_status"] == "final" and r.get_json()["verified_by"] == "Bea Two"
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert report["result_status"] == "final" and report["verified_by"] == "Bea Two"
    assert [(g["username"], g["role"]) for g in report["signatures"]] == [
        ("drone", "pathologist"),
        ("drtwo", "pathologist"),
    ]
    assert report["signatures"][0]["meaning"].startswith("reviewed") and report["signature"]["username"] == "drtwo"
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(func.count()).select_from(Signature)).scalar_one() == 2
        msg = s.execute(select(LisMessage)).scalar_one()
    assert "|F|" in msg.message and "Ada One (pathologist)" in msg.message
    pdf = _pdf_text(client, analysed)
    assert "Ada One" in pdf and "Bea Two" in pdf and "awaiting pathologist" in pdf.lower()


def test_comments_on_slides_and_cells(app, client, person, analysed: str) -> None:  # noqa: F811
    tech = person(full_name="Ann Lee")
    cell = _wbc(tech, analysed)[0]
    r = tech.post(f"/api/v1/slides/{analysed}/comments", json={"text": "<script>alert(1)</script> clumps at the edge"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["comment"]["by"] == "Ann Lee" and r.get_json()["comment"]["cell_id"] is None
    assert tech.post(f"/api/v1/cells/{cell['id']}/comments", json={"text": "nucleoli?"}).status_code == 201
    assert client.post(f"/api/v1/cells/{cell['id']}/comments", json={"text": "from the middleware"}).status_code == 201
    for bad in ({}, {"text": ""}, {"text": "x" * 2001}, {"text": "a\x00b"}, {"text": 5}):
        assert tech.post(f"/api/v1/slides/{analysed}/comments", json=bad).status_code == 400, bad
    assert tech.post(f"/api/v1/slides/{analysed}/comments", json={"text": "x", "cell_id": "1"}).status_code == 400
    assert tech.post(f"/api/v1/slides/{analysed}/comments", json={"text": "x", "cell_id": 10**9}).status_code == 404
    assert tech.post("/api/v1/cells/999999999/comments", json={"text": "x"}).status_code == 404
    listed = tech.get(f"/api/v1/slides/{analysed}/comments").get_json()
    assert listed["count"] == 3
    assert tech.get(f"/api/v1/cells/{cell['id']}/comments").get_json()["count"] == 2
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert [c["text"] for c in report["comments"]][:2] == ["<script>alert(1)</script> clumps at the edge", "nucleoli?"]
    pdf = _pdf_text(client, analysed)
    assert "<script>alert(1)</script> clumps at the edge" in pdf and "nucleoli?" not in pdf  # cells: JSON only
    with app.extensions["hv_sessions"]() as s:
        assert s.execute(select(func.count()).select_from(ReviewComment)).scalar_one() == 3
        assert (
            s.execute(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "comment")).scalar_one()
            >= 3
        )
    _classify_open(tech, analysed)
    ack_flags_http(tech, analysed)
    assert _sign(tech, analysed, reason="small slide").status_code == 200
    r = tech.post(f"/api/v1/slides/{analysed}/comments", json={"text": "too late"})
    assert r.status_code == 409


def test_amend_keeps_the_released_report_and_sends_a_corrected_result(app, client, person, analysed: str) -> None:  # noqa: F811
    tech = person(username="ann", full_name="Ann Lee")
    _classify_open(tech, analysed)
    ack_flags_http(tech, analysed)
    url = f"/api/v1/slides/{analysed}/amend"
    assert tech.post(url, json={"reason": "too early"}).get_json()["error"]["code"] == "not_signed_off"
    assert _sign(tech, analysed, reason="small slide").status_code == 200
    released = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert released["result_status"] == "final" and released["version"] == 1
    # Refusals: no reason, a blank one, an admin, a key.
    assert tech.post(url, json={}).get_json()["error"]["code"] == "reason_required"
    assert tech.post(url, json={"reason": "  "}).status_code == 400
    assert person("admin").post(url, json={"reason": "x"}).status_code == 403
    assert client.post(url, json={"reason": "x"}).status_code == 403
    r = tech.post(url, json={"reason": "a blast was missed"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["version"] == 2 and r.get_json()["result_status"] == "preliminary"
    with app.extensions["hv_sessions"]() as s:
        old = s.execute(select(ReportVersion)).scalar_one()
        assert (old.version, old.result_status, old.verified_by, old.amend_reason) == (
            1,
            "final",
            "Ann Lee",
            "a blast was missed",
        )
        assert old.report == {k: v for k, v in released.items() if k in old.report}
        assert s.get(Slide, analysed).verified_at is None
        amends = s.execute(select(AuditEntry).where(AuditEntry.action == "amend")).scalars().all()
        assert [(e.status, e.outcome) for e in amends][-1] == (200, "allowed")
        assert amends[-1].detail["amend_reason"] == "a blast was missed"
        assert (403, "refused") in [(e.status, e.outcome) for e in amends]
    kept = client.get(f"/api/v1/slides/{analysed}/report?version=1").get_json()
    assert kept["verified_by"] == "Ann Lee" and kept["result_status"] == "final"
    assert kept["superseded"]["reason"] == "a blast was missed"
    assert client.get(f"/api/v1/slides/{analysed}/report?version=7").status_code == 404
    assert client.get(f"/api/v1/slides/{analysed}/versions").get_json()["superseded"][0]["version"] == 1
    # Editable again, under the same rules: the new version's flags need acknowledging again.
    _blast(tech, analysed)
    assert _sign(tech, analysed, reason="small slide").status_code == 409
    ack_flags_http(tech, analysed)
    r = _sign(tech, analysed, reason="small slide")
    assert r.status_code == 200 and r.get_json()["result_status"] == "awaiting_pathologist"
    assert _sign(person("pathologist", full_name="Bea Two"), analysed).status_code == 200
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert report["result_status"] == "amended" and report["version"] == 2
    assert (
        report["amendment"]["reason"] == "a blast was missed"
        and report["amendment"]["previous_verified_by"] == "Ann Lee"
    )
    hl7 = client.get(f"/api/v1/slides/{analysed}/report?format=hl7").get_data(as_text=True)
    segments = hl7.split("\r")
    obr = next(seg for seg in segments if seg.startswith("OBR|")).split("|")
    assert obr[25] == "C"
    assert all(seg.split("|")[11] == "C" for seg in segments if seg.startswith("OBX|"))
    assert "a blast was missed" in hl7
    pdf = _pdf_text(client, analysed)
    assert "AMENDED" in pdf and "a blast was missed" in pdf
    assert ACK_COMMENT in pdf
    # Nothing of the old version is lost: its signature and acknowledgements are still stored.
    with app.extensions["hv_sessions"]() as s:
        versions = s.execute(select(Signature.report_version).order_by(Signature.id)).scalars().all()
        assert versions == [1, 2, 2]
        acked = s.execute(select(FlagAcknowledgement.report_version)).scalars().all()
        assert set(acked) == {1, 2}
        assert s.execute(select(func.count()).select_from(Cell).where(Cell.label == "blast")).scalar_one() == 1


def test_the_review_page_has_the_workflow_controls(person, analysed: str) -> None:  # noqa: F811
    """The slide page carries the controls the script fills (labelled): flag acknowledgements (drawn
    per flag into #flags), comments, the sign-off reason, the amend dialog; the gallery has the
    sign-off and amend dialogs too."""
    tech = person()
    page = tech.get(f"/ui/slides/{analysed}").get_data(as_text=True)
    for marker in (
        'id="ack-n"',
        'id="comment-form"',
        '<label for="comment-text">',
        'id="comment-on-cell"',
        'id="signoff-reason"',
        'id="amend"',
        'id="amend-dialog"',
        'id="amend-reason"',
    ):
        assert marker in page, marker
    gallery = tech.get(f"/ui/slides/{analysed}/gallery").get_data(as_text=True)
    assert 'id="amend-dialog"' in gallery and 'id="signoff-reason"' in gallery
    script = tech.get("/ui/static/review.js").get_data(as_text=True)
    assert "/flags/${seg(f.code)}/ack" in script and "/amend`" in script and "Sign as pathologist" in script
