"""Calibrate the domain and quality gate on in-domain slides and measure it on out-of-domain ones.

In domain (what HematoVision is validated on): the demo's three slides and ``make-slide`` slides of
several white-cell mixes and seeds (PBC cells, one stain), at 0.25 and 0.5 µm/px. Each slide's gate
measurements (:func:`hemato_model.quality.measure_quality`, on the smear mask the pipeline uses) are
collected; ``--write-ranges`` prints the ranges for ``[gate]`` in the rules file: the in-domain
min/max of each measure widened by ``--margin`` times the in-domain spread (at least a floor per
measure). Then every slide is judged by :func:`hematovision.core.flags.evaluate_gate` against the
SHIPPED rules (the trip rate in domain) and so is every out-of-domain input:

- ``bccd``: 2×2 mosaics of BCCD fields (another lab, stain and camera), at BCCD_MPP;
- ``txl``: 2×2 mosaics of TXL-PBC fields, stated at their own measured scale (stain/focus only);
- ``stain_shift``: ``make-slide`` slides with a strong stain shift (optical density rotated
  towards another Romanowsky hue: red-cell OD moved to red/blue, nuclei to brown);
- ``blur``: ``make-slide`` slides blurred by a Gaussian of σ = 1.5 µm;
- ``wrong_scale``: ``make-slide`` slides at 0.25 µm/px stated at 0.5 and at 0.125 µm/px (a 20× scan
  taken for 40× and the reverse: the usual way a scale is wrong).

The classifier's out-of-distribution score is calibrated apart (``benchmarks/fit_ood_stats.py``);
it needs the model and is not part of this run. Output: JSON (``--out``).

    python benchmarks/gate_calibration.py [--slides 24] [--ood 6] [--out benchmarks/results/gate_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MIXES: dict[str, dict[str, float] | None] = {
    "normal": None,
    "lymphocytosis": {"lymphocyte": 0.66, "neutrophil": 0.22, "monocyte": 0.05, "ig": 0.05, "eosinophil": 0.02},
    "neutrophilia": {"neutrophil": 0.85, "lymphocyte": 0.1, "monocyte": 0.05},
    "eosinophilia": {"neutrophil": 0.5, "eosinophil": 0.2, "lymphocyte": 0.25, "monocyte": 0.05},
}


def _on_smear(path: Path, mpp: float | None, measure: Any) -> Any:
    """``measure(slide, mask, down)`` on a slide file opened at ``mpp``, with the pipeline's smear mask."""
    from hemato_model.pipeline_params import PipelineParams
    from hemato_model.smear_area import smear_mask
    from hematovision.core.slides import open_slide

    params = PipelineParams()
    with open_slide(path, mpp=mpp) as slide:
        w, _ = slide.dimensions
        level = slide.get_best_level_for_downsample(max(1.0, params.thumb_mpp / float(slide.mpp)))
        lw, lh = slide.level_dimensions[level]
        mask = smear_mask(slide.read_region((0, 0), level, (lw, lh)))
        return measure(slide, mask, w / lw)


def slide_quality(path: Path, mpp: float | None) -> dict[str, Any]:
    """The gate's measurements of a slide file, as the pipeline takes them."""
    from hemato_model.quality import measure_quality

    return dict(_on_smear(path, mpp, measure_quality))


def slide_fields(path: Path, mpp: float | None, scale_side_px: int | None = None) -> list[dict[str, Any] | None]:
    """The gate's per-field measurements of a slide file (before they are summarised);
    ``scale_side_px`` overrides :data:`hemato_model.quality.GATE_SCALE_SIDE_PX`."""
    from hemato_model.quality import GATE_SCALE_SIDE_PX, measure_fields

    side = GATE_SCALE_SIDE_PX if scale_side_px is None else scale_side_px
    return list(_on_smear(path, mpp, lambda slide, mask, down: measure_fields(slide, mask, down, scale_side_px=side)))


