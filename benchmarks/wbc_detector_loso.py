"""Leave-one-source-out evaluation of the learned white-cell detector; prints JSON.

For each source (CBC/BCCD, the Raabin part of TXL-PBC, the BCD part) a head is trained on the
other two sources' train splits (threshold by best F1 on their val splits) and tested on the
held-out source: its test split and all of its images (none of them was seen). A head trained on
all three sources' train splits is tested on every source's test split (CBC Testing is the
in-domain figure). The classical detector is scored on the same test splits. Matching is
evaluate-detection's rule (:mod:`hemato_model.training.detection_eval`); every image's scale is
estimated from its red cells, as at inference.

    nice -n 10 python benchmarks/wbc_detector_loso.py --data-root /work/shared/data \\
        --work-dir /tmp/wbcdet --n-aug 5 --epochs 30 --save-model hemato_model/models/wbc-detector-v1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from hemato_model.training import wbc_detector as wd


def classical(samples: list[wd.Sample], mpps: list[float]) -> dict[str, object]:
    from hemato_model.detection import detect_cells

    found = []
    for s, m in zip(samples, mpps, strict=True):
        cells = detect_cells(wd.read_rgb(s.image_path), m)
        found.append([(c.bbox, 1.0) for c in cells if c.kind == "wbc"])
    return wd.score(samples, found, 0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/wbcdet"), help="cache of scales and features")
    ap.add_argument("--n-aug", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-seed", type=int, default=None, help="seed of the head's training (default: --seed)")
    ap.add_argument("--limit", type=int, default=0, help="use only N images per source and split (smoke test)")
    ap.add_argument("--no-classical", action="store_true")
    ap.add_argument(
        "--folds",
        default="CBC,Raabin,BCD,all",
        help="which to run: held-out sources and/or 'all' (run them as separate processes to use more cores)",
    )
    ap.add_argument("--all-images", action="store_true", help="also test each held-out source on all its images")
    ap.add_argument("--save-model", type=Path, default=None, help="save the all-sources model here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    t_start = time.time()
    samples = wd.load_samples(args.data_root)
    if args.limit:
        keep: dict[tuple[str, str], int] = {}
        lim = []
        for s in samples:
            k = (s.source, s.split)
            if keep.get(k, 0) < args.limit:
                keep[k] = keep.get(k, 0) + 1
                lim.append(s)
        samples = lim
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tag = f"n{len(samples)}"
    mpp_file = args.work_dir / f"mpp_{tag}.json"
    if mpp_file.is_file():
        saved = json.loads(mpp_file.read_text())
        mpps, no_scale = saved["mpps"], saved["failed"]
    else:
        mpps, no_scale = wd.estimate_mpps(samples)
        mpp_file.write_text(json.dumps({"mpps": mpps, "failed": no_scale}))
    logging.info("scales estimated (%d without), %.0f s", len(no_scale), time.time() - t_start)

    fit_idx = [i for i, s in enumerate(samples) if s.split in ("train", "val")]
    feat_file = args.work_dir / f"features_{tag}_a{args.n_aug}_s{args.seed}.npz"
    if feat_file.is_file():
        with np.load(feat_file) as z:
            cache = wd.FeatureCache(z["f8"], z["f16"], z["target"], z["index"])
    else:
        extractor = wd.feature_extractor()
        cache = wd.build_cache(
            [samples[i] for i in fit_idx], [mpps[i] for i in fit_idx], args.n_aug, extractor, args.seed
        )
        cache.index = np.asarray(fit_idx)[cache.index]
        np.savez(feat_file, f8=cache.f8, f16=cache.f16, target=cache.target, index=cache.index)
    t_feat = time.time() - t_start
    logging.info("features of %d canvases, %.0f s", len(cache.index), t_feat)

    extractor = wd.feature_extractor()
    head_seed = args.seed if args.head_seed is None else args.head_seed
    fit_log: dict[tuple[str, ...], dict[str, object]] = {}

    def fold(train_sources: tuple[str, ...]) -> tuple[object, float, float]:
        t0 = time.time()
        rows = np.nonzero([samples[i].source in train_sources and samples[i].split == "train" for i in cache.index])[0]
        head = wd.train_head(cache, rows, epochs=args.epochs, seed=head_seed)
        logging.info("head trained on %d canvases, %.0f s", len(rows), time.time() - t0)
        model = wd.full_model(extractor, head)
        val = [i for i, s in enumerate(samples) if s.source in train_sources and s.split == "val"]
        found = wd.predict_boxes(model, [samples[i] for i in val], [mpps[i] for i in val], 0.05)
        thr = wd.pick_threshold([samples[i] for i in val], found)
        losses = head.history.history["loss"]
        val_scores = wd.score([samples[i] for i in val], found, thr)
        p, r = val_scores["precision"] or 0.0, val_scores["recall"] or 0.0
        fit_log[train_sources] = {
            "train_loss_first_last_epoch": [round(float(losses[0]), 4), round(float(losses[-1]), 4)],
            "val_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "val": val_scores,
        }
        secs = time.time() - t0
        logging.info("threshold %.2f from %d val images, %.0f s: %s", thr, len(val), secs, fit_log[train_sources])
        return model, thr, time.time() - t0

    def evaluate(model: object, thr: float, idx: list[int]) -> dict[str, object]:
        sub, sub_m = [samples[i] for i in idx], [mpps[i] for i in idx]
        return {"n_images": len(idx), **wd.score(sub, wd.predict_boxes(model, sub, sub_m, thr), thr)}

    result: dict[str, object] = {
        "matching_rule": "evaluate-detection (IoU >= 0.3 or mutual centre containment, one-to-one)",
        "work_mpp": wd.WORK_MPP,
        "n_aug": args.n_aug,
        "epochs": args.epochs,
        "head_seed": head_seed,
        "images": {
            src: {sp: sum(s.source == src and s.split == sp for s in samples) for sp in ("train", "val", "test")}
            for src in wd.SOURCES
        },
        "no_scale_estimate": len(no_scale),
        "leave_one_source_out": {},
    }
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    loso: dict[str, object] = {}
    for held in [s for s in wd.SOURCES if s in folds]:
        others = tuple(s for s in wd.SOURCES if s != held)
        model, thr, secs = fold(others)
        test = [i for i, s in enumerate(samples) if s.source == held and s.split == "test"]
        every = [i for i, s in enumerate(samples) if s.source == held]
        loso[held] = {
            "trained_on": list(others),
            "threshold": thr,
            "train_seconds": round(secs, 1),
            **fit_log[others],
            "learned_test": evaluate(model, thr, test),
        }
        if args.all_images:
            loso[held]["learned_all_images"] = evaluate(model, thr, every)
        logging.info("held out %s: learned scored", held)
        if not args.no_classical:
            loso[held]["classical_test"] = classical([samples[i] for i in test], [mpps[i] for i in test])
        logging.info("held out %s: %s", held, json.dumps(loso[held]["learned_test"]))
    result["leave_one_source_out"] = loso
    if "all" not in folds:
        result["seconds_total"] = round(time.time() - t_start, 1)
        print(json.dumps(result, indent=2))
        return 0

    model, thr, secs = fold(wd.SOURCES)
    all_src: dict[str, object] = {"threshold": thr, "train_seconds": round(secs, 1), **fit_log[wd.SOURCES]}
    for src in wd.SOURCES:
        test = [i for i, s in enumerate(samples) if s.source == src and s.split == "test"]
        all_src[src] = {"learned_test": evaluate(model, thr, test)}
    result["all_sources"] = all_src
    if args.save_model:
        meta = wd.save_detector(
            model,
            args.save_model,
            {
                "version": args.save_model.name,
                "kind": "wbc-centre-heatmap",
                "threshold": thr,
                "trained_on": {src: "train split" for src in wd.SOURCES},
                "threshold_from": "best F1 on the val splits of CBC, Raabin, BCD",
                "n_aug": args.n_aug,
                "epochs": args.epochs,
                "seed": args.seed,
                "figures": all_src,
            },
        )
        result["saved"] = {"dir": str(args.save_model), "sha256": meta["sha256"]}
    result["seconds_total"] = round(time.time() - t_start, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
