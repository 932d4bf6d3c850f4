"""Peak memory of a whole-smear census on a large generated slide (issue 16: ≤ 1.5 GB for 80,000² px).

    python benchmarks/census_memory.py --size 80000 --wbc 4800 --work-dir var/bench

Makes the slide once (``hematovision.devtools.throughput.ensure_slide``, reused while its parameters
match), then runs each mode in a fresh process, so the peak resident set (``ru_maxrss`` of that
process) is the census's own, not the slide generator's:

- ``one_process``: ``analyze_slide`` with the shipped classifier (``hematovision process --census``):
  crops are classified a batch at a time and dropped;
- ``differential``: the same process for the 200-cell differential (spread sampling, no census);
- ``staged_prepare``: the ``prepare`` stage's ``prepare_slide`` with the on-disk ``CropSpool``
  (crops written a batch at a time), then the ``classify`` stage reading them back a chunk at a time.

Prints one JSON object: per mode the peak RSS (MiB), seconds, white cells and crop files.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _one_process(slide_path: str, model_dir: str, census: bool = True) -> dict[str, Any]:
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.slides import open_slide

    classifier = load_classifier(Path(model_dir))
    t = time.perf_counter()
    with open_slide(slide_path) as slide:
        analysis = analyze_slide(slide, classifier, PipelineParams(census=census))
    wbc = [c for c in analysis.cells if c.kind == "wbc"]
    return {
        "seconds": round(time.perf_counter() - t, 1),
        "wbc": len(wbc),
        "wbc_labelled": sum(1 for c in wbc if c.label),
        "rbc_counted": analysis.counts()["rbc"],
        "timings_s": {k: round(v, 1) for k, v in analysis.timings_s.items()},
    }


def _staged_prepare(slide_path: str, model_dir: str) -> dict[str, Any]:
    import numpy as np

    from hemato_model.classifier import load_classifier, read_model_spec
    from hemato_model.handoff import CropSpool, read_prepared, write_prepared
    from hemato_model.pipeline import prepare_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.slides import open_slide

    spec = read_model_spec(Path(model_dir))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spool = CropSpool(folder)
        t = time.perf_counter()
        with open_slide(slide_path) as slide:
            analysis = prepare_slide(slide, spec, spool, PipelineParams(census=True))
        write_prepared(folder, analysis, spool.cells, spec)
        prepare_s = time.perf_counter() - t
        del analysis
        sizes = [int(np.load(p, mmap_mode="r").shape[0]) for p in sorted(folder.glob("crops-*.npy"))]
        rss_prepare = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # The classify stage: the prepared folder read back a crop file at a time.
        classifier = load_classifier(Path(model_dir))
        prepared = read_prepared(folder)
        t = time.perf_counter()
        labelled = sum(len(classifier.classify(chunk)) for chunk in prepared.crop_chunks())
        classify_s = time.perf_counter() - t
    return {
        "seconds": round(prepare_s, 1),
        "classify_seconds": round(classify_s, 1),
        "wbc": len(spool.cells),
        "wbc_labelled": labelled,
        "crop_files": len(sizes),
        "largest_crop_file": max(sizes, default=0),
        "peak_rss_mb_after_prepare": round(rss_prepare, 1),
    }


def _differential(slide_path: str, model_dir: str) -> dict[str, Any]:
    return _one_process(slide_path, model_dir, census=False)


MODES = {"one_process": _one_process, "staged_prepare": _staged_prepare, "differential": _differential}


def _child(mode: str, slide_path: str, model_dir: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = MODES[mode](slide_path, model_dir)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=80_000, help="slide side, px")
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--wbc", type=int, default=4800, help="white cells placed (the bench's density: 1,200 per 40,000²)")
    ap.add_argument("--work-dir", type=Path, default=Path("var/bench"))
    ap.add_argument("--modes", default="one_process,staged_prepare,differential")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SLIDE", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    from hematovision.core.settings import load_settings
    from hematovision.devtools.throughput import ensure_slide

    settings = load_settings()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    slide_path = args.work_dir / f"bench-{args.size}px-{args.mpp}mpp.tiff"
    t = time.perf_counter()
    slide = ensure_slide(slide_path, settings.data_root, args.size, args.mpp, args.wbc)
    made_s = time.perf_counter() - t
    result: dict[str, Any] = {"slide": slide | {"made_or_checked_in_s": round(made_s, 1)}, "limit_mb": 1536}
    for mode in args.modes.split(","):
        load = os.getloadavg()[0]
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(slide_path), str(settings.model_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            result[mode] = {"error": proc.stderr[-2000:]}
            continue
        result[mode] = json.loads(proc.stdout.strip().splitlines()[-1]) | {"load_avg_1min_before": round(load, 2)}
        result[mode]["within_limit"] = result[mode]["peak_rss_mb"] <= result["limit_mb"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
