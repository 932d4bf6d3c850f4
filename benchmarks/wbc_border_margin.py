"""How far from the field's edge white-cell boxes end, on the val splits (µm); prints a table.

For choosing the border margin (:mod:`hemato_model.detection.border`): annotated boxes of cut
cells (within 2 px of the edge) and a detector's boxes on them, on whole cells, and false boxes.
Val splits of CBC, Raabin and BCD only; scales from the LOSO script's cache (``--work-dir``).

    PYTHONPATH=. nice -n 5 python benchmarks/wbc_border_margin.py --model hemato_model/models/wbc-detector-v1 \\
        --threshold 0.25 --work-dir /tmp/wbcdet-border
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hemato_model.detection.learned import LearnedWbcDetector
from hemato_model.training import wbc_detector as wd
from hemato_model.training.detection_eval import match_boxes

EDGES_UM = [-1e9, 0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 1e9]
LABELS = ["<0", "0-.25", ".25-.5", ".5-.75", ".75-1", "1-1.5", "1.5-2", "2-3", ">3"]


def distance_um(box: tuple[float, ...], hw: tuple[int, int], mpp: float) -> float:
    """Smallest distance of ``box`` to the field's edge in µm (negative: it runs past the edge)."""
    h, w = hw
    return float(min(box[0], box[1], w - box[2], h - box[3])) * mpp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--work-dir", type=Path, required=True, help="the LOSO script's cache (mpp_n*.json)")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threshold", type=float, default=0.25)
    args = ap.parse_args(argv)
    samples = wd.load_samples(args.data_root)
    mpps = json.loads((args.work_dir / f"mpp_n{len(samples)}.json").read_text())["mpps"]
    det = LearnedWbcDetector.load(args.model)
    val = [i for i, s in enumerate(samples) if s.split == "val"]
    found = wd.predict_boxes(det.model, [samples[i] for i in val], [mpps[i] for i in val], 0.05)
    kinds = ("gt", "pred_on_cut_gt", "pred_on_whole_gt", "pred_unmatched")
    rows: dict[str, dict[str, list[float]]] = {src: {k: [] for k in kinds} for src in wd.SOURCES}
    for i, f in zip(val, found, strict=True):
        s, m = samples[i], mpps[i]
        pred = [b for b, p in f if p >= args.threshold]
        gt = list(s.wbc)
        r = rows[s.source]
        r["gt"] += [distance_um(g, s.hw, m) for g in gt]
        pairs = dict(match_boxes(pred, gt))
        for k, b in enumerate(pred):
            d = distance_um(b, s.hw, m)
            if k not in pairs:
                r["pred_unmatched"].append(d)
            elif distance_um(gt[pairs[k]], s.hw, m) <= 2 * m:  # the annotated box ends within 2 px
                r["pred_on_cut_gt"].append(d)
            else:
                r["pred_on_whole_gt"].append(d)
    print(f"distance of box to the edge, µm; {args.model.name} at threshold {args.threshold}; bins {LABELS}")
    for src, r in rows.items():
        for k, v in r.items():
            hist = np.histogram(np.asarray(v, float), EDGES_UM)[0]
            print(f"{src:7s} {k:17s} n={len(v):4d}", " ".join(f"{x:4d}" for x in hist))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
