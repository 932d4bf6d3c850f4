"""What a candidate model would change on the lab's last signed-off slides (``validate-model --slides N``).

Each slide's white cells are cut again from the slide file (:mod:`hematovision.service.cell_crops`),
classified by the current and by the candidate model, and summarised with the slide's other cells,
patient context and quality measurements by the one summariser the worker and the review use
(:func:`hematovision.service.slide_results.summarise_cells`, i.e. the rules of
:mod:`hematovision.core.flags`). The flags each model would raise are compared with each other and
with the flags of the signed-off (reviewed) labels. Nothing is written.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from hemato_model.classifier import UNIDENTIFIED, Classifier
from hematovision.core.results import WBC
from hematovision.service.cell_crops import SlideError, cut_cells, slide_mpp
from hematovision.service.slide_results import summarise_cells
from hematovision.service.submission import order_of
from hematovision.store.models import Cell, Slide

log = logging.getLogger(__name__)


def _codes(summary: dict[str, Any]) -> list[str]:
    return sorted({f["code"] for f in summary["flags"]})


def _flags(ctx: dict[str, Any], labels: list[str | None], classes: list[str]) -> list[str]:
    """The flag codes of a slide whose white cells have ``labels`` (its other cells as stored)."""
    cells = [*ctx["others"], *((WBC, lab) for lab in labels)]
    summary = summarise_cells(cells, classes, patient=ctx["patient"], rules=ctx["rules"], quality=ctx["quality"])
    return _codes(summary)


def _classes(clf: Classifier, slide: Slide) -> list[str]:
    differential = (slide.report or {}).get("differential", {})
    return list(dict.fromkeys([*clf.classes, *(k for k in differential if k != UNIDENTIFIED)]))


def _labels(clf: Classifier, crops: np.ndarray, mpp: float | None) -> list[str | None]:
    if len(crops) == 0:
        return []
    return [None if lab == UNIDENTIFIED else lab for lab, _ in clf.classify(crops, mpp=mpp)]


def slide_flag_changes(
    session: Session, current: Classifier, candidate: Classifier, n_slides: int, rules: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per slide (the last ``n_slides`` signed off, newest first): ``{"slide", "signed", "current",
    "candidate"}`` flag codes; slides whose file cannot be read are listed with ``"skipped"``."""
    if current.crop_um != candidate.crop_um:
        raise ValueError("the two models cut crops of different sizes; compare them on folders only")
    slides = (
        session.execute(
            select(Slide).where(Slide.verified_at.is_not(None)).order_by(Slide.verified_at.desc()).limit(n_slides)
        )
        .scalars()
        .all()
    )
    out: list[dict[str, Any]] = []
    for slide in slides:
        cells = list(session.execute(select(Cell).where(Cell.slide_id == slide.id).order_by(Cell.id)).scalars())
        wbc = [c for c in cells if c.kind == WBC]
        try:
            crops = (
                np.stack(
                    [
                        np.asarray(Image.fromarray(c).resize((current.input_px,) * 2, Image.Resampling.BILINEAR))
                        for _, c in cut_cells(slide, wbc, current.crop_um)
                    ]
                )
                if wbc
                else np.zeros((0, current.input_px, current.input_px, 3), np.uint8)
            )
        except SlideError as exc:
            log.warning("slide %s skipped: %s", slide.id, exc)
            out.append({"slide": slide.id, "skipped": str(exc), "signed": [], "current": [], "candidate": []})
            continue
        ctx = {
            "others": [(c.kind, c.label) for c in cells if c.kind != WBC],
            "patient": order_of(slide).context(),
            "quality": (slide.report or {}).get("quality"),
            "rules": rules,
        }

        out.append(
            {
                "slide": slide.id,
                "signed": _flags(ctx, [c.label for c in wbc], _classes(current, slide)),
                "current": _flags(ctx, _labels(current, crops, slide_mpp(slide)), _classes(current, slide)),
                "candidate": _flags(ctx, _labels(candidate, crops, slide_mpp(slide)), _classes(candidate, slide)),
            }
        )
    return out
