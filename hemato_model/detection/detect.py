"""Detection of every kind in one field: the public entry point of :mod:`hemato_model.detection`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hemato_model.detection.platelet_candidates import Candidates, clump_rule, find_candidates, is_clump
from hemato_model.detection.platelets import find_platelets
from hemato_model.detection.red_cells import RedCellShape, find_red_cells
from hemato_model.detection.stain import StainField, check_image, stain_field
from hemato_model.detection.white_cells import NucleusRule, find_white_cells
from hematovision.core.results import PLATELET_CLUMP

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("wbc", "rbc", "platelet")
#: How platelets are found: ``"learned"`` (loose candidates scored by the shipped platelet filter,
#: :mod:`hemato_model.detection.platelet_filter`; clumps reported as clumps) or ``"classical"``
#: (the stain rule of :mod:`hemato_model.detection.platelets`).
PLATELET_METHODS: tuple[str, ...] = ("learned", "classical")
#: The default is the learned filter: recall 0.96 on CBC Testing and 0.99 on make-slide fields
#: (the classical rule: 0.75 and 0.38), and platelet estimates within 6 % of the placed density on
#: make-slide slides (classical: 58-81 % low); its precision against CBC's boxes is 0.66
#: (docs/validation.md, "Spread sampling and estimates"). ``platelet_detector = classical`` keeps the rule.
DEFAULT_PLATELET_METHOD = "learned"
#: The label a platelet detection carries when it is a clump of platelets.
CLUMP_LABEL = PLATELET_CLUMP
#: Platelet boxes are the stained core grown by this margin (µm): ~ the platelet's outline.
PLATELET_PAD_UM = 0.5

#: Working resolutions, µm/px (all kinds / white cells only).
WORK_MPP = 0.4
WORK_MPP_WBC_ONLY = 0.8
#: The white-cell rule of the candidate pass on a coarse pyramid level (:func:`wbc_candidates`).
#: Slides store their levels as JPEG with 4:2:0 chroma: on a 1 µm/px level the colour difference
#: that makes the nuclear stain is sampled every 2 µm, so a small, dense nucleus (a pyknotic
#: erythroblast's, 3-5 µm) mixes its chroma with the red cells around it while its darkness (luma)
#: stays: its stain/OD ratio falls under ``NUCLEUS_MIN_CHROMA`` (0.5), and its stained area and
#: contrast shrink. Tuned on a synthetic slide of 550 PBC erythroblasts at 0.25 µm/px, candidates
#: at 1 µm/px: 22 missed with the full rule, 3 with the ratio at 0.4, which let no candidate of
#: 20 µm² or more through away from a white cell (0.3 did: dark overlapping red cells). Dense
#: groups count from 5 µm² and contrast 2 (erythroblasts with 3 µm nuclei give 12-15 µm² at
#: contrast 2.1-2.8 there). Candidates are confirmed at level 0 with the full rule, so a looser
#: screen costs only the reads of the windows it rejects (docs/validation.md, "Whole-slide
#: detection recall").
CANDIDATE_RULE = NucleusRule(min_chroma=0.4, min_dense_nucleus_um2=5.0, dense_contrast=2.0)


@dataclass(frozen=True)
class Detection:
    """One detected cell.

    Attributes:
        kind: ``"wbc"``, ``"rbc"`` or ``"platelet"``.
        bbox: ``(x0, y0, x1, y1)`` in pixels of the image passed in; ``x1``/``y1`` exclusive.
        score: heuristic confidence in 0..1 (the platelet filter's score for learned platelets).
        label: ``"platelet_clump"`` for a platelet detection that is a clump, else ``None``.
    """

    kind: str
    bbox: tuple[int, int, int, int]
    score: float
    #: red cells: the segment's centroid in pixels of the image passed in (None for other kinds)
    centroid: tuple[float, float] | None = None
    #: red cells: the segment against its neighbours (:class:`~hemato_model.detection.red_cells.RedCellShape`,
    #: its centroid in work pixels; ``centroid`` above is the same point in image pixels)
    shape: RedCellShape | None = None
    #: platelets: ``platelet_clump`` for a clump (None otherwise)
    label: str | None = None

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


def to_input(box: Sequence[float], scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0 = int(np.clip(np.floor(box[0] * scale), 0, width - 1))
    y0 = int(np.clip(np.floor(box[1] * scale), 0, height - 1))
    x1 = int(np.clip(np.ceil(box[2] * scale), x0 + 1, width))
    y1 = int(np.clip(np.ceil(box[3] * scale), y0 + 1, height))
    return (x0, y0, x1, y1)


def detect_cells(
    image: np.ndarray, mpp: float, kinds: Iterable[str] = KINDS, platelet_method: str = DEFAULT_PLATELET_METHOD
) -> list[Detection]:
    """Detect white cells, red cells and platelets in one RGB smear field.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mpp: µm per pixel of ``image`` (any level of a pyramid; sizes are physical).
        kinds: which kinds to return. ``("wbc",)`` works at 0.8 µm/px and skips the red-cell
            watershed, for a fast candidate pass.
        platelet_method: one of ``PLATELET_METHODS``.

    Returns:
        Detections, white cells first, then platelets, then red cells; boxes in ``image`` pixels.

    Raises:
        ValueError: on a non-RGB image, a non-positive ``mpp``, an unknown kind or platelet method.
    """
    arr = check_image(image)
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    wanted = tuple(kinds)
    unknown = set(wanted) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown cell kind(s) {sorted(unknown)}; expected some of {KINDS}")
    if platelet_method not in PLATELET_METHODS:
        raise ValueError(f"unknown platelet method {platelet_method!r}; expected one of {PLATELET_METHODS}")
    work = WORK_MPP_WBC_ONLY if set(wanted) <= {"wbc"} else WORK_MPP
    if mpp > 2 * WORK_MPP and set(wanted) & {"rbc", "platelet"}:
        logger.warning(
            "%.2f µm/px is too coarse to split red cells or see platelets; use a level finer than %.1f µm/px for them",
            mpp,
            2 * WORK_MPP,
        )
    field = stain_field(arr, float(mpp), work)
    height, width = arr.shape[:2]
    out: list[Detection] = []
    wbc, nuclei = find_white_cells(field)
    wbc_boxes = [b for b, _ in wbc]
    if "wbc" in wanted:
        out += [Detection("wbc", to_input(b, field.scale, width, height), s) for b, s in wbc]
    if "platelet" in wanted and platelet_method == "classical":
        out += [
            Detection("platelet", to_input(b, field.scale, width, height), s)
            for b, s in find_platelets(field, wbc_boxes)
        ]
    elif "platelet" in wanted:
        out += learned_platelets(field, wbc_boxes, nuclei, width, height)
    if "rbc" in wanted:
        out += [
            Detection(
                "rbc",
                to_input(b, field.scale, width, height),
                s,
                ((shape.centroid[0] + 0.5) * field.scale - 0.5, (shape.centroid[1] + 0.5) * field.scale - 0.5),
                shape,
            )
            for b, s, shape in find_red_cells(field, wbc_boxes, nuclei)
        ]
    return out


def _candidate_boxes(field: StainField, cands: Candidates, width: int, height: int) -> list[tuple[int, int, int, int]]:
    pad = field.px(PLATELET_PAD_UM)
    return [to_input([b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad], field.scale, width, height) for b in cands.boxes]


def learned_platelets(
    field: StainField, wbc_boxes: Sequence[Sequence[float]], nuclei: np.ndarray, width: int, height: int
) -> list[Detection]:
    """Platelets and platelet clumps: loose candidates the shipped platelet filter keeps."""
    from hemato_model.detection.platelet_filter import load_filter

    cands = find_candidates(field, wbc_boxes, nuclei)
    if not len(cands.boxes):
        return []
    model = load_filter()
    scores = model.scores(cands.features)
    clump = is_clump(cands.areas_um2, cands.n_peaks)
    keep = (scores >= model.threshold) | clump_rule(cands)
    boxes = _candidate_boxes(field, cands, width, height)
    return [
        Detection("platelet", boxes[i], float(scores[i]), label=CLUMP_LABEL if clump[i] else None)
        for i in np.nonzero(keep)[0]
    ]


def platelet_candidates_in(image: np.ndarray, mpp: float) -> tuple[list[tuple[int, int, int, int]], Candidates]:
    """The platelet candidates of one field, boxes in ``image`` pixels (for training the filter)."""
    arr = check_image(image)
    field = stain_field(arr, float(mpp), WORK_MPP)
    wbc, nuclei = find_white_cells(field)
    cands = find_candidates(field, [b for b, _ in wbc], nuclei)
    return _candidate_boxes(field, cands, arr.shape[1], arr.shape[0]), cands


def wbc_candidates(image: np.ndarray, mpp: float) -> list[Detection]:
    """White-cell candidates on a coarse pyramid level (~1 µm/px), to be confirmed at full resolution.

    The white-cell rule of :func:`detect_cells`, loosened (``CANDIDATE_RULE``): a screen that must
    not lose a cell; what it lets through wrongly is dropped when the level-0 window around it
    finds no white cell.

    Raises:
        ValueError: on a non-RGB image or a non-positive ``mpp``.
    """
    arr = check_image(image)
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    field = stain_field(arr, float(mpp), WORK_MPP_WBC_ONLY)
    height, width = arr.shape[:2]
    wbc, _ = find_white_cells(field, CANDIDATE_RULE)
    return [Detection("wbc", to_input(b, field.scale, width, height), s) for b, s in wbc]
