"""The small sample of real PBC cells shipped inside the package, and how it is rebuilt.

Synthetic slides (:mod:`hematovision.devtools.synthetic`) paste real single-cell images from PBC
(Acevedo et al. 2020, CC BY 4.0). The full set lives in the shared data folder, which a fresh clone
does not have; without cells the demo used to draw procedural ones, on which the classifier's calls
mean nothing. So a small, balanced sample ships as package data in ``sample_cells/`` beside this
module: ``<class>/<PBC file name>.jpg`` (the PBC folder layout, so the slide code reads it as it
reads PBC), ``manifest.csv`` (``file,class,pbc_file``) and ``ATTRIBUTION.md``.

How the sample is chosen (:func:`build_sample`, ``hematovision make-sample``): for each of the eight
PBC classes, ``per_class`` images (40) from the *training* split of the shipped v1 model
(``split.json``), so that nothing is taken from its held-out test split. Within a class the pick is
spread over the file-name sub-types (SNE/BNE neutrophils, MY/MMY/PMY/IG immature granulocytes) in
proportion to their share of the training split, and drawn with a fixed seed; the same data give
the same sample.

How each image is cut: a slide pastes a PBC cell with a soft circular mask of 26 µm
(``cell_sprites.WBC_MASK_UM``) around the crop centre; nothing beyond 13 µm from the centre reaches
a slide. So each image loses 16 pixels on every side (360×363 → 328×331 px, 26.2×26.5 µm at PBC's
0.08 µm/px, which is kept): the centre stays where it was, and the cut falls on JPEG block
boundaries. It is then re-encoded with the original's own quantisation tables and chroma sampling
(PBC ships about quality 75, 4:4:4): on block-aligned crops that is nearly lossless (63 dB PSNR on
average, 51 dB at worst, against the decoded original) and no larger than the original.
Re-encoding at quality 90 instead was measured on 40 images: with 4:2:0 chroma it loses more
(40 dB) in a larger file (+11 %); with 4:4:4 the file is 40 % larger. The 320 images take 4.2 MiB.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from hematovision.core.datasets import PBC_CLASSES, PBC_DIR, PBC_MPP, pbc_root

#: Where the packaged sample lives (package data of ``hematovision.devtools``).
SAMPLE_DIR = Path(str(files("hematovision.devtools") / "sample_cells"))
#: The ``source`` a slide made from the sample states in its manifest.
SAMPLE_SOURCE = "pbc-sample"
MANIFEST_NAME = "manifest.csv"
ATTRIBUTION_NAME = "ATTRIBUTION.md"
MANIFEST_COLUMNS = ("file", "class", "pbc_file")

PER_CLASS = 40
SEED = 13
#: Pixels cut from every side of a PBC image: a multiple of the 16-px JPEG block (MCU), so the
#: re-encoded blocks are the original's; 360 px - 2 × 16 = 328 px = 26.2 µm ≥ the 26 µm paste mask.
CUT_PX = 16
#: The paste mask of the synthetic slides (µm); a cut image must still cover it.
NEEDED_UM = 26.0

CITATION = (
    'A. Acevedo, A. Merino, S. Alférez, Á. Molina, L. Boldú, J. Rodellar, "A dataset of microscopic '
    'peripheral blood cell images for development of automatic recognition systems", *Data in Brief* '
    "30:105474, 2020. doi:10.1016/j.dib.2020.105474. Data: Mendeley Data doi:10.17632/snkd93bnjr.1."
)


@dataclass(frozen=True)
class SampleCell:
    """One image of the sample: its path, its class and the PBC file it was cut from."""

    path: Path
    cls: str
    pbc_file: str


def sample_root() -> Path:
    """The packaged sample's folder (``<class>/*.jpg``, ``manifest.csv``, ``ATTRIBUTION.md``)."""
    return SAMPLE_DIR


def have_sample(root: Path | None = None) -> bool:
    """True when the sample (its manifest and at least one image) is there; a proper install has it."""
    root = sample_root() if root is None else Path(root)
    return (root / MANIFEST_NAME).is_file() and any(root.glob("*/*.jpg"))


