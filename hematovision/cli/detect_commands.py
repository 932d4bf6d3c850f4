"""``hematovision detect`` and ``hematovision evaluate-detection``: cell detection and its scores.

White cells come from the classical detector (colour rules, the default) or the learned one
(``--detector learned`` or ``HEMATOVISION_WBC_DETECTOR=learned``: :mod:`hemato_model.detection.learned`);
red cells and platelets always come from the classical detector.

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
DETECTOR_CHOICES = ("classical", "learned")


def _detector_option(func: Any) -> Any:
    return click.option(
        "--detector",
        type=click.Choice(DETECTOR_CHOICES),
        default=None,
        help="White-cell detector (default: the wbc_detector setting, classical unless set).",
    )(func)


def _make_detector(choice: str | None) -> tuple[str, Any]:
    """``(name, detect(rgb, mpp, kinds) -> detections)`` for the chosen white-cell detector."""
    from hemato_model.detection import detect_cells
    from hematovision.core.settings import load_settings

    settings = load_settings()
    name = choice or settings.wbc_detector
    platelets = settings.platelet_detector
    if name == "classical":

        def run_classical(rgb: Any, mpp: float, kinds: tuple[str, ...] = KIND_CHOICES) -> list[Any]:
            return detect_cells(rgb, mpp, kinds=kinds, platelet_method=platelets)

        return name, run_classical
    from hemato_model.detection.learned import DetectorModelError, LearnedWbcDetector

    try:
        learned = LearnedWbcDetector.load(settings.wbc_detector_dir)
    except DetectorModelError as exc:
        _fail(str(exc))

    def run(rgb: Any, mpp: float, kinds: tuple[str, ...] = KIND_CHOICES) -> list[Any]:
        out = learned.detect(rgb, mpp) if "wbc" in kinds else []
        rest = tuple(k for k in kinds if k != "wbc")
        return out + (detect_cells(rgb, mpp, kinds=rest, platelet_method=platelets) if rest else [])

    return f"learned ({learned.version})", run


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
@_detector_option
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON.")
def detect(image: Path, mpp: float | None, kinds: str, detector: str | None, as_json: bool) -> None:
    """Detect white cells, red cells and platelets in one field image (JPEG, PNG, TIFF...)."""
    from hematovision.core.settings import load_settings

    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = [k for k in wanted if k not in KIND_CHOICES]
    if bad or not wanted:
        _fail(f"unknown kind(s) {bad or kinds!r}; choose from {', '.join(KIND_CHOICES)}")
    detector_name, detect_cells = _make_detector(detector)
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
            "wbc_detector": detector_name,
            "platelet_detector": load_settings().platelet_detector,
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
@click.option(
    "--split",
    default=None,
    help="YOLO only: subfolder of images/ and labels/ (e.g. test for TXL-PBC), or an entry of data.yaml. "
    "Without it, a data.yaml (given as --data, or in the --data folder) gives the split: its test entry, "
    "else val, else train.",
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="µm per pixel of every image; estimated per image when not given.",
)
@_detector_option
@click.option(
    "--border-margin-um",
    type=click.FloatRange(min=0),
    default=None,
    help="Annotated white cells within this many µm of the image edge are don't-care (neither found nor "
    "missed; the learned detector does not report such border cells). Default: every box counts.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate_detection(
    data_dir: Path,
    fmt: str,
    images_dir: Path | None,
    split: str | None,
    mpp: float | None,
    detector: str | None,
    border_margin_um: float | None,
    as_json: bool,
) -> None:
    """Score the detector against annotated boxes: per-kind precision, recall, count error."""
    import time

    from hemato_model.detection import estimate_mpp
    from hemato_model.detection.border import margin_px, split_border
    from hemato_model.training.annotations import (
        AnnotationError,
        read_voc_dir,
        read_yolo_dir,
        read_yolo_split,
    )
    from hemato_model.training.detection_eval import DetectionScores
    from hematovision.core.settings import load_settings

    data_yaml = data_dir if data_dir.suffix.lower() in (".yaml", ".yml") else data_dir / "data.yaml"
    used_split = split
    try:
        if fmt == "voc":
            items = read_voc_dir(data_dir, images_dir)
        elif images_dir is None and data_yaml.is_file() and (split is None or data_dir == data_yaml):
            used_split, items = read_yolo_split(data_yaml, split)
        elif data_dir == data_yaml:
            raise AnnotationError(f"YOLO data file not found: {data_dir}")
        else:
            items = read_yolo_dir(data_dir, split=split, images_dir=images_dir)
    except AnnotationError as exc:
        _fail(str(exc))
    detector_name, detect_cells = _make_detector(detector)
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
            true = [(b.kind, b.bbox) for b in item.boxes if b.kind != "wbc"]
            wbc, cut = [b.bbox for b in item.boxes if b.kind == "wbc"], []
            if border_margin_um is not None:
                wbc, cut = split_border(wbc, rgb.shape[:2], margin_px(border_margin_um, used))
            true += [("wbc", b) for b in wbc]
            scores.add_image([(c.kind, c.bbox) for c in cells], true, [("wbc", b) for b in cut])
    result = scores.as_dict()
    result.update(
        {
            "data": str(data_dir),
            "format": fmt,
            "split": used_split,
            "wbc_detector": detector_name,
            "platelet_detector": load_settings().platelet_detector,
            "mpp_source": "given" if mpp is not None else "estimated",
            "border_margin_um": border_margin_um,
            "mpp_median": float(sorted(mpps)[len(mpps) // 2]) if mpps else None,
            "skipped_no_scale": skipped,
            "seconds_per_megapixel": seconds / megapixels if megapixels else None,
        }
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    split_note = f" ({used_split} split)" if used_split else ""
    click.echo(f"{result['n_images']} images{split_note}, white cells by {detector_name}")
    click.echo(f"matching: {result['matching_rule']}")

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}%"

    for kind, tally in scores.tallies.items():
        m = tally.as_dict()
        click.echo(
            f"  {kind:9s} precision {pct(m['precision'])}  recall {pct(m['recall'])}  "
            f"count error {pct(m['count_error'])}  ({m['n_pred']} found / {m['n_true']} true)"
        )


COMMANDS: list[click.Command] = [detect, evaluate_detection]
