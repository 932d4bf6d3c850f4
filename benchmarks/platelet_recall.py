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


def measure(path: Path, n_fields: int, field_um: float, seed: int) -> dict[str, Any]:
    from hemato_model.detection import detect_cells
    from hemato_model.detection.detect import CLUMP_LABEL, PLATELET_METHODS
    from hemato_model.training.detection_eval import DetectionScores
    from hemato_model.training.platelet_filter import slide_fields

    scores = {m: DetectionScores() for m in PLATELET_METHODS}
    cpu = dict.fromkeys(PLATELET_METHODS, 0.0)
    clumps = dict.fromkeys(PLATELET_METHODS, 0)
    for _, region, mpp, boxes in slide_fields(path, n_fields, field_um, seed):
        true = [("platelet", b) for b in boxes]
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