def read_sample(root: Path | None = None) -> list[SampleCell]:
    """The sample's cells, as its manifest lists them.

    Raises:
        ValueError: the manifest is missing or malformed, or lists an image that is not there.
    """
    root = sample_root() if root is None else Path(root)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise ValueError(f"no sample of real cells at {root} (no {MANIFEST_NAME})")
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(f"{manifest}: expected columns {','.join(MANIFEST_COLUMNS)}, got {reader.fieldnames}")
        cells = [SampleCell(root / row["file"], row["class"], row["pbc_file"]) for row in reader]
    missing = [str(c.path.relative_to(root)) for c in cells if not c.path.is_file()]
    if missing:
        raise ValueError(f"{manifest} lists {len(missing)} image(s) that are not there, e.g. {missing[0]}")
    return cells


# --------------------------------------------------------------------------------------------------
# building


def _subtype(name: str) -> str:
    """``BNE_12345.jpg`` → ``BNE`` (PBC's file-name prefix: the finer sub-type)."""
    return name.rsplit("_", 1)[0] if "_" in name else ""


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split ``n`` picks over groups in proportion to their sizes (largest remainder, exact total)."""
    total = sum(sizes.values())
    quotas = {g: n * k / total for g, k in sizes.items()}
    counts = {g: min(sizes[g], math.floor(q)) for g, q in quotas.items()}
    for g in sorted(quotas, key=lambda g: (-(quotas[g] - counts[g]), g)):
        if sum(counts.values()) >= n:
            break
        if counts[g] < sizes[g]:
            counts[g] += 1
    return counts


def choose_sample(
    data_root: Path, split_file: Path, per_class: int = PER_CLASS, seed: int = SEED
) -> dict[str, list[str]]:
    """The PBC files of the sample, per class (paths relative to the PBC root, sorted).

    Raises:
        ValueError: no PBC images under ``data_root``, an unreadable split, or a class with fewer
            than ``per_class`` training images present.
    """
    root = pbc_root(data_root)
    if not root.is_dir():
        raise ValueError(f"no PBC images under {root}")
    try:
        split = json.loads(Path(split_file).read_text())
        train = list(split["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the training split from {split_file}: {exc}") from None
    if per_class < 1:
        raise ValueError(f"per class must be at least 1, got {per_class}")
    chosen: dict[str, list[str]] = {}
    for k, cls in enumerate(PBC_CLASSES):
        present = sorted(p for p in train if p.startswith(cls + "/") and (root / p).is_file())
        if len(present) < per_class:
            raise ValueError(f"{cls}: {len(present)} training images under {root}, {per_class} needed")
        groups: dict[str, list[str]] = {}
        for p in present:
            groups.setdefault(_subtype(Path(p).name), []).append(p)
        counts = _allocate({g: len(v) for g, v in groups.items()}, per_class)
        rng = np.random.default_rng([seed, k])
        picks: list[str] = []
        for g in sorted(groups):
            pool = groups[g]
            picks += [pool[i] for i in rng.permutation(len(pool))[: counts[g]]]
        chosen[cls] = sorted(picks)
    return chosen


def cut_image(src: Path) -> bytes:
    """The PBC JPEG ``src`` less ``CUT_PX`` on every side, re-encoded with its own tables (see above)."""
    from PIL import Image, JpegImagePlugin

    with Image.open(src) as im:
        if im.format != "JPEG":
            raise ValueError(f"{src}: not a JPEG image")
        w, h = im.size
        if min(w, h) - 2 * CUT_PX < NEEDED_UM / PBC_MPP:
            raise ValueError(f"{src}: {w}×{h} px is too small to keep {NEEDED_UM:g} µm around the cell")
        tables = im.quantization
        sampling = JpegImagePlugin.get_sampling(im)
        cut = im.convert("RGB").crop((CUT_PX, CUT_PX, w - CUT_PX, h - CUT_PX))
    buf = io.BytesIO()
    if tables and sampling >= 0:
        cut.save(buf, "JPEG", qtables=tables, subsampling=sampling, optimize=True)
    else:  # not seen in PBC: a JPEG whose tables Pillow cannot reuse
        cut.save(buf, "JPEG", quality=90, subsampling=0, optimize=True)
    return buf.getvalue()


def attribution_text(counts: dict[str, int], per_class: int, seed: int) -> str:
    rows = "\n".join(f"| {cls} | {n} |" for cls, n in counts.items())
    return f"""# Sample of real blood cells: source, licence, changes

