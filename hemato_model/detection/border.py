"""Border-cut cells: the one rule for white-cell boxes at a field's edge.

A box that reaches within ``margin`` of the field's edge is a **border cell**: part of the cell may
be outside the field, so it cannot be classified reliably (a white cell is named from its whole
nucleus and cytoplasm). The learned white-cell detector does not report border cells on a field;
on a whole slide the overlapping tiles see such a cell whole in a neighbour. Scoring treats an
annotated border cell as *don't care* (COCO's "ignore" semantics, applied in
:mod:`hemato_model.training.detection_eval`): a detection matched to it is neither a true nor a
false positive, and if no detection matches it, it is not a miss. Training masks the heat-map
loss around annotated border cells and along the field's edge
(:func:`hemato_model.training.wbc_detector.make_target`), so the head is taught neither that a
cut cell is background (most are unannotated in Raabin) nor that it is a cell (many are
annotated in CBC and BCD).

Why a margin and not "touches": annotators' boxes of cut cells end at 0–2 px from the edge (VOC
boxes are 1-based) and a detector's regressed box for a cut cell mostly runs past the edge but
sometimes stops short of it (on the val splits 22 of 28 beyond, 25 within 0.5 µm). The margin is
in µm (``EDGE_MARGIN_UM``, 0.5 µm = 5–9 px on these cameras, 1.25 px at the detector's 0.4 µm/px)
so one value serves every camera; how it was chosen (val splits only): docs/validation.md,
"Border-cut cells (2026-12-01, third session)".

Sources and the sizes of their fields: CBC/BCCD 640×480, Raabin 575², BCD 416²; in all three a
field is a close-up, so a fifth to two fifths of CBC and BCD white-cell boxes are border cells.
"""

from __future__ import annotations

from collections.abc import Sequence

#: A box within this many µm of the field's edge is a border cell (docs/validation.md,
#: "Border-cut cells (2026-12-01, third session)").
EDGE_MARGIN_UM = 0.5

BBox = Sequence[float]


def touches_edge(box: BBox, hw: tuple[int, int], margin_px: float) -> bool:
    """True when ``box`` (x0, y0, x1, y1 in pixels) reaches within ``margin_px`` of the edge of a
    field of height and width ``hw``, or beyond it."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    h, w = hw
    return x0 <= margin_px or y0 <= margin_px or x1 >= w - margin_px or y1 >= h - margin_px


def margin_px(margin_um: float, mpp: float) -> float:
    """``margin_um`` in pixels of a field at ``mpp`` µm/px."""
    if not (mpp > 0 and margin_um >= 0):
        raise ValueError(f"need mpp > 0 and margin_um >= 0, got {mpp!r}, {margin_um!r}")
    return float(margin_um) / float(mpp)


def split_border(boxes: Sequence[BBox], hw: tuple[int, int], margin_px: float) -> tuple[list[BBox], list[BBox]]:
    """``(whole, border)``: the boxes that stay clear of the edge and the border cells."""
    whole: list[BBox] = []
    border: list[BBox] = []
    for b in boxes:
        (border if touches_edge(b, hw, margin_px) else whole).append(b)
    return whole, border
