"""``hematovision detect`` and ``hematovision evaluate-detection``: classical cell detection.

Heavy imports (numpy, scikit-image, the detector) happen inside the commands so ``--help`` stays
fast. Every expected problem (missing file, not an image, no scale) ends as one line on stderr and
exit status 1 (2 for click's own usage errors), never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

KIND_CHOICES = ("wbc", "rbc", "platelet")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _read_rgb(path: Path) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        _fail(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        _fail(f"{path}: not a readable image ({exc.__class__.__name__})")


def _mpp_for(image: Any, mpp: float | None) -> tuple[float, str]:
    from hemato_model.detection import estimate_mpp

    if mpp is not None:
        return float(mpp), "given"
    try:
        return estimate_mpp(image), "estimated"
    except ValueError as exc:
        _fail(f"{exc}; give the scale with --mpp")
    raise AssertionError("unreachable")


@click.command("detect")
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="µm per pixel of IMAGE; estimated from red-cell size when not given.",
)
@click.option(
    "--kinds",
    "kinds",
    default="wbc,rbc,platelet",
    show_default=True,
    help="Comma-separated kinds to detect (wbc, rbc, platelet).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON.")
def detect(image: Path, mpp: float | None, kinds: str, as_json: bool) -> None:
    """Detect white cells, red cells and platelets in one field image (JPEG, PNG, TIFF...)."""
    from hemato_model.detection import detect_cells

    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = [k for k in wanted if k not in KIND_CHOICES]
    if bad or not wanted:
        _fail(f"unknown kind(s) {bad or kinds!r}; choose from {', '.join(KIND_CHOICES)}")
    rgb = _read_rgb(image)
    used, source = _mpp_for(rgb, mpp)
    try:
        cells = detect_cells(rgb, used, kinds=wanted)
    except ValueError as exc:
        _fail(f"{image}: {exc}")
    if as_json:
        payload = {
            "cells": [{"kind": c.kind, "bbox": list(c.bbox), "score": round(c.score, 4)} for c in cells],
            "mpp": used,
            "mpp_source": source,
        }
        click.echo(json.dumps(payload))
        return
    counts = {k: sum(c.kind == k for c in cells) for k in wanted}
    h, w = rgb.shape[:2]
    click.echo(f"{image.name}: {w}x{h} px at {used:.4f} µm/px ({source})")
    click.echo("  " + ", ".join(f"{k}: {n}" for k, n in counts.items()))


@click.command("evaluate-detection")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="VOC: folder with Annotations/ (or the Annotations folder). "
    "YOLO: folder with images/ and labels/ (or a labels folder with --images).",
)
@click.option("--format", "fmt", required=True, type=click.Choice(["voc", "yolo"]))
@click.option(
    "--images",
    "images_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Image folder when it is not beside the annotations (CBC: BCCD's JPEGImages).",
)
@click.option("--split", default=None, help="YOLO only: subfolder of images/ and labels/ (e.g. test for TXL-PBC).")
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="µm per pixel of every image; estimated per image when not given.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate_detection(
    data_dir: Path, fmt: str, images_dir: Path | None, split: str | None, mpp: float | None, as_json: bool
) -> None:
    """Score the detector against annotated boxes: per-kind precision, recall, count error."""
    import time

    from hemato_model.detection import detect_cells, estimate_mpp
    from hemato_model.training.annotations import AnnotationError, read_voc_dir, read_yolo_dir
    from hemato_model.training.detection_eval import DetectionScores

    try:
        if fmt == "voc":
            items = read_voc_dir(data_dir, images_dir)
        else:
            items = read_yolo_dir(data_dir, split=split, images_dir=images_dir)
    except AnnotationError as exc:
        _fail(str(exc))
    scores = DetectionScores()
    mpps: list[float] = []
    skipped: list[str] = []
    seconds = 0.0
    megapixels = 0.0
    with click.progressbar(items, label="detecting", file=sys.stderr, show_pos=True) as bar:
        for item in bar:
            rgb = _read_rgb(item.image_path)
            if mpp is not None:
                used = float(mpp)
            else:
                try:
                    used = estimate_mpp(rgb)
                except ValueError:
                    skipped.append(item.image_path.name)
                    continue
            mpps.append(used)
            t0 = time.perf_counter()
            cells = detect_cells(rgb, used)
            seconds += time.perf_counter() - t0
            megapixels += rgb.shape[0] * rgb.shape[1] / 1e6
            scores.add_image([(c.kind, c.bbox) for c in cells], [(b.kind, b.bbox) for b in item.boxes])
    result = scores.as_dict()
    result.update(
        {
            "data": str(data_dir),
            "format": fmt,
            "mpp_source": "given" if mpp is not None else "estimated",
            "mpp_median": float(sorted(mpps)[len(mpps) // 2]) if mpps else None,
            "skipped_no_scale": skipped,
            "seconds_per_megapixel": seconds / megapixels if megapixels else None,
        }
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['n_images']} images, matching: {result['matching_rule']}")

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}%"

    for kind, tally in scores.tallies.items():
        m = tally.as_dict()
        click.echo(
            f"  {kind:9s} precision {pct(m['precision'])}  recall {pct(m['recall'])}  "
            f"count error {pct(m['count_error'])}  ({m['n_pred']} found / {m['n_true']} true)"
        )


COMMANDS: list[click.Command] = [detect, evaluate_detection]
