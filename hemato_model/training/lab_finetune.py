"""Fine-tuning a shipped model on a lab's reviewed cells (``hematovision train --base``).

The lab's cells (an image folder from ``hematovision dataset export``: one folder per final label,
crops of ``crop_um`` µm at any resolution, ``manifest.csv`` with the hashed slide of each crop) are
mixed with the public PBC training split the base model was trained on (from the base's
``split.json``), so the model learns the lab's stain and classes without forgetting PBC
("rehearsal": Robins, "Catastrophic forgetting, rehearsal and pseudorehearsal", Connection Science
7:123, 1995; the same mix as in Li & Hoiem's "Learning without Forgetting" baselines). The recipe is
the base model's (:mod:`hemato_model.training.classifier_training`):

1. **Head.** When the lab brings classes the base lacks (e.g. ``blast``), the head grows: the old
   classes' weight columns are copied unchanged and the new ones start from their mean
   (:func:`grow_head`); the head is then fitted on frozen features (``fit_head``).
2. **Fine-tuning.** The top backbone blocks are trained end to end at a low learning rate with the
   shipped model's augmentation (``fine_tune``); the lab's training cells are repeated so they are
   about half as many as the PBC cells (at most 4 times).
3. **Threshold.** The low-confidence cut-off is chosen again on the validation cells (PBC
   validation split + the lab's validation slides), by the shipped model's rule.

The lab's cells are split by slide (the manifest's ``slide`` hash) into train and validation,
so cells of one slide never sit on both sides. The lab's held-out cells for ``validate-model`` are a
separate export (e.g. of later slides) and are never read here. The new ``model.json`` names its
``parent`` (name, version, sha256) and the sha256 of the training data manifest
(``training_data.csv``: source, file, class, part, file sha256).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hemato_model.preprocessing import crop_cell
from hemato_model.training.classifier_training import (
    DataError,
    ProgressFactory,
    TrainConfig,
    choose_threshold,
    configure_tensorflow,
    fine_tune,
    fit_head,
    list_image_folder,
    load_crops,
    save_model_dir,
)

log = logging.getLogger(__name__)

TRAINING_DATA_FILE = "training_data.csv"


@dataclass
class LabFineTuneConfig:
    """Everything that defines a lab fine-tuning run (recorded in ``model.json``)."""

    data_dir: str
    base_dir: str
    out_dir: str
    pbc_dir: str | None = None
    seed: int = 1
    lab_val_fraction: float = 0.2
    epochs: int = 3
    head_epochs: int = 100
    batch_size: int = 32
    finetune_lr: float = 1e-4
    unfreeze_from: str = "block5a"
    patience: int = 3
    pbc_per_class: int | None = None
    max_lab_repeat: int = 4
    distill: float = 0.5
    interpolate: bool = True
    name: str | None = None
    version: str = "1.0.0"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_lab_crops(paths: list[Path], crop_um: float, input_px: int) -> np.ndarray:
    """Crops of exported cells: each image is one ``crop_um`` square (any resolution), resampled to
    ``input_px`` (its µm/px is ``crop_um / width``)."""
    out = np.empty((len(paths), input_px, input_px, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[:2]
        out[i] = crop_cell(arr, (w / 2.0, h / 2.0), crop_um / w, crop_um, input_px)
    return out


def lab_slide_groups(data_dir: Path, rel: list[str]) -> list[str]:
    """The slide (hash) of each file from ``manifest.csv``; each file is its own group without one."""
    manifest = data_dir / "manifest.csv"
    by_file: dict[str, str] = {}
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            by_file = {row["file"]: row.get("slide") or row["file"] for row in csv.DictReader(fh)}
    return [by_file.get(r, r) for r in rel]


def split_by_group(groups: list[str], labels: list[str], seed: int, val_fraction: float) -> dict[str, list[int]]:
    """Indices of train/val with whole groups (slides) on one side; about ``val_fraction`` of the
    cells in val. With a single group, the split is by file, stratified."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    if len(uniq) < 2:
        from hemato_model.training.classifier_training import split_files

        parts = split_files(labels, seed, val_fraction, 0.0)
        return {"train": parts["train"] + parts["test"], "val": parts["val"]}
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    sizes = {g: groups.count(g) for g in uniq}
    target, n_val = val_fraction * len(groups), 0
    val_groups: set[str] = set()
    for g in order:
        if n_val >= target or len(val_groups) == len(uniq) - 1:
            break
        val_groups.add(g)
        n_val += sizes[g]
    val = [i for i, g in enumerate(groups) if g in val_groups]
    train = [i for i, g in enumerate(groups) if g not in val_groups]
    return {"train": train, "val": val}


