"""White-cell crops: how one is cut from a slide (:func:`crop_from_slide`), where they go, and the
sink that classifies them as they come.

A *crop sink* takes the white cells and their crops in the order they are found: on one machine
:class:`ClassifyingSink` classifies a batch at a time on a thread of its own
(:func:`hemato_model.pipeline.analyze_slide`); in the staged service the ``prepare`` stage's sink
writes the crops to disk for the GPU ``classify`` stage (:mod:`hemato_model.handoff`).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hemato_model.preprocessing import crop_cell
from hematovision.core.results import CellResult, is_classified_wbc

if TYPE_CHECKING:
    from hematovision.core.slides import Slide


class CropSpec(Protocol):
    """What cutting crops needs to know of the model (a ``ModelSpec`` or a loaded ``Classifier``)."""

    name: str
    version: str
    classes: list[str]
    input_px: int
    crop_um: float


class CropSink(Protocol):
    """Where the white cells and their crops go, in the order they are found."""

    cells: list[CellResult]

    def add(self, cell: CellResult, crop: np.ndarray) -> None: ...

    @property
    def pending(self) -> int: ...

    def flush(self) -> None: ...


class CropClassifier(CropSpec, Protocol):
    """The part of :class:`hemato_model.classifier.Classifier` a sink uses."""

    def classify(self, crops: np.ndarray) -> list[tuple[str, float]]: ...


class ClassifyingSink:
    """Classifies white-cell crops a batch at a time (crops are dropped after).

    A flushed batch is classified on a thread of its own while the caller goes on finding cells
    (TensorFlow releases the GIL); at most one batch is being classified while the next is
    gathered, so memory stays bounded. Labels of flushed crops are set once :meth:`wait` returns
    (``classified`` waits)."""

    def __init__(self, classifier: CropClassifier, batch_size: int, mpp: float | None = None) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        self.mpp = mpp  # the slide's µm/px: the classifier's energy cut-offs depend on the scan's scale
        self.cells: list[CellResult] = []
        self._pending: list[tuple[CellResult, np.ndarray]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future[None] | None = None
        self.seconds = 0.0

    def add(self, cell: CellResult, crop: np.ndarray) -> None:
        self.cells.append(cell)
        self._pending.append((cell, crop))

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def classified(self) -> int:
        """White cells named so far (pending crops are not counted until flushed)."""
        self.wait()
        return sum(1 for c in self.cells if is_classified_wbc(c.label))

    def flush(self) -> None:
        if not self._pending:
            return
        part, self._pending = self._pending, []
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify")
        self._running = self._pool.submit(self._classify, part)

    def wait(self) -> None:
        """Return once every flushed crop is labelled (re-raising the classifier's error, if any)."""
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def close(self) -> None:
        """Wait for the batch in flight and stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _classify(self, part: list[tuple[CellResult, np.ndarray]]) -> None:
        t = time.perf_counter()
        scored = getattr(self.classifier, "classify_scored", None)
        for i in range(0, len(part), self.batch_size):
            chunk = part[i : i + self.batch_size]
            batch = np.stack([crop for _, crop in chunk])
            labels, energies = (
                scored(batch, mpp=self.mpp) if scored else (self.classifier.classify(batch), [None] * len(chunk))
            )
            for (cell, _), (label, prob), energy in zip(chunk, labels, energies, strict=True):
                cell.label, cell.probability, cell.energy = label, float(prob), energy
        self.seconds += time.perf_counter() - t


def crop_from_slide(
    slide: Slide,
    x: float,
    y: float,
    mpp: float,
    crop_um: float,
    input_px: int,
    region: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """The classifier's input for the cell centred at level-0 (x, y): cut from ``region`` (level-0
    pixels from ``origin``) when the crop lies inside it, else from a read of its own: the model's
    ``crop_um`` square at ``mpp`` µm/px, resized to ``input_px``."""
    half = int(math.ceil(crop_um / mpp)) // 2 + 2
    if region is not None:
        rx, ry = x - origin[0], y - origin[1]
        if half <= rx < region.shape[1] - half and half <= ry < region.shape[0] - half:
            return crop_cell(region, (rx, ry), mpp, crop_um, input_px)
    x0, y0 = int(x) - half, int(y) - half
    own = slide.read_region((x0, y0), 0, (2 * half, 2 * half))
    return crop_cell(own, (x - x0, y - y0), mpp, crop_um, input_px)
