"""``hematovision bench``: slide throughput for a 200-cell differential, or (``--census``) a whole-smear
census (see hematovision.devtools.throughput)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


@click.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object only.")
@click.option("--size", type=int, default=40_000, show_default=True, help="Generated slide side, px.")
@click.option("--mpp", type=float, default=0.25, show_default=True)
@click.option("--wbc", type=int, default=1200, show_default=True, help="White cells placed on the slide.")
@click.option("--target-wbc", type=int, default=200, show_default=True)
@click.option(
    "--naive-tiles",
    type=int,
    default=48,
    show_default=True,
    help="Level-0 tiles timed for the naive reference (0 = all of them).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/bench"),
    show_default=True,
    help="Where the generated slide is kept (reused between runs).",
)
@click.option(
    "--census",
    is_flag=True,
    help="Time a whole-smear census (every white cell) and match its cells to the slide's manifest.",
)
@click.option(
    "--rbc/--no-rbc",
    "rbc",
    default=None,
    help="Include red-cell morphology (default: as the settings say, HEMATOVISION_RBC_MORPHOLOGY).",
)
@click.option(
    "--tf-threads",
    type=click.IntRange(min=0),
    default=None,
    help="TensorFlow intra-op threads (0: its default, every core). Default: 1 with --census, where "
    "classification runs beside the chunk-screening threads, else 0.",
)
def bench(
    as_json: bool,
    size: int,
    mpp: float,
    wbc: int,
    target_wbc: int,
    naive_tiles: int,
    work_dir: Path,
    census: bool,
    rbc: bool | None,
    tf_threads: int | None,
) -> None:
    """Slides per hour, cells/s and Mpx/s on a generated whole slide, against a naive full read."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hematovision.core.settings import load_settings
    from hematovision.devtools.throughput import run_benchmark

    s = load_settings()
    result = run_benchmark(
        work_dir,
        s.data_root,
        s.model_dir,
        size_px=size,
        mpp=mpp,
        n_wbc=wbc,
        target_wbc=target_wbc,
        naive_sample_tiles=naive_tiles or None,
        census=census,
        tf_threads=(1 if census else 0) if tf_threads is None else tf_threads,
        rbc_model_dir=s.rbc_model_dir if (s.rbc_morphology if rbc is None else rbc) else None,
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(json.dumps(result, indent=2))
    what = (
        f"a census ({result['wbc_classified']} of {result['wbc_in_manifest']} placed white cells classified)"
        if census
        else f"a {target_wbc}-cell differential"
    )
    click.echo(
        f"{result['slides_per_hour']} slides/hour for {what} "
        f"({result['seconds_per_slide']} s/slide); naive {result['naive_slides_per_hour']} slides/hour; "
        f"speedup ×{result['speedup']}"
    )


COMMANDS: list[click.Command] = [bench]
