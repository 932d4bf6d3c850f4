"""Reviewed white cells exported as a training data set (``hematovision dataset export``).

Every morning a lab produces expert labels: each white cell a technologist reclassified, and every
white cell of a signed-off slide (signing confirms the labels the technologist left). This module
writes them as an image folder a model can be trained on (:mod:`hemato_model.training.lab_finetune`):

- one folder per class, named for the reviewer's final label, review-only classes included
  (``blast``, ``smudge``, ...); ``unidentified`` cells are not exported (they have no label);
- each crop is the model's physical crop (``crop_um`` µm square around the cell centre) at the
  slide's own resolution (``round(crop_um / mpp)`` px, PNG, lossless), cut again from the slide file
  (:mod:`hematovision.service.cell_crops`);
- ``manifest.csv``: crop file, class, the model's original label and probability, whether a person
  changed it, the slide as a salted SHA-256 (never its id or file name, which often carry the
  accession), the reviewer's role, sign-off and review times, scale, and the stain/scanner fields
  the prepare stage measured when known;
- ``export.json``: what was asked for and the counts.

No patient identifier (patient id, accession, assigning authority, birth date, age, sex, file name)
is read into the export; the salt is random per export unless the caller gives one, so the slide
hashes group cells by slide (for a split by slide) without linking them back. The export is written
to ``DIR.partial`` and renamed at the end, so a failed export leaves no half-written ``DIR``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from hematovision.core.results import UNIDENTIFIED, WBC
from hematovision.service.cell_crops import SlideError, cut_cells
from hematovision.store.models import Cell, CellReview, ModelVersion, Signature, Slide, User

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SUMMARY = "export.json"
MANIFEST_COLUMNS = [
    "file",
    "class",
    "model_label",
    "model_probability",
    "reclassified",
    "slide",
    "reviewer_role",
    "signed_off_at",
    "reviewed_at",
    "model",
    "mpp",
    "mpp_source",
    "crop_um",
    "crop_px",
    "scanner",
    "stain_rbc_od",
    "stain_glass_brightness",
    "stain_rbc_od_chroma",
    "stain_nucleus_od_chroma",
    "focus",
]
_SAFE_CLASS = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,49}$")


class ExportError(ValueError):
    """The export cannot be made (the output folder is not empty, nothing to export, ...)."""


@dataclass
class ExportResult:
    """What was written: counts per class, slides, cells skipped (slide file unreadable)."""

    out_dir: Path
    per_class: dict[str, int] = field(default_factory=dict)
    n_cells: int = 0
    n_slides: int = 0
    skipped_slides: int = 0
    skipped_cells: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "n_cells": self.n_cells,
            "n_slides": self.n_slides,
            "per_class": dict(sorted(self.per_class.items())),
            "skipped_slides": self.skipped_slides,
            "skipped_cells": self.skipped_cells,
        }


def slide_hash(slide_id: str, salt: str) -> str:
    """The salted SHA-256 that stands for a slide in the export (first 16 hex digits)."""
    return hashlib.sha256(f"{salt}:{slide_id}".encode()).hexdigest()[:16]


def check_out_dir(out_dir: Path) -> None:
    """Refuse an existing file or non-empty folder (an export never mixes with other files)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} exists and is not an empty folder: give a new folder")


def _iso(when: datetime | None) -> str:
    return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z" if when else ""


def _role_of_actor(session: Session, actor: str, cache: dict[str, str]) -> str:
    """A reviewer's role from the audit name (``user:<name>`` -> their role; ``key:<name>`` -> ``api_key``)."""
    if actor not in cache:
        kind, _, name = actor.partition(":")
        role = "api_key" if kind == "key" else "unknown"
        if kind == "user":
            found = session.execute(select(User.role).where(User.username == name)).scalar_one_or_none()
            role = found or "unknown"
        cache[actor] = role
    return cache[actor]


def _vec(v: Any) -> str:
    return ";".join(f"{float(x):g}" for x in v) if isinstance(v, list) else ""


def _slide_fields(slide: Slide) -> dict[str, Any]:
    quality = (slide.report or {}).get("quality") or {}
    stain = quality.get("stain") or {}
    return {
        "mpp": f"{slide.mpp:g}" if slide.mpp else "",
        "mpp_source": slide.mpp_source or "",
        "scanner": slide.format or "",
        "stain_rbc_od": "" if stain.get("rbc_od") is None else f"{float(stain['rbc_od']):g}",
        "stain_glass_brightness": "" if stain.get("glass_brightness") is None else f"{stain['glass_brightness']:g}",
        "stain_rbc_od_chroma": _vec(stain.get("rbc_od_chroma")),
        "stain_nucleus_od_chroma": _vec(stain.get("nucleus_od_chroma")),
        "focus": "" if quality.get("focus") is None else f"{float(quality['focus']):g}",
    }


def _selected_slides(
    session: Session, since: datetime | None, signed_only: bool
) -> list[tuple[Slide, Signature | None]]:
    """Signed-off slides (signed since ``since``) and, unless ``signed_only``, unsigned slides with
    reclassifications (made since ``since``), oldest first."""
    q = select(Slide).where(Slide.verified_at.is_not(None))
    if since is not None:
        q = q.where(Slide.verified_at >= since)
    rows: list[tuple[Slide, Signature | None]] = []
    for slide in session.execute(q.order_by(Slide.verified_at)).scalars():
        # The releasing signature: the latest (a pathologist's second signature, or after an amendment).
        latest = select(Signature).where(Signature.slide_id == slide.id)
        rows.append(
            (slide, session.execute(latest.order_by(Signature.signed_at.desc(), Signature.id.desc())).scalars().first())
        )
    if not signed_only:
        reviewed = select(CellReview.slide_id).distinct()
        if since is not None:
            reviewed = reviewed.where(CellReview.at >= since)
        unsigned = select(Slide).where(Slide.verified_at.is_(None), Slide.id.in_(reviewed)).order_by(Slide.created_at)
        rows += [(s, None) for s in session.execute(unsigned).scalars()]
    return rows


