"""Slide storage measured, never assumed: the compression and JPEG quality read from a slide file's
own quantisation tables, and the gate's STORAGE_UNVALIDATED against the storage the real classifier
was validated on (its model.json), through the one-process and the staged path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from hematovision.core.flags import evaluate_gate, gate_not_evaluated, load_rules
from hematovision.core.slide_storage import dqt_tables, jpeg_quality, read_storage
from hematovision.core.storage_rule import judge_storage

MODELS = Path(__file__).resolve().parents[2] / "hemato_model/models"
DEFAULT = MODELS / "wbc-effnetlite0-v1.2"


def _validated(model_dir: Path = DEFAULT) -> dict:  # type: ignore[type-arg]
    return json.loads((model_dir / "model.json").read_text())["validated_storage"]


@pytest.fixture(scope="module")
def slides(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, float, int], Path]:
    """make-slide slides: (format, µm/px, JPEG quality) -> path."""
    from hematovision.devtools.synthetic import make_slide

    out = tmp_path_factory.mktemp("storage")
    made = {}
    for fmt, mpp, q in (("tiff", 0.25, 85), ("tiff", 0.5, 85), ("svs", 0.5, 70), ("tiff", 0.25, 95)):
        p = out / f"s_{mpp}_{q}.{fmt}"
        make_slide(p, real_cells, 1536, 1536, mpp=mpp, n_wbc=6, seed=7, fmt=fmt, quality=q)
        made[(fmt, mpp, q)] = p
    return made


def test_make_slide_slides_give_their_jpeg_quality_back_exactly(slides) -> None:  # type: ignore[no-untyped-def]
    for (fmt, _mpp, q), path in slides.items():
        got = read_storage(path)
        assert got["compression"] == "jpeg", (fmt, got)
        assert got["jpeg_quality"] == q and got["quality_exact"] is True, (fmt, q, got)


@pytest.mark.parametrize("q", [30, 75, 93])
def test_jpeg_fields_and_tifffile_tiles(tmp_path: Path, q: int) -> None:
    rgb = (np.random.default_rng(q).random((96, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "f.jpg", quality=q)
    assert read_storage(tmp_path / "f.jpg")["jpeg_quality"] == q
    tifffile.imwrite(tmp_path / "t.tif", rgb, tile=(32, 32), compression="jpeg", compressionargs={"level": q})
    got = read_storage(tmp_path / "t.tif")
    assert got["compression"] == "jpeg" and got["jpeg_quality"] == q


def test_lossless_jpeg2000_and_unknown_files(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "f.png")
    tifffile.imwrite(tmp_path / "z.tif", rgb, tile=(32, 32), compression="zlib")
    tifffile.imwrite(tmp_path / "j.tif", rgb, tile=(32, 32), compression="jpeg2000")
    (tmp_path / "x.mrxs").write_bytes(b"not a format this reads")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 40)
    assert read_storage(tmp_path / "f.png")["compression"] == "lossless"
    assert read_storage(tmp_path / "z.tif")["compression"] == "lossless"
    assert read_storage(tmp_path / "j.tif")["compression"] == "jpeg2000"
    assert read_storage(tmp_path / "x.mrxs")["compression"] == "unknown"
    bad = read_storage(tmp_path / "bad.tif")  # never raises: the report says it could not be read
    assert bad["compression"] == "unknown" and bad["source"].startswith("unreadable")


def test_jpeg2000_rate_is_read_from_the_tiles(tmp_path: Path) -> None:
    """The bits per pixel of a JPEG 2000 slide come from its level-0 tile sizes: make-slide's Aperio
    JPEG 2000 SVS gives its rate back, also when three quarters of the scan is glass."""
    from hematovision.devtools.slide_writer import write_pyramid

    rng = np.random.default_rng(3)

    def tile_fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        if x0 < 768:  # three of the four columns of tiles are glass
            return np.full((h, w, 3), 235, np.uint8)
        return (rng.random((h, w, 3)) * 200).astype(np.uint8)

    path = tmp_path / "j.svs"
    write_pyramid(path, 1024, 1024, tile_fn, 0.25, fmt="svs", tile_px=256, jpeg2000_bpp=1.5, min_level_px=512)
    got = read_storage(path)
    assert got["compression"] == "jpeg2000" and got["source"] == "TIFF tile sizes"
    assert got["jpeg2000_bpp"] == pytest.approx(1.5, rel=0.03)
    with tifffile.TiffFile(path) as tif:  # what was written: Aperio's RGB JPEG 2000, glass tiles far smaller
        page = tif.pages[0]
        assert int(page.compression) == 33005
        sizes = 8.0 * np.asarray(page.databytecounts) / (256 * 256)
    assert sizes.min() < 0.5 * got["jpeg2000_bpp"]
    with pytest.raises(ValueError, match="only in SVS"):
        write_pyramid(tmp_path / "j.tiff", 256, 256, tile_fn, 0.25, fmt="tiff", jpeg2000_bpp=1.0)


def test_crops_stored_as_jpeg2000_at_a_rate() -> None:
    from hemato_model.preprocessing import jpeg2000_stored, rescan

    rng = np.random.default_rng(0)
    crops = (rng.random((7, 160, 160, 3)) * 255).astype(np.uint8)
    fine = rescan(crops, 24.0, 0.25, jpeg2000_bpp=4.0)
    coarse = rescan(crops, 24.0, 0.25, jpeg2000_bpp=0.5)
    plain = rescan(crops, 24.0, 0.25)
    assert fine.shape == crops.shape
    assert np.abs(coarse.astype(int) - plain).mean() > np.abs(fine.astype(int) - plain).mean() > 0
    images = [Image.fromarray(c) for c in crops[:, :96, :96]]
    assert [im.size for im in jpeg2000_stored(images, 1.0)] == [(96, 96)] * 7
    with pytest.raises(ValueError, match="JPEG or as JPEG 2000"):
        rescan(crops, 24.0, 0.25, jpeg_quality=85, jpeg2000_bpp=1.0)
    with pytest.raises(ValueError, match="above 0"):
        rescan(crops, 24.0, 0.25, jpeg2000_bpp=0.0)


def test_tables_only_block_and_a_non_ijg_table() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="JPEG", quality=60)
    data = buf.getvalue()
    tables_only = data[: data.index(b"\xff\xda")] + b"\xff\xd9"  # what a TIFF's JPEGTables holds
    assert jpeg_quality(dqt_tables(tables_only)) == (60, True)
    flat = io.BytesIO()
    Image.new("L", (16, 16), 128).save(flat, format="JPEG", qtables=[[7] * 64])  # not an IJG scaling
    q, exact = jpeg_quality(dqt_tables(flat.getvalue()))  # type: ignore[misc]
    assert not exact and 92 <= q <= 95  # IJG 94's steps sum to 441, these to 448


def test_storage_rule_on_the_default_models_record() -> None:
    v = _validated()
    jpeg = {"compression": "jpeg", "jpeg_quality": 85, "quality_exact": True, "source": "TIFF tile"}
    assert not judge_storage(jpeg, v, 0.25).outside
    assert not judge_storage(jpeg, v, 0.12).outside  # finer than 40x: the 0.25 row holds
    low = judge_storage(jpeg | {"jpeg_quality": 80}, v, 0.25)
    assert low.outside and low.evidence["validated_min_quality"] == 85 and "quality 80" in low.message
    at20x = judge_storage(jpeg | {"jpeg_quality": 95}, v, 0.5)
    assert at20x.outside and "no JPEG quality was validated" in at20x.message
    assert judge_storage(jpeg, v, 1.0).outside  # beyond the last row no JPEG is validated
    assert not judge_storage({"compression": "lossless"}, v, 0.5).outside
    j2k = {"compression": "jpeg2000", "jpeg2000_bpp": 2.0, "source": "TIFF tile sizes"}
    assert not judge_storage(j2k, v, 0.25).outside  # v1.2 was validated from 1.5 bits per pixel at 40x
    coarse = judge_storage(j2k | {"jpeg2000_bpp": 1.0}, v, 0.25)
    assert coarse.outside and coarse.evidence["validated_min_bpp"] == 1.5 and "1.00 bits per pixel" in coarse.message
    assert "no JPEG 2000 rate was validated" in judge_storage(j2k, v, 0.5).message  # none at 20x
    assert judge_storage(j2k | {"jpeg2000_bpp": None}, v, 0.25).not_judged
    # a model never measured on JPEG 2000 (its record has JPEG rows only): such a slide does not pass
    v14 = _validated(MODELS / "wbc-effnetlite0-v1.4")
    jpeg_only = {k: val for k, val in v14.items() if not k.startswith("jpeg2000")}
    never = judge_storage(j2k, jpeg_only, 0.25)
    assert never.outside and "not validated on" in never.message
    # the opt-in v1.4 was measured on JPEG 2000 too: from 4 bits per pixel at 20x
    assert judge_storage(j2k, v14, 0.5).outside and not judge_storage(j2k | {"jpeg2000_bpp": 4.2}, v14, 0.5).outside
    assert judge_storage(jpeg, None, 0.25).not_judged  # the model records nothing: said, not silent
    assert judge_storage({"compression": "unknown", "source": "x"}, v, 0.25).not_judged
    assert judge_storage(jpeg | {"jpeg_quality": None}, v, 0.25).not_judged
    # the opt-in v1.4 was validated on JPEG 85 at 20x
    assert not judge_storage(jpeg, _validated(MODELS / "wbc-effnetlite0-v1.4"), 0.5).outside


def test_storage_check_is_the_labs_choice_and_said_when_off() -> None:
    rules = load_rules()
    quality = {
        "fields_measured": 6,
        "stain": {},
        "scale": {"stated_mpp": 0.5},
        "storage": {"compression": "jpeg", "jpeg_quality": 85, "validated": _validated()},
    }
    assert "STORAGE_UNVALIDATED" in [f.code for f in evaluate_gate(quality, rules)]
    assert "STORAGE_UNVALIDATED" not in [e["rule"] for e in gate_not_evaluated(quality, rules)]
    off = rules | {"gate": rules["gate"] | {"storage_check": False}}
    assert "STORAGE_UNVALIDATED" not in [f.code for f in evaluate_gate(quality, off)]
    assert "STORAGE_UNVALIDATED" in [e["rule"] for e in gate_not_evaluated(quality, off)]


@pytest.mark.slow
def test_real_model_on_20x_jpeg_slides_flags_storage_both_paths(slides, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The default classifier on make-slide slides: a 20x slide stored as JPEG 85 gets
    STORAGE_UNVALIDATED (critical, differential not valid) in the one-process and the staged path;
    the same storage at 0.25 µm/px passes."""
    from hemato_model.classifier import Classifier
    from hemato_model.handoff import CropSpool, apply_labels, read_prepared, write_labels, write_prepared
    from hemato_model.pipeline import analyze_slide, prepare_slide
    from hemato_model.pipeline_params import PipelineParams
    from hemato_model.quality import model_evidence
    from hematovision.core.slides import open_slide
    from hematovision.service.slide_results import build_report

    clf = Classifier.load(DEFAULT)
    rules = load_rules()
    reports = {}
    for key in (("tiff", 0.25, 85), ("tiff", 0.5, 85)):
        with open_slide(slides[key]) as slide:
            analysis = analyze_slide(slide, clf, PipelineParams())
        reports[key] = build_report(analysis, slide_id="s", rules=rules)
    ok, bad = reports[("tiff", 0.25, 85)], reports[("tiff", 0.5, 85)]
    assert ok["quality"]["storage"]["jpeg_quality"] == 85 and ok["quality"]["storage"]["validated"] is not None
    assert "STORAGE_UNVALIDATED" not in [f["code"] for f in ok["flags"]]
    storage = [f for f in bad["flags"] if f["code"] == "STORAGE_UNVALIDATED"]
    assert storage and storage[0]["severity"] == "critical" and storage[0]["evidence"]["jpeg_quality"] == 85
    assert bad["differential_valid"] is False and "STORAGE_UNVALIDATED" in bad["differential_invalid_reason"]

    folder = tmp_path / "staged"
    folder.mkdir()
    spool = CropSpool(folder)
    with open_slide(slides[("tiff", 0.5, 85)]) as slide:
        prepared = prepare_slide(slide, clf, spool, PipelineParams())
    write_prepared(folder, prepared, spool.cells, clf)
    staged = read_prepared(folder)
    crops = np.concatenate(list(staged.crop_chunks()))
    labels, energies = clf.classify_scored(crops, mpp=0.5)
    model = {"name": clf.name, "version": clf.version, "classes": list(clf.classes), **model_evidence(clf)}
    write_labels(folder, labels, model, energies)
    analysis = apply_labels(read_prepared(folder), json.loads((folder / "labels.json").read_text()))
    report = build_report(analysis, slide_id="s", rules=rules)
    assert "STORAGE_UNVALIDATED" in [f["code"] for f in report["flags"]]


