"""Where the pipeline stops reading a whole slide: the one-process path reads on until the target
count of white cells is *classified*; the staged prepare stage, which never sees a label, keeps its
candidate margin. Real synthetic slide, real model (its threshold raised so that about half of the
cells go ``unidentified``, as on a slide of cells the model does not know)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemato_model.classifier import Classifier
from hemato_model.handoff import CropSpool
from hemato_model.pipeline import analyze_slide, prepare_slide
from hemato_model.pipeline_params import PipelineParams
from hematovision.core.results import WBC, is_classified_wbc
from hematovision.core.slides import open_slide

TARGET = 20


@pytest.fixture(scope="module")
def slide_path(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hematovision.devtools.synthetic import make_slide

    p = tmp_path_factory.mktemp("big") / "s.tiff"
    make_slide(p, real_cells, 4096, 4096, mpp=0.25, n_wbc=120, seed=5, fmt="tiff")
    return p


def classified(cells: list) -> int:  # type: ignore[type-arg]
    return sum(1 for c in cells if c.kind == WBC and is_classified_wbc(c.label))


@pytest.mark.slow
def test_one_process_reads_until_the_target_is_classified(settings, slide_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clf = Classifier.load(settings.model_dir)
    # A whole-slide read (low-resolution candidates first), in small chunks so it can stop early.
    two_pass = {"full_res_max_mpix": 1.0, "chunk_um": 192.0}
    with open_slide(slide_path) as slide:
        everything = analyze_slide(slide, clf, PipelineParams(full_count=True, **two_pass))
    probs = [c.probability for c in everything.cells if c.kind == WBC]
    assert len(probs) >= 80
    clf.threshold = float(np.median(probs))  # about half the cells now go unidentified
    with open_slide(slide_path) as slide:
        one = analyze_slide(slide, clf, PipelineParams(target_wbc=TARGET, **two_pass))
        staged = prepare_slide(slide, clf, CropSpool(tmp_path), PipelineParams(target_wbc=TARGET, **two_pass))
    n_one = sum(1 for c in one.cells if c.kind == WBC)
    n_staged = sum(1 for c in staged.cells if c.kind == WBC)
    assert one.stopped_early and staged.stopped_early
    # The staged prepare stops at 1.25 x the target candidates; about half of them are not named.
    assert n_staged >= PipelineParams(target_wbc=TARGET).wbc_goal
    # The one-process path has its target of classified cells (it read more candidates to get it),
    # and never more than the cap.
    assert classified(one.cells) >= TARGET
    assert n_one > n_staged and n_one <= PipelineParams(target_wbc=TARGET).wbc_cap + clf.batch_size
