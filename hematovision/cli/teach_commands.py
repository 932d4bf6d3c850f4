"""``hematovision dataset export`` and ``hematovision validate-model``: the lab teaches the model.

Reviewed cells leave the database as an image folder (:mod:`hematovision.service.dataset_export`),
``hematovision train --base`` fine-tunes from the shipped model
(:mod:`hemato_model.training.lab_finetune`), and ``validate-model`` compares the new model with the
current one before anyone may promote it (:mod:`hemato_model.training.model_comparison`, the flag
check :mod:`hematovision.service.flag_changes`, the PDF :mod:`hematovision.exports.validation_pdf`).
Heavy imports happen inside the commands. With ``--json`` only JSON goes to stdout.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from hematovision.cli.options import settings_or_exit


def _settings(database_url: str | None) -> Any:
    settings = settings_or_exit()
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO date or time: {value!r}", param_hint="--since") from None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


_database_url = click.option(
    "--database-url",
    default=None,
    help="Results database (SQLAlchemy URL) [default: the installation's, HEMATOVISION_DATABASE_URL].",
)


@click.group("dataset")
def dataset() -> None:
    """Reviewed cells as a training data set."""


@dataset.command("export")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="New folder to write.")
@click.option("--since", default=None, help="Only slides signed off (cells reviewed) at or after this UTC date/time.")
@click.option("--signed-only", is_flag=True, help="Only signed-off slides (every white cell confirmed).")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Model whose physical crop size (crop_um) the crops are cut at [default: settings.model_dir].",
)
@_database_url
def dataset_export(
    out_dir: Path, since: str | None, signed_only: bool, model_dir: Path | None, database_url: str | None
) -> None:
    """Write reviewed white cells as one folder per final label, with manifest.csv (no patient identifiers);
    print a JSON summary."""
    from sqlalchemy.exc import SQLAlchemyError

    from hemato_model.classifier import ModelError, read_model_spec
    from hematovision.service.dataset_export import ExportError, check_out_dir, export_reviewed_cells
    from hematovision.store.db import make_engine, make_session_factory

    when = _parse_since(since)
    try:
        check_out_dir(out_dir)
    except ExportError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings(database_url)
    try:
        crop_um = read_model_spec(model_dir or settings.model_dir).crop_um
    except ModelError as exc:
        raise click.UsageError(f"--model: {exc}") from None
    engine = make_engine(settings, pooled=False)
    try:
        with make_session_factory(engine)() as session:
            result = export_reviewed_cells(session, out_dir, crop_um=crop_um, since=when, signed_only=signed_only)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database error: {exc.__class__.__name__}") from None
    finally:
        engine.dispose()
    click.echo(json.dumps(result.to_dict()))


def _model_doc(clf: Any) -> dict[str, Any]:
    meta = clf.meta
    return {
        "dir": str(clf.model_dir),
        "name": clf.name,
        "version": clf.version,
        "sha256": meta.get("sha256"),
        "classes": list(clf.classes),
        "threshold": clf.threshold,
        "parent": meta.get("parent"),
        "training_data_sha256": (meta.get("training_data") or {}).get("manifest_sha256"),
    }


@click.command("validate-model")
@click.argument("candidate_dir", type=click.Path(path_type=Path))
@click.option(
    "--against", "current_dir", required=True, type=click.Path(path_type=Path), help="The current model directory."
)
@click.option(
    "--data",
    "held_out",
    required=True,
    type=click.Path(path_type=Path),
    help="The lab's held-out reviewed cells (a `dataset export` folder not used for training).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON document on stdout (the default output).")
@click.option(
    "--pdf", "pdf_path", type=click.Path(path_type=Path), default=None, help="Write the validation report here."
)
@click.option("--margin", default=0.02, show_default=True, type=click.FloatRange(0, 0.5), help="Largest allowed drop.")
@click.option(
    "--min-support",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Per-class recall is protected only for classes with at least this many cells in a data set.",
)
@click.option("--slides", "n_slides", type=click.IntRange(1), default=None, help="Re-run the last N signed-off slides.")
@_database_url
@click.option("--pbc", "pbc_dir", type=click.Path(path_type=Path), default=None, help="PBC folder, if moved.")
@click.option(
    "--pbc-exclude",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File listing PBC test files (one per line) to leave out, e.g. cells a simulated lab was made of.",
)
@click.option("--override-reason", default=None, help="Promote despite drops, for this reason (recorded).")
@click.option("--threads", default=2, show_default=True, help="CPU threads for TensorFlow (0 = all).")
def validate_model(
    candidate_dir: Path,
    current_dir: Path,
    held_out: Path,
    as_json: bool,
    pdf_path: Path | None,
    margin: float,
    min_support: int,
    n_slides: int | None,
    database_url: str | None,
    pbc_dir: Path | None,
    pbc_exclude: Path | None,
    override_reason: str | None,
    threads: int,
) -> None:
    """Compare CANDIDATE_DIR with the current model on held-out lab cells and the PBC test split; print
    the JSON verdict (exit status 1 when not promotable, unless --override-reason)."""
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not held_out.is_dir():
        raise click.UsageError(f"--data: folder not found: {held_out}")
    if override_reason is not None and not override_reason.strip():
        raise click.UsageError("--override-reason must not be empty")
    from hemato_model.classifier import Classifier, ModelError
    from hemato_model.runtime import limit_tensorflow_threads
    from hemato_model.training.classifier_training import DataError
    from hemato_model.training.model_comparison import (
        compare_models,
        flag_change_summary,
        held_out_figures,
        pbc_figures,
        pbc_test_files,
    )

    limit_tensorflow_threads(threads or None)
    try:
        candidate, current = Classifier.load(candidate_dir), Classifier.load(current_dir)
    except ModelError as exc:
        raise click.UsageError(str(exc)) from None
    exclude = pbc_exclude.read_text().split() if pbc_exclude else []
    try:
        root, files, mpp = pbc_test_files(current.model_dir, exclude)
        if pbc_dir is None and not root.is_dir():
            from hematovision.core.datasets import pbc_root

            pbc_dir = pbc_root(settings_or_exit().data_root)  # the data moved: the data root's PBC
        root = pbc_dir or root
        if not root.is_dir():
            raise DataError(f"PBC folder not found: {root} (give --pbc DIR)")
        cur_figs, new_figs = {}, {}
        cur_figs["lab_held_out"], n_held = held_out_figures(current, held_out)
        new_figs["lab_held_out"], _ = held_out_figures(candidate, held_out)
        cur_figs["pbc_test"] = pbc_figures(current, root, files, mpp)
        new_figs["pbc_test"] = pbc_figures(candidate, root, files, mpp)
    except DataError as exc:
        raise click.UsageError(str(exc)) from None
    verdict = compare_models(
        cur_figs, new_figs, current.classes, margin=margin, min_support=min_support, override_reason=override_reason
    )
    doc: dict[str, Any] = {
        "candidate": _model_doc(candidate),
        "current": _model_doc(current),
        "data": {
            "lab_held_out": {"dir": str(held_out), "n": n_held},
            "pbc_test": {"dir": str(root), "n": len(files), "excluded": len(exclude), "mpp": mpp},
        },
        "current_figures": cur_figs,
        "candidate_figures": new_figs,
        "verdict": verdict,
        "promotable": verdict["promotable"],
        "dropped": verdict["dropped"],
    }
    if n_slides:
        doc["flag_changes"] = flag_change_summary(_slide_flags(database_url, current, candidate, n_slides))
    if pdf_path is not None:
        from hematovision.exports.validation_pdf import validation_report_pdf

        validation_report_pdf(doc, pdf_path)
        doc["pdf"] = str(pdf_path)
    # Beside the model, where `hematovision models register` reads the verdict for promotion.
    (candidate_dir / "validation.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    click.echo(json.dumps(doc))
    if not verdict["promotable"]:
        sys.exit(1)


def _slide_flags(database_url: str | None, current: Any, candidate: Any, n_slides: int) -> list[dict[str, Any]]:
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.core.flags import effective_rules
    from hematovision.service.flag_changes import slide_flag_changes
    from hematovision.store.db import make_engine, make_session_factory

    settings = _settings(database_url)
    engine = make_engine(settings, pooled=False)
    try:
        with make_session_factory(engine)() as session:
            return slide_flag_changes(session, current, candidate, n_slides, effective_rules(settings))
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database error: {exc.__class__.__name__}") from None
    finally:
        engine.dispose()


COMMANDS: list[click.Command] = [dataset, validate_model]
