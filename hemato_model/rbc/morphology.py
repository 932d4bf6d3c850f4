"""Red-cell morphology in the slide pipeline: which detected red cells are classified, and how.

The red cells come from the detector (:mod:`hemato_model.detection.red_cells`: marker-controlled
watershed split of touching cells) in the fields the pipeline reads (every tile of a small slide,
the sampled ``rbc_fields`` of a whole slide). :class:`RedCellSampler` is offered each field's red
cells as the field is read, while its pixels are in memory, and keeps:

- **evaluable fields only**: a field whose red cells cover more than ``thick_coverage`` of it (area
  of the detected outlines over the field area) is a thick area where cells overlap and are
  deformed; it is skipped and counted (``fields.thick``). ICSH: morphology is judged where red
  cells just touch or lie apart.
- **single cells only**: a detection wider than ``max_diameter_um`` is two or more overlapping cells
  the watershed could not split (or a cell under a white cell's rim); it is counted
  (``cells_overlapping``), not classified.
- **whole cells, judged at their own centre**: with the detector's segment shape
  (:class:`hemato_model.detection.red_cells.RedCellShape`), a segment cut by the field border or by
  the zone cleared around a white cell (``cells_cut``), or a piece the watershed cut out of a clump
  along a boundary longer than ``max_contact`` of its own diameter (``cells_split``: one cell split
  in two, or a cell under another — the halves of a split normal cell would otherwise be read as
  fragments, i.e. schistocytes) is left out; a cell that only touches its neighbours, and a real
  fragment lying apart, are kept: the rule is the shared boundary against the segment's own size,
  not size alone. A kept cell is cropped around its segment's centroid, not its box centre.
- **a uniform sample** of at most ``target`` of the remaining cells over all fields read (reservoir
  sampling, Vitter's algorithm R, seeded), so the cost is bounded on a slide of 10⁵ red cells and the
  sample is not biased to the first fields. A crop is cut only for a cell entering the sample.

:meth:`RedCellSampler.finish` classifies the sample in batches with the red-cell model (a
:class:`hemato_model.classifier.Classifier` of the red-cell model directory; cells under its
threshold are ``unidentified``, and so are cells whose top class has a stricter cut-off of its own
in ``model.json``'s ``class_thresholds``: schistocytes, whose false calls raise a critical flag),
labels those :class:`CellResult` objects, and returns the
context the report needs (``SlideAnalysis.rbc``). The percentages, grades and flags are computed in
the core (:mod:`hematovision.core.rbc_grading`) from the cells' labels, so a reviewer's
reclassification recomputes them the same way.

Glass normalisation: the red-cell model was trained on camera fields whose background is darker
than a scanned slide's (and its elliptocyte fields alone have a bright one, a cue it learnt), so each
crop is scaled per channel by the model's training glass colour over the field's (``glass_rgb`` in
``model.json``; the field's glass is its 95th percentile of brightness).

Scale: the model judges size at a physical scale (crops of ``crop_um`` µm); a slide whose µm/px is
the installation's default (``mpp_source == "default"``) has an *assumed* scale and the section is
marked uncertain.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hemato_model.preprocessing import crop_cell
from hematovision.core.results import UNIDENTIFIED, CellResult

if TYPE_CHECKING:
    from hemato_model.detection import Detection

log = logging.getLogger(__name__)

#: Red cells to classify per slide: the ICSH minimum of 1,000 (fewer are *named*: the model leaves
#: 30-55 % unidentified, and the report says the count is short); bounded for speed (≤ 20 % of a
#: 200-cell slide's CPU time).
DEFAULT_TARGET_CELLS = 1000
#: Fields where detected red cells cover more than this share of the field are thick (overlapping).
THICK_COVERAGE = 0.70
#: A red-cell detection wider than this (µm) is taken as overlapping cells, not one cell.
MAX_DIAMETER_UM = 12.5
#: A clump piece sharing a boundary longer than this fraction of its equivalent diameter with other
#: red-cell segments is a piece of a split or overlapped cell, not a whole cell.
MAX_CONTACT = 1.0


class _RbcClassifier(Protocol):
    name: str
    version: str
    classes: list[str]
    input_px: int
    crop_um: float
    threshold: float

    def classify(self, crops: np.ndarray) -> list[tuple[str, float]]: ...


def box_diameter_um(bbox: tuple[int, int, int, int] | list[int], mpp: float) -> float:
    """Equivalent diameter of a detected red cell from its box: the mean of its sides, µm."""
    x0, y0, x1, y1 = bbox
    return 0.5 * ((x1 - x0) + (y1 - y0)) * mpp


@dataclass
class RedCellSampler:
    """Collects a uniform sample of single red cells in evaluable fields, then classifies it."""

    classifier: _RbcClassifier
    mpp: float
    mpp_source: str | None = None
    target: int = DEFAULT_TARGET_CELLS
    thick_coverage: float = THICK_COVERAGE
    max_diameter_um: float = MAX_DIAMETER_UM
    max_contact: float = MAX_CONTACT
    seed: int = 0
    batch_size: int = 64
    seen: int = 0
    fields_read: int = 0
    fields_thick: int = 0
    fields_empty: int = 0
    cells_overlapping: int = 0
    cells_cut: int = 0
    cells_split: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    _sample: list[tuple[CellResult, np.ndarray]] = field(default_factory=list)
    _rng: np.random.Generator | None = None

    def offer(
        self,
        region: np.ndarray,
        origin: tuple[int, int],
        cells: list[CellResult],
        area_px: float,
        detections: list[Detection] | None = None,
    ) -> None:
        """One field's red cells (level-0 boxes) and its pixels (``region`` at level 0 from ``origin``).

        Args:
            area_px: the field's area these cells were found in (a tile's core), level-0 pixels².
            detections: the detector's red cells behind ``cells`` (same order, boxes in ``region``
                pixels), with their segment shape; without them every cell is judged at its box centre.
        """
        t, tc = time.perf_counter(), time.process_time()
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        self.fields_read += 1
        if not cells:
            self.fields_empty += 1
            return
        cover = sum(math.pi / 4.0 * (c.bbox[2] - c.bbox[0]) * (c.bbox[3] - c.bbox[1]) for c in cells)
        if area_px > 0 and cover / area_px > self.thick_coverage:
            self.fields_thick += 1
            self.seconds += time.perf_counter() - t
            self.cpu_seconds += time.process_time() - tc
            return
        ox, oy = origin
        gain = self._glass_gain(region)
        for i, c in enumerate(cells):
            if box_diameter_um(c.bbox, self.mpp) > self.max_diameter_um:
                self.cells_overlapping += 1
                continue
            det = detections[i] if detections is not None else None
            if det is not None and det.shape is not None:
                if det.shape.cut:
                    self.cells_cut += 1
                    continue
                if det.shape.in_clump and det.shape.contact > self.max_contact:
                    self.cells_split += 1
                    continue
            self.seen += 1
            if len(self._sample) < self.target:
                slot = len(self._sample)
                self._sample.append((c, np.empty(0, np.uint8)))
            else:
                slot = int(self._rng.integers(self.seen))
                if slot >= self.target:
                    continue
            if det is not None and det.centroid is not None:
                rx, ry = det.centroid
            else:
                rx, ry = c.center[0] - ox, c.center[1] - oy
            crop = crop_cell(region, (rx, ry), self.mpp, self.classifier.crop_um, self.classifier.input_px)
            if gain is not None:
                crop = np.clip(crop.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
            self._sample[slot] = (c, crop)
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.process_time() - tc

    def _glass_gain(self, region: np.ndarray) -> np.ndarray | None:
        """Per-channel gain mapping this field's glass colour (95th percentile) to the model's
        training glass (``preprocessing.glass_rgb`` of ``model.json``; None without it)."""
        meta = getattr(self.classifier, "meta", None) or {}
        target = (meta.get("preprocessing") or {}).get("glass_rgb")
        if target is None:
            return None
        glass = np.percentile(region[::4, ::4, :3].reshape(-1, 3), 95, axis=0).astype(np.float32)
        return np.asarray(target, np.float32) / np.maximum(glass, 1.0)

    @property
    def wants_more(self) -> bool:
        """Fewer single red cells seen than the target (read more fields while the bound allows)."""
        return self.seen < self.target

    def finish(self) -> dict[str, Any]:
        """Classify the sample (labels set on its cells) and return the slide's red-cell context."""
        t, tc = time.perf_counter(), time.process_time()
        cells = [c for c, _ in self._sample]
        if cells:
            crops = np.stack([crop for _, crop in self._sample])
            labels: list[tuple[str, float]] = []
            for i in range(0, len(crops), self.batch_size):
                labels.extend(self.classifier.classify(crops[i : i + self.batch_size]))
            strict = class_thresholds(self.classifier)
            for c, (label, p) in zip(cells, labels, strict=True):
                if label in strict and p < strict[label]:
                    label = UNIDENTIFIED
                c.label, c.probability = label, float(p)
        self._sample = []
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.process_time() - tc
        scale_known = self.mpp_source != "default"
        reason = None
        if not cells:
            if self.fields_read == 0 or self.fields_empty == self.fields_read:
                reason = "no red cells were found in the fields read"
            elif self.fields_thick and self.seen == 0:
                reason = (
                    f"every field with red cells was too thick to judge ({self.fields_thick} of {self.fields_read} "
                    "fields: red cells overlap)"
                )
            else:
                reason = "no single red cells: the detected red cells overlap"
        elif self.fields_thick:
            reason = f"{self.fields_thick} of {self.fields_read} fields skipped as thick (red cells overlap)"
        return {
            "status": "classified" if cells else "empty",
            "reason": reason,
            "model": {
                "name": self.classifier.name,
                "version": self.classifier.version,
                "classes": list(self.classifier.classes),
                "threshold": float(self.classifier.threshold),
                "class_thresholds": class_thresholds(self.classifier),
                "crop_um": float(self.classifier.crop_um),
            },
            "mpp_source": self.mpp_source,
            "scale_known": scale_known,
            "scale_reason": None if scale_known else "the slide states no µm/px and the installation default was used",
            "fields": {
                "read": self.fields_read,
                "thick": self.fields_thick,
                "without_red_cells": self.fields_empty,
            },
            "single_cells_seen": self.seen,
            "cells_overlapping": self.cells_overlapping,
            "cells_cut": self.cells_cut,
            "cells_split": self.cells_split,
            "cells_classified": len(cells),
            "sampling": (
                f"uniform sample of at most {self.target} single whole red cells in evaluable fields (seed "
                f"{self.seed}), each cropped at its segment's centroid; left out: cells cut by the field border or "
                f"a white cell, pieces sharing a boundary over {self.max_contact:g} of their diameter with "
                "neighbours (split cells)"
            ),
            "seconds": round(self.seconds, 3),
            # CPU seconds of the process (every thread) in this stage: what load does not stretch
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


def class_thresholds(classifier: Any) -> dict[str, float]:
    """Per-class top-probability cut-offs stricter than the model's threshold (``model.json``'s
    ``class_thresholds``; empty when it has none)."""
    meta = getattr(classifier, "meta", None) or {}
    return {str(k): float(v) for k, v in (meta.get("class_thresholds") or {}).items()}


def load_red_cell_model(model_dir: str | Path | None) -> tuple[Any | None, str | None]:
    """The red-cell classifier of ``model_dir`` (loaded once per process), or (None, why not):
    a missing or corrupt model switches red-cell morphology off for the slide, it never fails it."""
    if model_dir is None:
        return None, "red-cell morphology is off (opt-in: HEMATOVISION_RBC_MORPHOLOGY=true or process --rbc)"
    from hemato_model.classifier import ModelError, load_classifier

    try:
        return load_classifier(model_dir), None
    except (ModelError, OSError, ValueError) as exc:
        log.warning("red-cell model unavailable: %s", exc)
        return None, f"the red-cell model could not be loaded ({Path(model_dir).name}: {exc.__class__.__name__})"


def not_run(reason: str) -> dict[str, Any]:
    """The red-cell context of a slide analysed without the red-cell model."""
    return {"status": "not_evaluated", "reason": reason}