@pytest.mark.slow
def test_real_model_on_jpeg2000_slides_judged_by_their_rate(real_cells: Path, tmp_path: Path) -> None:
    """The default classifier on make-slide Aperio JPEG 2000 slides at 0.25 µm/px: stored at 2 bits
    per pixel (inside v1.2's validated 1.5) no storage flag; at 1 bit per pixel STORAGE_UNVALIDATED,
    critical, with the measured rate as evidence."""
    from hemato_model.classifier import Classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import make_slide
    from hematovision.service.slide_results import build_report

    clf = Classifier.load(DEFAULT)
    rules = load_rules()
    reports = {}
    for bpp in (2.0, 1.0):
        path = tmp_path / f"j{bpp:g}.svs"
        make_slide(path, real_cells, 1536, 1536, mpp=0.25, n_wbc=6, seed=7, fmt="svs", jpeg2000_bpp=bpp)
        with open_slide(path) as slide:
            reports[bpp] = build_report(analyze_slide(slide, clf, PipelineParams()), slide_id="s", rules=rules)
    ok, bad = reports[2.0], reports[1.0]
    assert ok["quality"]["storage"]["compression"] == "jpeg2000"
    assert ok["quality"]["storage"]["jpeg2000_bpp"] >= 1.5
    assert ok["counts"]["wbc_seen"] >= 5  # the cells are found on the JPEG 2000 tiles
    assert "STORAGE_UNVALIDATED" not in [f["code"] for f in ok["flags"]]
    storage = [f for f in bad["flags"] if f["code"] == "STORAGE_UNVALIDATED"]
    assert storage and storage[0]["severity"] == "critical"
    assert storage[0]["evidence"]["jpeg2000_bpp"] < 1.5 and storage[0]["evidence"]["validated_min_bpp"] == 1.5
    assert bad["differential_valid"] is False


