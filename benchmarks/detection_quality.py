"""Detection quality and speed on the shared data: ``python benchmarks/detection_quality.py``.

Quality: CBC Testing (VOC, BCCD images) and the TXL-PBC test split (YOLO), µm/px estimated per
image, matched with ``hemato_model.training.detection_eval.MATCHING_RULE``. Speed: seconds per megapixel of
``detect_cells`` on mosaics of real BCCD fields resampled to a slide's 0.25 µm/px (a 2048² tile,
4.2 MP) and at 1.0 µm/px (the coarse white-cell pass), all kinds vs. ``kinds=("wbc",)``, one core.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hemato_model.detection import detect_cells, estimate_mpp
from hemato_model.training.annotations import read_voc_dir, read_yolo_dir
from hemato_model.training.detection_eval import DetectionScores
from hematovision.core.datasets import BCCD_DIR, BCCD_MPP, CBC_DIR, TXL_DIR
from hematovision.core.settings import load_settings


def _quality(items: list) -> dict:
    scores = DetectionScores()
    for item in items:
        with Image.open(item.image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        cells = detect_cells(rgb, estimate_mpp(rgb))
        scores.add_image([(c.kind, c.bbox) for c in cells], [(b.kind, b.bbox) for b in item.boxes])
    return scores.as_dict()


def _mosaic(images: list[Path], mpp: float, side: int) -> np.ndarray:
    tiles = []
    for p in images:
        with Image.open(p) as im:
            w, h = im.size
            f = BCCD_MPP / mpp
            tiles.append(
                np.asarray(im.convert("RGB").resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX))
            )
    th, tw = tiles[0].shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    k = 0
    for y in range(0, side, th):
        for x in range(0, side, tw):
            t = tiles[k % len(tiles)]
            k += 1
            out[y : y + th, x : x + tw] = t[: side - y, : side - x]
    return out


def _seconds_per_mp(image: np.ndarray, mpp: float, kinds: tuple[str, ...], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        detect_cells(image, mpp, kinds=kinds)
        best = min(best, time.perf_counter() - t0)
    return best / (image.shape[0] * image.shape[1] / 1e6)


def main() -> None:
    root = Path(load_settings().data_root)
    bccd = root / BCCD_DIR / "BCCD" / "JPEGImages"
    report: dict = {}
    report["cbc_testing"] = _quality(read_voc_dir(root / CBC_DIR / "Testing", bccd))
    report["txl_pbc_test"] = _quality(read_yolo_dir(root / TXL_DIR, split="test"))
    sample = sorted(bccd.glob("*.jpg"))[:40]
    speed = {}
    for mpp, side in ((0.25, 2048), (1.0, 1024)):
        tile = _mosaic(sample, mpp, side)
        speed[f"{side}px_at_{mpp}mpp"] = {
            "all_kinds_s_per_mp": _seconds_per_mp(tile, mpp, ("wbc", "rbc", "platelet")),
            "wbc_only_s_per_mp": _seconds_per_mp(tile, mpp, ("wbc",)),
        }
    field = _mosaic(sample[:9], BCCD_MPP, 1920)  # native 0.071 µm/px camera fields, 3.7 MP
    speed["1920px_at_0.071mpp"] = {
        "all_kinds_s_per_mp": _seconds_per_mp(field, BCCD_MPP, ("wbc", "rbc", "platelet")),
        "wbc_only_s_per_mp": _seconds_per_mp(field, BCCD_MPP, ("wbc",)),
    }
    report["speed"] = speed
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