def grow_head(kernel: np.ndarray, bias: np.ndarray, old: list[str], new: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Head weights for classes ``new`` from a head over ``old``: the columns of classes in both are
    copied unchanged; a new class starts from the mean of the old columns.

    Raises:
        DataError: ``new`` lacks a class of ``old`` (a fine-tuned model never drops a class).
    """
    missing = set(old) - set(new)
    if missing:
        raise DataError(f"classes {sorted(missing)} of the base model are missing from the new class list")
    k = np.repeat(kernel.mean(axis=1, keepdims=True), len(new), axis=1).astype(kernel.dtype)
    b = np.full(len(new), float(bias.mean()), dtype=bias.dtype)
    for j, c in enumerate(new):
        if c in old:
            i = old.index(c)
            k[:, j], b[j] = kernel[:, i], bias[i]
    return k, b


def build_grown_model(
    base_model: Any, backbone_name: str, base_classes: list[str], classes: list[str], input_px: int
) -> tuple[Any, Any]:
    """(model, backbone) over ``classes`` with the base's backbone weights and a grown head."""
    import keras

    backbone = base_model.get_layer(backbone_name)
    if classes == base_classes:
        return base_model, backbone
    dropout = float(base_model.get_layer("head_dropout").rate)
    inputs = keras.Input((input_px, input_px, 3), name="crop")
    x = keras.layers.Dropout(dropout, name="head_dropout")(backbone(inputs, training=False))
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name=base_model.name)
    kernel, bias = base_model.get_layer("head").get_weights()
    model.get_layer("head").set_weights(list(grow_head(kernel, bias, base_classes, classes)))
    return model, backbone


def _pbc_parts(base_dir: Path, pbc_dir: str | None) -> tuple[Path, dict[str, list[str]], float]:
    """PBC folder, its train/val/test file lists from the base model's split.json, and its µm/px."""
    split_path = base_dir / "split.json"
    if not split_path.is_file():
        raise DataError(f"{base_dir}: no split.json, so the public training data to mix in is unknown")
    doc = json.loads(split_path.read_text())
    root = Path(pbc_dir or doc.get("data_dir", ""))
    if not root.is_dir():
        raise DataError(f"PBC folder of the base model's split.json not found: {root} (give --pbc DIR)")
    meta = json.loads((base_dir / "model.json").read_text())
    mpp = float(meta.get("preprocessing", {}).get("training_mpp", 0.08))
    return root, {k: list(doc.get(k, [])) for k in ("train", "val", "test")}, mpp


def cap_per_class(files: list[str], per_class: int | None) -> list[str]:
    """The first ``per_class`` files of each class (the folder before the first ``/``), in order."""
    if not per_class:
        return files
    seen: dict[str, int] = {}
    out = []
    for f in files:
        c = f.split("/")[0]
        if seen.get(c, 0) < per_class:
            out.append(f)
            seen[c] = seen.get(c, 0) + 1
    return out


