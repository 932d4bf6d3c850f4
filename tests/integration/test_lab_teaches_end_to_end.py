"""Issue 18 end to end, on real components: a lab whose stain differs from PBC teaches the model.

Slides are composed from PBC *test-split* cells (never in the shipped model's training) with the lab's
stain (:func:`hematovision.devtools.stain_lab.stain_shift`: haematoxylin x2, eosin x0.35). A real worker
on PostgreSQL + Redis analyses them; a technologist reviews every white cell through the API (login
session, CSRF, the review vocabulary's ``artefact`` for a detection that is not a placed cell),
acknowledges the flags and signs off (a pathologist gives the second signature where the rules ask
for it). Then, by the CLI as a lab would:

1. ``dataset export --signed-only`` of the held-out slide, then (``--since``) of the training slides;
2. ``train --base`` the shipped model on the training export (PBC training cells mixed in), on the CPU;
3. ``validate-model`` on the held-out export: the gain on the lab's cells, PBC accuracy within the
   margin, and a consistent verdict on every PBC class (promotable on its figures alone, or refused
   with what dropped and then promotable only with the director's recorded reason); its
   ``validation.json`` goes with the model;
4. ``models register`` / ``promote``: the running worker's next slide is labelled by the new model;
   ``rollback``: the next one by the shipped model again.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from hematovision.core.datasets import pbc_root
from hematovision.core.settings import SHIPPED_MODEL_DIR, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PBC = pbc_root(load_settings().data_root)
CLASSES = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")
PW = {"tech1": "lab e2e technologist pw", "path1": "lab e2e pathologist pw"}
MATCH_PX = 32  # 8 µm at 0.25 µm/px: a detection this close to a placed cell is that cell


def _cli(stack: Any, *args: str) -> Any:
    from hematovision.cli import main

    env = {k: stack.env[k] for k in ("HEMATOVISION_VAR_DIR", "HEMATOVISION_DATABASE_URL", "HEMATOVISION_BROKER_URL")}
    return CliRunner().invoke(main, list(args), env=env)


def _cli_process(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own (as a lab runs it), with the stack's settings."""
    keys = ("HEMATOVISION_VAR_DIR", "HEMATOVISION_DATABASE_URL", "HEMATOVISION_BROKER_URL")
    env = {**os.environ, **{k: stack.env[k] for k in keys}}
    return subprocess.run(
        [sys.executable, "-m", "hematovision.cli", *args], env=env, capture_output=True, text=True, timeout=1800
    )


