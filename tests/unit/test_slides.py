"""Slide I/O: OpenSlide and Pillow slides, scale precedence, and every bad input a lab can send."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from hematovision.core.slides import (
    FIELD_IMAGE_MAX_PIXELS,
    ImageSlide,
    OpenSlideSlide,
    SlideError,
    open_slide,
    validate_slide,
)
from hematovision.devtools.slide_writer import level_dimensions, write_pyramid

W, H = 2500, 1700


def gradient(x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """A smooth, position-encoding test pattern (JPEG keeps it within a few levels)."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    t = np.empty((h, w, 3), np.uint8)
    t[..., 0] = (xx * 255 // W).clip(0, 255)
    t[..., 1] = (yy * 255 // H).clip(0, 255)
    t[..., 2] = 128
    return t


@pytest.fixture(scope="module")
def wsi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wsi")
    write_pyramid(d / "grad.tiff", W, H, gradient, 0.25, fmt="tiff", tile_px=256)
    write_pyramid(d / "grad.svs", W, H, gradient, 0.5, fmt="svs", tile_px=256)
    return d


# ---------------------------------------------------------------------------------------- WSI


def test_generic_tiff_opens_with_levels_and_mpp(wsi_dir: Path) -> None:
    with open_slide(wsi_dir / "grad.tiff") as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert slide.format == "generic-tiff"
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "slide"
        assert slide.dimensions == (W, H)
        assert slide.level_count == 3
        assert slide.level_dimensions == tuple(level_dimensions(W, H))
        assert slide.level_downsamples[1] == pytest.approx(2.0, rel=1e-3)
        assert slide.get_best_level_for_downsample(1.0) == 0
        assert slide.get_best_level_for_downsample(2.5) == 1
        assert slide.get_best_level_for_downsample(100) == 2

        region = slide.read_region((1000, 600), 0, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        assert np.abs(region.astype(int) - gradient(1000, 600, 64, 32).astype(int)).mean() < 3

        low = slide.read_region((1000, 600), 1, (40, 20))  # location in level-0 px
        assert low.shape == (20, 40, 3)
        assert abs(int(low[0, 0, 0]) - int(gradient(1000, 600, 1, 1)[0, 0, 0])) <= 4

        outside = slide.read_region((W - 10, H - 10), 0, (30, 30))
        assert (outside[15:, 15:] == 255).all()  # beyond the slide: white

        thumb = slide.thumbnail(300)
        assert max(thumb.shape[:2]) == 300 and thumb.shape[2] == 3


def test_svs_opens_as_aperio_with_mpp(wsi_dir: Path) -> None:
    assert openslide.OpenSlide.detect_format(str(wsi_dir / "grad.svs")) == "aperio"
    with open_slide(wsi_dir / "grad.svs") as slide:
        assert slide.format == "aperio"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_count > 1
        assert slide.read_region((0, 0), slide.level_count - 1, (50, 50)).shape == (50, 50, 3)


def test_mpp_precedence(wsi_dir: Path, tmp_path: Path) -> None:
    tiff = wsi_dir / "grad.tiff"
    with open_slide(tiff, mpp=0.3, default_mpp=0.9) as s:
        assert (s.mpp, s.mpp_source) == (0.3, "submission")
    with open_slide(tiff, default_mpp=0.9) as s:
        assert (s.mpp, s.mpp_source) == (0.25, "slide")
    jpg = tmp_path / "field.jpg"
    Image.fromarray(gradient(0, 0, 64, 48)).save(jpg)  # no resolution stated
    with open_slide(jpg, default_mpp=0.9) as s:
        assert (s.mpp, s.mpp_source) == (0.9, "default")
    with pytest.raises(SlideError, match="states no microns per pixel.*HEMATOVISION_DEFAULT_MPP"):
        open_slide(jpg)
    for bad in (0, -0.25, float("nan"), float("inf")):
        with pytest.raises(SlideError, match="positive number of microns per pixel"):
            open_slide(tiff, mpp=bad)
    with pytest.raises(SlideError, match="HEMATOVISION_DEFAULT_MPP must be a positive"):
        open_slide(jpg, default_mpp=-1)


def test_stated_image_resolution_used_only_when_plausible(tmp_path: Path) -> None:
    px = gradient(0, 0, 40, 30)
    scanner = tmp_path / "scanner.png"
    Image.fromarray(px).save(scanner, dpi=(25400 / 0.2, 25400 / 0.2))  # 0.2 µm/px in pHYs
    with open_slide(scanner) as s:
        assert s.mpp == pytest.approx(0.2, rel=1e-3) and s.mpp_source == "slide"
    camera = tmp_path / "camera.jpg"
    Image.fromarray(px).save(camera, dpi=(72, 72))  # an editor's default, not a scale
    with open_slide(camera, default_mpp=0.1) as s:
        assert s.mpp_source == "default"
    plain = tmp_path / "plain.tif"  # non-tiled TIFF with resolution in cm: Pillow path
    Image.fromarray(px).save(plain, resolution=1e4 / 0.5, resolution_unit=3)
    with open_slide(plain) as s:
        assert s.format == "image" and s.mpp == pytest.approx(0.5, rel=1e-3)


def test_validate_slide(wsi_dir: Path) -> None:
    info = validate_slide(wsi_dir / "grad.svs")
    assert info["format"] == "aperio"
    assert info["dimensions"] == [W, H]
    assert info["mpp"] == pytest.approx(0.5)
    assert info["level_count"] == 3


# ---------------------------------------------------------------------------------------- fields


def test_real_bccd_field_opens_as_one_level(data_root: Path, require) -> None:  # type: ignore[no-untyped-def]
    jpg = data_root / "data/bccd/BCCD/JPEGImages/BloodImage_00000.jpg"
    require(jpg.is_file(), f"BCCD images under {data_root}")
    with open_slide(jpg, default_mpp=0.071) as slide:
        assert isinstance(slide, ImageSlide)
        assert slide.format == "image"
        assert slide.level_count == 1 and slide.dimensions == (640, 480)
        assert slide.level_downsamples == (1.0,)
        assert slide.get_best_level_for_downsample(8) == 0
        full = slide.read_region((0, 0), 0, (640, 480))
        assert full.shape == (480, 640, 3)
        assert np.array_equal(full, np.asarray(Image.open(jpg).convert("RGB")))
        edge = slide.read_region((620, 470), 0, (40, 20))
        assert (edge[10:, 20:] == 255).all()
        assert slide.thumbnail(160).shape == (120, 160, 3)
    assert validate_slide(jpg, default_mpp=0.071)["dimensions"] == [640, 480]


def test_transparent_png_is_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 10:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with open_slide(tmp_path / "a.png", mpp=0.1) as s:
        px = s.read_region((0, 0), 0, (20, 20))
    assert (px[:, :10] == 255).all() and (px[:, 10:] == (200, 0, 0)).all()


# ---------------------------------------------------------------------------------------- bad input


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs", mpp=0.25)
    (tmp_path / "empty.svs").touch()
    with pytest.raises(SlideError, match=r"is empty \(0 bytes\)"):
        open_slide(tmp_path / "empty.svs", mpp=0.25)
    with pytest.raises(SlideError, match="is a folder"):
        open_slide(tmp_path, mpp=0.25)


def test_text_file_named_svs(tmp_path: Path) -> None:
    bad = tmp_path / "slide.svs"
    bad.write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(SlideError, match="is a text file.*404 Not Found.*not a slide image"):
        validate_slide(bad, mpp=0.25)


def test_truncated_jpeg(tmp_path: Path, data_root: Path) -> None:
    src = data_root / "data/bccd/BCCD/JPEGImages/BloodImage_00000.jpg"
    if src.is_file():
        data = src.read_bytes()
    else:
        import io

        buf = io.BytesIO()
        Image.fromarray(gradient(0, 0, 640, 480)).save(buf, "JPEG")
        data = buf.getvalue()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="could not be decoded.*truncated or corrupt"):
        validate_slide(bad, mpp=0.07)


@pytest.mark.parametrize("name", ["grad.tiff", "grad.svs"])
@pytest.mark.parametrize("keep", [0.5, 0.97, 0.02])
def test_truncated_tiff_and_svs(wsi_dir: Path, tmp_path: Path, name: str, keep: float) -> None:
    data = (wsi_dir / name).read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SlideError, match="truncated|corrupt|damaged"):
        validate_slide(bad, mpp=0.25)


def test_decompression_bomb_refused_from_header(tmp_path: Path, png_header) -> None:  # type: ignore[no-untyped-def]
    for w, h in ((100_000, 100_000), (12_000, 12_000)):  # above Pillow's own limit / above ours
        assert w * h > FIELD_IMAGE_MAX_PIXELS
        bomb = tmp_path / f"bomb{w}.png"
        bomb.write_bytes(png_header(w, h))
        assert bomb.stat().st_size < 200
        with pytest.raises(SlideError, match="huge image.*not a tiled pyramid"):
            open_slide(bomb, mpp=0.25)


def test_unsupported_formats(tmp_path: Path) -> None:
    gif = tmp_path / "cells.gif"
    Image.fromarray(gradient(0, 0, 32, 32)).save(gif)
    with pytest.raises(SlideError, match="GIF image, which HematoVision does not accept"):
        open_slide(gif, mpp=0.25)
    junk = tmp_path / "data.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(SlideError, match="not a format HematoVision can read"):
        open_slide(junk, mpp=0.25)
    txt = tmp_path / "notes.txt"
    txt.write_text("patient 12, smear 3\n")
    with pytest.raises(SlideError, match="text file"):
        open_slide(txt, mpp=0.25)


def test_slide_error_is_value_error_and_bad_regions(wsi_dir: Path) -> None:
    assert issubclass(SlideError, ValueError)
    with open_slide(wsi_dir / "grad.tiff") as slide:
        with pytest.raises(SlideError, match="level 7 does not exist"):
            slide.read_region((0, 0), 7, (10, 10))
        with pytest.raises(SlideError, match="must be positive"):
            slide.read_region((0, 0), 0, (0, 10))
