"""``hematovision train-rbc`` and ``evaluate-rbc``: the red-cell morphology classifier's commands.

Data folders hold ``images/`` and ``labels/`` (``x y class`` per line, the Chula RBC-12 layout).
TensorFlow and the model package are imported inside the commands, so ``--help`` stays fast. Bad
input (missing folder, malformed labels, not a red-cell model) ends with a one-line message and
exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from hematovision.cli.model_commands import _progress_factory, _quiet_tensorflow
from hematovision.cli.options import settings_or_exit

_SCALE_HELP = (
    "How µm/px is estimated when --mpp is not given: 'folder' (median of the per-field estimates, "
    "one camera) or 'field' (each field's own estimate)."
)


def _check_inputs(data_dir: Path, mpp: float | None) -> None:
    """The checks both commands make before loading anything: quiet TensorFlow, the folder, --mpp."""
    _quiet_tensorflow()
    if not data_dir.is_dir():
        raise click.UsageError(f"data folder not found: {data_dir}")
    if mpp is not None and not mpp > 0:
        raise click.UsageError("--mpp must be positive")


@click.command("train-rbc")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder with images/ and labels/ (one 'x y class' line per labelled red cell).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--mpp", type=float, default=None, help="µm/px of the fields [default: estimated from red cells].")
@click.option("--scale", "scale_mode", type=click.Choice(["folder", "field"]), default="folder", help=_SCALE_HELP)
@click.option("--epochs", default=12, show_default=True, help="Fine-tuning epochs (0 = frozen backbone + head only).")
@click.option("--patience", default=3, show_default=True, help="Early-stopping patience (epochs).")
@click.option("--max-minutes", default=24.0, show_default=True, help="Wall-clock budget of the fine-tuning.")
@click.option("--seed", default=1, show_default=True, help="Seed of the split by field, initialisation, augmentation.")
@click.option("--input-px", default=64, show_default=True, help="Network input size in pixels.")
@click.option("--crop-um", default=12.0, show_default=True, help="Physical side of each crop in µm.")
@click.option("--lr", "finetune_lr", default=1e-3, show_default=True, help="Fine-tuning peak learning rate.")
@click.option("--version", "model_version", default="1.0.0", show_default=True)
@click.option(
    "--context/--no-context",
    default=False,
    show_default=True,
    help="Background/context augmentation: random glass colour, isolated cells, neighbours, JPEG "
    "(crops relit to one glass colour for validation and use).",
)
@click.option(
    "--init-model",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Start from this red-cell model directory (trained on the same split) instead of ImageNet.",
)
@click.option("--shift", default=0.04, show_default=True, help="Translation jitter, fraction of the crop side.")
@click.option("--threads", default=2, show_default=True, help="CPU threads for TensorFlow (0 = all).")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
def train_rbc_command(
    data_dir: Path,
    out_dir: Path,
    mpp: float | None,
    scale_mode: str,
    epochs: int,
    patience: int,
    max_minutes: float,
    seed: int,
    input_px: int,
    crop_um: float,
    finetune_lr: float,
    model_version: str,
    context: bool,
    init_model: Path | None,
    shift: float,
    threads: int,
    quiet: bool,
) -> None:
    """Train the red-cell morphology classifier (split by field) and write a model directory."""
    _check_inputs(data_dir, mpp)
    if input_px < 32:
        raise click.UsageError("--input-px must be at least 32")
    if not crop_um > 0 or epochs < 0 or not max_minutes > 0:
        raise click.UsageError("--crop-um and --max-minutes must be positive, --epochs not negative")
    if init_model is not None and not (init_model / "model.keras").is_file():
        raise click.UsageError(f"--init-model {init_model}: no model.keras there")
    if not 0 <= shift < 0.5:
        raise click.UsageError("--shift must lie in 0..0.5")
    from hemato_model.rbc.data import RbcDataError, list_fields
    from hemato_model.rbc.train import RbcTrainConfig, train_rbc

    try:
        list_fields(data_dir)  # fail on a bad folder before TensorFlow starts
    except RbcDataError as exc:
        raise click.UsageError(str(exc)) from None
    settings = settings_or_exit()
    cfg = RbcTrainConfig(
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        input_px=input_px,
        crop_um=crop_um,
        mpp=mpp,
        scale_mode=scale_mode,
        seed=seed,
        epochs=epochs,
        patience=patience,
        max_minutes=max_minutes,
        finetune_lr=finetune_lr,
        version=model_version,
        context=context,
        init_model=None if init_model is None else str(init_model),
        shift=shift,
    )
    try:
        meta = train_rbc(
            cfg,
            progress=_progress_factory(not quiet),
            verbose=0 if quiet else 2,
            threads=threads or None,
            cache_dir=settings.cache_dir,
        )
    except RbcDataError as exc:
        raise click.UsageError(str(exc)) from None
    info = meta["training"]
    click.echo(
        json.dumps(
            {
                "model_dir": str(out_dir),
                "split": "by field: " + str(out_dir / "split.json"),
                "n_fields": info["n_fields"],
                "n_cells": info["n_cells"],
                "scale": meta["preprocessing"]["scale"],
                "val_accuracy": info["val_accuracy"],
                "val_macro_f1": info["val_macro_f1"],
                "seconds": info["seconds"],
            }
        )
    )


@click.command("evaluate-rbc")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder with images/ and labels/ (one 'x y class' line per labelled red cell).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Red-cell model directory [default: the shipped rbc-effnetlite0-v1.1].",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),
    default="test",
    show_default=True,
    help="Fields of this part of the model's split.json (split by field), or 'all' fields of the folder.",
)
@click.option("--mpp", type=float, default=None, help="µm/px of the fields [default: estimated from red cells].")
@click.option("--scale", "scale_mode", type=click.Choice(["folder", "field"]), default="folder", help=_SCALE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--threads", default=2, show_default=True, help="CPU threads for TensorFlow (0 = all).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_rbc_command(
    data_dir: Path,
    model_dir: Path | None,
    split: str,
    mpp: float | None,
    scale_mode: str,
    as_json: bool,
    threads: int,
    quiet: bool,
) -> None:
    """Evaluate a red-cell model on labelled fields: accuracy, macro_f1, per_class, confusion_matrix, scale."""
    _check_inputs(data_dir, mpp)
    from hemato_model.rbc.data import RbcDataError, list_fields
    from hematovision.core.settings import RBC_MODEL_DIR

    try:
        list_fields(data_dir)  # fail on a bad folder before TensorFlow starts
    except RbcDataError as exc:
        raise click.UsageError(str(exc)) from None
    model_dir = model_dir or RBC_MODEL_DIR
    from hemato_model.runtime import limit_tensorflow_threads

    limit_tensorflow_threads(threads or None)
    from hemato_model.classifier import Classifier, ModelError
    from hemato_model.rbc.evaluate import evaluate_rbc

    t0 = time.time()
    try:
        clf = Classifier.load(model_dir)
        result = evaluate_rbc(
            clf, data_dir, mpp, None if split == "all" else split, scale_mode, _progress_factory(not quiet)
        )
    except (ModelError, RbcDataError) as exc:
        raise click.UsageError(str(exc)) from None
    result["seconds"] = round(time.time() - t0, 1)
    click.echo(json.dumps(result))


COMMANDS: list[click.Command] = [train_rbc_command, evaluate_rbc_command]