def _login(api: str, username: str) -> tuple[requests.Session, dict[str, str]]:
    s = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(f"{api}/ui/login", timeout=30).text)
    assert token
    r = s.post(
        f"{api}/ui/login",
        data={"username": username, "password": PW[username], "csrf_token": token.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302, r.text[:300]
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)"', s.get(f"{api}/ui/", timeout=30).text)
    assert meta
    return s, {"X-CSRFToken": meta.group(1)}


def _lab_files(tmp: Path) -> tuple[list[Path], list[Path], list[str]]:
    """Stain-shifted copies of PBC test-split images, split by image: (train, held-out, relative names)."""
    from hematovision.devtools.stain_lab import stain_shift

    split = json.loads((SHIPPED_MODEL_DIR / "split.json").read_text())
    rng = np.random.default_rng(18)
    train: list[Path] = []
    held: list[Path] = []
    used: list[str] = []
    for cls in CLASSES:
        files = sorted(f for f in split["test"] if f.split("/")[0] == cls)
        picks = [files[i] for i in rng.permutation(len(files))[:30]]
        for i, rel in enumerate(picks):
            with Image.open(PBC / rel) as im:
                rgb = np.asarray(im.convert("RGB"))
            out = tmp / "lab_cells" / cls / (Path(rel).stem + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(stain_shift(rgb)).save(out)
            (train if i < 20 else held).append(out)
            used.append(rel)
    return train, held, used


def _analyse(stack: Any, slides: list[Path], name: str) -> list[str]:
    client = stack.client()
    batch = client.submit(slides, name=name)
    final = client.wait_for_batch(batch["id"], timeout_s=900, poll_s=1.0)
    assert final["states"] == {"succeeded": len(slides)}, (final, stack.log("worker"))
    by_file = {j["filename"]: j["slide_id"] for j in final["jobs"]}
    return [by_file[p.name] for p in slides]


def _review_and_sign(api: str, slide_id: str, manifest: dict[str, Any]) -> dict[str, int]:
    """Label every white cell with its placed class (artefact when no placed cell is there), acknowledge
    the flags, sign; the pathologist signs too when the slide awaits one. Returns label counts."""
    tech, thdr = _login(api, "tech1")
    placed = [(c["center"], c["class"]) for c in manifest["cells"] if c["kind"] == "wbc"]
    cells = tech.get(f"{api}/api/v1/slides/{slide_id}/cells", timeout=30).json()["cells"]
    counts: dict[str, int] = {}
    for c in cells:
        if c["kind"] != "wbc":
            continue
        x0, y0, x1, y1 = c["bbox"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        dist, cls = min(((px - cx) ** 2 + (py - cy) ** 2, k) for (px, py), k in placed)
        label = cls if dist <= MATCH_PX**2 else "artefact"
        counts[label] = counts.get(label, 0) + 1
        if c["label"] != label:
            r = tech.post(f"{api}/api/v1/cells/{c['id']}/label", json={"label": label}, headers=thdr, timeout=30)
            assert r.status_code == 200, r.text
    report = tech.get(f"{api}/api/v1/slides/{slide_id}/report", timeout=30).json()
    for code in dict.fromkeys(f["code"] for f in report["flags"]):
        r = tech.post(
            f"{api}/api/v1/slides/{slide_id}/flags/{code}/ack",
            json={"comment": f"{code}: seen on the smear"},
            headers=thdr,
            timeout=30,
        )
        assert r.status_code == 201, r.text
    body = {"password": PW["tech1"]}
    if not report["differential_sufficient"]:
        body["reason"] = "small validation slide: every white cell counted"
    r = tech.post(f"{api}/api/v1/slides/{slide_id}/signoff", json=body, headers=thdr, timeout=30)
    assert r.status_code == 200, r.text
    if r.json()["result_status"] == "awaiting_pathologist":
        path, phdr = _login(api, "path1")
        r = path.post(
            f"{api}/api/v1/slides/{slide_id}/signoff", json={"password": PW["path1"]}, headers=phdr, timeout=30
        )
        assert r.status_code == 200, r.text
    assert r.json()["result_status"] == "final", r.json()
    return counts


@pytest.mark.needs(PBC.is_dir(), f"PBC images under {PBC}")
def test_reviewed_cells_teach_a_validated_promoted_model(pg_stack_steady, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    stack = pg_stack_steady
    api = stack.api_url
    train_files, held_files, used = _lab_files(tmp_path)
    mix = {c: 1.0 for c in CLASSES}
    slides: dict[str, Path] = {}
    manifests: dict[str, dict[str, Any]] = {}
    plan = [("held", held_files, 60, 1), ("train1", train_files, 60, 2), ("train2", train_files, 60, 3)]
    plan += [("after1", held_files, 12, 4), ("after2", held_files, 12, 5)]
    for name, files, n, seed in plan:
        slides[name] = tmp_path / f"lab-{name}.tiff"
        size = 2560 if n > 20 else 1536
        manifests[name] = make_slide(
            slides[name], None, size, size, mpp=0.25, n_wbc=n, seed=seed, wbc_files=files, wbc_mix=mix
        )
    stack.add_user("tech1", "Tess Tech", "technologist", PW["tech1"])
    stack.add_user("path1", "Pat Path", "pathologist", PW["path1"])
    stack.start_worker()

    # The held-out slide: analysed, reviewed, signed, exported alone.
    (held_id,) = _analyse(stack, [slides["held"]], "lab held-out")
    held_counts = _review_and_sign(api, held_id, manifests["held"])
    held_dir = tmp_path / "export-held"
    r = _cli(stack, "dataset", "export", "--out", str(held_dir), "--signed-only")
    assert r.exit_code == 0, r.output
    time.sleep(1.1)
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1.1)

    # The training slides: analysed, reviewed, signed, exported (signed since the held-out export).
    ids = _analyse(stack, [slides["train1"], slides["train2"]], "lab training")
    for slide_id, name in zip(ids, ("train1", "train2"), strict=True):
        _review_and_sign(api, slide_id, manifests[name])
    train_dir = tmp_path / "export-train"
    r = _cli(stack, "dataset", "export", "--out", str(train_dir), "--signed-only", "--since", since)
    assert r.exit_code == 0, r.output
    held_rows = (held_dir / "manifest.csv").read_text().splitlines()[1:]
    train_rows = (train_dir / "manifest.csv").read_text().splitlines()[1:]
    assert len(held_rows) == sum(held_counts.values()) and len(train_rows) >= 100, (len(held_rows), len(train_rows))
    assert {p.name for p in held_dir.iterdir() if p.is_dir()} >= set(CLASSES)
    for export in (held_dir, train_dir):  # artefacts are not a white-cell class to learn or score
        if (export / "artefact").is_dir():
            shutil.rmtree(export / "artefact")

    # Fine-tune from the shipped model on the CPU, then validate against it. `train` runs in a process
    # of its own, as a lab runs it: in this test's process the TensorFlow state other tests left
    # behind made the same fine-tune come out differently (two CI runs refused on PBC test
    # erythroblasts, while every run on its own gave the same, promotable, model).
    new_dir = tmp_path / "wbc-lab"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = _cli_process(
        stack,
        "train",
        "--data",
        str(train_dir),
        "--base",
        str(SHIPPED_MODEL_DIR),
        "--out",
        str(new_dir),
        "--pbc-per-class",
        "60",
        "--epochs",
        "2",
        "--version",
        "1.0.0-lab1",
        "--quiet",
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    train_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert train_cpu_s < 600  # 5 minutes of 2 cores
    excluded = tmp_path / "pbc_excluded.txt"
    excluded.write_text("\n".join(used) + "\n")
    validate = [
        "validate-model",
        str(new_dir),
        "--against",
        str(SHIPPED_MODEL_DIR),
        "--data",
        str(held_dir),
        "--pbc-exclude",
        str(excluded),
        "--json",
    ]
    r = _cli(stack, *validate)
    doc = json.loads(r.stdout)
    cur, new = doc["current_figures"], doc["candidate_figures"]
    print(
        f"lab held-out {cur['lab_held_out']['accuracy']} -> {new['lab_held_out']['accuracy']} "
        f"(n={doc['data']['lab_held_out']['n']}); PBC test {cur['pbc_test']['accuracy']} -> "
        f"{new['pbc_test']['accuracy']}; verdict {doc['verdict']}; train {train_cpu_s:.0f} CPU s; "
        f"alpha {json.loads((new_dir / 'model.json').read_text())['training']['fine_tune'].get('interpolation')}"
    )
    # The gain on the lab's held-out cells, and PBC accuracy within the margin, always.
    assert new["lab_held_out"]["accuracy"] > cur["lab_held_out"]["accuracy"]  # the gain on the lab's cells
    assert new["pbc_test"]["accuracy"] >= cur["pbc_test"]["accuracy"] - doc["verdict"]["margin"]  # no PBC loss
    # The verdict on every class's PBC recall: the 2-point margin is one cell of ~50-80 test cells a
    # class, and whether this small fine-tune of v1.2 (PBC recall 0.96-1.00 per class) keeps every class
    # within it depends on floating-point detail: it has come out promotable, and refused on 2-3 test
    # erythroblasts (docs/validation.md, *Lab fine-tuning*). Either way the verdict must be consistent
    # and a refusal must name what dropped; a refused model is promoted only with the director's
    # recorded reason, as the workflow asks.
    refused = doc["verdict"]["refused"]
    assert r.exit_code == (1 if refused else 0) and doc["promotable"] is (not refused), r.output
    assert bool(doc["verdict"]["dropped"]) is refused
    assert all(d["data"] == "pbc_test" and d["drop"] > doc["verdict"]["margin"] for d in doc["verdict"]["dropped"])
    # each drop says how many test cells the candidate lost and gained, and whether chance explains it
    assert all(d["lost"] > d["gained"] and 0 < d["p_value"] <= 1 for d in doc["verdict"]["dropped"])
    if refused:
        reason = "lab stain: PBC test loss of one class reviewed by the director and accepted"
        r = _cli(stack, *validate, "--override-reason", reason)
        doc = json.loads(r.stdout)
        assert r.exit_code == 0 and doc["promotable"] and doc["verdict"]["overridden"], r.output
        assert doc["verdict"]["override_reason"] == reason
    alpha = json.loads((new_dir / "model.json").read_text())["training"]["fine_tune"]["interpolation"]["alpha"]
    assert 0.0 < alpha <= 1.0  # the fine-tune moved the model (α = 0 would be the shipped model itself)
    assert json.loads((new_dir / "validation.json").read_text())["promotable"] == doc["promotable"]

    # The registry: promotion reaches the running worker's next slide; rollback brings v1 back.
    meta = json.loads((new_dir / "model.json").read_text())
    assert _cli(stack, "models", "register", str(new_dir), "--by", "director").exit_code == 0
    promote = ["models", "promote", f"{meta['name']}:{meta['version']}", "--by", "director", "--reason", "lab stain"]
    r = _cli(stack, *promote)
    assert r.exit_code == 0, r.output
    (after1,) = _analyse(stack, [slides["after1"]], "after promotion")
    model = stack.client()._call("GET", f"/api/v1/slides/{after1}").json()["model"]
    assert (model["name"], model["version"]) == (meta["name"], meta["version"])
    assert stack.client().report(after1)["model"]["version"] == meta["version"]
    r = _cli(stack, "models", "rollback", "--by", "director", "--reason", "back to the shipped model")
    assert r.exit_code == 0, r.output
    (after2,) = _analyse(stack, [slides["after2"]], "after rollback")
    shipped = json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())
    assert stack.client().report(after2)["model"]["version"] == shipped["version"]
    listed = json.loads(_cli(stack, "models", "list", "--json").stdout)
    assert [h["action"] for h in listed["history"]][:2] == ["rollback", "promote"]  # newest first