def export_reviewed_cells(
    session: Session,
    out_dir: Path,
    *,
    crop_um: float,
    since: datetime | None = None,
    signed_only: bool = False,
    salt: str | None = None,
) -> ExportResult:
    """Write the reviewed white cells to ``out_dir`` (see the module docstring).

    Args:
        session: a read session.
        out_dir: a new (or empty) folder.
        crop_um: the model's physical crop side (``model.json``'s ``crop_um``).
        since: only slides signed off (or cells reviewed, for unsigned slides) at or after this UTC time.
        signed_only: only signed-off slides (whose every white cell a person confirmed).
        salt: the slide-hash salt (random per export when not given).

    Raises:
        ExportError: ``out_dir`` is not empty, or no reviewed cell matches.
    """
    check_out_dir(out_dir)
    salt = salt or secrets.token_hex(16)
    work = out_dir.with_name(out_dir.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    result = ExportResult(out_dir=out_dir)
    roles: dict[str, str] = {}
    models = {m.id: f"{m.name} {m.version}" for m in session.execute(select(ModelVersion)).scalars()}
    try:
        with (work / MANIFEST).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for slide, signature in _selected_slides(session, since, signed_only):
                written = _export_slide(session, slide, signature, work, writer, crop_um, salt, roles, models, since)
                if written is None:
                    result.skipped_slides += 1
                    continue
                if written:
                    result.n_slides += 1
                for cls, n in written.items():
                    result.per_class[cls] = result.per_class.get(cls, 0) + n
                    result.n_cells += n
        if result.n_cells == 0:
            raise ExportError("no reviewed white cells match (sign slides off or reclassify cells first)")
        summary = {
            "kind": "hematovision reviewed cells",
            "created_at": _iso(datetime.now(UTC)),
            "since": _iso(since) or None,
            "signed_only": signed_only,
            "crop_um": crop_um,
            "crop": "crop_um µm square around the cell centre at the slide's own µm/px (manifest mpp, crop_px)",
            "slide_hash": "first 16 hex digits of SHA-256(salt:slide id); the salt is not stored",
            **{k: v for k, v in result.to_dict().items() if k != "out_dir"},
        }
        (work / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("exported %d cells of %d slides to %s", result.n_cells, result.n_slides, out_dir)
    return result


def _export_slide(
    session: Session,
    slide: Slide,
    signature: Signature | None,
    work: Path,
    writer: csv.DictWriter[str],
    crop_um: float,
    salt: str,
    roles: dict[str, str],
    models: dict[int, str],
    since: datetime | None,
) -> dict[str, int] | None:
    """Write one slide's cells; returns the counts per class, or None when its file is unreadable."""
    reviews = session.execute(
        select(CellReview).where(CellReview.slide_id == slide.id).order_by(CellReview.at, CellReview.id)
    ).scalars()
    first_from: dict[int, str | None] = {}
    last_review: dict[int, CellReview] = {}
    for r in reviews:
        first_from.setdefault(r.cell_id, r.from_label)
        last_review[r.cell_id] = r
    q = select(Cell).where(Cell.slide_id == slide.id, Cell.kind == WBC, Cell.label.is_not(None))
    q = q.where(Cell.label != UNIDENTIFIED)
    if signature is None:  # unsigned: only the cells a person reclassified (in the window)
        ids = [cid for cid, r in last_review.items() if since is None or r.at >= since]
        q = q.where(Cell.id.in_(ids))
    cells = list(session.execute(q.order_by(Cell.id)).scalars())
    if not cells:
        return {}
    h = slide_hash(slide.id, salt)
    fields = _slide_fields(slide)
    counts: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    try:
        for i, (cell, crop) in enumerate(cut_cells(slide, cells, crop_um)):
            cls = str(cell.label)
            if not _SAFE_CLASS.match(cls):
                log.warning("label %r is not a folder name; cell skipped", cls)
                continue
            rel = f"{cls}/{h}_{i:05d}.png"
            (work / cls).mkdir(exist_ok=True)
            Image.fromarray(crop).save(work / rel)  # no text chunks: pixels only
            review = last_review.get(cell.id)
            model_label = first_from.get(cell.id, cell.label)
            actor_role = _role_of_actor(session, review.actor, roles) if review else ""
            rows.append(
                {
                    "file": rel,
                    "class": cls,
                    "model_label": model_label or UNIDENTIFIED,
                    "model_probability": "" if cell.probability is None else f"{cell.probability:.4f}",
                    "reclassified": int(cell.id in first_from),
                    "slide": h,
                    "reviewer_role": signature.role if signature is not None else actor_role,
                    "signed_off_at": _iso(signature.signed_at if signature is not None else slide.verified_at),
                    "reviewed_at": _iso(review.at) if review else "",
                    "model": models.get(cell.model_version_id or -1, ""),
                    "crop_um": f"{crop_um:g}",
                    "crop_px": crop.shape[0],
                    **fields,
                }
            )
            counts[cls] += 1
    except SlideError as exc:
        log.warning("slide %s skipped: %s", h, exc)
        for cls in counts:  # remove what this slide already wrote
            for f in (work / cls).glob(f"{h}_*.png"):
                f.unlink()
        return None
    writer.writerows(rows)
    return dict(counts)


__all__ = ["ExportError", "ExportResult", "check_out_dir", "export_reviewed_cells", "slide_hash"]
