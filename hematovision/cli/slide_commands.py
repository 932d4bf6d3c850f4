"""Slide commands: ``make-slide`` (a synthetic smear with its ground-truth manifest) and ``make-sample``
(the packaged sample of real cells the slides fall back on)."""

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
    type=click.Choice(["auto", "pbc", "pbc-sample", "procedural"]),
    default="auto",
    show_default=True,
    help="White cells from the shared PBC images, from the packaged sample of PBC cells, drawn "
    "procedurally, or the first of these that is there.",
)
@click.option(
    "--mix",
    "mix_text",
    default=None,
    metavar="CLASS=W,...",
    help="White-cell mix, e.g. neutrophil=60,lymphocyte=40 (default: normal adult differential).",
)
@click.option(
    "--rbc-mix",
    "rbc_mix_text",
    default=None,
    metavar="CLASS=PCT,...",
    help="Red-cell morphologies in percent, e.g. schistocyte=5,target=10 (the rest normal): every red cell "
    "is then a real labelled Chula RBC-12 cell from the red-cell model's test fields (needs data/chula_rbc).",
)
@click.option(
    "--rbc-split",
    type=click.Choice(["test", "val"]),
    default="test",
    show_default=True,
    help="With --rbc-mix: the red-cell model's held-out test fields (measuring) or its validation fields (tuning).",
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
@click.option(
    "--jpeg2000-bpp",
    default=None,
    type=click.FloatRange(0, 24, min_open=True, max_open=True),
    help="SVS only: store the tiles as lossy JPEG 2000 at this many bits per pixel (Aperio's other "
    "storage) instead of JPEG quality 85.",
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
    rbc_mix_text: str | None,
    rbc_split: str,
    data_root: Path | None,
    tile_px: str,
    jpeg2000_bpp: float | None,
) -> None:
    """Write a synthetic blood-smear slide OUT and its manifest OUT.manifest.json.

    White cells are real PBC single-cell images (Acevedo et al. 2020, CC BY 4.0) rescaled to --mpp:
    the shared data's, or, where those are absent, the small sample packaged with HematoVision; red
    cells, platelets and the smear are drawn. The manifest lists every cell with its class,
    centre and box, for testing detection and the differential. Large slides (80k×80k) are written
    tile by tile in constant memory.
    """
    from hematovision.core.settings import load_settings
    from hematovision.devtools.synthetic import SOURCE_WORDS, make_slide

    if not (mpp > 0 and math.isfinite(mpp)):
        raise click.ClickException(f"--mpp must be a positive number, got {mpp}")
    if fmt is None:
        fmt = "svs" if out.suffix.lower() == ".svs" else "tiff"
    if not out.parent.exists():
        raise click.ClickException(f"the folder {out.parent} does not exist")
    if jpeg2000_bpp is not None and fmt != "svs":
        raise click.BadParameter(
            "JPEG 2000 tiles are written only in an SVS (--format svs)", param_hint="--jpeg2000-bpp"
        )
    mix = _parse_mix(mix_text)
    rbc_mix = None
    if rbc_mix_text is not None:
        from hemato_model.rbc.data import RBC_CLASSES
        from hematovision.devtools.rbc_cells import parse_rbc_mix

        try:
            rbc_mix = parse_rbc_mix(rbc_mix_text, RBC_CLASSES)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rbc-mix") from None
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
            rbc_mix=rbc_mix,
            rbc_split=rbc_split,
            tile_px=int(tile_px),
            progress=bar.update,
            jpeg2000_bpp=jpeg2000_bpp,
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
    click.echo(f"source:   {SOURCE_WORDS[manifest['source']]}")
    if "rbc_mix" in manifest:
        placed = ", ".join(f"{c} {p}%" for c, p in manifest["rbc_mix"]["placed_pct"].items())
        click.echo(f"red-cell mix placed: {placed} ({manifest['rbc_mix']['source']})")
    for note in manifest["notes"]:
        click.echo(f"note:     {note}")


COMMANDS.append(make_slide_command)


@click.command("make-sample")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Shared data folder with data/pbc_subset  [default: settings' data_root]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write (the packaged one is hematovision/devtools/sample_cells).",
)
@click.option("--per-class", default=40, show_default=True, type=click.IntRange(1, 1000), help="Images per class.")
@click.option("--seed", default=13, show_default=True, type=int, help="Seed of the pick (same data, same sample).")
@click.option(
    "--split",
    "split_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The model split whose training part is drawn from  [default: the shipped v1 model's split.json]",
)
@click.option("--replace", is_flag=True, help="Replace OUT if it exists and is not empty.")
def make_sample_command(
    data_root: Path | None, out: Path, per_class: int, seed: int, split_file: Path | None, replace: bool
) -> None:
    """Rebuild the small sample of real PBC cells (CC BY 4.0) that synthetic slides use when the
    shared data are absent: PER-CLASS training-split images of each of the 8 PBC classes, cut to the
    26 µm the slides paste, with a manifest and ATTRIBUTION.md. OUT is replaced only as a whole.
    """
    from hematovision.core.settings import SHIPPED_MODEL_DIR, load_settings
    from hematovision.devtools.sample_build import build_sample, sample_size_bytes

    root = data_root if data_root is not None else load_settings().data_root
    split = split_file if split_file is not None else SHIPPED_MODEL_DIR / "split.json"
    try:
        counts = build_sample(root, out, split_file=split, per_class=per_class, seed=seed, replace=replace)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"could not write {out}: {exc.strerror or exc}") from None
    size = sample_size_bytes(out)
    click.echo(f"sample:   {out} ({sum(counts.values())} images, {size / 2**20:.2f} MiB)")
    click.echo("classes:  " + ", ".join(f"{c} {n}" for c, n in counts.items()))


COMMANDS.append(make_sample_command)
