"""Match detected cells to annotated boxes and report per-kind precision, recall and count error.

Matching rule (``MATCHING_RULE``): per image and per kind, one-to-one greedy matching of
predicted to annotated boxes in order of decreasing IoU, a pair being eligible when
**IoU ≥ 0.3 or the centre of each box lies inside the other** ("mutual centre containment").

Why: the annotated boxes of these sets are loose and inconsistent in size (CBC red-cell boxes are
~10% larger than the cell; a white-cell box may or may not include the cytoplasm; platelet boxes
are 30–60 px for a 2–3 µm object, so a few pixels of disagreement halves the IoU of a small box).
The clinical quantity is *which cell was found*, not box tightness, so a low IoU bar (0.3, the
usual lenient value for cell detection) is accepted, and a detection whose centre lies in the
annotated cell *and* whose box contains that cell's centre is the same cell even when the box
sizes differ. Mutual containment cannot pair two neighbouring red cells (a neighbour's centre is
outside the box), and one-to-one matching stops one box from being counted for two cells.

Don't-care boxes (``ignore``, COCO's "ignore" semantics): annotated cells that should be neither
found nor missed — border-cut cells (:mod:`hemato_model.detection.border`). Detections are
matched to the counted boxes first; a detection left over that matches a don't-care box under the
same rule is dropped from the tally (neither a true nor a false positive), and a don't-care box is
never a miss.

Count error per kind is over the whole set: ``|Σpred − Σtrue| / Σtrue`` — the error of a count,
which is what a CBC-style differential reports, not a per-image average.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

MATCHING_RULE = (
    "one-to-one greedy by decreasing IoU, per image and kind; a pair matches when IoU >= 0.3 "
    "or each box's centre lies inside the other"
)
IOU_THRESHOLD = 0.3

BBox = Sequence[float]


def iou_matrix(pred: Sequence[BBox], true: Sequence[BBox]) -> np.ndarray:
    """IoU of every predicted box (rows) with every annotated box (columns)."""
    if not pred or not true:
        return np.zeros((len(pred), len(true)))
    p = np.asarray(pred, float)[:, None, :]
    t = np.asarray(true, float)[None, :, :]
    iw = np.clip(np.minimum(p[..., 2], t[..., 2]) - np.maximum(p[..., 0], t[..., 0]), 0, None)
    ih = np.clip(np.minimum(p[..., 3], t[..., 3]) - np.maximum(p[..., 1], t[..., 1]), 0, None)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_t = (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
    out: np.ndarray = inter / np.maximum(area_p + area_t - inter, 1e-9)
    return out


def _centre_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[i, j]: centre of box a[i] lies inside box b[j]."""
    cx = (a[:, 0] + a[:, 2]) / 2
    cy = (a[:, 1] + a[:, 3]) / 2
    inside: np.ndarray = (
        (cx[:, None] >= b[None, :, 0])
        & (cx[:, None] < b[None, :, 2])
        & (cy[:, None] >= b[None, :, 1])
        & (cy[:, None] < b[None, :, 3])
    )
    return inside


def match_boxes(
    pred: Sequence[BBox], true: Sequence[BBox], iou_threshold: float = IOU_THRESHOLD
) -> list[tuple[int, int]]:
    """Pairs ``(pred_index, true_index)`` under ``MATCHING_RULE``."""
    if not pred or not true:
        return []
    iou = iou_matrix(pred, true)
    p, t = np.asarray(pred, float), np.asarray(true, float)
    eligible = (iou >= iou_threshold) | (_centre_inside(p, t) & _centre_inside(t, p).T)
    # rank eligible pairs by IoU, ties (e.g. 0 for mutual-centre pairs) by centre distance
    pc = np.stack([(p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2], 1)
    tc = np.stack([(t[:, 0] + t[:, 2]) / 2, (t[:, 1] + t[:, 3]) / 2], 1)
    dist = np.linalg.norm(pc[:, None, :] - tc[None, :, :], axis=2)
    ii, jj = np.nonzero(eligible)
    order = np.lexsort((dist[ii, jj], -iou[ii, jj]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    pairs = []
    for k in order:
        i, j = int(ii[k]), int(jj[k])
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        pairs.append((i, j))
    return pairs


@dataclass
class KindTally:
    true_positives: int = 0
    n_pred: int = 0
    n_true: int = 0
    n_ignored_true: int = 0
    n_ignored_pred: int = 0

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.n_pred if self.n_pred else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.n_true if self.n_true else None

    @property
    def count_error(self) -> float | None:
        return abs(self.n_pred - self.n_true) / self.n_true if self.n_true else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "count_error": self.count_error,
            "n_pred": self.n_pred,
            "n_true": self.n_true,
            "true_positives": self.true_positives,
            "n_ignored_true": self.n_ignored_true,
            "n_ignored_pred": self.n_ignored_pred,
        }


@dataclass
class DetectionScores:
    """Tallies over a set of images, one per kind."""

    kinds: tuple[str, ...] = ("wbc", "rbc", "platelet")
    tallies: dict[str, KindTally] = field(default_factory=dict)
    n_images: int = 0

    def __post_init__(self) -> None:
        for k in self.kinds:
            self.tallies.setdefault(k, KindTally())

    def add_image(
        self,
        pred: Iterable[tuple[str, BBox]],
        true: Iterable[tuple[str, BBox]],
        ignore: Iterable[tuple[str, BBox]] = (),
    ) -> None:
        """Add one image: ``pred``, ``true`` and don't-care ``ignore`` are ``(kind, bbox)`` pairs."""
        pred, true, ignore = list(pred), list(true), list(ignore)
        self.n_images += 1
        for kind in self.kinds:
            pk = [b for k, b in pred if k == kind]
            tk = [b for k, b in true if k == kind]
            ik = [b for k, b in ignore if k == kind]
            pairs = match_boxes(pk, tk)
            matched = {i for i, _ in pairs}
            rest = [b for i, b in enumerate(pk) if i not in matched]
            n_ignored = len(match_boxes(rest, ik))
            t = self.tallies[kind]
            t.n_pred += len(pk) - n_ignored
            t.n_true += len(tk)
            t.true_positives += len(pairs)
            t.n_ignored_true += len(ik)
            t.n_ignored_pred += n_ignored

    def as_dict(self) -> dict[str, object]:
        return {
            "matching_rule": MATCHING_RULE,
            "n_images": self.n_images,
            "per_kind": {k: t.as_dict() for k, t in self.tallies.items()},
        }