def stain_shift(rgb: np.ndarray) -> np.ndarray:
    """A strong synthetic stain change: optical density mixed across channels (red cells turn
    orange-red, nuclei brown), glass tinted yellow."""
    od = -np.log10(np.clip((rgb.astype(np.float32) + 1) / 256.0, 1e-3, 1))
    mix = np.array([[0.1, 0.9, 0.9], [0.9, 0.6, 0.1], [0.2, 0.2, 0.6]], np.float32)  # rows: from R, G, B
    out = od @ mix
    tint = np.array([1.0, 0.95, 0.75], np.float32)
    return np.clip(255.0 * tint * 10.0 ** (-out), 0, 255).astype(np.uint8)


def mosaic(files: list[Path], n: int = 2) -> np.ndarray:
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in files[: n * n]]
    h, w = min(t.shape[0] for t in tiles), min(t.shape[1] for t in tiles)
    rows = [np.concatenate([t[:h, :w] for t in tiles[r * n : (r + 1) * n]], axis=1) for r in range(n)]
    return np.concatenate(rows, axis=0)


def _slide_pixels(path: Path) -> np.ndarray:
    from hematovision.core.slides import open_slide

    with open_slide(path, mpp=0.25) as slide:
        w, h = slide.dimensions
        return slide.read_region((0, 0), 0, (w, h))


def judge(quality: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    from hematovision.core.flags import evaluate_gate

    return [f.code for f in evaluate_gate(quality, rules)]


def ranges(rows: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """Proposed ``[gate]`` ranges from in-domain measurements."""
    out: dict[str, Any] = {}

    def span(values: list[float], floor: float, lo_clip: float = 0.0, hi_clip: float = 1.0) -> list[float]:
        v = np.array([x for x in values if x is not None], float)
        pad = max(margin * (v.max() - v.min()), floor)
        return [round(max(lo_clip, float(v.min()) - pad), 3), round(min(hi_clip, float(v.max()) + pad), 3)]

    for key in ("rbc_od_chroma", "nucleus_od_chroma"):
        for i, ch in enumerate(("red", "green", "blue")):
            vals = [r["stain"][key][i] for r in rows if r["stain"][key] is not None]
            out[f"{key}_{ch}"] = span(vals, 0.04)
    out["glass_brightness"] = span([r["stain"]["glass_brightness"] for r in rows], 15.0, 0.0, 255.0)
    focus = np.array([r["focus"] for r in rows if r["focus"] is not None], float)
    out["focus_min"] = round(float(focus.min()) * 0.7, 3)
    ratio = np.array([r["scale"]["ratio"] for r in rows if r["scale"]["ratio"] is not None], float)
    out["scale_ratio_measured"] = [round(float(ratio.min()), 3), round(float(ratio.max()), 3)]
    return out


def summarise(result: dict[str, Any]) -> None:
    result["in_domain_summary"] = {
        "slides": len(result["in_domain"]),
        "tripped": sum(1 for r in result["in_domain"] if r["gate_flags"]),
    }
    result["out_of_domain_summary"] = {
        kind: {"inputs": len(v), "tripped": sum(1 for r in v if r["gate_flags"])}
        for kind, v in result["out_of_domain"].items()
    }


def rejudge(path: Path, out: Path | None) -> None:
    """Judge the measurements of an earlier run against the rules file as it is now."""
    from hematovision.core.flags import load_rules

    rules = load_rules()
    result = json.loads(path.read_text())
    result["rules_version"] = rules.get("version")
    for r in result["in_domain"] + [r for v in result["out_of_domain"].values() for r in v]:
        r["gate_flags"] = judge(r["quality"], rules)
    summarise(result)
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("in_domain_summary", "out_of_domain_summary")}))