The images in this folder are a small sample of the PBC dataset ("Peripheral Blood Cells"):

- **Source:** {CITATION}
- **Obtained from:** the shared data of this project, a copy of the published images taken from
  the GitHub mirror `AuralinACC/Blood-Cell-Classification` (commit `d2e7b75e`, folder
  `{PBC_DIR.name}/`), whose per-class counts match the published dataset.
- **Licence:** Creative Commons Attribution 4.0 International (CC BY 4.0),
  https://creativecommons.org/licenses/by/4.0/. The images remain under CC BY 4.0; attribution to
  Acevedo et al. is required when they are shared or used.
- **What the images are:** single cells from peripheral blood smears of healthy donors (no infection,
  no haematological or oncological disease), May-Grünwald-Giemsa stain, CellaVision DM96, Hospital
  Clinic of Barcelona; labels by expert clinical pathologists; about 0.08 µm per pixel.
- **Which images:** {per_class} per class, {sum(counts.values())} in all, from the training split of
  HematoVision's shipped classifier (`hemato_model/models/wbc-effnetlite0-v1/split.json`; none from
  its test split), spread over the file-name sub-types, chosen with seed {seed}. `{MANIFEST_NAME}`
  maps each file to the original PBC file (`pbc_file`, its path in the PBC distribution,
  `{PBC_DIR.name}/<class>/<name>.jpg`).
- **Changes made:** each image was cropped by {CUT_PX} pixels on every side (about 360×363 px to
  328×331 px; the cell stays centred and the pixel scale is unchanged) and re-encoded as JPEG with
  the original's own quantisation tables. Nothing else was altered.
- **Rebuilt by:** `hematovision make-sample --data-root DIR --out DIR`
  (`hematovision/devtools/sample_build.py`).

| class | images |
|---|---|
{rows}
"""


def build_sample(
    data_root: Path,
    out: Path,
    *,
    split_file: Path,
    per_class: int = PER_CLASS,
    seed: int = SEED,
    replace: bool = False,
) -> dict[str, int]:
    """Write the sample (images, manifest, attribution) to ``out``; returns the images per class.

    The folder is written beside ``out`` under a temporary name and renamed into place, so a failed
    build leaves ``out`` as it was.

    Raises:
        ValueError: bad input (see :func:`choose_sample`), or ``out`` exists, is not empty, and
            ``replace`` is false.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not replace)):
        raise ValueError(f"{out} exists and is not empty (replace it with --replace)")
    if not out.parent.is_dir():
        raise ValueError(f"the folder {out.parent} does not exist")
    chosen = choose_sample(Path(data_root), split_file, per_class, seed)
    root = pbc_root(Path(data_root))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows: list[tuple[str, str, str]] = []
        for cls, rels in chosen.items():
            (tmp / cls).mkdir()
            for rel in rels:
                (tmp / rel).write_bytes(cut_image(root / rel))
                rows.append((rel, cls, f"{PBC_DIR.name}/{rel}"))
        with (tmp / MANIFEST_NAME).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(rows)
        counts = {cls: len(rels) for cls, rels in chosen.items()}
        (tmp / ATTRIBUTION_NAME).write_text(attribution_text(counts, per_class, seed), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(tmp.name + ".old") if out.exists() else None
    if old is not None:
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return counts


def sample_size_bytes(root: Path | None = None) -> int:
    """Bytes the sample's images take."""
    root = sample_root() if root is None else Path(root)
    return sum(p.stat().st_size for p in root.glob("*/*.jpg"))


def sample_files(classes: Sequence[str], root: Path | None = None) -> dict[str, list[Path]]:
    """The sample's images of each of ``classes`` (sorted; empty for a class it lacks)."""
    root = sample_root() if root is None else Path(root)
    return {c: sorted((root / c).glob("*.jpg")) for c in classes}
