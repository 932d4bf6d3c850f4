"""The model registry with a REAL worker (issue 18): a promotion reaches the next slide without a
restart, a slide keeps the model it was prepared with when a promotion happens mid-flight, and a
rollback brings the previous model back.

The second model is a copy of the shipped default whose ``model.json`` says version ``<its version>-lab`` (same
weights, so the worker shares the network: cached by SHA-256), with a ``validation.json`` saying it
is promotable. Slides are small (1536 px, 12 white cells): what is checked is which model labelled
them, not the differential.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from hematovision.core.settings import SHIPPED_MODEL_DIR

V1 = json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())["version"]  # the configured (default) model
LAB = f"{V1}-lab"


def _models(stack: Any, *args: str) -> str:
    from hematovision.cli import main

    env = {k: stack.env[k] for k in ("HEMATOVISION_VAR_DIR", "HEMATOVISION_DATABASE_URL", "HEMATOVISION_BROKER_URL")}
    out = CliRunner().invoke(main, ["models", *args], env=env)
    assert out.exit_code == 0, out.output
    return out.output


def _analyse(stack: Any, slide: Path, name: str) -> dict[str, Any]:
    client = stack.client()
    batch = client.submit([slide], name=name)
    final = client.wait_for_batch(batch["id"], timeout_s=600, poll_s=0.5)
    assert final["states"] == {"succeeded": 1}, (final, stack.log("worker"))
    slide_id = final["jobs"][0]["slide_id"]
    return {"report": client.report(slide_id), "slide": client._call("GET", f"/api/v1/slides/{slide_id}").json()}


def test_promotion_and_rollback_switch_the_running_worker(pg_stack_steady, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    stack = pg_stack_steady
    slides = []
    for i in range(4):
        slides.append(tmp_path / f"slide{i}.tiff")
        make_slide(slides[-1], real_cells, 1536, 1536, mpp=0.25, n_wbc=12, seed=11 + i, fmt="tiff")
    lab = tmp_path / "wbc-lab"
    shutil.copytree(SHIPPED_MODEL_DIR, lab)
    meta = json.loads((lab / "model.json").read_text())
    (lab / "model.json").write_text(
        json.dumps(meta | {"version": LAB, "parent": {"name": meta["name"], "version": V1, "sha256": meta["sha256"]}})
    )
    (lab / "validation.json").write_text(json.dumps({"promotable": True}))

    stack.start_worker()
    first = _analyse(stack, slides[0], "before")
    assert first["report"]["model"]["version"] == V1  # the configured model, promoted on first use
    assert first["slide"]["model"] == {"name": meta["name"], "version": V1, "sha256": meta["sha256"]}

    _models(stack, "register", str(lab), "--by", "director")
    assert f"-> wbc-effnetlite0:{LAB}" in _models(
        stack, "promote", f"{meta['name']}:{LAB}", "--by", "director", "--reason", "lab stain"
    )
    second = _analyse(stack, slides[1], "promoted")  # same worker process, no restart
    assert second["report"]["model"]["version"] == LAB
    assert second["slide"]["model"]["version"] == LAB and second["slide"]["model"]["sha256"] == meta["sha256"]

    _models(stack, "rollback", "--by", "director", "--reason", "flags changed")
    third = _analyse(stack, slides[2], "rolled back")
    assert third["report"]["model"]["version"] == V1

    # Mid-flight: prepared under v1 by a prepare-only worker, promoted, then classified: stays on v1.
    stack.stop("worker")
    stack.start_worker(name="prep", stages="prepare")
    client = stack.client()
    batch = client.submit([slides[3]], name="mid-flight")
    job_id = batch["job_ids"][0]
    deadline = time.monotonic() + 300
    while client.job(job_id)["stage"] != "classify" or client.job(job_id)["state"] != "queued":
        assert time.monotonic() < deadline, (client.job(job_id), stack.log("prep"))
        time.sleep(0.5)
    _models(stack, "promote", f"{meta['name']}:{LAB}", "--by", "director", "--reason", "again")
    stack.start_worker(name="worker", stages="classify,report")
    final = client.wait_for_batch(batch["id"], timeout_s=600, poll_s=0.5)
    assert final["states"] == {"succeeded": 1}, (final, stack.log("worker"))
    assert client.report(final["jobs"][0]["slide_id"])["model"]["version"] == V1
    listed = json.loads(_models(stack, "list", "--json"))
    assert listed["promoted"] == f"{meta['name']}:{LAB}"
    assert [h["action"] for h in listed["history"]] == ["promote", "rollback", "promote", "promote"]