def main() -> None:
    from hematovision.core.datasets import BCCD_DIR, BCCD_MPP, TXL_DIR
    from hematovision.core.flags import load_rules
    from hematovision.core.settings import load_settings
    from hematovision.devtools.synthetic import make_slide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=24, help="make-slide slides in domain (besides the demo's three).")
    ap.add_argument("--ood", type=int, default=6, help="Inputs of each out-of-domain kind.")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--margin", type=float, default=0.35)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--judge", type=Path, default=None, help="Only judge the inputs of an earlier --out again.")
    a = ap.parse_args()
    if a.judge is not None:
        rejudge(a.judge, a.out)
        return
    settings = load_settings()
    data_root = settings.data_root
    rules = load_rules()
    result: dict[str, Any] = {"rules_version": rules.get("version"), "in_domain": [], "out_of_domain": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # --- in domain
        specs = [
            ("demo:normal-smear", MIXES["normal"], 240, 100, 0.25, 4096),
            ("demo:lymphocytosis", MIXES["lymphocytosis"], 240, 101, 0.25, 4096),
            ("demo:scant-smear", MIXES["normal"], 60, 102, 0.25, 4096),
        ]
        names = list(MIXES)
        for k in range(a.slides):
            mix = names[k % len(names)]
            mpp = 0.25 if k % 3 else 0.5
            specs.append((f"make-slide:{mix}:seed{k}:mpp{mpp}", MIXES[mix], 60, 1000 + k, mpp, a.size))
        rows = []
        for name, mix, n_wbc, seed, mpp, size in specs:
            p = tmp / "in.tiff"
            make_slide(p, data_root, size, size, mpp=mpp, n_wbc=n_wbc, seed=seed, fmt="tiff", wbc_mix=mix)
            q = slide_quality(p, None)
            rows.append(q)
            result["in_domain"].append({"slide": name, "quality": q, "gate_flags": judge(q, rules)})
        result["proposed_ranges"] = ranges(rows, a.margin)

        # --- out of domain
        def record(kind: str, name: str, q: dict[str, Any]) -> None:
            result["out_of_domain"].setdefault(kind, []).append(
                {"input": name, "quality": q, "gate_flags": judge(q, rules)}
            )

        bccd = sorted((data_root / BCCD_DIR / "BCCD" / "JPEGImages").glob("*.jpg"))
        txl = sorted((data_root / TXL_DIR / "images" / "test").glob("*.jpg"))
        for i in range(a.ood):
            if len(bccd) >= 4 * (i + 1):
                p = tmp / f"bccd{i}.png"
                Image.fromarray(mosaic(bccd[4 * i : 4 * i + 4])).save(p)
                record("bccd", p.name, slide_quality(p, BCCD_MPP))
            if len(txl) >= 4 * (i + 1):
                from hemato_model.detection.scale import estimate_image_mpp

                img = mosaic(txl[4 * i : 4 * i + 4])
                p = tmp / f"txl{i}.png"
                Image.fromarray(img).save(p)
                try:
                    own = estimate_image_mpp(img).mpp
                except ValueError:
                    own = 0.1
                record("txl", p.name, slide_quality(p, own))
            base = tmp / f"base{i}.tiff"
            make_slide(base, data_root, a.size, a.size, mpp=0.25, n_wbc=40, seed=5000 + i, fmt="tiff")
            pix = _slide_pixels(base)
            p = tmp / f"shift{i}.png"
            Image.fromarray(stain_shift(pix)).save(p)
            record("stain_shift", p.name, slide_quality(p, 0.25))
            from scipy import ndimage as ndi

            p = tmp / f"blur{i}.png"
            sigma_px = 1.5 / 0.25
            Image.fromarray(
                np.stack([ndi.gaussian_filter(pix[..., c], sigma_px) for c in range(3)], axis=2).astype(np.uint8)
            ).save(p)
            record("blur", p.name, slide_quality(p, 0.25))
            record("wrong_scale", f"{base.name}@0.5", slide_quality(base, 0.5))
            record("wrong_scale", f"{base.name}@0.125", slide_quality(base, 0.125))
    summarise(result)
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("in_domain_summary", "proposed_ranges", "out_of_domain_summary")}))


if __name__ == "__main__":
    main()
