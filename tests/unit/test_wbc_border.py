"""Border-cut white cells (issue 14 item 2): the one rule (:mod:`hemato_model.detection.border`) in
the detector's decoding, in scoring (don't-care annotated boxes), in the threshold search and in the
training targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemato_model.detection.border import margin_px, split_border, touches_edge
from hemato_model.detection.learned import decode
from hemato_model.training import wbc_detector as wd
from hemato_model.training.detection_eval import DetectionScores


def test_touches_edge_within_the_margin_or_beyond():
    hw = (100, 200)  # height, width
    assert touches_edge((0, 40, 30, 70), hw, 0.0)  # on the left edge
    assert touches_edge((170, 40, 205, 70), hw, 0.0)  # beyond the right edge
    assert not touches_edge((3, 40, 30, 70), hw, 2.0)
    assert touches_edge((3, 40, 30, 70), hw, 3.0)
    assert touches_edge((50, 40, 90, 98), hw, 2.0)  # 2 px from the bottom
    assert not touches_edge((50, 10, 90, 90), hw, 2.0)
    assert margin_px(0.5, 0.1) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        margin_px(0.5, 0.0)
    whole, cut = split_border([(50, 10, 90, 90), (0, 10, 20, 30)], hw, 1.0)
    assert whole == [(50, 10, 90, 90)] and cut == [(0, 10, 20, 30)]


def _head_output(centres: list[tuple[int, int]], g: int = 12, size_um: float = 10.0) -> np.ndarray:
    out = np.zeros((g, g, 5), np.float32)
    out[..., 0] = -8.0
    out[..., 1:3] = np.log(size_um)
    for gy, gx in centres:
        out[gy, gx, 0] = 6.0
    return out


def test_decode_drops_a_box_at_the_field_edge():
    # stride 8 at 0.4 µm/px: a 10 µm cell is 25 px; one centred, one cut by the left edge
    out = _head_output([(6, 6), (6, 0)])
    valid = (96, 96)
    assert len(decode(out, 0.5, 8, 0.4, valid)) == 2
    kept = decode(out, 0.5, 8, 0.4, valid, edge_margin_um=0.5)
    assert len(kept) == 1
    (x0, y0, x1, y1), _ = kept[0]
    assert x0 > 20 and (x0 + x1) / 2 == pytest.approx(52.0)
    with pytest.raises(ValueError, match="valid_hw"):
        decode(out, 0.5, 8, 0.4, None, edge_margin_um=0.5)


def test_an_ignored_box_is_neither_a_miss_nor_its_detection_a_false_positive():
    sc = DetectionScores(kinds=("wbc",))
    whole, cut = (40, 40, 80, 80), (0, 10, 30, 50)
    # a detection on the whole cell and one on the cut cell
    sc.add_image([("wbc", (42, 41, 79, 82)), ("wbc", (1, 12, 28, 49))], [("wbc", whole)], [("wbc", cut)])
    t = sc.tallies["wbc"]
    assert (t.true_positives, t.n_pred, t.n_true) == (1, 1, 1)
    assert (t.n_ignored_true, t.n_ignored_pred) == (1, 1)
    assert t.precision == 1.0 and t.recall == 1.0
    # the cut cell missed: no miss; a detection on nothing is still a false positive
    sc2 = DetectionScores(kinds=("wbc",))
    sc2.add_image([("wbc", (42, 41, 79, 82)), ("wbc", (100, 100, 130, 130))], [("wbc", whole)], [("wbc", cut)])
    t2 = sc2.tallies["wbc"]
    assert (t2.true_positives, t2.n_pred, t2.n_true, t2.n_ignored_pred) == (1, 2, 1, 0)
    # a detection that fits both a counted and an ignored box is given to the counted one
    sc3 = DetectionScores(kinds=("wbc",))
    sc3.add_image([("wbc", (0, 40, 60, 80))], [("wbc", (20, 40, 60, 80))], [("wbc", (0, 40, 40, 80))])
    assert sc3.tallies["wbc"].true_positives == 1 and sc3.tallies["wbc"].n_ignored_pred == 0


def test_score_makes_annotated_border_cells_dont_care():
    s = wd.Sample(Path("x.jpg"), "CBC", "val", ((40, 40, 80, 80), (0, 10, 30, 50)), (100, 200))
    found = [[((42, 41, 79, 82), 0.9)]]  # the cut cell not found
    old = wd.score([s], found, 0.5)
    assert old["recall"] == 0.5 and old["n_true"] == 2
    new = wd.score([s], found, 0.5, wd.BorderScoring(0.5, [0.1]))
    assert new["recall"] == 1.0 and new["n_true"] == 1 and new["n_ignored_true"] == 1


def test_recall_floor_policy_takes_the_highest_threshold_that_keeps_recall():
    samples = [wd.Sample(Path(f"{i}.jpg"), "CBC", "val", ((40, 40, 80, 80),), (100, 200)) for i in range(4)]
    # one cell per image found at scores 0.9, 0.6, 0.35, 0.2; a false box at 0.3 in each image
    found = [[((40, 40, 80, 80), sc), ((120, 20, 150, 60), 0.3)] for sc in (0.9, 0.6, 0.35, 0.2)]
    assert wd.pick_threshold(samples, found, policy="recall-floor", recall_floor=0.75) == pytest.approx(0.35)
    assert wd.pick_threshold(samples, found, policy="recall-floor", recall_floor=1.0) == pytest.approx(0.2)
    assert wd.pick_threshold(samples, found) == pytest.approx(0.35)  # best F1 (6/7 vs 8/11)
    with pytest.raises(ValueError, match="policy"):
        wd.pick_threshold(samples, found, policy="best")


def test_training_target_masks_border_cells_instead_of_teaching_them():
    boxes = np.array([[40.0, 40.0, 72.0, 72.0], [0.0, 30.0, 20.0, 62.0]])  # whole; cut by the left edge
    plain = wd.make_target(boxes, (120, 100))
    assert plain[..., 5].sum() == 2
    t = wd.make_target(boxes, (120, 100), edge_margin_um=0.5)
    assert t[..., 5].sum() == 1 and t[7, 7, 5] == 1.0  # only the whole cell is a centre
    assert t[4:8, 0:3, 6].sum() == 0.0  # the cut cell's grid cells leave the loss
    assert t[0, :, 6].sum() == 0.0 and t[:, 0, 6].sum() == 0.0  # the outer ring too
    assert t[14, 5, 6] == 0.0 and t[5, 12, 6] == 0.0  # last valid row (120 px) and column (100 px)
    assert t[10, 8, 6] == 1.0  # a background cell inside stays


def test_evaluate_detection_can_make_border_white_cells_dont_care(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from hematovision.cli import main

    for sub in ("images/test", "labels/test"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.full((48, 64, 3), 230, np.uint8)).save(tmp_path / "images/test/a.jpg")
    # one white cell cut by the left edge (x from 0 to 12.8 px), one whole; a blank field finds neither
    (tmp_path / "labels/test/a.txt").write_text("0 0.1 0.5 0.2 0.3\n0 0.5 0.5 0.2 0.3\n")
    args = ["evaluate-detection", "--data", str(tmp_path), "--format", "yolo", "--split", "test", "--mpp", "0.1"]
    plain = CliRunner().invoke(main, [*args, "--json"])
    assert plain.exit_code == 0, plain.output
    wbc = json.loads(plain.stdout)["per_kind"]["wbc"]
    assert wbc["n_true"] == 2 and wbc["n_ignored_true"] == 0
    ruled = CliRunner().invoke(main, [*args, "--border-margin-um", "0.5", "--json"])
    assert ruled.exit_code == 0, ruled.output
    payload = json.loads(ruled.stdout)
    assert payload["per_kind"]["wbc"]["n_true"] == 1 and payload["per_kind"]["wbc"]["n_ignored_true"] == 1
    assert payload["border_margin_um"] == 0.5