def distillation_targets(
    parent_pbc: np.ndarray, y_pbc: np.ndarray, y_lab: np.ndarray, repeat: int, n_classes: int, weight: float
) -> np.ndarray:
    """Training targets of the fine-tune, rows in the order of its training set (the PBC cells, then
    the lab cells ``repeat`` times): on PBC cells ``weight`` × the parent model's probabilities (its
    classes first, zero for classes it lacks) + (1 − ``weight``) × the true class; on lab cells the
    true class. Keeping the parent's answers on the public cells is what stops the fine-tune from
    forgetting them ("Learning without Forgetting", Li & Hoiem, IEEE TPAMI 40:2935, 2018; Hinton et
    al., "Distilling the knowledge in a neural network", 2015); the lab's cells, on which the parent
    is wrong, are taught by their labels only.

    Raises:
        ValueError: ``weight`` outside 0..1 or more parent columns than classes.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight {weight} is not in 0..1")
    if parent_pbc.shape[1] > n_classes:
        raise ValueError("the parent has more classes than the fine-tuned model")
    eye = np.eye(n_classes, dtype=np.float32)
    parent = np.zeros((len(parent_pbc), n_classes), dtype=np.float32)
    parent[:, : parent_pbc.shape[1]] = parent_pbc
    pbc = weight * parent + (1.0 - weight) * eye[y_pbc]
    lab = np.concatenate([eye[y_lab]] * repeat) if repeat else np.zeros((0, n_classes), np.float32)
    return np.concatenate([pbc, lab]).astype(np.float32)


def _interpolate_towards_parent(
    model: Any,
    w0: list[np.ndarray],
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_pbc_val: int,
    classes: list[str],
    base_classes: list[str],
    parent_threshold: float,
    parent_val: np.ndarray | None,
) -> dict[str, Any]:
    """Set ``model`` to the mix of its parent's weights ``w0`` and its own that keeps the PBC
    validation figures within the promotion margin with the most lab validation accuracy
    (:mod:`hemato_model.training.weight_interpolation`); returns the choice and what was tried."""
    from hemato_model.training.weight_interpolation import choose_alpha, interpolate

    w1 = model.get_weights()
    sets = {"pbc_val": slice(0, n_pbc_val), "lab_val": slice(n_pbc_val, len(x_val))}
    sets = {k: v for k, v in sets.items() if v.stop > v.start}
    truth = {k: [classes[i] for i in y_val[v]] for k, v in sets.items()}

    from hemato_model.training.model_comparison import model_figures

    baseline = None
    if parent_val is not None and "pbc_val" in sets:  # the parent's answers on the PBC validation cells
        baseline = {"pbc_val": model_figures(truth["pbc_val"], parent_val, base_classes, parent_threshold)}

    def predict(alpha: float) -> dict[str, np.ndarray]:
        model.set_weights(interpolate(w0, w1, alpha))
        proba = _predict(model, x_val)
        return {k: proba[v] for k, v in sets.items()}

    choice = choose_alpha(
        predict,
        truth,
        classes,
        [k for k in ("pbc_val",) if k in sets],
        "lab_val",
        current_classes=base_classes,
        threshold=parent_threshold,
        baseline=baseline,
    )
    model.set_weights(interpolate(w0, w1, choice["alpha"]))
    log.info("weight interpolation towards the parent: alpha %.2f", choice["alpha"])
    return choice


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate(
        [np.asarray(model(tf.cast(x[i : i + 64], tf.float32), training=False)) for i in range(0, len(x), 64)]
    )


def fine_tune_from_base(
    cfg: LabFineTuneConfig,
    progress: ProgressFactory | None = None,
    verbose: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fine-tune the base model on the lab's cells mixed with PBC; write the new model directory.

    Returns ``model.json``'s content. Raises:
        DataError: a missing folder, no lab images, no PBC data, or an existing non-empty ``out_dir``.
    """
    import keras

    t_start = time.time()
    base_dir, out_dir, data_dir = Path(cfg.base_dir), Path(cfg.out_dir), Path(cfg.data_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} exists and is not empty: give a new model folder")
    base_meta = json.loads((base_dir / "model.json").read_text())
    base_classes: list[str] = list(base_meta["classes"])
    input_px, crop_um = int(base_meta["input_px"]), float(base_meta["crop_um"])
    base_cfg = base_meta.get("training", {}).get("config", {})

    lab_paths, lab_labels = list_image_folder(data_dir)
    lab_rel = [str(p.resolve().relative_to(data_dir.resolve())) for p in lab_paths]
    lab_split = split_by_group(lab_slide_groups(data_dir, lab_rel), lab_labels, cfg.seed, cfg.lab_val_fraction)
    new_classes = sorted(set(lab_labels) - set(base_classes))
    classes = base_classes + new_classes
    pbc_root, pbc_split, pbc_mpp = _pbc_parts(base_dir, cfg.pbc_dir)
    pbc_train, pbc_val = (
        cap_per_class(pbc_split["train"], cfg.pbc_per_class),
        cap_per_class(pbc_split["val"], cfg.pbc_per_class),
    )

    configure_tensorflow(threads, cfg.seed)
    x_lab = load_lab_crops(lab_paths, crop_um, input_px)
    y_lab = np.array([classes.index(c) for c in lab_labels])
    x_pbc_tr = load_crops([pbc_root / f for f in pbc_train], pbc_mpp, crop_um, input_px, progress, "PBC train crops")
    x_pbc_va = load_crops([pbc_root / f for f in pbc_val], pbc_mpp, crop_um, input_px, progress, "PBC val crops")
    y_pbc_tr = np.array([classes.index(f.split("/")[0]) for f in pbc_train])
    y_pbc_va = np.array([classes.index(f.split("/")[0]) for f in pbc_val])
    lab_tr, lab_va = np.array(lab_split["train"], dtype=int), np.array(lab_split["val"], dtype=int)
    if len(lab_tr) == 0:
        raise DataError(f"{data_dir}: no lab cells left for training after the validation split")
    repeat = int(np.clip(round(0.5 * len(pbc_train) / len(lab_tr)), 1, cfg.max_lab_repeat))
    x_train = np.concatenate([x_pbc_tr, *([x_lab[lab_tr]] * repeat)])
    y_train = np.concatenate([y_pbc_tr, *([y_lab[lab_tr]] * repeat)])
    x_val = np.concatenate([x_pbc_va, x_lab[lab_va]])
    y_val = np.concatenate([y_pbc_va, y_lab[lab_va]])
    n_own = len(x_pbc_tr) + len(lab_tr)
    class_quantile = _parent_class_quantile(base_dir)
    if class_quantile is not None:
        from hemato_model.training.ood_stats import MIN_CLASS_CROPS

        thin = [c for k, c in enumerate(classes) if int((y_train[:n_own] == k).sum()) < MIN_CLASS_CROPS]
        if thin:
            raise DataError(
                f"{base_dir} abstains on per-class energy cut-offs, which need >= {MIN_CLASS_CROPS} training "
                f"cells per class; too few for {thin} (raise --pbc-per-class or add cells)"
            )

    base_model = keras.models.load_model(base_dir / "model.keras", compile=False, safe_mode=True)
    model, backbone = build_grown_model(
        base_model, str(base_meta.get("backbone", "efficientnet_lite0")), base_classes, classes, input_px
    )
    tcfg = TrainConfig(
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        input_px=input_px,
        crop_um=crop_um,
        seed=cfg.seed,
        head_epochs=cfg.head_epochs,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        finetune_lr=cfg.finetune_lr,
        unfreeze_from=cfg.unfreeze_from,
        patience=cfg.patience,
        aug_strength=float(base_cfg.get("aug_strength", 1.0)),
        min_resolution=base_cfg.get("min_resolution"),
        target_accuracy=float(base_cfg.get("target_accuracy", 0.99)),
        threshold_floor=float(base_cfg.get("threshold_floor", 0.5)),
    )
    parent_val = _predict(base_model, x_pbc_va) if cfg.epochs > 0 and cfg.interpolate and len(x_pbc_va) else None
    head_info: dict[str, Any] = {"grown": bool(new_classes)}
    if new_classes:
        head_info.update(fit_head(model, backbone, x_train, y_train, x_val, y_val, tcfg, verbose))
    ft_info: dict[str, Any] = {"epochs": 0}
    if cfg.epochs > 0:
        soft = None
        if cfg.distill > 0:
            soft = distillation_targets(
                _predict(base_model, x_pbc_tr), y_pbc_tr, y_lab[lab_tr], repeat, len(classes), cfg.distill
            )
        w0 = [w.copy() for w in model.get_weights()]
        ft_info = fine_tune(model, backbone, x_train, y_train, x_val, y_val, tcfg, verbose, soft_targets=soft)
        ft_info["distill"] = cfg.distill
        if cfg.interpolate:
            ft_info["interpolation"] = _interpolate_towards_parent(
                model, w0, x_val, y_val, len(x_pbc_va), classes, base_classes, float(base_meta["threshold"]), parent_val
            )

    val_proba = _predict(model, x_val)
    threshold = choose_threshold(val_proba, y_val, tcfg.target_accuracy, tcfg.threshold_floor)
    n_pv = len(x_pbc_va)
    correct = val_proba.argmax(1) == y_val

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_sha = _write_training_data(
        out_dir, pbc_root, pbc_train, pbc_val, data_dir, lab_paths, lab_rel, lab_labels, lab_split
    )
    _write_split(out_dir, pbc_root, pbc_split, data_dir, lab_rel, lab_split)
    parent = {"name": base_meta["name"], "version": base_meta["version"], "sha256": base_meta.get("sha256")}
    seconds = round(time.time() - t_start, 1)
    meta = {
        "name": cfg.name or f"{base_meta['name']}-lab",
        "version": cfg.version,
        "classes": classes,
        "input_px": input_px,
        "crop_um": crop_um,
        "threshold": round(threshold, 6),
        "backbone": base_meta.get("backbone", "efficientnet_lite0"),
        "preprocessing": base_meta.get("preprocessing", {}),
        "parent": parent,
        "training_data": {"manifest": TRAINING_DATA_FILE, "manifest_sha256": manifest_sha},
        "training": {
            "kind": "lab fine-tuning from the parent (hemato_model.training.lab_finetune)",
            "config": asdict(cfg),
            "recipe": {k: v for k, v in asdict(tcfg).items() if k not in ("data_dir", "out_dir", "extra")},
            "new_classes": new_classes,
            "n_pbc_train": len(pbc_train),
            "n_lab_train": int(len(lab_tr)),
            "lab_repeat": repeat,
            "n_pbc_val": n_pv,
            "n_lab_val": int(len(lab_va)),
            "n_lab_per_class": {c: int(lab_labels.count(c)) for c in sorted(set(lab_labels))},
            "head": head_info,
            "fine_tune": ft_info,
            "seconds": seconds,
            "val_accuracy_pbc": round(float(correct[:n_pv].mean()), 4) if n_pv else None,
            "val_accuracy_lab": round(float(correct[n_pv:].mean()), 4) if len(lab_va) else None,
            "threshold_rule": f"lowest top-probability cut-off >= {tcfg.threshold_floor} keeping "
            f">= {tcfg.target_accuracy:.0%} validation accuracy on retained cells (PBC val + lab val)",
            "val_unidentified_rate": round(float((val_proba.max(1) < threshold).mean()), 4),
        },
    }
    meta = save_model_dir(model, out_dir, meta)
    _write_ood(out_dir, x_train[:n_own], y_train[:n_own], class_quantile)
    (out_dir / "MODEL_CARD.md").write_text(model_card(meta))
    (out_dir / "metrics.json").write_text(json.dumps({"training": meta["training"]}, indent=1) + "\n")
    log.info("fine-tuned %s from %s in %.0f s", out_dir, base_dir, seconds)
    return meta


