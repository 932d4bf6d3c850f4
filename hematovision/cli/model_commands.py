"""``hematovision train``, ``evaluate``, ``bench-classifier`` and ``prepare-blast-data``: the white-cell
classifier's commands.

TensorFlow and the model package are imported inside the commands, so ``--help`` stays fast.
Problems with the user's input (missing folder, not a model directory) end with a one-line
message and exit status 2 (click's usage error), never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from hemato_model.training.scan_storage import JPEG_QUALITY, SCAN_MPP_MIN
from hematovision.cli.options import settings_or_exit


def _progress_factory(enabled: bool) -> Any:
    if not enabled:
        return None

    def factory(total: int, label: str) -> Any:
        bar = click.progressbar(length=total, label=label, file=sys.stderr)
        bar.__enter__()
        return bar

    return factory


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _threads(threads: int | None) -> None:
    from hemato_model.runtime import limit_tensorflow_threads

    limit_tensorflow_threads(threads)


@click.command("train")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Image folder: one subfolder per class, one centred cell per image.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--epochs", default=20, show_default=True, help="Fine-tuning epochs (0 = frozen backbone + head only).")
@click.option("--head-epochs", default=200, show_default=True, help="Most epochs of the head on frozen features.")
@click.option("--seed", default=1, show_default=True, help="Seed of the split, initialisation and augmentation.")
@click.option("--input-px", default=128, show_default=True, help="Network input size in pixels.")
@click.option("--crop-um", default=24.0, show_default=True, help="Physical side of each crop in µm.")
@click.option("--mpp", default=None, type=float, help="µm/px of the training images [default: PBC 0.08].")
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--unfreeze-from", default="block3a", show_default=True, help="First backbone block fine-tuned.")
@click.option("--lr", "finetune_lr", default=3e-4, show_default=True, help="Fine-tuning learning rate.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--patience", default=6, show_default=True, help="Early-stopping patience (epochs).")
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue fine-tuning this model directory (skips the head stage).",
)
@click.option("--aug-strength", default=1.0, show_default=True, help="Scale of the colour/stain jitter.")
@click.option("--limit-per-class", default=None, type=int, help="Use at most this many images per class.")
@click.option("--version", "model_version", default="1.0.0", show_default=True)
@click.option("--name", "model_name", default=None, help="Model name [default: wbc-effnetlite0].")
@click.option(
    "--extra-data",
    type=click.Path(path_type=Path),
    default=None,
    help="Second image folder of crops already at model scale (input_px = crop_um), whose "
    "subfolders add classes or cells (e.g. blast crops from `hematovision prepare-blast-data`); "
    "its split.json is used if present. The --data split is unchanged by it.",
)
@click.option(
    "--min-resolution",
    default=None,
    type=click.FloatRange(0.1, 1.0),
    help="Extra resolution-loss augmentation: half of each batch down-sampled to this "
    "fraction of its side (random, up to 1) and back [default: none].",
)
@click.option(
    "--scan-storage",
    "scan_storage_mpp",
    default=None,
    type=click.FloatRange(SCAN_MPP_MIN, 2.0),
    help=f"Scan-storage augmentation: half of each batch re-sampled as a slide scan at {SCAN_MPP_MIN} up to "
    f"this many µm/px and stored as JPEG {JPEG_QUALITY[0]}-{JPEG_QUALITY[1]} with 4:2:0 chroma, as scanners "
    "store tiles [default: none].",
)
@click.option(
    "--base",
    "base_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Fine-tune this model directory on --data (a `dataset export` folder of reviewed cells) mixed "
    "with its PBC training split; new classes grow the head [defaults then: --epochs 3, --lr 1e-4, "
    "--unfreeze-from block5a].",
)
@click.option(
    "--pbc",
    "pbc_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="With --base: the PBC folder, when not where the base's split.json says.",
)
@click.option("--pbc-per-class", type=int, default=None, help="With --base: at most this many PBC cells per class.")
@click.option(
    "--distill",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="With --base: weight of the base model's own answers in the PBC cells' targets "
    "(learning without forgetting; 0 = the labels only).",
)
@click.option(
    "--interpolate/--no-interpolate",
    default=True,
    show_default=True,
    help="With --base: keep the mix of the base's and the fine-tuned weights that holds the PBC "
    "validation figures within the promotion margin with the most lab validation accuracy.",
)
@click.option(
    "--aug-profile",
    type=click.Choice(["standard", "domain"]),
    default="standard",
    show_default=True,
    help="Fine-tuning augmentation: 'domain' adds the cross-laboratory stain, blur, JPEG and "
    "scale jitter of hemato_model.training.stain_augmentation (and selects the epoch on the "
    "validation crops plus a stain-shifted copy of them).",
)
@click.option("--threads", default=2, show_default=True, help="CPU threads for TensorFlow (0 = all).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def train_command(
    ctx: click.Context,
    data_dir: Path,
    out_dir: Path,
    epochs: int,
    head_epochs: int,
    seed: int,
    input_px: int,
    crop_um: float,
    mpp: float | None,
    backbone: str,
    unfreeze_from: str,
    finetune_lr: float,
    batch_size: int,
    patience: int,
    init_from: Path | None,
    aug_strength: float,
    limit_per_class: int | None,
    model_version: str,
    model_name: str | None,
    extra_data: Path | None,
    min_resolution: float | None,
    scan_storage_mpp: float | None,
    base_dir: Path | None,
    pbc_dir: Path | None,
    pbc_per_class: int | None,
    distill: float,
    interpolate: bool,
    aug_profile: str,
    threads: int,
    quiet: bool,
) -> None:
    """Train the white-cell classifier (frozen head, then fine-tuning) and write a model directory;
    with --base, fine-tune an existing model on a lab's reviewed cells."""
    _quiet_tensorflow()
    if not data_dir.is_dir():
        raise click.UsageError(f"data folder not found: {data_dir}")
    if base_dir is not None:
        given = {
            name
            for name in (
                "epochs",
                "finetune_lr",
                "unfreeze_from",
                "seed",
                "batch_size",
                "patience",
                "head_epochs",
                "distill",
                "interpolate",
            )
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        }
        _train_from_base(
            data_dir,
            base_dir,
            out_dir,
            pbc_dir,
            pbc_per_class,
            {k: v for k, v in ctx.params.items() if k in given},
            model_name,
            model_version,
            threads,
            quiet,
        )
        return
    if init_from is not None and not (init_from / "model.keras").is_file():
        raise click.UsageError(f"--init-from: not a model directory: {init_from}")
    if input_px < 32:
        raise click.UsageError("--input-px must be at least 32")
    if extra_data is not None and not extra_data.is_dir():
        raise click.UsageError(f"--extra-data: folder not found: {extra_data}")
    from hemato_model.training.classifier_training import MODEL_NAME, DataError, TrainConfig, train
    from hematovision.core.datasets import PBC_MPP

    settings = settings_or_exit()
    cfg = TrainConfig(
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        backbone=backbone,
        input_px=input_px,
        crop_um=crop_um,
        mpp=mpp or PBC_MPP,
        seed=seed,
        epochs=epochs,
        head_epochs=head_epochs,
        unfreeze_from=unfreeze_from,
        finetune_lr=finetune_lr,
        batch_size=batch_size,
        patience=patience,
        limit_per_class=limit_per_class,
        version=model_version,
        init_from=str(init_from) if init_from else None,
        aug_strength=aug_strength,
        name=model_name or MODEL_NAME,
        extra_data=str(extra_data) if extra_data else None,
        min_resolution=min_resolution,
        aug_profile=aug_profile,
        scan_storage_mpp=scan_storage_mpp,
    )
    try:
        meta = train(
            cfg,
            progress=_progress_factory(not quiet),
            verbose=0 if quiet else 1,
            threads=threads or None,
            cache_dir=settings.cache_dir,
        )
    except DataError as exc:
        raise click.UsageError(str(exc)) from None
    info = meta["training"]
    click.echo(
        json.dumps(
            {
                "model_dir": str(out_dir),
                "classes": meta["classes"],
                "input_px": meta["input_px"],
                "crop_um": meta["crop_um"],
                "threshold": meta["threshold"],
                "val_accuracy": info["val_accuracy"],
                "val_unidentified_rate": info["val_unidentified_rate"],
                "seconds": info["seconds"],
            }
        )
    )


