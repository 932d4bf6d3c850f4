"""What one analysis stage hands to the next, as files in a folder (numpy + JSON, no pickles).

``prepare`` (CPU) writes the cells it found and the white-cell crops; ``classify`` (GPU) reads the
crops and writes one label per crop; ``report`` reads both. The folder layout::

    meta.json         the slide's analysis without labels: size, mpp, area, the gate's measurements
                      (``quality``), cells (kind, box, score), the crop spec (model name/version,
                      crop_um, input_px) and, in crop order, the index in ``cells`` of each cropped
                      white cell
    crops-00000.npy   uint8 (n, input_px, input_px, 3), one file per batch the pipeline flushes
    labels.json       written by ``classify``: (label, probability) per crop, the energy score per
                      crop (``energies``) and the model's identity with its ``ood`` statistics

Writers put ``meta.json`` and ``labels.json`` in place last and atomically (``os.replace``), so a
reader never sees half a file; a folder without ``meta.json`` is incomplete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hematovision.core.results import RBC, CellResult, SlideAnalysis

META, LABELS = "meta.json", "labels.json"
FORMAT = 1


class HandoffError(ValueError):
    """A stage's folder is missing, incomplete or from another model."""


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class CropSpool:
    """A crop sink (see :func:`hemato_model.pipeline.prepare_slide`) that writes crops to ``folder``
    a batch at a time instead of classifying them, so memory stays bounded on full counts."""

    folder: Path
    cells: list[CellResult] = field(default_factory=list)
    _pending: list[np.ndarray] = field(default_factory=list)
    _files: int = 0

    def add(self, cell: CellResult, crop: np.ndarray) -> None:
        self.cells.append(cell)
        self._pending.append(crop)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if not self._pending:
            return
        np.save(self.folder / f"crops-{self._files:05d}.npy", np.stack(self._pending).astype(np.uint8))
        self._files += 1
        self._pending = []


def write_prepared(folder: Path, analysis: SlideAnalysis, crop_cells: list[CellResult], spec: Any) -> None:
    """Finish a prepare folder: ``meta.json`` (last; its presence marks the folder complete)."""
    index = {id(c): i for i, c in enumerate(analysis.cells)}
    doc = {
        "format": FORMAT,
        "slide": {
            "mpp": analysis.mpp,
            "width": analysis.width,
            "height": analysis.height,
            "fields_analysed": analysis.fields_analysed,
            "area_mm2": analysis.area_mm2,
            "stopped_early": analysis.stopped_early,
            "timings_s": analysis.timings_s,
            "quality": analysis.quality,
            "sampling": analysis.sampling,
            "rbc": analysis.rbc,
        },
        "model": {
            "name": spec.name,
            "version": spec.version,
            "classes": list(spec.classes),
            "crop_um": spec.crop_um,
            "input_px": spec.input_px,
        },
        "cells": [[c.kind, *map(int, c.bbox), round(float(c.score), 6)] for c in analysis.cells],
        "crop_cells": [index[id(c)] for c in crop_cells],
        # red cells classified in this stage (red-cell morphology): cell index -> [label, probability]
        "rbc_labels": {
            str(i): [c.label, round(float(c.probability or 0.0), 6)]
            for i, c in enumerate(analysis.cells)
            if c.kind == RBC and c.label is not None
        },
    }
    write_json_atomic(folder / META, doc)


@dataclass
class Prepared:
    """A prepare folder read back."""

    folder: Path
    analysis: SlideAnalysis
    crop_cells: list[int]
    model: dict[str, Any]

    def crop_chunks(self) -> Iterator[np.ndarray]:
        """The crops in order, a chunk at a time."""
        n = 0
        for path in sorted(self.folder.glob("crops-*.npy")):
            arr = np.load(path, allow_pickle=False)
            n += len(arr)
            yield arr
        if n != len(self.crop_cells):
            raise HandoffError(f"{self.folder}: {n} crops on disk for {len(self.crop_cells)} white cells")


def read_prepared(folder: Path) -> Prepared:
    try:
        doc = json.loads((folder / META).read_text())
    except FileNotFoundError:
        raise HandoffError(f"{folder}: no prepared slide (missing {META})") from None
    if doc.get("format") != FORMAT:
        raise HandoffError(f"{folder}: unknown format {doc.get('format')!r}")
    s, m = doc["slide"], doc["model"]
    analysis = SlideAnalysis(
        mpp=s["mpp"],
        width=s["width"],
        height=s["height"],
        model_name=m["name"],
        model_version=m["version"],
        classes=list(m["classes"]),
        fields_analysed=s["fields_analysed"],
        area_mm2=s["area_mm2"],
        stopped_early=s["stopped_early"],
        timings_s=dict(s["timings_s"]),
        quality=dict(s.get("quality") or {}),
        sampling=dict(s.get("sampling") or {}),
        cells=[CellResult(k, (x0, y0, x1, y1), score) for k, x0, y0, x1, y1, score in doc["cells"]],
        rbc=dict(s.get("rbc") or {}),
    )
    for i, (label, prob) in (doc.get("rbc_labels") or {}).items():
        cell = analysis.cells[int(i)]
        cell.label, cell.probability = label, float(prob)
    return Prepared(folder, analysis, list(doc["crop_cells"]), m)


def write_labels(
    folder: Path, labels: list[tuple[str, float]], model: dict[str, Any], energies: list[float | None] | None = None
) -> None:
    doc: dict[str, Any] = {"format": FORMAT, "model": model, "labels": [[lab, round(float(p), 6)] for lab, p in labels]}
    if energies is not None:
        doc["energies"] = energies
    write_json_atomic(folder / LABELS, doc)


def read_labels(folder: Path) -> dict[str, Any] | None:
    """``labels.json`` of a folder, or None when classification has not finished."""
    try:
        return json.loads((folder / LABELS).read_text())
    except FileNotFoundError:
        return None


def apply_labels(prepared: Prepared, labels: dict[str, Any]) -> SlideAnalysis:
    """The prepared analysis with each cropped white cell labelled (the classifier's identity too)."""
    rows = labels["labels"]
    if len(rows) != len(prepared.crop_cells):
        raise HandoffError(f"{prepared.folder}: {len(rows)} labels for {len(prepared.crop_cells)} crops")
    from hemato_model.quality import add_model_evidence

    analysis = prepared.analysis
    energies = labels.get("energies") or [None] * len(rows)
    for i, (label, prob), energy in zip(prepared.crop_cells, rows, energies, strict=True):
        cell = analysis.cells[i]
        cell.label, cell.probability, cell.energy = label, float(prob), energy
    add_model_evidence(analysis.quality, energies, labels["model"])
    analysis.model_name = labels["model"]["name"]
    analysis.model_version = labels["model"]["version"]
    analysis.classes = list(labels["model"]["classes"])
    return analysis
