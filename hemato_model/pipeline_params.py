"""What a slide's analysis is told: its settings (:class:`PipelineParams`), its callbacks, and the
one slide being read that its readers share (:class:`SlideReading`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hemato_model.crop_sink import CropSink, CropSpec
from hemato_model.detection.detect import DEFAULT_PLATELET_METHOD
from hematovision.core.results import SlideAnalysis

if TYPE_CHECKING:
    from hemato_model.rbc.morphology import RedCellSampler
    from hematovision.core.slides import Slide

#: Called with the fraction done (0..1) and a short message.
ProgressFn = Callable[[float, str], None]
#: Raises (``hemato_model.pipeline.AnalysisCancelled``) when the job was cancelled; else returns.
StopCheck = Callable[[], None]


@dataclass
class PipelineParams:
    target_wbc: int = 200
    full_count: bool = False
    #: Whole-smear census: every white cell of the smear through the two-pass path (no stop at
    #: ``target_wbc``), red cells and platelets from the ``rbc_fields`` sampled fields only. Unlike
    #: ``full_count`` it never reads every level-0 tile of a whole slide.
    census: bool = False
    full_res_max_mpix: float = 64.0
    tile_px: int = 1024
    overlap_um: float = 30.0
    #: µm/px of the level searched for white-cell candidates (the finest level at most this
    #: coarse is read). 1 µm/px, not 2: slides store every level as JPEG with 4:2:0 chroma, so
    #: the nuclear stain (a colour difference) of a 2 µm/px level is sampled every 4 µm and a
    #: lymphocyte's or erythroblast's 6-7 µm nucleus faded under the threshold (about half the
    #: lymphocytes were lost; docs/validation.md, "Whole-slide detection recall").
    candidate_mpp: float = 1.0
    #: Side of the square chunks the candidate level is read in, µm (as 1,024 px of a 2 µm/px
    #: level were), so the order the smear is read in does not depend on the level's resolution.
    chunk_um: float = 2048.0
    #: Threads screening candidate chunks ahead of the refinement (:mod:`hemato_model.chunk_search`);
    #: the cells taken do not depend on it.
    screen_threads: int = 2
    rbc_fields: int = 12
    #: How the count fields find platelets (``hemato_model.detection.detect.PLATELET_METHODS``).
    platelet_method: str = DEFAULT_PLATELET_METHOD
    field_um: float = 150.0
    batch_size: int = 64
    thumb_mpp: float = 8.0
    candidate_margin: float = 1.25
    max_candidate_factor: float = 5.0
    #: Red-cell morphology (with a red-cell model): cells to classify per slide, and the most
    #: sampled fields a whole slide reads (beyond ``rbc_fields``) while fewer single red cells are
    #: in hand (:mod:`hemato_model.rbc.morphology`). 1,000: the ICSH minimum classified; 1,500 cost
    #: 23-26 % of the 200-cell slide's CPU time (target ≤ 20 %; docs/validation.md).
    rbc_cells: int = 1000
    rbc_max_fields: int = 48

    @property
    def wbc_goal(self) -> int:
        """White-cell candidates after which reading stops when labels are not known as it reads."""
        return int(math.ceil(self.target_wbc * self.candidate_margin))

    @property
    def wbc_cap(self) -> int:
        """White-cell candidates after which reading stops even if too few were classified."""
        return int(math.ceil(self.target_wbc * self.max_candidate_factor))


@dataclass(frozen=True)
class SlideReading:
    """One slide being read, as :func:`hemato_model.pipeline.prepare_slide` hands it to its readers
    (:mod:`hemato_model.full_resolution`, :mod:`hemato_model.two_pass`,
    :mod:`hemato_model.count_fields`)."""

    slide: Slide
    #: filled in as cells are found (the white cells go to ``sink``)
    result: SlideAnalysis
    spec: CropSpec
    sink: CropSink
    #: the stained smear on the thumbnail (:func:`hemato_model.smear_area.smear_mask`) ...
    mask: np.ndarray
    #: ... whose pixel is this many level-0 pixels
    down: float
    params: PipelineParams
    progress: ProgressFn
    check_stop: StopCheck
    #: the red-cell morphology sample, offered the red cells of every field read (None: not asked)
    rbc: RedCellSampler | None = None