def _moved_pbc(model_dir: Path) -> Path | None:
    """The data root's PBC folder when the one a model's split.json names is not there (data moved)."""
    from hematovision.core.datasets import pbc_root

    try:
        named = Path(json.loads((model_dir / "split.json").read_text()).get("data_dir", ""))
    except (OSError, ValueError):
        return None
    if named.is_dir():
        return None
    here = pbc_root(settings_or_exit().data_root)
    return here if here.is_dir() else None


def _train_from_base(
    data_dir: Path,
    base_dir: Path,
    out_dir: Path,
    pbc_dir: Path | None,
    pbc_per_class: int | None,
    overrides: dict[str, Any],
    model_name: str | None,
    model_version: str,
    threads: int,
    quiet: bool,
) -> None:
    """``train --base``: :func:`hemato_model.training.lab_finetune.fine_tune_from_base`; one JSON line."""
    from hemato_model.classifier import ModelError, read_model_spec
    from hemato_model.training.classifier_training import DataError
    from hemato_model.training.lab_finetune import LabFineTuneConfig, fine_tune_from_base

    try:
        read_model_spec(base_dir)
    except ModelError as exc:
        raise click.UsageError(f"--base: {exc}") from None
    if pbc_dir is not None and not pbc_dir.is_dir():
        raise click.UsageError(f"--pbc: folder not found: {pbc_dir}")
    if pbc_dir is None:
        pbc_dir = _moved_pbc(base_dir)
    cfg = LabFineTuneConfig(
        data_dir=str(data_dir),
        base_dir=str(base_dir),
        out_dir=str(out_dir),
        pbc_dir=str(pbc_dir) if pbc_dir else None,
        pbc_per_class=pbc_per_class,
        name=model_name,
        version=model_version,
        **overrides,
    )
    import contextlib

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras' progress lines: stdout stays JSON only
            meta = fine_tune_from_base(
                cfg, progress=_progress_factory(not quiet), verbose=0 if quiet else 2, threads=threads or None
            )
    except DataError as exc:
        raise click.UsageError(str(exc)) from None
    t = meta["training"]
    click.echo(
        json.dumps(
            {
                "model_dir": str(out_dir),
                "name": meta["name"],
                "version": meta["version"],
                "sha256": meta["sha256"],
                "parent": meta["parent"],
                "training_data_sha256": meta["training_data"]["manifest_sha256"],
                "classes": meta["classes"],
                "new_classes": t["new_classes"],
                "threshold": meta["threshold"],
                "val_accuracy_pbc": t["val_accuracy_pbc"],
                "val_accuracy_lab": t["val_accuracy_lab"],
                "n_pbc_train": t["n_pbc_train"],
                "n_lab_train": t["n_lab_train"],
                "interpolation_alpha": t["fine_tune"].get("interpolation", {}).get("alpha"),
                "seconds": t["seconds"],
            }
        )
    )


