"""Platelet detection on ``make-slide`` slides: recall, precision and CPU seconds per field, for the
learned platelet filter and the classical stain rule (issue 16, item 4).

For each slide given (``hematovision make-slide`` output, manifest beside it), ``--fields`` fields of
``--field-um`` µm are read at level 0 at random inside 0.7 of the smear ellipse's radii (the
monolayer, where the pipeline counts platelets), and every field is run through
``detect_cells(region, mpp, kinds=("rbc", "platelet"))`` (what the pipeline's count fields run) with
each platelet method. Detections are matched to the manifest's platelets whose centre lies in the
field as ``hematovision evaluate-detection`` matches boxes. CPU seconds are ``time.process_time()``
around the call (red cells included: the platelet step's own cost is the difference between methods).

Usage::

    python benchmarks/platelet_recall.py SLIDE.tiff [SLIDE.tiff ...] [--fields 12] [--field-um 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure(path: Path, n_fields: int, field_um: float, seed: int) -> dict[str, Any]:
    from hemato_model.detection import detect_cells
    from hemato_model.detection.detect import CLUMP_LABEL, PLATELET_METHODS
    from hemato_model.training.detection_eval import DetectionScores
    from hematovision.core.slides import open_slide

    doc = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    mpp = float(doc["mpp"])
    plt = np.array([c["bbox"] for c in doc["cells"] if c["kind"] == "platelet"], float).reshape(-1, 4)
    (cx, cy), (ax, ay) = doc["smear_area"]["center"], doc["smear_area"]["semi_axes"]
    del doc
    size = int(field_um / mpp)
    rng = np.random.default_rng(seed)
    scores = {m: DetectionScores() for m in PLATELET_METHODS}
    cpu = dict.fromkeys(PLATELET_METHODS, 0.0)
    clumps = dict.fromkeys(PLATELET_METHODS, 0)
    with open_slide(path) as slide:
        for _ in range(n_fields):
            r, a = 0.7 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            x0 = int(np.clip(cx + r * ax * np.cos(a) - size / 2, 0, slide.dimensions[0] - size))
            y0 = int(np.clip(cy + r * ay * np.sin(a) - size / 2, 0, slide.dimensions[1] - size))
            region = slide.read_region((x0, y0), 0, (size, size))
            ctr = (plt[:, :2] + plt[:, 2:]) / 2
            inside = (ctr[:, 0] >= x0) & (ctr[:, 0] < x0 + size) & (ctr[:, 1] >= y0) & (ctr[:, 1] < y0 + size)
            true = [("platelet", tuple(b - [x0, y0, x0, y0])) for b in plt[inside]]
            for m in PLATELET_METHODS:
                t = time.process_time()
                dets = detect_cells(region, mpp, kinds=("rbc", "platelet"), platelet_method=m)
                cpu[m] += time.process_time() - t
                pred = [(d.kind, d.bbox) for d in dets if d.kind == "platelet"]
                clumps[m] += sum(1 for d in dets if d.label == CLUMP_LABEL)
                scores[m].add_image(pred, true)
    out: dict[str, Any] = {"slide": path.name, "fields": n_fields, "field_um": field_um}
    for m in PLATELET_METHODS:
        t = scores[m].tallies["platelet"].as_dict()
        out[m] = {
            "precision": round(t["precision"] or 0.0, 4),
            "recall": round(t["recall"] or 0.0, 4),
            "n_true": t["n_true"],
            "n_pred": t["n_pred"],
            "clumps": clumps[m],
            "cpu_s_per_field": round(cpu[m] / n_fields, 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--fields", type=int, default=12)
    ap.add_argument("--field-um", type=float, default=150.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for p in args.slides:
        print(json.dumps(measure(p, args.fields, args.field_um, args.seed)))


if __name__ == "__main__":
    main()
