"""Classical (non-learned) detection of white cells, red cells and platelets in smear fields.

Method, in physical units throughout (sizes are µm, converted with the image's µm/px, so the same
code runs on a 0.07 µm/px camera field and on a 1 µm/px pyramid level):

1. **Working resolution.** The field is box-filtered down to ``WORK_MPP`` (0.4 µm/px for all
   kinds, 0.8 µm/px for a white-cell-only pass); an image already coarser is used as it is. Every
   later step costs the same per square micron whatever the camera.
2. **Optical density** (Beer–Lambert, as in Ruifrok & Johnston's colour deconvolution, *Anal Quant
   Cytol Histol* 2001): ``OD_c = -log10(I_c / I0_c)`` with ``I0`` the glass colour, estimated per
   block of ``GLASS_BLOCK_UM`` (camera fields are unevenly lit). Cells are pixels whose green OD
   (haemoglobin and nuclear dyes both absorb green) exceeds the glass noise (see
   ``_cell_threshold``); Otsu's threshold, pulled up by dark white cells, lost pale red cells.
3. **Nuclear stain** = ``OD_green - OD_blue``. Romanowsky-stained nuclei (Giemsa, Wright, MGG, May–
   Grünwald) absorb green and pass blue, whatever their hue (blue, purple or magenta), while
   haemoglobin absorbs green *and* blue; on CBC, TXL-PBC (Raabin, BCD) training fields the 90th
   percentile of this channel in a white-cell box is 1.8–5× the 99th percentile inside red cells.
   The threshold is relative to the red cells of the same field (median of the channel over the
   cell mask), so a pale or a dark stain needs no retuning, with an absolute floor so a field of
   red cells alone yields no nuclei.
4. **White cells.** Nuclear pixels are grouped by a dilation of ``WBC_MERGE_UM`` (lobes of one
   neutrophil, separated by thin, unstained filaments, become one group), then groups closer than a
   cell radius are merged again (a cell is one group however lobed). A group is a white cell if its
   stained area is at least ``WBC_MIN_NUCLEUS_UM2``, or at least ``WBC_MIN_DENSE_NUCLEUS_UM2`` when
   it is dense (``WBC_DENSE_CONTRAST``: the pyknotic nucleus of an erythroblast); the box is the
   nuclear box grown by the cytoplasm margin ``WBC_CYTOPLASM_UM`` and clamped to the white-cell
   size range. On a coarse pyramid level, ``wbc_candidates`` screens with a looser rule
   (``CANDIDATE_RULE``: JPEG chroma there is too coarse for small nuclei), for level-0 confirmation.
5. **Platelets.** Small objects outside white cells whose stain passes a lower threshold than
   nuclei with a stricter blue-passing ratio (``PLATELET_MIN_CHROMA``: purple specks on red cells
   and debris are less blue), sized by ``PLATELET_DIAMETER_UM``. Opt-in (``platelet_method="learned"``):
   loose candidates (:mod:`.platelet_candidates`) scored by a small learned filter
   (:mod:`.platelet_filter`, ``hemato_model/models/platelet-filter-v1``), clumps labelled
   ``platelet_clump``: recall 0.96 on CBC Testing at precision 0.66.
6. **Red cells.** The cell mask without white cells, small holes (central pallor) filled, is split
   by a marker-controlled watershed on its Euclidean distance transform (markers: distance maxima
   at least ~0.6 red-cell radius apart; Vincent & Soille 1991, as used for touching cells since
   Malpica et al. 1997). Pieces smaller than ``RBC_MIN_AREA_FRACTION`` of a red cell are dropped;
   a cell cut by the image border counts only when at least half of it is visible
   (``RBC_MIN_AREA_FRACTION_BORDER``): CBC annotates few of the slivers at its borders, and on a
   tiled slide a cell cut by a tile edge is then counted in about one tile, not two.
   (TXL-PBC annotates every sliver, so its red-cell recall is low under this rule.)

``estimate_mpp`` measures the median diameter of isolated, round red cells and sets it to
``hematovision.core.datasets.RBC_DIAMETER_UM`` (7.5 µm). It measures the stained disc, which is smaller
than an annotator's box, so it reads ~10% above ``BCCD_MPP`` (0.078 vs 0.071 on CBC Testing) and
~20% above ``PBC_MPP`` on PBC crops; the detector's thresholds were checked with these estimates.

Limits (measured, see ``benchmarks/detection_quality.py``): platelet clumps can pass as a white
cell; a white cell cut by the image border is found only if enough nucleus (20 µm²) is visible;
platelet recall is ~0.6–0.75 with the classical rule; the red-cell count moves with µm/px (CBC Testing: 4.7% count
error with estimated scale, 15.9% under-count at the nominal 0.071 µm/px).

Scores are heuristic confidences in 0..1 (stain contrast and size agreement), monotone enough to
rank detections, not calibrated probabilities.

Modules, one step each: :mod:`.stain` (1-3), :mod:`.white_cells` (4), :mod:`.platelets`,
:mod:`.platelet_candidates` and :mod:`.platelet_filter` (5),
:mod:`.red_cells` (6), :mod:`.scale` (``estimate_mpp``) and :mod:`.detect` (``detect_cells``,
``wbc_candidates``).
"""

from hemato_model.detection.detect import KINDS, Detection, detect_cells, wbc_candidates
from hemato_model.detection.scale import estimate_mpp

__all__ = ["KINDS", "Detection", "detect_cells", "estimate_mpp", "wbc_candidates"]
