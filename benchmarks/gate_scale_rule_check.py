"""The gate's slide scale under three rules on the same slides: ``all_fields``, the median over every
measured field (before 2026-12-02); ``isolated``, the median over fields measured on isolated red
cells when enough have them (:func:`hemato_model.quality.summarise_fields`), fields measured as read;
``isolated_400``, the same with each field's red cells measured on the field enlarged to
:data:`hemato_model.quality.GATE_SCALE_SIDE_PX` (the gate since the fifth session of 2026-12-02).
On fresh ``make-slide`` slides (seeds from ``--seed``, none used to calibrate the gate) at 0.25 and
0.5 µm/px, each slide is measured as stated truly and as stated wrongly (a 40× slide stated 0.5 and
0.125, a 20× slide stated 0.25); per case the count of slides whose ratio lies outside the rules'
``scale_ratio`` (SCALE_MISMATCH) under each rule.

    python benchmarks/gate_scale_rule_check.py [--slides 40] [--seed 9000] \\
        [--out benchmarks/results/gate_scale_rule_check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gate_calibration import MIXES, slide_fields  # noqa: E402

CASES = ((0.25, (0.5, 0.125)), (0.5, (0.25,)))


RULES = ("all_fields", "isolated", "isolated_400")


def ratios(path: Path, stated: float) -> tuple[list[float], list[int]]:
    """Measured / stated µm/px of the slide at ``path`` opened at ``stated``, per rule in RULES, and
    its fields measured on isolated red cells as read and enlarged."""
    from hemato_model.quality import GATE_SCALE_SIDE_PX, summarise_fields

    as_read = slide_fields(path, stated, 0)
    measured = [f["measured_mpp"] for f in as_read if f and f["measured_mpp"]]
    enlarged = slide_fields(path, stated, GATE_SCALE_SIDE_PX)
    old, new = summarise_fields(as_read, stated)["scale"], summarise_fields(enlarged, stated)["scale"]
    return (
        [round(float(np.median(measured)) / stated, 4), float(old["ratio"]), float(new["ratio"])],
        [int(old["fields_isolated_cells"]), int(new["fields_isolated_cells"])],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=40, help="slides per scan scale")
    ap.add_argument("--seed", type=int, default=9000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from hematovision.core.flags import load_rules
    from hematovision.core.settings import load_settings
    from hematovision.devtools.synthetic import make_slide

    settings = load_settings()
    lo, hi = load_rules()["gate"]["scale_ratio"]
    names = list(MIXES)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.tiff"
        for mpp, wrong in CASES:
            for k in range(a.slides):
                seed = a.seed + k
                mix = MIXES[names[k % len(names)]]
                make_slide(path, settings.data_root, 2048, 2048, mpp=mpp, n_wbc=60, seed=seed, wbc_mix=mix)
                row: dict[str, Any] = {"mpp": mpp, "seed": seed}
                row["true"], row["fields_isolated_cells"] = ratios(path, mpp)
                for w in wrong:
                    row[f"stated_{w}"] = ratios(path, w)[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {}
    for mpp, _ in CASES:
        at = [r for r in rows if r["mpp"] == mpp]
        for key in [k for k in at[0] if k not in ("mpp", "seed", "fields_isolated_cells")]:
            for i, rule in enumerate(RULES):
                vals = [r[key][i] for r in at]
                summary[f"{mpp} {key} {rule}"] = {
                    "tripped": sum(1 for v in vals if not lo <= v <= hi),
                    "of": len(vals),
                    "min": min(vals),
                    "max": max(vals),
                }
        counts = [r["fields_isolated_cells"] for r in at]
        summary[f"{mpp} fields_isolated_cells"] = {
            "as_read": dict(sorted(Counter(c[0] for c in counts).items())),
            "enlarged": dict(sorted(Counter(c[1] for c in counts).items())),
        }
    doc = {"range": [lo, hi], "summary": summary, "rows": rows}
    if a.out:
        a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
