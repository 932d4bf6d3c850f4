"""Slides per hour for a 200-cell differential, against a naive full-resolution read (issue 6).

Usage: python benchmarks/pipeline_throughput.py [--size 40000] [--mpp 0.25] [--wbc 1200]
Prints one JSON object (see hematovision.devtools.throughput.run_benchmark). Same as `hematovision bench --json`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    from hematovision.core.settings import load_settings
    from hematovision.devtools.throughput import run_benchmark

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=40_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--wbc", type=int, default=1200)
    ap.add_argument("--target-wbc", type=int, default=200)
    ap.add_argument("--naive-tiles", type=int, default=48, help="0 = time every level-0 tile")
    ap.add_argument("--work-dir", type=Path, default=Path("var/bench"))
    a = ap.parse_args()
    s = load_settings()
    result = run_benchmark(
        a.work_dir,
        s.data_root,
        s.model_dir,
        size_px=a.size,
        mpp=a.mpp,
        n_wbc=a.wbc,
        target_wbc=a.target_wbc,
        naive_sample_tiles=a.naive_tiles or None,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
