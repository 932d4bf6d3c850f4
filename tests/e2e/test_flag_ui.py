"""The review UI prints what the rules could not say: headless Chromium (Debian's ``chromium``) driven
by Playwright against the real Flask app (served on loopback) with a slide analysed by a model
without a blast class. The slide's flag list shows BLAST_DETECTION_UNAVAILABLE and the rules not
evaluated, so a slide without a finding never reads as negative; the overnight flag list counts such
an information-only slide apart instead of listing it. Needs no built viewer (the gallery page has
none); skipped with the reason when Chromium or Playwright is missing, failed under ``CI=true``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HEMATOVISION_CHROMIUM", "/usr/bin/chromium")
V1_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or run api/assets/ci-setup.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install playwright; see api/assets/ci-setup.sh)"
    return None


@pytest.fixture(scope="module")
def browser(require) -> Iterator[object]:  # type: ignore[no-untyped-def]
    why = _missing()
    require(why is None, f"the browser test: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"], headless=True
        )
        yield b
        b.close()


@pytest.fixture
def served(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def test_flag_lists_show_what_was_not_evaluated(browser, served: str, app, make_user, make_job) -> None:  # type: ignore[no-untyped-def]
    from hematovision.core.results import CellResult, SlideAnalysis
    from hematovision.service.slide_results import build_report
    from workers.job_store import store_analysis

    labels = ["neutrophil"] * 120 + ["lymphocyte"] * 60 + ["monocyte"] * 12 + ["eosinophil"] * 6 + ["basophil"] * 2
    cells = [CellResult("wbc", (10 * (i % 90), 10 * (i // 90), 10 * (i % 90) + 9, 10 * (i // 90) + 9), 0.9, lab, 0.95)
             for i, lab in enumerate(labels)]  # fmt: skip
    analysis = SlideAnalysis(
        mpp=0.25, width=1024, height=1024, model_name="wbc-v1-like", model_version="1", classes=V1_CLASSES, cells=cells
    )
    factory, job_id, slide_id = make_job(filename="normal.tiff", width=1024, height=1024, state="running")
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    password = "flag list reader"
    make_user("fiona", "technologist", "Fiona Flag", password)

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The review pages need a person: log in through the form, as a technologist does.
    page.goto(f"{served}/ui/")
    page.wait_for_selector("#login-form")
    page.fill("#username", "fiona")
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(f"{served}/ui/")

    page.goto(f"{served}/ui/slides/{slide_id}/gallery")
    page.wait_for_selector("body[data-ready='1']")
    flags = page.inner_text("#flags")
    assert "cannot recognise blasts" in flags and "negative blast statement" in flags
    assert "Not evaluated: BLASTS_PRESENT, BLASTS, SUSPECTED_ACUTE_LEUKEMIA" in flags
    assert "no WBC count given" in flags and "no age given" in flags
    assert page.get_attribute("#flags li[data-code='BLAST_DETECTION_UNAVAILABLE'] .sev", "class") == "sev info"
    assert "200 classified white cells" in page.inner_text("#diff-n")

    # The overnight list triages: a slide whose only flag is an information note is counted, not listed.
    page.goto(f"{served}/ui/flags")
    page.wait_for_selector("#info-only:has-text('information notes only')")
    assert "1 slide with information notes only" in page.inner_text("#info-only")
    assert page.query_selector(f"article.card[data-slide='{slide_id}']") is None
    assert not errors, errors