def _write_training_data(
    out_dir: Path,
    pbc_root: Path,
    pbc_train: list[str],
    pbc_val: list[str],
    lab_root: Path,
    lab_paths: list[Path],
    lab_rel: list[str],
    lab_labels: list[str],
    lab_split: dict[str, list[int]],
) -> str:
    """Write ``training_data.csv`` (source, file, class, part, sha256 of the file) and return its sha256."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "file", "class", "part", "sha256"])
    for part, files in (("train", pbc_train), ("val", pbc_val)):
        for f in files:
            w.writerow(["pbc", f, f.split("/")[0], part, _file_sha256(pbc_root / f)])
    for part in ("train", "val"):
        for i in lab_split[part]:
            w.writerow(["lab", lab_rel[i], lab_labels[i], part, _file_sha256(lab_paths[i])])
    text = buf.getvalue()
    (out_dir / TRAINING_DATA_FILE).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_split(
    out_dir: Path,
    pbc_root: Path,
    pbc_split: dict[str, list[str]],
    lab_root: Path,
    lab_rel: list[str],
    lab_split: dict[str, list[int]],
) -> None:
    """The new model's split.json: the PBC parts as the parent's (its test split stays unseen) and the lab's."""
    doc = {
        "data_dir": str(pbc_root),
        **pbc_split,
        "lab": {"data_dir": str(lab_root), **{k: [lab_rel[i] for i in v] for k, v in lab_split.items()}},
    }
    (out_dir / "split.json").write_text(json.dumps(doc, indent=1) + "\n")


