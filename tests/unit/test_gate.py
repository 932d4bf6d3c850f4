"""Scale measured, never assumed, and the domain and quality gate on every slide: the scale estimate on
real crops and fields, the gate on in-domain, stain-shifted, blurred and wrong-scale slides, and bad
input (all glass, all black, one colour, grayscale, 16-bit) refused or flagged, never a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from hemato_model.handoff import CropSpool
from hemato_model.pipeline import prepare_slide
from hemato_model.pipeline_params import PipelineParams
from hemato_model.quality import GATE_SCALE_SIDE_PX, measure_fields, measure_quality, ood_summary
from hemato_model.smear_area import smear_mask
from hematovision.core.datasets import BCCD_DIR, BCCD_MPP, PBC_MPP, have_pbc, pbc_root
from hematovision.core.flags import evaluate_gate, gate_not_evaluated, load_rules
from hematovision.core.slides import SlideError, open_slide, validate_slide
from hematovision.service.slide_results import build_report

MODEL_SPLIT = Path(__file__).resolve().parents[2] / "hemato_model/models/wbc-effnetlite0-v1/split.json"


class _Spec:
    name, version, classes, input_px, crop_um = "test", "0", ["neutrophil", "lymphocyte"], 32, 24.0


def _quality(path: Path, mpp: float | None = None) -> dict[str, Any]:
    with open_slide(path, mpp=mpp) as slide:
        w, _ = slide.dimensions
        level = slide.get_best_level_for_downsample(max(1.0, 8.0 / float(slide.mpp)))
        lw, lh = slide.level_dimensions[level]
        mask = smear_mask(slide.read_region((0, 0), level, (lw, lh)))
        return measure_quality(slide, mask, w / lw)


def _codes(q: dict[str, Any]) -> list[str]:
    return [f.code for f in evaluate_gate(q, load_rules())]


@pytest.fixture(scope="module")
def smear(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small make-slide slide (0.25 µm/px) and its pixels."""
    from hematovision.devtools.synthetic import make_slide

    p = tmp_path_factory.mktemp("gate") / "smear.tiff"
    make_slide(p, real_cells, 1536, 1536, mpp=0.25, n_wbc=12, seed=21, fmt="tiff")
    with open_slide(p) as slide:
        return p, slide.read_region((0, 0), 0, slide.dimensions)


def test_gate_passes_an_in_domain_slide(smear) -> None:  # type: ignore[no-untyped-def]
    q = _quality(smear[0])
    assert q["fields_measured"] >= 3
    assert _codes(q) == []


def test_gate_trips_on_a_stain_shifted_slide(smear, tmp_path) -> None:  # type: ignore[no-untyped-def]
    od = -np.log10(np.clip((smear[1].astype(np.float32) + 1) / 256.0, 1e-3, 1))
    mix = np.array([[0.1, 0.9, 0.9], [0.9, 0.6, 0.1], [0.2, 0.2, 0.6]], np.float32)
    shifted = np.clip(255.0 * np.array([1.0, 0.95, 0.75]) * 10.0 ** (-(od @ mix)), 0, 255).astype(np.uint8)
    p = tmp_path / "shifted.png"
    Image.fromarray(shifted).save(p)
    flags = evaluate_gate(_quality(p, 0.25), load_rules())
    assert [f.code for f in flags] == ["STAIN_OUT_OF_RANGE"]
    assert flags[0].severity == "critical" and all("range" in v for v in flags[0].evidence.values() if v)


