"""Where the shared blood-cell data sets live below ``Settings.data_root``, and their scale.

The data are read in place (never copied into the project). Citations are in the README and the
model card. The microns-per-pixel figures are estimates from red-cell diameter (about 7.5 µm), since
none of these sets states its scale: PBC red cells measure about 95 px across (CellaVision DM96,
100× oil), CBC/BCCD red-cell boxes about 105 px.
"""

from __future__ import annotations

from pathlib import Path

PBC_DIR = Path("data/pbc_subset/PBC_dataset_normal_DIB")
BCCD_DIR = Path("data/bccd")
CBC_DIR = Path("data/cbc")
TXL_DIR = Path("data/txl_pbc/TXL_PBC")
ARIA_ALL_DIR = Path("data/aria_all/images")

#: Estimated µm/px of the PBC single-cell crops (360×363 px).
PBC_MPP = 0.08
#: Estimated µm/px of the BCCD/CBC 640×480 fields.
BCCD_MPP = 0.071
#: Red-cell diameter used to estimate scale where a source states none.
RBC_DIAMETER_UM = 7.5

#: The eight PBC classes, in the order the shipped model uses.
PBC_CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)


def pbc_root(data_root: Path) -> Path:
    """The PBC image-folder root (one subfolder per class) below ``data_root``."""
    return Path(data_root) / PBC_DIR


def have_pbc(data_root: Path) -> bool:
    """True when the shared PBC cell images are available (otherwise synthetic slides take the small
    sample packaged in ``hematovision/devtools/sample_cells``)."""
    root = pbc_root(data_root)
    return root.is_dir() and any(root.glob("*/*.jpg"))
