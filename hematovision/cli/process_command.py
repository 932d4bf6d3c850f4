"""``hematovision process``: the whole analysis of local slides in one process, without a server."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hematovision.cli.options import settings_or_exit

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


def _bar_progress(bar: ProgressBar[int]) -> Callable[[float, str], None]:
    """The analysis' progress (fraction done) shown on a 0..100 progress bar."""
    shown = 0

    def progress(fraction: float, _message: str) -> None:
        nonlocal shown
        step = int(100 * fraction) - shown
        if step > 0:
            bar.update(step)
            shown += step

    return progress


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Worklist CSV (file,accession,patient_id,assigning_authority,birth_date,sex,collected_at,"
    "wbc_10e9_per_l): each slide's order and patient. Without PATHS, its 'file' column names the slides.",
)
@click.option("--mpp", type=float, default=None, help="Microns per pixel for slides that state none.")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None, help="Classifier model directory.")
@click.option(
    "--full-count", is_flag=True, help="Analyse every level-0 tile of the smear, not just the target WBC count (slow)."
)
@click.option(
    "--census",
    is_flag=True,
    help="Whole-smear census: classify every white cell (two-pass), red cells and platelets from sampled fields.",
)
@click.option(
    "--rbc/--no-rbc",
    "rbc",
    default=None,
    help="Red-cell morphology (report rbc_morphology, SCHISTOCYTES): default HEMATOVISION_RBC_MORPHOLOGY (off).",
)
def process(
    paths: tuple[str, ...],
    out_dir: str,
    manifest: str | None,
    mpp: float | None,
    model_dir: str | None,
    full_count: bool,
    census: bool,
    rbc: bool | None,
) -> None:
    """Analyse slides locally (no server) and write one report JSON per slide."""
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hemato_model.rbc.morphology import load_red_cell_model
    from hematovision.cli.client_commands import read_manifest
    from hematovision.core.flags import effective_rules, not_evaluated_lines
    from hematovision.core.patient import match_order, parse_worklist
    from hematovision.core.slides import SlideError, open_slide
    from hematovision.service.slide_results import build_report, model_card_limits

    if census and full_count:
        raise click.UsageError("give --census (two-pass, fast) or --full-count (every level-0 tile), not both")
    worklist, paths = read_manifest(manifest, paths)  # its rows are named by file name
    orders = parse_worklist(worklist) if worklist is not None else {}
    settings = settings_or_exit()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier(Path(model_dir) if model_dir else settings.model_dir)
    rules = effective_rules(settings)
    rbc_on = settings.rbc_morphology if rbc is None else rbc
    rbc_model, rbc_off = load_red_cell_model(settings.rbc_model_dir if rbc_on else None)
    params = PipelineParams(
        target_wbc=settings.target_wbc,
        full_count=full_count or settings.full_count,
        census=census,
        platelet_method=settings.platelet_detector,
    )
    failures = 0
    for p in paths:
        try:
            with (
                open_slide(p, mpp=mpp, default_mpp=settings.default_mpp) as slide,
                click.progressbar(length=100, label=Path(p).name[:40]) as bar,
            ):
                analysis = analyze_slide(
                    slide, classifier, params, progress=_bar_progress(bar), rbc_classifier=rbc_model or rbc_off
                )
        except SlideError as e:
            click.echo(f"error: {p}: {e}", err=True)
            failures += 1
            continue
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the batch
            click.echo(f"error: {p}: analysis failed: {e.__class__.__name__}: {e}", err=True)
            failures += 1
            continue
        order = match_order(orders, Path(p).name)
        rep = build_report(
            analysis,
            slide_id=Path(p).stem,
            source=str(p),
            rules=rules,
            patient=order.context() if order else None,
            limits=model_card_limits(Path(model_dir) if model_dir else settings.model_dir),
        )
        if order is not None:
            rep["order"] = order.to_dict()
        target = out / f"{Path(p).name}.report.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(rep, indent=2))
        tmp.replace(target)
        diff = ", ".join(f"{k} {v['percent']}%" for k, v in rep["differential"].items() if v["count"])
        click.echo(
            f"{Path(p).name}: WBC {rep['counts']['wbc']} classified (+{rep['unidentified']} unidentified)"
            f"{_estimates_text(rep)} | {diff} | flags: "
            f"{', '.join(f['code'] for f in rep['flags']) or 'none raised'} -> {target}"
        )
        for line in not_evaluated_lines(rep.get("rules_not_evaluated")):
            click.echo(f"    not evaluated: {line}")
    if failures:
        click.echo(f"{failures} of {len(paths)} slide(s) failed", err=True)
        sys.exit(1)


COMMANDS: list[click.Command] = [process]


def _estimates_text(rep: dict[str, Any]) -> str:
    """The smear estimates with unit and interval (in place of raw red-cell and platelet object counts)."""
    est = rep.get("estimates") or {}
    parts = []
    w, p = est.get("wbc") or {}, est.get("platelets") or {}
    if w.get("value") is not None:
        parts.append(f"WBC est. {w['value']} [{w['ci95'][0]}-{w['ci95'][1]}] x10^9/L")
    if p.get("per_100_rbc") is not None:
        lo, hi = p["per_100_rbc_ci95"]
        parts.append(f"PLT {p['per_100_rbc']} [{lo}-{hi}]/100 RBC")
    return (" " + ", ".join(parts)) if parts else ""
