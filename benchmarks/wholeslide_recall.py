"""Per-class white-cell detection recall on whole synthetic slides (issue 14): ``python
benchmarks/wholeslide_recall.py [--work-dir var/wholeslide_recall] [--out result.json]``.

Makes (once, kept in ``--work-dir``) slides with :func:`hematovision.devtools.synthetic.make_slide`
from real PBC cells, in both formats (tiled TIFF, Aperio SVS) at 0.25 and 0.5 µm/px:

* ``normal``: 8192² px, the default (normal adult) mix, 300 white cells;
* ``lymphocytosis``: 8192² px, lymphocyte 80 / neutrophil 15 / monocyte 5, 300 white cells;
* ``left-shift``: 8192² px, about a fifth of the white cells immature granulocytes, 300;
* ``every-class``: 8192² px, the seven classes alike, 350 white cells (50 each);
* ``large``: 24000² px at 0.25 µm/px, the default mix, 300 white cells (two-pass only: the
  full-resolution path is for slides up to ``full_res_max_mpix``, 64 Mpx, and this one has 576).

Each slide runs down both pipeline paths (forced with ``PipelineParams``, never stopping early; see
:mod:`hematovision.devtools.wholeslide_recall`) with the shipped classifier, and every placed white
cell (erythroblasts included) is matched to the detected white cells. Prints one JSON object:
``runs`` (one per slide and path, per-class placed / found / recall / unidentified / as_class) and
``table`` (per path, µm/px and format: the per-class totals over its slides); progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EVERY_CLASS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "ig", "erythroblast", "basophil")
SLIDES: dict[str, tuple[int, dict[str, float] | None, int, int]] = {
    # name: (side px, white-cell mix (None: the default), white cells, seed)
    "normal": (8192, None, 300, 140),
    "lymphocytosis": (8192, {"lymphocyte": 80, "neutrophil": 15, "monocyte": 5}, 300, 141),
    "left-shift": (
        8192,
        {"neutrophil": 52, "ig": 21, "lymphocyte": 18, "monocyte": 6, "eosinophil": 2, "basophil": 1},
        300,
        142,
    ),
    "every-class": (8192, dict.fromkeys(EVERY_CLASS, 1.0), 350, 143),
    "large": (24000, None, 300, 144),  # 0.25 µm/px, two-pass only
}


def _slide(work: Path, data_root: Path, name: str, mpp: float, fmt: str) -> Path:
    from hematovision.devtools.synthetic import make_slide, manifest_path

    side, mix, n, seed = SLIDES[name]
    path = work / f"{name}-{side}px-{mpp}mpp.{fmt}"
    if not (path.exists() and manifest_path(path).exists()):
        make_slide(path, data_root, side, side, mpp=mpp, n_wbc=n, seed=seed, fmt=fmt, wbc_mix=mix)
    return path


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    from hemato_model.classifier import load_classifier
    from hematovision.core.settings import load_settings
    from hematovision.devtools.wholeslide_recall import PATHS, measure, pooled

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("var/wholeslide_recall"))
    ap.add_argument("--formats", default="tiff,svs")
    ap.add_argument("--mpps", default="0.25,0.5")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--slides", default=",".join(SLIDES), help="which of the slides above")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args()
    settings = load_settings()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier(settings.model_dir)
    wanted = set(a.slides.split(","))
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for fmt in a.formats.split(","):
        for mpp in (float(m) for m in a.mpps.split(",")):
            for name in SLIDES:
                if name not in wanted or (name == "large" and mpp != 0.25):
                    continue
                path = _slide(a.work_dir, settings.data_root, name, mpp, fmt)
                for p in a.paths.split(","):
                    if name == "large" and p == "full_resolution":
                        continue
                    r = measure(path, p, classifier) | {"name": name}
                    runs.append(r)
                    print(
                        f"{name:14} {fmt:4} {mpp:4} {p:15} {r['seconds']:7.1f}s "
                        + " ".join(f"{c[:4]}={v['found']}/{v['placed']}" for c, v in r["per_class"].items()),
                        file=sys.stderr,
                        flush=True,
                    )
    table = []  # per path, µm/px, format and slide size: per-class totals
    for p in a.paths.split(","):
        for mpp in (float(m) for m in a.mpps.split(",")):
            for fmt in a.formats.split(","):
                for large in (False, True):
                    rows = [
                        r
                        for r in runs
                        if (r["path"], r["mpp"], r["format"], r["name"] == "large") == (p, mpp, fmt, large)
                    ]
                    if rows:
                        table.append(
                            {
                                "path": p,
                                "mpp": mpp,
                                "format": fmt,
                                "slides": [r["name"] for r in rows],
                                "per_class": pooled(rows),
                            }
                        )
    report = {
        "command": "python benchmarks/wholeslide_recall.py",
        "commit": _commit(),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": f"{classifier.name} {classifier.version}",
        "table": table,
        "runs": runs,
    }
    text = json.dumps(report, indent=1)
    if a.out is not None:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
