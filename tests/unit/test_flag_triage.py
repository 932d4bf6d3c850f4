"""The flag list triages: critical first, info-only slides counted apart, pending vs verified, the
default window is the last sign-off session, search by filename."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import update

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.exports.flag_report import flag_report_csv
from hematovision.service.slide_results import build_report
from hematovision.store.models import Slide, utcnow
from workers.job_store import store_analysis

V1 = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
NORMAL = ["neutrophil"] * 120 + ["lymphocyte"] * 60 + ["monocyte"] * 12 + ["eosinophil"] * 6 + ["basophil"] * 2


@pytest.fixture
def slides(app, make_job):  # type: ignore[no-untyped-def]
    made: dict[str, str] = {}

    def add(name: str, labels: list[str], *, verified: bool = False, days_ago: float = 0) -> str:
        cells = [CellResult("wbc", (4 * i, 0, 4 * i + 3, 3), 0.9, lab, 0.9) for i, lab in enumerate(labels)]
        a = SlideAnalysis(mpp=0.25, width=64, height=64, model_name="v1", model_version="1", classes=V1, cells=cells)
        factory, job_id, slide_id = make_job(filename=f"{name}.tiff", name=name, width=64, height=64, state="running")
        assert store_analysis(factory, job_id, a, build_report(a, slide_id=slide_id))
        with factory() as s, s.begin():
            when = utcnow() - timedelta(days=days_ago)
            values: dict = {"analysed_at": when}
            if verified:
                values |= {"verified_at": when + timedelta(minutes=5), "verified_by": "Pat Path"}
            s.execute(update(Slide).where(Slide.id == slide_id).values(**values))
        made[name] = slide_id
        return slide_id

    add("old-verified", ["neutrophil"] * 30, verified=True, days_ago=5)
    add("review-pending", ["neutrophil"] * 30, days_ago=2)
    add("info-only", NORMAL, days_ago=1)
    add("critical-pending", ["neutrophil"] * 20 + ["blast"] * 5, days_ago=1)
    add("review-verified", ["lymphocyte"] * 30, verified=True, days_ago=1)
    return made


def test_flag_list_triages(client, slides) -> None:  # type: ignore[no-untyped-def]
    info = client.get(f"/api/v1/slides/{slides['info-only']}/report").get_json()
    assert {f["severity"] for f in info["flags"]} == {"info"}, info["flags"]
    doc = client.get("/api/v1/flags").get_json()
    # Default: pending only, critical first; the info-only slide is counted, not listed.
    assert doc["status"] == "pending" and doc["since_default"] is True
    assert [s["filename"] for s in doc["slides"]] == ["critical-pending.tiff", "review-pending.tiff"]
    assert [s["max_severity"] for s in doc["slides"]] == ["critical", "review"]
    assert doc["info_only"] == 1 and "1 slide with information notes only" in doc["info_only_note"]
    assert {s["status"] for s in doc["slides"]} == {"pending"}
    # Verified only; the default window starts at the earliest unsigned slide (2 days ago), so the
    # slide verified 5 days ago is out of it, and in with since=all.
    doc = client.get("/api/v1/flags?status=verified").get_json()
    assert [s["filename"] for s in doc["slides"]] == ["review-verified.tiff"]
    assert doc["slides"][0]["verified_by"] == "Pat Path"
    doc = client.get("/api/v1/flags?status=verified&since=all").get_json()
    assert {s["filename"] for s in doc["slides"]} == {"review-verified.tiff", "old-verified.tiff"}
    doc = client.get("/api/v1/flags?status=all").get_json()
    assert [s["max_severity"] for s in doc["slides"]] == ["critical", "review", "review"]
    # Search by filename (wildcards are literal).
    doc = client.get("/api/v1/flags?status=all&since=all&q=REVIEW-").get_json()
    assert {s["filename"] for s in doc["slides"]} == {"review-pending.tiff", "review-verified.tiff"}
    assert client.get("/api/v1/flags?q=%25").get_json()["count"] == 0
    r = client.get("/api/v1/flags?status=done")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_status"
    assert client.get("/api/v1/flags?q=%00").status_code == 400


def test_flag_exports_follow_the_triage(client, slides) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/api/v1/flags").get_json()
    rows = list(csv.DictReader(io.StringIO(flag_report_csv(doc))))
    assert rows[0]["slide_max_severity"] == "critical" and "info-only.tiff" not in {r["filename"] for r in rows}
    r = client.get("/api/v1/flags?format=pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