def _parent_class_quantile(base_dir: Path) -> float | None:
    """The parent's per-class energy quantile (its ``ood.json``), or None when it has none."""
    path = base_dir / "ood.json"
    q = json.loads(path.read_text()).get("class_quantile") if path.is_file() else None
    return float(q) if q is not None else None


def _write_ood(out_dir: Path, x_train: np.ndarray, y_train: np.ndarray, class_quantile: float | None) -> None:
    """``ood.json`` of the new model: the energy distribution on its own training crops (the domain
    gate's reference, as ``benchmarks/fit_ood_stats.py`` fits it for the shipped model) and, when the
    parent abstains on per-class energy cut-offs, the new model's own cut-offs at the parent's quantile."""
    from hemato_model.classifier import OOD_FILE, Classifier
    from hemato_model.training.ood_stats import class_energy_thresholds, energy_statistics

    clf = Classifier.load(out_dir)
    proba, energy = clf.predict_scored(x_train)
    if energy is None:
        return
    doc = {
        **energy_statistics(energy),
        "fitted_on": f"{len(energy)} training crops (PBC train + lab train)",
    }
    if class_quantile is not None:
        truth = [clf.classes[int(k)] for k in y_train]
        doc["class_quantile"] = class_quantile
        try:
            doc["class_energy_thresholds"] = class_energy_thresholds(proba, energy, truth, clf.classes, class_quantile)
        except ValueError as e:
            shutil.rmtree(out_dir, ignore_errors=True)  # the folder was new: leave nothing half-written
            raise DataError(f"no per-class energy cut-offs for the new model, nothing written: {e}") from e
    (out_dir / OOD_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def model_card(meta: dict[str, Any]) -> str:
    """MODEL_CARD.md of a lab fine-tuned model."""
    t = meta["training"]
    parent = meta["parent"]
    return f"""# Model card: {meta["name"]} {meta["version"]}

Lab fine-tuned white-cell classifier, continued from **{parent["name"]} {parent["version"]}**
(sha256 `{parent["sha256"]}`) on the lab's reviewed cells mixed with the parent's public PBC
training split (so the PBC classes are not forgotten). Same input, crop size, augmentation and
threshold rule as the parent; see the parent's MODEL_CARD.md for the data licences.

- **sha256 of model.keras:** `{meta["sha256"]}`
- **Classes (output order):** {", ".join(meta["classes"])}
  (new here: {", ".join(t["new_classes"]) or "none"})
- **Input:** uint8 RGB crop, {meta["input_px"]}×{meta["input_px"]} px = {meta["crop_um"]:g} µm around the cell centre.
- **Threshold:** {meta["threshold"]:.4f} ({t["threshold_rule"]}).
- **Training data:** {t["n_pbc_train"]} PBC training crops + {t["n_lab_train"]} lab crops
  (repeated ×{t["lab_repeat"]}); validation {t["n_pbc_val"]} PBC + {t["n_lab_val"]} lab crops (lab split by
  slide). Lab cells per class: {json.dumps(t["n_lab_per_class"])}. Exact files and their sha256:
  `{TRAINING_DATA_FILE}` (its sha256: `{meta["training_data"]["manifest_sha256"]}`).
- **Validation accuracy:** PBC {t["val_accuracy_pbc"]}, lab {t["val_accuracy_lab"]}; training took {t["seconds"]} s.
- **Before use:** run `hematovision validate-model` against the current model on held-out lab
  cells (not these) and the PBC test split; a lab director signs its PDF report.
- **Decision support only:** every differential is reviewed by a qualified technologist.
"""