def test_scans_coarser_than_the_models_record_are_flagged_whatever_their_storage() -> None:
    """SCALE_UNVALIDATED: the default model's record reaches 0.55 µm/px (20x); a lossless scan at
    0.7 µm/px passes the storage rule and would otherwise pass silently."""
    from hematovision.core.storage_rule import judge_scale, validated_max_mpp

    v = _validated()
    assert validated_max_mpp(v) == 0.55 and validated_max_mpp(None) is None
    assert not judge_scale(v, 0.5).outside and not judge_scale(v, 0.55).outside
    far = judge_scale(v, 0.7)
    assert far.outside and far.evidence == {"stated_mpp": 0.7, "validated_max_mpp": 0.55} and "0.7 µm/px" in far.message
    assert judge_scale(None, 0.25).not_judged and judge_scale(v, None).not_judged
    rules = load_rules()
    lossless = {"compression": "lossless", "validated": v}
    base = {"fields_measured": 6, "stain": {}, "ood": {"crops": 40, "share_above": 0.0, "energy_threshold": 0.0}}
    quality = base | {"scale": {"stated_mpp": 0.7}, "storage": lossless}
    assert "SCALE_UNVALIDATED" in [f.code for f in evaluate_gate(quality, rules)]
    inside = base | {"scale": {"stated_mpp": 0.5}, "storage": lossless}
    assert "SCALE_UNVALIDATED" not in [f.code for f in evaluate_gate(inside, rules)]
    no_record = base | {"scale": {"stated_mpp": 0.7}, "storage": {"compression": "lossless", "validated": None}}
    assert "SCALE_UNVALIDATED" in [e["rule"] for e in gate_not_evaluated(no_record, rules)]
    before_storage = base | {"scale": {"stated_mpp": 0.7}}  # an analysis made before storage was measured
    assert "SCALE_UNVALIDATED" not in [f.code for f in evaluate_gate(before_storage, rules)]
    assert "SCALE_UNVALIDATED" not in [e["rule"] for e in gate_not_evaluated(before_storage, rules)]


