"""Per-class white-cell detection recall on whole synthetic slides (issue 14): ``python
benchmarks/wholeslide_recall.py [--work-dir var/wholeslide_recall] [--out result.json]``.

Makes (once, kept in ``--work-dir``) slides with :func:`hematovision.devtools.synthetic.make_slide`
from real PBC cells, in both formats (tiled TIFF, Aperio SVS) at 0.25 and 0.5 µm/px:

* ``normal``: 8192² px, the default (normal adult) mix, 300 white cells;
* ``lymphocytosis``: 8192² px, lymphocyte 80 / neutrophil 15 / monocyte 5, 300 white cells;
* ``left-shift``: 8192² px, about a fifth of the white cells immature granulocytes, 300;
* ``every-class``: 8192² px, the seven classes alike, 350 white cells (50 each);
* ``large``: 24000² px at 0.25 µm/px, the default mix, 300 white cells (two-pass only: the
  full-resolution path is for slides up to ``full_res_max_mpix``, 64 Mpx, and this one has 576);
* ``erythroblasts`` (only with ``--slides erythroblasts``): 8192² px, 550 erythroblasts, each of
  the PBC erythroblast images once.

``--formats`` may also name ``svs-j2k``: the same slides as Aperio SVS with JPEG 2000 tiles at
``--jpeg2000-bpp`` bits per pixel (default 1.5, the default classifier's validated floor at 0.25 µm/px).

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
    "erythroblasts": (8192, {"erythroblast": 1.0}, 550, 145),  # on request: --slides erythroblasts
}
DEFAULT_SLIDES = ("normal", "lymphocytosis", "left-shift", "every-class", "large")


def _slide(work: Path, data_root: Path, name: str, mpp: float, fmt: str, jpeg2000_bpp: float = 1.5) -> Path:
    """The named slide in ``fmt`` (``tiff``, ``svs`` or ``svs-j2k``: SVS with JPEG 2000 tiles)."""
    from hematovision.devtools.synthetic import make_slide, manifest_path

    side, mix, n, seed = SLIDES[name]
    j2k = jpeg2000_bpp if fmt == "svs-j2k" else None
    suffix = f"j2k{jpeg2000_bpp:g}.svs" if j2k is not None else fmt
    path = work / f"{name}-{side}px-{mpp}mpp.{suffix}"
    if not (path.exists() and manifest_path(path).exists()):
        make_slide(
            path,
            data_root,
            side,
            side,
            mpp=mpp,
            n_wbc=n,
            seed=seed,
            fmt="svs" if j2k is not None else fmt,
            wbc_mix=mix,
            jpeg2000_bpp=j2k,
        )
    return path


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


CLASS_ORDER = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig", "erythroblast")


def markdown(reports: list[dict[str, Any]]) -> str:
    """The per-class tables of one report, or of two (before -> after), as Markdown."""
    last = reports[-1]

    def key(row: dict[str, Any]) -> tuple[str, float, str, bool]:
        return (row["path"], row["mpp"], row["format"], "large" in row["slides"])

    earlier = [{key(r): r for r in rep["table"]} for rep in reports[:-1]]
    head = "| path | µm/px | format | slides | " + " | ".join(CLASS_ORDER) + " | all |"
    lines = [head, "|" + "---|" * (len(CLASS_ORDER) + 5)]
    for row in last["table"]:
        cells = []
        for cls in (*CLASS_ORDER, None):
            parts = []
            for table in (*earlier, {key(row): row}):
                pc = table[key(row)]["per_class"] if key(row) in table else {}
                found = sum(v["found"] for c, v in pc.items() if cls in (None, c))
                placed = sum(v["placed"] for c, v in pc.items() if cls in (None, c))
                parts.append(f"{found}/{placed}" if placed else "–")
            cells.append(" → ".join(parts))
        slides = "24000² (large)" if "large" in row["slides"] else f"{len(row['slides'])} × 8192²"
        lines.append(
            f"| {row['path'].replace('_', '-')} | {row['mpp']} | {row['format']} | {slides} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "Unidentified (classifier below its threshold) of the cells found, last report:", ""]
    lines += [head, "|" + "---|" * (len(CLASS_ORDER) + 5)]
    for row in last["table"]:
        pc = row["per_class"]
        cells = [f"{pc[c].get('unidentified', 0)}/{pc[c]['found']}" if c in pc else "–" for c in CLASS_ORDER]
        total = f"{sum(v.get('unidentified', 0) for v in pc.values())}/{sum(v['found'] for v in pc.values())}"
        slides = "24000² (large)" if "large" in row["slides"] else f"{len(row['slides'])} × 8192²"
        lines.append(
            f"| {row['path'].replace('_', '-')} | {row['mpp']} | {row['format']} | {slides} | "
            + " | ".join(cells)
            + f" | {total} |"
        )
    return "\n".join(lines)


def chroma_check(work: Path, data_root: Path) -> dict[str, Any]:
    """Why the old candidate pass lost cells: the white-cell rule at 2 µm/px on the ``normal`` TIFF
    slide's 2 µm/px level as stored (JPEG, 4:2:0 chroma), rendered without compression (level 0
    box-filtered 8x), and that rendering JPEG-encoded at the slide's quality with 4:4:4 and with
    4:2:0 chroma; then the candidate screen now used, on the stored 1 µm/px level."""
    import imagecodecs
    import numpy as np
    from PIL import Image

    from hemato_model.detection import detect_cells, wbc_candidates
    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import SmearRenderer, plan_smear
    from hematovision.devtools.wholeslide_recall import match_cells, placed_white_cells

    side, mix, n, seed = SLIDES["normal"]
    path = _slide(work, data_root, "normal", 0.25, "tiff")
    _, placed = placed_white_cells(path)
    render = SmearRenderer(plan_smear(side, side, 0.25, n, seed, data_root=data_root, wbc_mix=mix))
    raw = np.zeros((side // 8, side // 8, 3), np.uint8)
    for y in range(0, side, 1024):
        for x in range(0, side, 1024):
            tile = render(x, y, 1024, 1024)
            raw[y // 8 : y // 8 + 128, x // 8 : x // 8 + 128] = np.asarray(Image.fromarray(tile).reduce(8))

    def jpeg(sub: tuple[int, int]) -> Any:
        enc = imagecodecs.jpeg_encode(raw, level=85, colorspace="RGB", outcolorspace="YCBCR", subsampling=sub)
        return np.asarray(imagecodecs.jpeg_decode(enc))

    def tally(dets: list[Any], scale: float) -> dict[str, str]:
        found = match_cells(placed, np.array([d.center for d in dets]).reshape(-1, 2) * scale, 0.25)
        per: dict[str, list[int]] = {}
        for cell, j in zip(placed, found, strict=True):
            per.setdefault(cell["class"], [0, 0])[0] += j is not None
            per[cell["class"]][1] += 1
        return {c: f"{f}/{t}" for c, (f, t) in sorted(per.items())}

    with open_slide(path) as slide:
        stored2 = slide.read_region((0, 0), 3, (side // 8, side // 8))
        stored1 = slide.read_region((0, 0), 2, (side // 4, side // 4))
    return {
        "slide": path.name,
        "white-cell rule, 2 µm/px level": {
            "stored (JPEG q85, 4:2:0)": tally(detect_cells(stored2, 2.0, kinds=("wbc",)), 8),
            "uncompressed": tally(detect_cells(raw, 2.0, kinds=("wbc",)), 8),
            "JPEG q85, 4:4:4": tally(detect_cells(jpeg((1, 1)), 2.0, kinds=("wbc",)), 8),
            "JPEG q85, 4:2:0": tally(detect_cells(jpeg((2, 2)), 2.0, kinds=("wbc",)), 8),
        },
        "candidate screen, stored 1 µm/px level": tally(wbc_candidates(stored1, 1.0), 4),
    }


def main() -> None:
    from hemato_model.classifier import load_classifier
    from hematovision.core.settings import load_settings
    from hematovision.devtools.wholeslide_recall import PATHS, measure, pooled

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("var/wholeslide_recall"))
    ap.add_argument("--formats", default="tiff,svs", help="tiff, svs and/or svs-j2k")
    ap.add_argument("--jpeg2000-bpp", type=float, default=1.5, help="the rate of svs-j2k slides")
    ap.add_argument("--mpps", default="0.25,0.5")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--slides", default=",".join(DEFAULT_SLIDES), help="which of the slides above")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument(
        "--table",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the per-class tables of saved results (two: before -> after) as Markdown, and stop",
    )
    ap.add_argument("--chroma-check", action="store_true", help="print chroma_check's JSON (see there), and stop")
    a = ap.parse_args()
    if a.chroma_check:
        print(json.dumps(chroma_check(a.work_dir, load_settings().data_root), indent=1, ensure_ascii=False))
        return
    if a.table:
        print(markdown([json.loads(f.read_text()) for f in a.table]))
        return
    settings = load_settings()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier(settings.model_dir)
    wanted = set(a.slides.split(","))

    def label(fmt: str) -> str:
        return f"svs-j2k{a.jpeg2000_bpp:g}" if fmt == "svs-j2k" else fmt

    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for fmt in a.formats.split(","):
        for mpp in (float(m) for m in a.mpps.split(",")):
            for name in SLIDES:
                if name not in wanted or (name == "large" and mpp != 0.25):
                    continue
                path = _slide(a.work_dir, settings.data_root, name, mpp, fmt, a.jpeg2000_bpp)
                for p in a.paths.split(","):
                    if name == "large" and p == "full_resolution":
                        continue
                    r = measure(path, p, classifier) | {"name": name}
                    r["format"] = label(fmt)
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
                        if (r["path"], r["mpp"], r["format"], r["name"] == "large") == (p, mpp, label(fmt), large)
                    ]
                    if rows:
                        table.append(
                            {
                                "path": p,
                                "mpp": mpp,
                                "format": label(fmt),
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
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if a.out is not None:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