@click.command("evaluate")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    help="Image folder (one subfolder per class); folders not named like a model class are skipped.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Model directory [default: settings.model_dir, the shipped model].",
)
@click.option(
    "--mpp",
    type=float,
    default=None,
    help="µm/px of the images: the crop is crop_um around the image centre at this scale "
    "[default: measured on every image (red cells, else the centred white cell); the JSON says "
    "mpp_source and the spread of the estimates].",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    default=None,
    help="Only the files of this part of the model's split.json (e.g. its held-out test set).",
)
@click.option(
    "--bccd",
    "bccd_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Out-of-domain test on a BCCD folder (WBC boxes + extra/wbc_subtype_labels.csv).",
)
@click.option(
    "--blast-data",
    "blast_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Blast evaluation on a `hematovision prepare-blast-data` folder (held-out ALL fields), with "
    "false-blast rates on --data (PBC, held-out --split) and --bccd lymphocytes if given.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write the confusion matrix PNG here.")
@click.option("--threads", default=2, show_default=True, help="CPU threads for TensorFlow (0 = all).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_command(
    data_dir: Path | None,
    model_dir: Path | None,
    mpp: float | None,
    split: str | None,
    bccd_dir: Path | None,
    blast_dir: Path | None,
    as_json: bool,
    plot: Path | None,
    threads: int,
    quiet: bool,
) -> None:
    """Evaluate a classifier on an image folder (or BCCD) and print one JSON object."""
    _quiet_tensorflow()
    from hematovision.core.settings import load_settings

    if data_dir is None and bccd_dir is None and blast_dir is None:
        raise click.UsageError("give --data DIR, --bccd DIR or --blast-data DIR")
    if blast_dir is not None and not (blast_dir / "split.json").is_file():
        raise click.UsageError(
            f"--blast-data: no split.json in {blast_dir} (make it with `hematovision prepare-blast-data`)"
        )
    if data_dir is not None and not data_dir.is_dir():
        raise click.UsageError(f"data folder not found: {data_dir}")
    if bccd_dir is not None and not bccd_dir.is_dir():
        raise click.UsageError(f"BCCD folder not found: {bccd_dir}")
    if mpp is not None and mpp <= 0:
        raise click.UsageError("--mpp must be positive")
    model_dir = model_dir or load_settings().model_dir
    _threads(threads)
    from hemato_model.classifier import Classifier, ModelError
    from hemato_model.training.classifier_training import DataError
    from hemato_model.training.evaluation import evaluate_bccd, evaluate_blast, evaluate_folder, plot_confusion

    try:
        clf = Classifier.load(model_dir)
        t0 = time.time()
        if blast_dir is not None:
            result = evaluate_blast(clf, blast_dir, data_dir, bccd_dir, split or "test")
            plot = None
        elif bccd_dir is not None:
            result = evaluate_bccd(clf, bccd_dir, mpp)
        else:
            assert data_dir is not None
            result = evaluate_folder(clf, data_dir, mpp, split, progress=_progress_factory(not quiet))
    except (ModelError, DataError) as exc:
        raise click.UsageError(str(exc)) from None
    result["seconds"] = round(time.time() - t0, 1)
    if plot is not None:
        plot_confusion(result, plot)
        result["plot"] = str(plot)
    click.echo(json.dumps(result))


