"""Per-class white-cell detection recall of the slide pipeline, against a synthetic slide's manifest.

A slide from :func:`hematovision.devtools.synthetic.make_slide` lists every placed white cell
(erythroblasts included: the manifest's ``kind == "wbc"``) with its class and box. The pipeline
(:func:`hemato_model.pipeline.prepare_slide`, or :func:`~hemato_model.pipeline.analyze_slide` when a
classifier is given) runs on the slide down one path, forced with ``PipelineParams``:

* ``two_pass``: white-cell candidates on a low-resolution level, level 0 read around them
  (``full_res_max_mpix=0``), with a target so high that reading never stops early (when to stop is
  a separate matter: here every candidate of the smear counts);
* ``full_resolution``: level 0 tiled over the smear, every kind detected.

**Detection recall** of a class = placed cells of the class that have a detected white-cell box
whose centre lies within half a cell of the centre of the cell's manifest box (half the box's
longer side, at least ``MATCH_UM``, half a typical 12 µm white cell: the box is the nucleus's
grown by a margin, the detected box's centre that of the nucleus found), one detection per placed
cell (closest pairs first). Classification is a separate
matter: with a classifier, the labels of the matched cells are tallied too (``unidentified`` and
``as_class``, the cells given their own class), for the record.

Used by ``tests/unit/test_wholeslide_recall.py`` and ``benchmarks/wholeslide_recall.py``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hematovision.devtools.synthetic import manifest_path

#: A detection matches a placed cell when its centre is within half the cell of the cell's centre,
#: and at least this many µm.
MATCH_UM = 6.0
#: Radius of the disc a PBC crop is pasted in (``cell_sprites.WBC_MASK_UM`` / 2 + the 1 µm feather).
PASTED_RADIUS_UM = 14.0
PATHS = ("two_pass", "full_resolution")


def pipeline_params(path: str, n_placed: int) -> Any:
    """``PipelineParams`` that force ``path`` and never stop reading before the smear is covered."""
    from hemato_model.pipeline_params import PipelineParams

    if path == "two_pass":
        return PipelineParams(target_wbc=10 * (n_placed + 1), full_res_max_mpix=0.0)
    if path == "full_resolution":
        return PipelineParams(target_wbc=10 * (n_placed + 1), full_res_max_mpix=math.inf)
    raise ValueError(f"unknown path {path!r}; expected one of {', '.join(PATHS)}")


def placed_white_cells(slide_path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest's head (without cells) and its white cells (erythroblasts included)."""
    manifest = json.loads(manifest_path(slide_path).read_text(encoding="utf-8"))
    cells = [c for c in manifest.pop("cells") if c["kind"] == "wbc"]
    return manifest, cells


def match_cells(
    placed: Sequence[dict[str, Any]], detected: np.ndarray, mpp: float, match_um: float = MATCH_UM
) -> list[int | None]:
    """For each placed cell, the index of its detection in ``detected`` (N×2 centres, level-0 px),
    or None: one-to-one, closest pairs first, within half the cell (half the longer side of its
    manifest box, at least ``match_um``)."""
    out: list[int | None] = [None] * len(placed)
    if not len(placed) or not len(detected):
        return out
    from scipy.spatial import cKDTree

    boxes = np.array([c["bbox"] for c in placed], float)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], 1)
    half_cell = np.maximum(match_um / mpp, np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2.0)
    pairs = cKDTree(centres).query_ball_tree(cKDTree(detected), float(half_cell.max()))
    cand = sorted(
        (d, i, j)
        for i, js in enumerate(pairs)
        for j in js
        if (d := float(np.hypot(*(centres[i] - detected[j])))) <= half_cell[i]
    )
    used: set[int] = set()
    for _, i, j in cand:
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out


class _KeepCells:
    """A crop sink that keeps the cells and drops the crops (detection only)."""

    def __init__(self) -> None:
        self.cells: list[Any] = []

    def add(self, cell: Any, crop: np.ndarray) -> None:
        self.cells.append(cell)

    @property
    def pending(self) -> int:
        return 0

    def flush(self) -> None:
        return None