@pytest.mark.slow
def test_real_model_on_a_lossless_slide_scanned_coarser_than_validated(real_cells: Path, tmp_path: Path) -> None:
    """A make-slide smear rescanned to 0.7 µm/px and stored lossless (PNG): the default classifier
    names its cells and nothing else objects, so only SCALE_UNVALIDATED keeps the differential from
    reading as valid; the same smear at 0.5 µm/px gets no such flag."""
    from hemato_model.classifier import Classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import make_slide
    from hematovision.service.slide_results import build_report

    base = tmp_path / "b.tiff"
    make_slide(base, real_cells, 3072, 3072, mpp=0.25, n_wbc=60, seed=21, fmt="tiff")
    with open_slide(base) as slide:
        w, h = slide.dimensions
        pixels = Image.fromarray(slide.read_region((0, 0), 0, (w, h)))
    clf = Classifier.load(DEFAULT)
    reports = {}
    for mpp in (0.5, 0.7):
        path = tmp_path / f"s{mpp}.png"
        f = 0.25 / mpp
        pixels.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS).save(path)
        with open_slide(path, mpp=mpp) as slide:
            reports[mpp] = build_report(analyze_slide(slide, clf, PipelineParams()), slide_id="s", rules=load_rules())
    assert "SCALE_UNVALIDATED" not in [f["code"] for f in reports[0.5]["flags"]]
    coarse = reports[0.7]
    (flag,) = [f for f in coarse["flags"] if f["code"] == "SCALE_UNVALIDATED"]
    assert flag["severity"] == "critical" and flag["evidence"]["validated_max_mpp"] == 0.55
    assert coarse["differential_valid"] is False and coarse["counts"]["wbc_seen"] >= 30