def test_gate_trips_on_a_blurred_slide(smear, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blurred = np.stack([ndi.gaussian_filter(smear[1][..., c], 6.0) for c in range(3)], axis=2)
    p = tmp_path / "blurred.png"
    Image.fromarray(blurred.astype(np.uint8)).save(p)
    flags = evaluate_gate(_quality(p, 0.25), load_rules())
    assert "FOCUS_POOR" in [f.code for f in flags]
    focus = next(f for f in flags if f.code == "FOCUS_POOR")
    assert focus.evidence["value"] < focus.evidence["minimum"]


@pytest.mark.parametrize("stated", [0.5, 0.125])
def test_gate_trips_on_a_slide_stated_at_the_wrong_scale(smear, stated: float) -> None:  # type: ignore[no-untyped-def]
    flags = evaluate_gate(_quality(smear[0], stated), load_rules())
    scale = [f for f in flags if f.code == "SCALE_MISMATCH"]
    assert scale and scale[0].severity == "critical"
    assert scale[0].evidence["stated_mpp"] == stated and scale[0].evidence["measured_mpp"] > 0


def test_gate_flags_make_the_differential_not_valid(smear) -> None:  # type: ignore[no-untyped-def]
    from hemato_model.crop_sink import ClassifyingSink

    class Named:
        name, version, classes, input_px, crop_um = "n", "1", ["neutrophil"], 32, 24.0

        def classify(self, crops: np.ndarray) -> list[tuple[str, float]]:
            return [("neutrophil", 0.99)] * len(crops)

    rules = load_rules()
    with open_slide(smear[0], mpp=0.5) as slide:  # stated twice the true scale
        analysis = prepare_slide(slide, Named(), ClassifyingSink(Named(), 64), PipelineParams())
    report = build_report(analysis, slide_id="s", rules=rules)
    assert report["differential_valid"] is False
    assert "SCALE_MISMATCH" in report["differential_invalid_reason"]
    assert report["flags"][0]["severity"] == "critical" and report["quality"]["scale"]["stated_mpp"] == 0.5
    with open_slide(smear[0]) as slide:
        analysis = prepare_slide(slide, Named(), ClassifyingSink(Named(), 64), PipelineParams())
    ok = build_report(analysis, slide_id="s", rules=rules)
    assert ok["differential_valid"] is True and ok["differential_invalid_reason"] is None


def test_domain_unvalidated_from_the_classifier_energy() -> None:
    rules = load_rules()
    base = {"fields_sampled": 6, "fields_measured": 6, "stain": {}, "focus": None, "scale": {}}
    stats = {"energy_threshold": -5.0}
    inside = ood_summary([-9.0] * 99 + [-4.0], stats)
    outside = ood_summary([-9.0] * 50 + [-4.0] * 50, stats)
    assert inside is not None and outside is not None and outside["share_above"] == 0.5
    assert "DOMAIN_UNVALIDATED" not in _codes_with(base, inside, rules)
    assert "DOMAIN_UNVALIDATED" in _codes_with(base, outside, rules)
    assert ood_summary([None, None], stats) is None and ood_summary([-1.0], None) is None


def test_a_share_too_small_to_judge_is_said_not_evaluated_never_passed() -> None:
    """Another lab's slide with a handful of white cells, all far outside the training crops: the
    share is not judged from so few crops, and the report lists DOMAIN_UNVALIDATED as not evaluated
    (with how many crops) instead of staying silent; so does a slide where no crop was scored."""
    rules = load_rules()
    base = {"fields_sampled": 6, "fields_measured": 6, "stain": {}, "focus": None, "scale": {}}
    stats = {"energy_threshold": -5.0}
    few = ood_summary([-1.0] * 4, stats)
    assert few is not None and few["share_above"] == 1.0
    assert "DOMAIN_UNVALIDATED" not in _codes_with(base, few, rules)
    (entry,) = [e for e in gate_not_evaluated({**base, "ood": few}, rules) if e["rule"] == "DOMAIN_UNVALIDATED"]
    assert "only 4 white-cell crops" in entry["reason"] and str(rules["gate"]["ood_min_crops"]) in entry["reason"]
    unscored = gate_not_evaluated(base, rules)
    assert [e["rule"] for e in unscored] == ["DOMAIN_UNVALIDATED"] and "no white-cell crop" in unscored[0]["reason"]
    enough = ood_summary([-1.0] * 40, stats)
    assert not [e for e in gate_not_evaluated({**base, "ood": enough}, rules) if e["rule"] == "DOMAIN_UNVALIDATED"]
    assert enough is not None and "DOMAIN_UNVALIDATED" in _codes_with(base, enough, rules)


def _codes_with(base: dict[str, Any], ood: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    return [f.code for f in evaluate_gate({**base, "ood": ood}, rules)]


# --- bad input --------------------------------------------------------------------------------------


def _save(tmp_path: Path, name: str, arr: np.ndarray, mode: str | None = None) -> Path:
    p = tmp_path / name
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(p)
    return p


BAD_IMAGES = {
    "glass.png": (lambda: np.full((600, 800, 3), 235, np.uint8), None, "blank"),
    "black.png": (lambda: np.zeros((600, 800, 3), np.uint8), None, "black"),
    "pink.png": (lambda: np.full((600, 800, 3), (220, 150, 170), np.uint8), None, "one flat colour"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_flat_images_are_refused_at_upload_and_flagged_by_the_pipeline(tmp_path, name: str) -> None:
    make, mode, words = BAD_IMAGES[name]
    p = _save(tmp_path, name, make(), mode)
    with pytest.raises(SlideError, match=words):
        validate_slide(p, mpp=0.25)
    with open_slide(p, mpp=0.25) as slide:
        analysis = prepare_slide(slide, _Spec(), CropSpool(tmp_path), PipelineParams())
    report = build_report(analysis, slide_id="x", rules=load_rules())
    assert report["flags"][0]["code"] == "IMAGE_UNUSABLE" and report["flags"][0]["severity"] == "critical"
    assert report["differential_valid"] is False and report["counts"]["wbc"] == 0


def _grey_smear(smear_pixels: np.ndarray, bits: int) -> tuple[np.ndarray, str]:
    grey = smear_pixels[:600, :800].astype(np.float32).mean(axis=2)
    if bits == 8:
        return grey.astype(np.uint8), "L"
    return (grey * 257.0).astype(np.uint16), "I;16"


@pytest.mark.parametrize("bits", [8, 16])
def test_grayscale_images_are_refused_at_upload_and_never_give_a_valid_differential(smear, tmp_path, bits: int) -> None:  # type: ignore[no-untyped-def]
    arr, _mode = _grey_smear(smear[1], bits)
    p = tmp_path / f"grey{bits}.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as im:
        assert im.mode in (("L",) if bits == 8 else ("I;16", "I"))
    with pytest.raises(SlideError, match="grayscale"):
        validate_slide(p, mpp=0.25)
    with open_slide(p, mpp=0.25) as slide:  # `hematovision process` opens it: the gate must flag it
        analysis = prepare_slide(slide, _Spec(), CropSpool(tmp_path), PipelineParams())
    report = build_report(analysis, slide_id="g", rules=load_rules())
    assert report["differential_valid"] is False
    assert {"STAIN_OUT_OF_RANGE", "IMAGE_UNUSABLE"} & {f["code"] for f in report["flags"]}


# --- scale ------------------------------------------------------------------------------------------


def test_scale_estimate_within_15_percent_on_pbc_test_crops(data_root: Path, require) -> None:  # type: ignore[no-untyped-def]
    require(have_pbc(data_root), f"the PBC data set under {data_root}")
    real_data = data_root
    from hemato_model.detection.scale import estimate_image_mpp

    files = json.loads(MODEL_SPLIT.read_text())["test"]
    random.Random(3).shuffle(files)
    est = [estimate_image_mpp(np.asarray(Image.open(pbc_root(real_data) / f).convert("RGB"))) for f in files[:40]]
    median = float(np.median([e.mpp for e in est]))
    assert abs(median / PBC_MPP - 1) <= 0.15, median
    assert {e.source for e in est} <= {"red_cells", "white_cell", "red_cells_packed"}


def test_small_crops_are_measured_enlarged_on_their_red_cells(data_root: Path, require) -> None:  # type: ignore[no-untyped-def]
    """Another lab's small crops: 40 PBC test crops shrunk to 0.24 µm/px (~120 px). ``evaluate``'s
    estimate (enlarged to MEASURE_SIDE_PX) measures most of them on their red cells and within 15 %
    per crop far more often than the crops as read, which fall back to the coarser white-cell size."""
    require(have_pbc(data_root), f"the PBC data set under {data_root}")
    from hemato_model.detection.scale import MEASURE_SIDE_PX, estimate_image_mpp
    from hemato_model.training.evaluation import estimate_scales

    files = json.loads(MODEL_SPLIT.read_text())["test"]
    random.Random(5).shuffle(files)
    small = []
    for f in files[:40]:
        im = Image.open(pbc_root(data_root) / f).convert("RGB")
        small.append(np.asarray(im.resize((round(im.width / 3), round(im.height / 3)), Image.Resampling.LANCZOS)))
    true_mpp = PBC_MPP * 3
    scales, summary = estimate_scales(small)
    as_read = [estimate_image_mpp(c, True, 0) for c in small]
    assert summary["sources"].get("red_cells", 0) >= 20
    assert sum(e.source == "red_cells" for e in as_read) <= 10
    close = sum(abs(v / true_mpp - 1) <= 0.15 for v in scales)
    close_as_read = sum(abs(e.mpp / true_mpp - 1) <= 0.15 for e in as_read)
    assert close >= close_as_read + 4, (close, close_as_read)
    assert abs(summary["median"] / true_mpp - 1) <= 0.15
    assert max(c.shape[0] for c in small) < MEASURE_SIDE_PX


def test_scale_estimate_within_15_percent_on_bccd_fields(data_root: Path, require) -> None:  # type: ignore[no-untyped-def]
    from hemato_model.detection.scale import estimate_image_mpp

    jpgs = sorted((data_root / BCCD_DIR / "BCCD" / "JPEGImages").glob("*.jpg"))
    require(len(jpgs) >= 20, f"BCCD fields under {data_root / BCCD_DIR}")
    est = [
        estimate_image_mpp(np.asarray(Image.open(j).convert("RGB")), centred_cell=False).mpp for j in jpgs[::10][:30]
    ]
    median = float(np.median(est))
    assert abs(median / BCCD_MPP - 1) <= 0.15, median


def test_scale_estimate_refuses_a_blank_image() -> None:
    from hemato_model.detection.scale import estimate_image_mpp

    with pytest.raises(ValueError, match="cannot estimate"):
        estimate_image_mpp(np.full((200, 200, 3), 230, np.uint8))


@pytest.mark.slow
def test_evaluate_without_mpp_measures_the_scale(data_root: Path, require, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require(have_pbc(data_root), f"the PBC data set under {data_root}")
    real_data = data_root
    from click.testing import CliRunner

    from hematovision.cli import main as cli

    split = json.loads(MODEL_SPLIT.read_text())["test"]
    for f in [s for s in split if s.startswith("neutrophil/")][:3] + [s for s in split if s.startswith("lymphocyte/")][
        :3
    ]:
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_bytes((pbc_root(real_data) / f).read_bytes())
    res = CliRunner().invoke(cli, ["evaluate", "--data", str(tmp_path), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["mpp_source"] == "estimated" and doc["n"] == 6
    est = doc["mpp_estimates"]
    assert est["n_measured"] + est["n_unmeasured"] == 6 and est["p10"] <= est["median"] <= est["p90"]
    assert abs(doc["mpp"] / PBC_MPP - 1) <= 0.3
    res = CliRunner().invoke(cli, ["evaluate", "--data", str(tmp_path), "--mpp", "0.08", "--quiet"])
    assert json.loads(res.output.strip().splitlines()[-1])["mpp_source"] == "given"


def test_slide_scale_rests_on_fields_with_isolated_red_cells() -> None:
    """The packed-cell stand-in reads up to a third low at 20x: where at least two fields have
    isolated red cells, the slide's scale is theirs; with fewer, every field counts."""
    from hemato_model.quality import summarise_fields

    def field(mpp: float, source: str) -> dict[str, Any]:
        keys = ("rbc_od_chroma", "nucleus_od_chroma", "rbc_od", "glass_brightness", "focus")
        return dict.fromkeys(keys) | {"measured_mpp": mpp, "mpp_source": source}

    isolated, packed = field(0.37, "red_cells"), field(0.25, "red_cells_packed")
    scale = summarise_fields([isolated, isolated, packed, packed, packed], 0.5)["scale"]
    assert scale["measured_mpp"] == 0.37 and scale["fields_isolated_cells"] == 2
    assert "SCALE_MISMATCH" not in _codes({"fields_measured": 5, "scale": scale})
    fallback = summarise_fields([isolated, packed, packed, packed], 0.5)["scale"]
    assert fallback["measured_mpp"] == 0.25 and fallback["ratio"] == 0.5
    assert "SCALE_MISMATCH" in _codes({"fields_measured": 4, "scale": fallback})


def test_fields_of_a_20x_slide_are_measured_on_isolated_red_cells(real_cells: Path, tmp_path: Path) -> None:
    """A 100 µm gate field of a 0.5 µm/px slide is 200 px: its 15 px red cells are measured on the
    field enlarged to GATE_SCALE_SIDE_PX, every field on isolated cells and all within 10 % of each
    other, in the field's own pixels (the same field as read falls back to packed cells somewhere)."""
    from hemato_model.detection.scale import _red_cell_diameter_px
    from hematovision.devtools.synthetic import make_slide

    p = tmp_path / "20x.tiff"
    make_slide(p, real_cells, 1536, 1536, mpp=0.5, n_wbc=12, seed=9300, fmt="tiff")
    with open_slide(p) as slide:
        w, _ = slide.dimensions
        level = slide.get_best_level_for_downsample(8.0 / 0.5)
        lw, lh = slide.level_dimensions[level]
        mask = smear_mask(slide.read_region((0, 0), level, (lw, lh)))
        enlarged = [f for f in measure_fields(slide, mask, w / lw) if f]
        as_read = [f for f in measure_fields(slide, mask, w / lw, scale_side_px=0) if f]
        field = slide.read_region((400, 400), 0, (200, 200))
    assert len(enlarged) >= 4
    assert {f["mpp_source"] for f in enlarged} == {"red_cells"}
    mpps = [f["measured_mpp"] for f in enlarged]
    assert max(mpps) / min(mpps) < 1.10
    assert 0.62 <= float(np.median(mpps)) / 0.5 <= 1.25
    assert "red_cells_packed" in {f["mpp_source"] for f in as_read}
    d_small, n_small = _red_cell_diameter_px(field, GATE_SCALE_SIDE_PX)
    big = np.asarray(Image.fromarray(field).resize((400, 400), Image.Resampling.BILINEAR))
    d_big, _ = _red_cell_diameter_px(big)
    assert n_small >= 3 and abs(2 * d_small / d_big - 1) < 0.02