class _Spec:
    """The crop geometry of the shipped model, for detection-only runs (crops are not kept)."""

    name = "detection-only"
    version = "0"
    classes: list[str] = []
    input_px = 32
    crop_um = 24.0


def measure(slide_path: str | Path, path: str, classifier: Any = None) -> dict[str, Any]:
    """Run the pipeline down ``path`` on a synthetic slide and tally detection recall per class.

    Returns:
        ``{"slide", "format", "mpp", "size", "path", "seconds", "placed", "detected",
        "unmatched_detections", "unmatched": {"in_a_pasted_cell", "elsewhere", "labels"},
        "per_class": {class: {"placed", "found", "recall", "unidentified", "as_class"}}}``
        (labels, unidentified and as_class only with a classifier). A detection that matches no
        placed cell is either in the disc a PBC crop was pasted in (a neighbouring cell the crop
        brought along: real, but not in the manifest) or elsewhere (a false detection).
    """
    from hemato_model.pipeline import analyze_slide, prepare_slide
    from hematovision.core.results import WBC
    from hematovision.core.slides import open_slide

    head, placed = placed_white_cells(slide_path)
    params = pipeline_params(path, len(placed))
    t = time.perf_counter()
    with open_slide(slide_path) as slide:
        if classifier is not None:
            analysis = analyze_slide(slide, classifier, params)
        else:
            analysis = prepare_slide(slide, _Spec(), _KeepCells(), params)
    seconds = time.perf_counter() - t
    wbc = [c for c in analysis.cells if c.kind == WBC]
    centres = np.array([((c.bbox[0] + c.bbox[2]) / 2.0, (c.bbox[1] + c.bbox[3]) / 2.0) for c in wbc]).reshape(-1, 2)
    matches = match_cells(placed, centres, float(head["mpp"]))
    per_class: dict[str, dict[str, Any]] = {}
    for cell, j in zip(placed, matches, strict=True):
        row = per_class.setdefault(cell["class"], {"placed": 0, "found": 0})
        row["placed"] += 1
        if j is None:
            continue
        row["found"] += 1
        if classifier is not None:
            label = wbc[j].label
            row["unidentified"] = row.get("unidentified", 0) + int(label == "unidentified")
            row["as_class"] = row.get("as_class", 0) + int(label == cell["class"])
    for row in per_class.values():
        row["recall"] = round(row["found"] / row["placed"], 4)
        if classifier is not None:
            row.setdefault("unidentified", 0)
            row.setdefault("as_class", 0)
    matched = {j for j in matches if j is not None}
    extra = [j for j in range(len(wbc)) if j not in matched]
    unmatched: dict[str, Any] = {"in_a_pasted_cell": 0, "elsewhere": 0}
    if extra:
        from scipy.spatial import cKDTree

        # inside the disc a PBC crop was pasted in (a neighbour the crop brought), or elsewhere
        discs = cKDTree(np.array([c["center"] for c in placed], float).reshape(-1, 2))
        dist, _ = discs.query(centres[extra])
        near = int((dist * float(head["mpp"]) <= PASTED_RADIUS_UM).sum()) if len(placed) else 0
        unmatched = {"in_a_pasted_cell": near, "elsewhere": len(extra) - near}
        if classifier is not None:
            labels: dict[str, int] = {}
            for j in extra:
                labels[str(wbc[j].label)] = labels.get(str(wbc[j].label), 0) + 1
            unmatched["labels"] = dict(sorted(labels.items()))
    return {
        "slide": Path(slide_path).name,
        "format": head["format"],
        "mpp": head["mpp"],
        "size": [head["width"], head["height"]],
        "path": path,
        "seconds": round(seconds, 2),
        "placed": len(placed),
        "detected": len(wbc),
        "unmatched_detections": len(extra),
        "unmatched": unmatched,
        "per_class": dict(sorted(per_class.items())),
    }


def pooled(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-class totals over several :func:`measure` results (same keys, recall recomputed)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        for cls, row in r["per_class"].items():
            acc = out.setdefault(cls, {})
            for k, v in row.items():
                if k != "recall":
                    acc[k] = acc.get(k, 0) + v
    for acc in out.values():
        acc["recall"] = round(acc["found"] / acc["placed"], 4) if acc["placed"] else None
    return dict(sorted(out.items()))
