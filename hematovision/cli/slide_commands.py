"""Slide commands: ``make-slide`` (a synthetic smear with its ground-truth manifest)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import click

COMMANDS: list[click.Command] = []


def _parse_mix(text: str | None) -> dict[str, float] | None:
    """``neutrophil=60,lymphocyte=40`` → ``{"neutrophil": 60.0, "lymphocyte": 40.0}``."""
    if not text:
        return None
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise click.ClickException(f"--mix: expected CLASS=WEIGHT, got {part!r}")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise click.ClickException(f"--mix: weight of {name.strip()!r} is not a number") from None
    return mix


class _LazyBar:
    """A click progress bar shown from the first tile on (input errors stay one line)."""

    def __init__(self, length: int, label: str) -> None:
        self._length = length
        self._label = label
        self._bar: Any = None

    def update(self, n: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=self._length, label=self._label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@click.command("make-slide")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--width", default=8192, show_default=True, type=click.IntRange(64, 500_000), help="Level-0 width in pixels."
)
@click.option(
    "--height", default=8192, show_default=True, type=click.IntRange(64, 500_000), help="Level-0 height in pixels."
)
@click.option(
    "--mpp",
    default=0.25,
    show_default=True,
    type=float,
    help="Microns per pixel at level 0 (0.25 ≈ a 40× scan, 0.5 ≈ 20×).",
)
@click.option(
    "--wbc",
    "n_wbc",
    default=300,
    show_default=True,
    type=click.IntRange(0, 1_000_000),
    help="White cells to place (fewer if they do not fit).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: the same seed gives the same slide.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tiff", "svs"]),
    default=None,
    help="Generic tiled TIFF or Aperio-style SVS  [default: from OUT's suffix, else tiff]",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "pbc", "procedural"]),
    default="auto",
    show_default=True,
    help="White cells from real PBC images, drawn procedurally, or PBC when available.",
)
@click.option(
    "--mix",
    "mix_text",
    default=None,
    metavar="CLASS=W,...",
    help="White-cell mix, e.g. neutrophil=60,lymphocyte=40 (default: normal adult differential).",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Shared data folder with data/pbc_subset  [default: settings' data_root]",
)
@click.option(
    "--tile",
    "tile_px",
    default=512,
    show_default=True,
    type=click.Choice(["256", "512"]),
    help="TIFF tile size in pixels.",
)
def make_slide_command(
    out: Path,
    width: int,
    height: int,
    mpp: float,
    n_wbc: int,
    seed: int,
    fmt: str | None,
    source: str,
    mix_text: str | None,
    data_root: Path | None,
    tile_px: str,
) -> None:
    """Write a synthetic blood-smear slide OUT and its manifest OUT.manifest.json.

    White cells are real PBC single-cell images (Acevedo et al. 2020, CC BY 4.0) rescaled to --mpp;
    red cells, platelets and the smear are drawn. The manifest lists every cell with its class,
    centre and box, for testing detection and the differential. Large slides (80k×80k) are written
    tile by tile in constant memory.
    """
    from hematovision.core.settings import load_settings
    from hematovision.devtools.synthetic import make_slide

    if not (mpp > 0 and math.isfinite(mpp)):
        raise click.ClickException(f"--mpp must be a positive number, got {mpp}")
    if fmt is None:
        fmt = "svs" if out.suffix.lower() == ".svs" else "tiff"
    if not out.parent.exists():
        raise click.ClickException(f"the folder {out.parent} does not exist")
    mix = _parse_mix(mix_text)
    root = data_root if data_root is not None else load_settings().data_root
    tiles = math.ceil(width / int(tile_px)) * math.ceil(height / int(tile_px))
    logging.getLogger("hematovision.devtools.synthetic").setLevel(logging.ERROR)  # notes are echoed below
    bar = _LazyBar(tiles, f"Writing {out.name}")
    try:
        manifest = make_slide(
            out,
            root,
            width,
            height,
            mpp=mpp,
            n_wbc=n_wbc,
            seed=seed,
            fmt=fmt,
            wbc_mix=mix,
            source=source,
            tile_px=int(tile_px),
            progress=bar.update,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"could not write {out}: {exc.strerror or exc}") from None
    finally:
        bar.close()
    counts = manifest["counts"]
    levels = " ".join(f"{w}×{h}" for w, h in manifest["levels"])
    click.echo(f"slide:    {manifest['slide_path']} ({fmt}, {width}×{height} px at {mpp:g} µm/px; levels {levels})")
    click.echo(f"manifest: {manifest['manifest_path']}")
    diff = ", ".join(f"{c} {n}" for c, n in manifest["differential"].items()) or "none"
    click.echo(
        f"placed:   {counts['wbc']} white cells ({diff}), {counts['rbc']} red cells, {counts['platelets']} platelets"
    )
    src = "real PBC cell images" if manifest["source"] == "pbc" else "procedurally drawn cells"
    click.echo(f"source:   {src}")
    for note in manifest["notes"]:
        click.echo(f"note:     {note}")


COMMANDS.append(make_slide_command)