@click.command("bench-classifier")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None)
@click.option("--n", "n_crops", default=512, show_default=True, help="Crops per timed pass.")
@click.option("--threads", default=2, show_default=True)
def bench_command(model_dir: Path | None, n_crops: int, threads: int) -> None:
    """Cells per second of the classifier vs Keras ResNet50 at 224 px (one JSON object)."""
    _quiet_tensorflow()
    from hematovision.core.settings import load_settings
    from hematovision.devtools.classifier_speed import run_benchmark

    settings = load_settings()
    click.echo(json.dumps(run_benchmark(model_dir or settings.model_dir, settings.data_root, n_crops, threads)))


@click.command("prepare-blast-data")
@click.argument("all_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--pbc",
    "pbc_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PBC image folder (colour reference).",
)
@click.option(
    "--split",
    "split_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="split.json whose PBC training files give the colour reference.",
)
@click.option(
    "--clean-with",
    type=click.Path(path_type=Path),
    default=None,
    help="Model directory: drop cells it calls a granulocyte or platelet (p >= 0.9).",
)
@click.option("--seed", default=1, show_default=True, help="Seed of the train/val/test split of field groups.")
@click.option("--limit", type=int, default=None, help="At most this many fields per source class (quick runs).")
def prepare_blast_data_command(
    all_root: Path,
    out_dir: Path,
    pbc_dir: Path,
    split_file: Path,
    clean_with: Path | None,
    seed: int,
    limit: int | None,
) -> None:
    """Cut blast/hematogone training crops from the ALL field images (ALL_ROOT: the aria_all folder)
    into OUT_DIR, with their split.json; print a one-line JSON summary."""
    _quiet_tensorflow()
    from hemato_model.training.blast_data import build_blast_crops, drop_by_classifier, pbc_reference

    logging.basicConfig(level=logging.INFO)
    try:
        train_files = json.loads(split_file.read_text())["train"]
    except (ValueError, KeyError, TypeError):
        raise click.UsageError(f"--split: not a split.json with a 'train' list: {split_file}") from None
    drop_by = None
    if clean_with is not None:
        from hemato_model.classifier import Classifier, ModelError

        try:
            drop_by = drop_by_classifier(Classifier.load(clean_with))
        except ModelError as exc:
            raise click.UsageError(f"--clean-with: {exc}") from None
    reference = pbc_reference(pbc_dir, train_files)
    doc = build_blast_crops(all_root, out_dir, reference, seed=seed, drop_by=drop_by, limit=limit)
    if clean_with is not None:
        doc["cleaned_with"] = str(clean_with)
        (out_dir / "split.json").write_text(json.dumps(doc, indent=1) + "\n")
    summary = {p: len(doc[p]) for p in ("train", "val", "test", "dropped")}
    summary["fallback_fields"] = sum(f["mpp_fallback"] for f in doc["fields"])
    click.echo(json.dumps({**summary, "median_mpp": doc["median_mpp"]}))


COMMANDS: list[click.Command] = [train_command, evaluate_command, bench_command, prepare_blast_data_command]
