"""Leave-one-source-out evaluation of the learned white-cell detector; prints JSON.

For each source (CBC/BCCD, the Raabin part of TXL-PBC, the BCD part) a head is trained on the
other two sources' train splits (threshold by best F1 on their val splits) and tested on the
held-out source: its test split and all of its images (none of them was seen). A head trained on
all three sources' train splits is tested on every source's test split (CBC Testing is the
in-domain figure). The classical detector is scored on the same test splits. Matching is
evaluate-detection's rule (:mod:`hemato_model.training.detection_eval`); every image's scale is
estimated from its red cells, as at inference.

Border cells (:mod:`hemato_model.detection.border`, ``--edge-margin-um``): the learned detector
drops them, annotated ones are don't-care in scoring and in the threshold search, and with
``--border-training mask`` (the default, chosen on val) the heat-map loss is masked around them.
Each fold also reports, on the training sources' val, the old way (no rule, best F1) and both
threshold policies; ``--val-only`` skips the test splits and scores the held-out source's val
under each policy instead (how the policy and the training were chosen: docs/validation.md,
"Border-cut cells"); ``learned_test_no_rule`` is the same head scored the old way.

    nice -n 5 python benchmarks/wbc_detector_loso.py --data-root /work/shared/data \\
        --work-dir /tmp/wbcdet --n-aug 3 --epochs 30 --border-training mask \\
        --save-model hemato_model/models/wbc-detector-v2 --compare-model hemato_model/models/wbc-detector-v1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from hemato_model.detection.border import EDGE_MARGIN_UM
from hemato_model.training import wbc_detector as wd


def classical(samples: list[wd.Sample], mpps: list[float], margin_um: float) -> dict[str, object]:
    """The classical detector as it is, scored the old way and with border cells don't-care."""
    from hemato_model.detection import detect_cells

    found = []
    for s, m in zip(samples, mpps, strict=True):
        cells = detect_cells(wd.read_rgb(s.image_path), m)
        found.append([(c.bbox, 1.0) for c in cells if c.kind == "wbc"])
    return {
        "no_rule": wd.score(samples, found, 0.5),
        "border_dont_care": wd.score(samples, found, 0.5, wd.BorderScoring(margin_um, mpps)),
    }


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
    ap.add_argument("--edge-margin-um", type=float, default=EDGE_MARGIN_UM, help="border-cell margin, µm")
    ap.add_argument(
        "--border-training", choices=("none", "mask"), default="mask", help="heat-map loss near border cells"
    )
    ap.add_argument("--threshold-policy", choices=wd.THRESHOLD_POLICIES, default="f1")
    ap.add_argument(
        "--recall-floor", type=float, default=0.97, help="val recall floor of --threshold-policy recall-floor"
    )
    ap.add_argument("--val-only", action="store_true", help="train and report val only; no test split is scored")
    ap.add_argument(
        "--compare-model", type=Path, default=None, help="also score this saved detector on every test split"
    )
    args = ap.parse_args(argv)
    margin = args.edge_margin_um
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
    if args.border_training == "mask":
        tgt_file = args.work_dir / f"targets_{tag}_a{args.n_aug}_s{args.seed}_mask{margin:g}.npz"
        if tgt_file.is_file():
            with np.load(tgt_file) as z:
                cache.target = z["target"]
        else:
            fit = [samples[i] for i in fit_idx]
            cache.target = wd.build_targets(fit, [mpps[i] for i in fit_idx], args.n_aug, args.seed, margin)
            np.savez(tgt_file, target=cache.target)
        logging.info("border-masked targets, %.0f s", time.time() - t_start)

    extractor = wd.feature_extractor()
    head_seed = args.seed if args.head_seed is None else args.head_seed
    fit_log: dict[tuple[str, ...], dict[str, object]] = {}

    def border(idx: list[int]) -> wd.BorderScoring:
        return wd.BorderScoring(margin, [mpps[i] for i in idx])

    def fold(train_sources: tuple[str, ...]) -> tuple[object, float, float, float]:
        t0 = time.time()
        rows = np.nonzero([samples[i].source in train_sources and samples[i].split == "train" for i in cache.index])[0]
        head = wd.train_head(cache, rows, epochs=args.epochs, seed=head_seed)
        logging.info("head trained on %d canvases, %.0f s", len(rows), time.time() - t0)
        model = wd.full_model(extractor, head)
        val = [i for i, s in enumerate(samples) if s.source in train_sources and s.split == "val"]
        vs, vm = [samples[i] for i in val], [mpps[i] for i in val]
        plain = wd.predict_boxes(model, vs, vm, 0.05)
        found = wd.predict_boxes(model, vs, vm, 0.05, margin)
        thr_old = wd.pick_threshold(vs, plain)
        by_policy = {}
        for pol in wd.THRESHOLD_POLICIES:
            t = wd.pick_threshold(vs, found, border(val), pol, args.recall_floor)
            by_policy[pol] = {"threshold": t, **wd.score(vs, found, t, border(val))}
        thr = by_policy[args.threshold_policy]["threshold"]
        losses = head.history.history["loss"]
        val_scores = by_policy[args.threshold_policy]
        p, r = val_scores["precision"] or 0.0, val_scores["recall"] or 0.0
        per_source = {
            src: wd.score(
                [samples[i] for i in val if samples[i].source == src],
                [f for i, f in zip(val, found, strict=True) if samples[i].source == src],
                thr,
                border([i for i in val if samples[i].source == src]),
            )
            for src in train_sources
        }
        fit_log[train_sources] = {
            "train_loss_first_last_epoch": [round(float(losses[0]), 4), round(float(losses[-1]), 4)],
            "val_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "val": val_scores,
            "val_per_source": per_source,
            "val_by_policy": by_policy,
            "val_no_rule": {"threshold": thr_old, **wd.score(vs, plain, thr_old)},
        }
        secs = time.time() - t0
        logging.info("threshold %.2f from %d val images, %.0f s: %s", thr, len(val), secs, fit_log[train_sources])
        return model, thr, thr_old, time.time() - t0

    def evaluate(model: object, thr: float, idx: list[int]) -> dict[str, object]:
        sub, sub_m = [samples[i] for i in idx], [mpps[i] for i in idx]
        found = wd.predict_boxes(model, sub, sub_m, thr, margin)
        return {"n_images": len(idx), **wd.score(sub, found, thr, border(idx))}

    def evaluate_no_rule(model: object, thr: float, idx: list[int]) -> dict[str, object]:
        sub, sub_m = [samples[i] for i in idx], [mpps[i] for i in idx]
        return {"n_images": len(idx), **wd.score(sub, wd.predict_boxes(model, sub, sub_m, thr), thr)}

    result: dict[str, object] = {
        "matching_rule": "evaluate-detection (IoU >= 0.3 or mutual centre containment, one-to-one)",
        "work_mpp": wd.WORK_MPP,
        "n_aug": args.n_aug,
        "epochs": args.epochs,
        "head_seed": head_seed,
        "edge_margin_um": margin,
        "border_training": args.border_training,
        "threshold_policy": args.threshold_policy,
        "recall_floor": args.recall_floor,
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
        model, thr, thr_old, secs = fold(others)
        test = [i for i, s in enumerate(samples) if s.source == held and s.split == "test"]
        every = [i for i, s in enumerate(samples) if s.source == held]
        loso[held] = {"trained_on": list(others), "threshold": thr, "train_seconds": round(secs, 1), **fit_log[others]}
        if args.val_only:  # the held-out source's val under each policy's threshold: to choose the policy
            hv = [i for i, s in enumerate(samples) if s.source == held and s.split == "val"]
            loso[held]["held_out_val_by_policy"] = {
                pol: {"threshold": v["threshold"], **evaluate(model, v["threshold"], hv)}
                for pol, v in fit_log[others]["val_by_policy"].items()  # type: ignore[attr-defined]
            }
            hv_s, hv_m = [samples[i] for i in hv], [mpps[i] for i in hv]
            plain_thr = fit_log[others]["val_no_rule"]["threshold"]  # type: ignore[index]
            loso[held]["held_out_val_no_rule"] = {
                "threshold": plain_thr,
                **wd.score(hv_s, wd.predict_boxes(model, hv_s, hv_m, plain_thr), plain_thr),
            }
            continue
        loso[held]["learned_test"] = evaluate(model, thr, test)
        loso[held]["learned_test_no_rule"] = {"threshold": thr_old, **evaluate_no_rule(model, thr_old, test)}
        if args.all_images:
            loso[held]["learned_all_images"] = evaluate(model, thr, every)
        logging.info("held out %s: learned scored", held)
        if not args.no_classical:
            loso[held]["classical_test"] = classical([samples[i] for i in test], [mpps[i] for i in test], margin)
        logging.info("held out %s: %s", held, json.dumps(loso[held]["learned_test"]))
    result["leave_one_source_out"] = loso
    if "all" not in folds:
        result["seconds_total"] = round(time.time() - t_start, 1)
        print(json.dumps(result, indent=2))
        return 0

    model, thr, thr_old, secs = fold(wd.SOURCES)
    all_src: dict[str, object] = {"threshold": thr, "train_seconds": round(secs, 1), **fit_log[wd.SOURCES]}
    compare = None
    if args.compare_model and not args.val_only:
        from hemato_model.detection.learned import LearnedWbcDetector

        compare = LearnedWbcDetector.load(args.compare_model)
    for src in wd.SOURCES if not args.val_only else ():
        test = [i for i, s in enumerate(samples) if s.source == src and s.split == "test"]
        all_src[src] = {
            "learned_test": evaluate(model, thr, test),
            "learned_test_no_rule": {"threshold": thr_old, **evaluate_no_rule(model, thr_old, test)},
        }
        if compare is not None:
            all_src[src][f"{compare.version}_test"] = {
                "threshold": compare.threshold,
                **evaluate(compare.model, compare.threshold, test),
            }
            no_rule = evaluate_no_rule(compare.model, compare.threshold, test)
            all_src[src][f"{compare.version}_test_no_rule"] = no_rule
    result["all_sources"] = all_src
    if args.save_model and not args.val_only:
        meta = wd.save_detector(
            model,
            args.save_model,
            {
                "version": args.save_model.name,
                "kind": "wbc-centre-heatmap",
                "threshold": thr,
                "trained_on": {src: "train split" for src in wd.SOURCES},
                "threshold_from": f"{args.threshold_policy} on the val of CBC, Raabin, BCD, border cells don't-care",
                "edge_margin_um": margin,
                "border_training": args.border_training,
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
