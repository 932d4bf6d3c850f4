"""The technologist's morning screen in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright, against the real API and a real worker on the embedded defaults.

Log in as a technologist, submit a slide (with the LIS's submit key), wait for it, open it from the
flag list, reclassify a cell with the keyboard, resolve the unidentified cells, sign off with the
password re-entered, and check the report JSON: ``verified_by`` is the person and the differential
changed. A second test opens a crafted review link (``/ui/slides/..%5Cjobs%5C<id>%5Ccancel%3F``)
as an admin and presses Sign off: the other job must not be cancelled. Skipped with the reason
when Chromium, Playwright or the built viewer (``npm ci`` in ``api/assets/``) is missing -- except
under ``CI=true``, where that fails the run (``api/assets/ci-setup.sh`` installs all three).
``HEMATOVISION_SCREENSHOTS=1`` also writes the screenshots to ``docs/screenshots/`` (always to the
test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hematovision.core.settings import PROJECT_ROOT
from hematovision.devtools.localstack import LocalStack, start_stack

CHROMIUM = os.environ.get("HEMATOVISION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWER_JS = PROJECT_ROOT / "api" / "static" / "vendor" / "openseadragon" / "openseadragon.min.js"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or run api/assets/ci-setup.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install playwright; see api/assets/ci-setup.sh)"
    if not VIEWER_JS.is_file():
        return f"the viewer is not built ({VIEWER_JS} missing): run `npm ci` in ui/"
    return None


@pytest.fixture(scope="module")
def browser(require) -> Iterator[object]:  # type: ignore[no-untyped-def]
    why = _missing()
    require(why is None, f"the browser test: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


TECH = ("tess", "Tess Tech", "technologist", "tess's long password")
ADMIN = ("ada", "Ada Admin", "admin", "ada's long password")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with start_stack(tmp_path / "var", key_scope="submit", key_name="lis-intake", api_threads=4) as s:
        s.add_user(*TECH)
        s.start_worker()
        yield s


def _log_in(page, stack: LocalStack, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{stack.api_url}/ui/")
    page.wait_for_selector("#login-form")  # the review pages send people to the login page first
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(f"{stack.api_url}/ui/")


def _shot(page, tmp_path: Path, name: str, full_page: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Save a screenshot, kept under 300 KB (palette PNG when the full-colour one is larger)."""
    from PIL import Image

    out = tmp_path / f"{name}.png"
    page.screenshot(path=str(out), full_page=full_page)
    if out.stat().st_size > 280_000:  # photographic tiles: a 256-colour palette keeps it small and faithful
        Image.open(out).convert("RGB").quantize(
            colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG
        ).save(out, optimize=True)
    if os.environ.get("HEMATOVISION_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, SCREENSHOTS / f"{name}.png")


# A cell thumbnail (a lazy same-origin <img>) has loaded.
THUMB_LOADED = (
    "[...document.querySelectorAll('#gallery img[src*=\"/api/v1/cells/\"]')]"
    ".some((i) => i.complete && i.naturalWidth > 0)"
)


def _wait_until(page, expression: str, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """``page.wait_for_function`` without ``eval`` in the page: Playwright polls a string predicate
    with ``new Function`` there, which the pages' Content-Security-Policy (no 'unsafe-eval') refuses;
    ``page.evaluate`` runs through the DevTools protocol, which the policy does not govern."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def test_review_reclassify_and_sign_off(browser, stack: LocalStack, tmp_path: Path, data_root: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli.api_client import ApiClientError
    from hematovision.devtools.synthetic import make_slide

    slide_path = tmp_path / "smear-e2e.tiff"
    make_slide(slide_path, data_root, 1024, 1024, mpp=0.25, n_wbc=6)
    others = [tmp_path / "smear-e2e-lymph.tiff", tmp_path / "smear-e2e-normal.tiff"]
    make_slide(
        others[0], data_root, 1024, 1024, mpp=0.25, n_wbc=8, seed=1, wbc_mix={"lymphocyte": 0.75, "neutrophil": 0.25}
    )
    make_slide(others[1], data_root, 1024, 1024, mpp=0.25, n_wbc=7, seed=2)
    client = stack.client()
    batch = client.submit([slide_path, *others], name="night run (e2e)")
    final = client.wait_for_batch(batch["id"], timeout_s=600)
    assert all(j["state"] == "succeeded" for j in final["jobs"]), (final, stack.log("worker"))
    job = next(j for j in final["jobs"] if j["filename"] == slide_path.name)
    slide_id = job["slide_id"]
    before = client.report(slide_id)
    assert before["flags"], "a 6-cell slide is flagged (insufficient differential)"

    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # What the Content-Security-Policy refuses (an inline script or style) shows only on the console.
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    _log_in(page, stack, TECH[0], TECH[3])
    assert "Tess Tech" in page.inner_text("#who")

    page.wait_for_selector("#batches a:has-text('night run (e2e)')")
    page.wait_for_selector("#batches .pill.finished")
    _shot(page, tmp_path, "batches")

    page.goto(f"{stack.api_url}/ui/flags")
    card = page.wait_for_selector(f"article.card[data-slide='{slide_id}']")
    _shot(page, tmp_path, "flag-list")
    card.query_selector("h3 a").click()
    page.wait_for_url(f"**/ui/slides/{slide_id}")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector(".cellbox")  # the viewer opened the DeepZoom image and drew the outlines
    # The gallery sits below the side panels (flags with their acknowledgement controls, comments):
    # its thumbnails load lazily, once scrolled near.
    page.locator("#gallery").scroll_into_view_if_needed()
    _wait_until(page, THUMB_LOADED)
    page.evaluate("window.scrollTo(0, 0)")

    # Click a counted white cell in the viewer, then press the key of another class.
    page.locator(".cellbox").first.click(force=True)
    page.wait_for_selector("#selected:not([hidden])")
    state = page.evaluate(
        "(() => { const S = HV.review.state; const c = S.byId.get(S.sel);"
        " return {id: c.id, label: c.label, classes: S.classes}; })()"
    )
    target = next(c for c in ("lymphocyte", "monocyte") if c != state["label"])
    page.keyboard.press(str(state["classes"].index(target) + 1))
    _wait_until(page, f"HV.review.state.byId.get({state['id']}).label === {target!r}")
    page.wait_for_selector("#differential tr.changed")
    page.wait_for_selector("#toast:not(.show)")  # the confirmation has faded; tiles have settled
    _shot(page, tmp_path, "slide-review", full_page=True)

    # Every unidentified cell must be resolved before sign-off: N selects the next one.
    lymph_key = str(state["classes"].index("lymphocyte") + 1)
    for _ in range(50):
        left = page.evaluate("HV.review.state.cells.filter(c => !c.label || c.label === 'unidentified').length")
        if not left:
            break
        page.keyboard.press("n")
        page.keyboard.press(lymph_key)
        _wait_until(page, f"HV.review.state.cells.filter(c => !c.label || c.label === 'unidentified').length < {left}")

    # Each flag is acknowledged with a comment (a control per flag), and a slide comment is added.
    page.click("#signoff")
    page.wait_for_selector("#signoff-dialog[open]")
    page.fill("#signoff-password", TECH[3])
    page.click("#signoff-confirm")
    page.wait_for_selector("#toast.show.error")
    assert "acknowledge each flag" in page.inner_text("#toast")
    for _ in range(30):
        forms = page.locator("form[data-ack]")
        if not forms.count():
            break
        forms.first.locator("input").fill("seen on the smear")
        forms.first.locator("button").click()
        page.wait_for_timeout(300)
    assert not page.locator("form[data-ack]").count()
    page.fill("#comment-text", "smear edge <b>thin</b>")
    page.click("#comment-add")
    page.wait_for_selector("#comments li:has-text('smear edge <b>thin</b>')")  # shown as text, never as markup

    page.goto(f"{stack.api_url}/ui/slides/{slide_id}/gallery")
    page.wait_for_selector("body[data-ready='1']")
    _wait_until(page, THUMB_LOADED)
    page.locator("#gallery .thumb").first.click()
    page.wait_for_timeout(300)
    _shot(page, tmp_path, "gallery")

    page.click("#signoff")
    page.wait_for_selector("#signoff-dialog[open]")
    page.fill("#signoff-password", "not my password")
    page.click("#signoff-confirm")
    page.wait_for_selector("#toast.show.error")
    assert "not correct" in page.inner_text("#toast")
    page.click("#signoff")
    if page.locator("#signoff-reason-label").is_visible():  # an insufficient differential needs a reason
        page.fill("#signoff-reason", "all cells of the test slide counted")
    page.fill("#signoff-password", TECH[3])
    page.click("#signoff-confirm")
    page.wait_for_selector("#status-badge.verified")
    assert "Tess Tech (tess)" in page.inner_text("#status-badge")
    page.wait_for_selector("#toast:not(.show)")
    _shot(page, tmp_path, "gallery-signed-off")
    assert not errors, errors

    after = client.report(slide_id)
    assert after["verified_by"] == "Tess Tech" and after["verified_by_id"] == "tess"
    assert after["signature"]["meaning"] == "verified: results reviewed and released"
    assert after["verified_at"]
    assert after["differential"] != before["differential"]
    assert after["differential"][target]["count"] >= before["differential"][target]["count"] + 1
    assert after["unidentified"] == 0
    # Read-only now: the API refuses changes.
    status = page.evaluate(
        f"HV.api('/api/v1/cells/{state['id']}/label', {{method: 'POST', json: {{label: 'monocyte'}}}})"
        ".then(() => 200, (e) => e.status)"
    )
    assert status == 409
    with pytest.raises(ApiClientError, match="403"):  # and the LIS's intake key may not reclassify at all
        client._call("POST", f"/api/v1/cells/{state['id']}/label", json={"label": "monocyte"})
    page.goto(f"{stack.api_url}/ui/slides/{slide_id}")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#audit li.allowed")
    history = page.inner_text("#audit")
    assert "user:tess" in history and "signed off" in history and "reclassified" in history
    assert "refused" in history, "the wrong password is in the slide's history"
    # Amend: the signed-off report re-opens as version 2 with a reason (the released one is kept).
    page.click("#amend")
    page.wait_for_selector("#amend-dialog[open]")
    page.fill("#amend-reason", "recount requested")
    page.click("#amend-confirm")
    page.wait_for_selector("#status-badge.prelim")
    assert "amendment v2" in page.inner_text("#status-badge")
    amended = client.report(slide_id)
    assert amended["amendment"]["reason"] == "recount requested" and amended["result_status"] == "preliminary"
    kept = client._call("GET", f"/api/v1/slides/{slide_id}/report", params={"version": "1"}).json()
    assert kept["verified_by"] == "Tess Tech" and kept["result_status"] == "final"
    assert not errors, errors
    ctx.close()


def test_crafted_review_link_cannot_cancel_another_job(browser, tmp_path: Path, data_root: Path) -> None:  # type: ignore[no-untyped-def]
    """``/ui/slides/..%5Cjobs%5C<id>%5Ccancel%3F``: the page's slide id is ``..\\jobs\\<id>\\cancel?``.
    Put into a fetch URL unencoded, a browser reads the backslashes as slashes and "Sign off" POSTs
    ``/api/v1/jobs/<id>/cancel`` with the admin's session and CSRF token. Encoded, it stays a
    (missing) slide id under ``/api/v1/slides/``."""
    from hematovision.devtools.synthetic import make_slide

    slide_path = tmp_path / "queued.tiff"
    make_slide(slide_path, data_root, 512, 512, mpp=0.25, n_wbc=2)
    with start_stack(tmp_path / "var", key_scope="submit", key_name="lis-intake", api_threads=4) as stack:
        stack.add_user(*ADMIN)  # an admin may cancel jobs: the link would succeed without the encoding
        client = stack.client()
        batch = client.submit([slide_path], name="stays queued")  # no worker: it stays queued
        job_id, slide_id = batch["jobs"][0]["id"], batch["jobs"][0]["slide_id"]
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        _log_in(page, stack, ADMIN[0], ADMIN[3])
        # The page's route takes only a well-formed slide id (32 hex): the crafted id matches no page,
        # so no sign-off button can be pressed on it at all...
        crafted = page.goto(f"{stack.api_url}/ui/slides/..%5Cjobs%5C{job_id}%5Ccancel%3F")
        assert crafted is not None and crafted.status == 404
        assert [u for u in posts if "/api/v1/" in u] == []
        # ... and on a real slide page every id the script puts into a URL is encoded (defence in depth).
        page.goto(f"{stack.api_url}/ui/slides/{slide_id}")
        page.wait_for_selector("#signoff")
        encoded = page.evaluate("(s) => HV.seg(s)", "..\\jobs\\x\\cancel?")
        assert encoded == "..%5Cjobs%5Cx%5Ccancel%3F", encoded
        assert client.job(job_id)["state"] == "queued", "the crafted link cancelled another job"
        ctx.close()
