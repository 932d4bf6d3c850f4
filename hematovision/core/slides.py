"""Slide I/O: one ``Slide`` interface over whole-slide images (OpenSlide) and plain field images (Pillow).

Whole-slide formats (Aperio SVS, generic tiled TIFF, Hamamatsu NDPI/VMS, MIRAX MRXS, Leica SCN,
Philips TIFF, Ventana BIF, DICOM, …) are read with OpenSlide (openslide-python on the openslide-bin
wheel), which reads tiles on demand so slides of any size open in constant memory. Plain field
images (JPEG, PNG, BMP, non-tiled TIFF) are decoded once with Pillow and served as a one-level
slide; because they are decoded whole, their size is capped (``FIELD_IMAGE_MAX_PIXELS``) to refuse
decompression bombs — a large image must come as a tiled pyramid.

Scale (µm per level-0 pixel) is what every physical measurement downstream depends on, so it is
resolved explicitly and its origin recorded in ``Slide.mpp_source``:
  1. ``"submission"`` — the value given with the upload (the lab knows its scanner best);
  2. ``"slide"`` — what the file states: ``openslide.mpp-x`` (SVS ``MPP``, TIFF resolution tags in
     cm or inch, …), or an image's resolution (JFIF/PNG pHYs/TIFF). A stated scale is used only when
     it is plausible for a microscope (``PLAUSIBLE_MPP``): the 72 or 96 dpi that cameras and editors
     write by default would mean 353 µm/px and is ignored;
  3. ``"default"`` — the installation's ``HEMATOVISION_DEFAULT_MPP``;
  4. otherwise ``SlideError``.

Every problem a user can cause (missing, empty, truncated or corrupt file, a text file with a slide's
name, unsupported format, decompression bomb, no scale) raises ``SlideError``, a ``ValueError``
whose message is meant to be shown to a lab user as is.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from hematovision.core.filenames import redact_paths

logger = logging.getLogger(__name__)

#: Largest plain (non-pyramidal) image decoded whole: 120 Mpx ≈ 360 MB of RGB.
FIELD_IMAGE_MAX_PIXELS = 120_000_000
#: Stated scales outside this range (µm/px) are not microscope scales and are ignored.
PLAUSIBLE_MPP = (0.01, 20.0)
#: Pillow formats accepted as field images.
FIELD_IMAGE_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF"}
#: Largest region ``read_region`` returns in one call (pixels).
MAX_REGION_PIXELS = 256 * 1024 * 1024

_SUPPORTED = (
    "whole-slide images that OpenSlide reads (Aperio .svs, tiled pyramidal TIFF, Hamamatsu .ndpi, "
    "MIRAX .mrxs, Leica .scn, Philips TIFF, Ventana .bif, DICOM) or a JPEG, PNG, BMP or TIFF "
    "field image"
)
_NO_MPP_HINT = "give mpp with the submission or set HEMATOVISION_DEFAULT_MPP"
#: The first four bytes of a TIFF or BigTIFF file, either byte order.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideError(ValueError):
    """A slide that cannot be used; the message is written for a lab user.

    Messages name the file by its name only, never by its path on the server (a library's own text
    is quoted with paths taken out). :func:`validate_slide` sets ``file_name`` to that name, so that
    a caller who knows the file by another name (an upload, stored under an internal name) can put
    the client's name in its place.
    """

    file_name: str | None = None


def _why(exc: BaseException) -> str:
    """A library's error text, fit to quote in a ``SlideError``: without server paths."""
    return redact_paths(str(exc))


# --------------------------------------------------------------------------------------------------
# the interface


class Slide:
    """An open slide: level geometry, scale and RGB region reads (level-0 coordinates)."""

    path: Path
    format: str
    mpp: float
    mpp_source: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level whose downsample is at most ``downsample`` (like OpenSlide)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB pixels of a region: ``location`` in level-0 pixels, ``size`` (w, h) in ``level`` pixels.

        Areas outside the image (and transparent areas) are white. Returns (h, w, 3) uint8.
        """
        x0, y0 = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if not 0 <= level < self.level_count:
            raise SlideError(f"level {level} does not exist; this slide has {self.level_count}")
        if w <= 0 or h <= 0:
            raise SlideError(f"region size must be positive, got {w}×{h}")
        if w * h > MAX_REGION_PIXELS:
            raise SlideError(f"region {w}×{h} is too large to read at once; read it in tiles")
        return self._read(x0, y0, level, w, h)

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """The whole slide, downscaled so the longer side is at most ``max_px``; (h, w, 3) uint8.

        Reads the best pyramid level in chunks, so a slide with few levels never decodes a huge
        level at once.
        """
        w0, h0 = self.dimensions
        scale = min(1.0, max_px / max(w0, h0))
        out_w, out_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        level = self.get_best_level_for_downsample(1.0 / scale)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        out = Image.new("RGB", (out_w, out_h), "white")
        chunk = 4096
        for ly in range(0, lh, chunk):
            for lx in range(0, lw, chunk):
                cw, ch = min(chunk, lw - lx), min(chunk, lh - ly)
                part = self._read(round(lx * ds), round(ly * ds), level, cw, ch)
                # target box of this chunk in the thumbnail
                tx0, ty0 = round(lx * ds * scale), round(ly * ds * scale)
                tx1 = round((lx + cw) * ds * scale)
                ty1 = round((ly + ch) * ds * scale)
                if tx1 > tx0 and ty1 > ty0:
                    img = Image.fromarray(part).resize((tx1 - tx0, ty1 - ty0), Image.Resampling.BOX)
                    out.paste(img, (tx0, ty0))
        return np.asarray(out).copy()

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"<{type(self).__name__} {self.path.name!r} {self.format} {w}×{h} "
            f"levels={self.level_count} mpp={self.mpp:g} ({self.mpp_source})>"
        )

    def stated_mpp(self) -> float | None:
        """µm/px that the file itself states, if any (and plausible)."""
        return None

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError


class OpenSlideSlide(Slide):
    """A whole-slide image read through OpenSlide."""

    def __init__(self, path: Path, vendor: str, osr: Any) -> None:
        self.path = path
        self.format = vendor
        self._osr = osr
        self.level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.properties = dict(osr.properties)

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        import openslide

        try:
            rgba = np.asarray(self._osr.read_region((x0, y0), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"{self.path.name}: the image data could not be decoded ({_why(exc)}); the file is "
                "probably truncated or corrupt — copy or upload it again"
            ) from exc
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        # un-premultiplied RGBA over white; fully transparent (outside the slide) becomes white
        a = alpha[..., None].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self._osr.close()

    def stated_mpp(self) -> float | None:
        """µm/px the file states (OpenSlide's, else TIFF resolution tags), if plausible."""
        p = self.properties
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            value = _float(p.get(key))
            if value is not None:
                mpp_y = _float(p.get("openslide.mpp-y"))
                if mpp_y is not None and abs(mpp_y - value) > 0.01 * value:
                    logger.warning(
                        "%s: anisotropic pixels (mpp-x %s, mpp-y %s); using mpp-x", self.path.name, value, mpp_y
                    )
                return _plausible(value, self.path.name)
        res = _float(p.get("tiff.XResolution"))
        unit = (p.get("tiff.ResolutionUnit") or "").lower()
        if res and res > 0 and unit in ("centimeter", "inch"):
            return _plausible((1e4 if unit == "centimeter" else 25400.0) / res, self.path.name)
        return None


class ImageSlide(Slide):
    """A plain field image (JPEG/PNG/BMP/non-tiled TIFF), decoded once and kept in memory."""

    def __init__(self, path: Path, pixels: np.ndarray, pil_format: str, info: dict[str, Any]) -> None:
        self.path = path
        self.format = "image"
        self._pixels: np.ndarray | None = pixels
        h, w = pixels.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.properties = {"image.format": pil_format}
        self._info = info

    @property
    def pixels(self) -> np.ndarray:
        """The whole decoded image, (h, w, 3) uint8 (read-only view)."""
        if self._pixels is None:
            raise SlideError(f"{self.path.name}: the slide has been closed")
        view = self._pixels.view()
        view.flags.writeable = False
        return view

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        img = self.pixels
        ih, iw = img.shape[:2]
        out = np.full((h, w, 3), 255, np.uint8)
        sx0, sy0 = max(0, x0), max(0, y0)
        sx1, sy1 = min(iw, x0 + w), min(ih, y0 + h)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
        return out

    def close(self) -> None:
        self._pixels = None

    def stated_mpp(self) -> float | None:
        """µm/px from the image's resolution (JFIF density, PNG pHYs, TIFF tags), if plausible."""
        return _image_mpp(self._info, self.path.name)


def _image_mpp(info: dict[str, Any], name: str) -> float | None:
    dpi = info.get("dpi")
    if not dpi:
        return None
    try:
        dpi_x = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return None
    if not dpi_x > 0:
        return None
    return _plausible(25400.0 / dpi_x, name)


# --------------------------------------------------------------------------------------------------
# opening


def open_slide(path: str | os.PathLike[str], mpp: float | None = None, default_mpp: float | None = None) -> Slide:
    """Open a whole-slide image or a field image.

    Args:
        path: The file (for MIRAX, the ``.mrxs`` beside its data folder).
        mpp: µm/px given with the submission; wins over what the file states.
        default_mpp: Installation default, used only when neither the submission nor the file
            states a scale.

    Raises:
        SlideError: With a message for a lab user (see the module docstring).
    """
    path = Path(path)
    mpp = _check_mpp(mpp, "the submitted scale (mpp)")
    default_mpp = _check_mpp(default_mpp, "HEMATOVISION_DEFAULT_MPP")
    head = _read_head(path)
    slide = _open_openslide(path, head)
    if slide is None:
        slide = _open_image(path, head)
    try:
        slide.mpp, slide.mpp_source = _resolve_mpp(slide.stated_mpp(), mpp, default_mpp, path.name)
    except BaseException:
        slide.close()
        raise
    return slide


def _read_head(path: Path) -> bytes:
    """The first bytes of a file that must exist, be a file and not be empty (else SlideError)."""
    name = path.name
    if not path.exists():
        raise SlideError(f"{name}: file not found")
    if path.is_dir():
        raise SlideError(f"{name} is a folder, not a slide file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise SlideError(f"{name}: cannot read the file ({exc.strerror or _why(exc)})") from exc
    if size == 0:
        raise SlideError(f"{name} is empty (0 bytes): the upload or copy did not complete")
    return head


def _resolve_mpp(stated: float | None, mpp: float | None, default_mpp: float | None, name: str) -> tuple[float, str]:
    """The scale and where it came from: the submission, the file, the installation default."""
    if mpp is not None:
        return mpp, "submission"
    if stated is not None:
        return stated, "slide"
    if default_mpp is not None:
        return default_mpp, "default"
    raise SlideError(f"{name} states no microns per pixel; {_NO_MPP_HINT}")


def validate_slide(
    path: str | os.PathLike[str], mpp: float | None = None, default_mpp: float | None = None
) -> dict[str, Any]:
    """Cheap acceptance check before an upload is queued, in bounded memory and time per slide.

    A whole-slide image is opened with OpenSlide (which reads tiles on demand): a small region of
    the lowest-resolution level (written last, so a truncated file shows there) and of the centre of
    level 0 are decoded, and for TIFF-based files every tile or strip the file lists must lie inside
    the file. A plain field image is NOT decoded whole (a 120-megapixel PNG would take ~2 GB in the
    API): its header gives format, size and scale, and its data are checked by a bounded read
    (:func:`_check_image_data`); the worker decodes it.
    A grayscale image (no colour: 8- or 16-bit grey) and an image of one flat colour (blank glass,
    black) are refused: neither can hold a stained smear (a large plain image whose pixels are not
    decoded here is judged on its header's mode; the worker's quality gate flags a flat one).

    Returns:
        ``{"format", "dimensions": [w, h], "mpp", "mpp_source", "level_count",
        "level_dimensions"}``.
    """
    path = Path(path)
    try:
        return _validate(path, mpp, default_mpp)
    except SlideError as exc:
        exc.file_name = path.name
        raise


def _validate(path: Path, mpp: float | None, default_mpp: float | None) -> dict[str, Any]:
    mpp = _check_mpp(mpp, "the submitted scale (mpp)")
    default_mpp = _check_mpp(default_mpp, "HEMATOVISION_DEFAULT_MPP")
    head = _read_head(path)
    opened = _open_openslide(path, head)
    if opened is None:
        return _inspect_image(path, head, mpp, default_mpp)
    with opened as slide:
        slide.mpp, slide.mpp_source = _resolve_mpp(slide.stated_mpp(), mpp, default_mpp, path.name)
        _check_tiff_extent(path)
        last = slide.level_count - 1
        lw, lh = slide.level_dimensions[last]
        overview = slide.read_region((0, 0), last, (min(lw, 512), min(lh, 512)))
        w, h = slide.dimensions
        slide.read_region((max(0, w // 2 - 128), max(0, h // 2 - 128)), 0, (min(w, 256), min(h, 256)))
        _check_content(slide, overview)
        return {
            "format": slide.format,
            "dimensions": [w, h],
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "level_count": slide.level_count,
            "level_dimensions": [list(d) for d in slide.level_dimensions],
        }


def _open_openslide(path: Path, head: bytes) -> Slide | None:
    """An OpenSlide slide if OpenSlide recognises the file; None if it does not."""
    import openslide

    name = path.name
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{name} could not be read ({_why(exc)}); the file is probably corrupt") from exc
    if vendor is None:
        if head.startswith(TIFF_MAGIC):
            _check_tiff_readable(path)
        return None
    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(f"{name}: unsupported {vendor} slide ({_why(exc)})") from exc
    except openslide.OpenSlideError as exc:
        raise SlideError(
            f"{name} looks like a {vendor} slide but could not be opened ({_why(exc)}); the file is "
            "probably truncated or corrupt — copy or upload it again"
        ) from exc
    return OpenSlideSlide(path, vendor, osr)


def _check_tiff_readable(path: Path) -> None:
    """A TIFF that OpenSlide rejected: explain why if it is truncated, corrupt or a tiled TIFF."""
    import tifffile

    name = path.name
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            size = path.stat().st_size
            for page in pages:
                if _segments_end(page) > size:
                    raise SlideError(
                        f"{name} is truncated: its image data end beyond the end of the file "
                        f"({size} bytes) — the upload or copy did not complete"
                    )
    except SlideError:
        raise
    except Exception as exc:  # tifffile raises many kinds on garbage
        raise SlideError(f"{name} is a damaged TIFF file ({_why(exc)}); it is probably truncated or corrupt") from exc


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile's own log silenced: a damaged file is reported by our message, not its log."""
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tiff_log.setLevel(level)


def _check_tiff_extent(path: Path) -> None:
    """Raise if a TIFF-based slide lists tiles beyond the end of the file (a truncated upload)."""
    with path.open("rb") as fh:
        if not fh.read(4).startswith(TIFF_MAGIC):
            return
    _check_tiff_readable(path)


def _segments_end(page: Any) -> int:
    offsets = getattr(page, "dataoffsets", None) or ()
    counts = getattr(page, "databytecounts", None) or ()
    end = 0
    for off, cnt in zip(offsets, counts, strict=False):
        if cnt:
            end = max(end, int(off) + int(cnt))
    return end


def _open_image(path: Path, head: bytes) -> ImageSlide:
    """Decode a plain field image with Pillow (refusing huge or unsupported ones)."""
    name = path.name
    with _pil_open(path, head) as im:
        fmt, _w, _h = _checked_header(im, name)
        info = {str(k): v for k, v in im.info.items()}
        info[_SOURCE_MODE] = im.mode
        try:
            im.load()
            upright = ImageOps.exif_transpose(im) or im
            pixels = _to_rgb(upright)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise SlideError(
                f"{name}: the {FIELD_IMAGE_FORMATS[fmt]} image could not be decoded ({_why(exc)}); the "
                "file is probably truncated or corrupt — copy or upload it again"
            ) from exc
    return ImageSlide(path, pixels, FIELD_IMAGE_FORMATS[fmt], info)


def _pil_open(path: Path, head: bytes) -> Image.Image:
    """Pillow's lazy open (header only), with the module's messages for what it cannot read."""
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise SlideError(_bomb_message(name, None)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if _looks_like_text(head):
            snippet = head[:40].decode("utf-8", "replace").strip().splitlines()[0][:40]
            raise SlideError(
                f"{name} is a text file (it starts with {snippet!r}), not a slide image — was an "
                "error page or a link saved instead of the slide?"
            ) from exc
        raise SlideError(f"{name} is not a format HematoVision can read; use {_SUPPORTED}") from exc


def _checked_header(im: Image.Image, name: str) -> tuple[str, int, int]:
    """Format and size of an opened field image, refused when unsupported, empty or a bomb."""
    fmt = (im.format or "").upper()
    if fmt not in FIELD_IMAGE_FORMATS:
        raise SlideError(f"{name} is a {fmt or 'unknown'} image, which HematoVision does not accept; use {_SUPPORTED}")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise SlideError(f"{name} declares an empty image ({w}×{h})")
    if w * h > FIELD_IMAGE_MAX_PIXELS:
        raise SlideError(_bomb_message(name, (w, h)))
    return fmt, w, h


def _inspect_image(path: Path, head: bytes, mpp: float | None, default_mpp: float | None) -> dict[str, Any]:
    """``validate_slide`` for a plain field image: header, scale and a bounded check of its data."""
    name = path.name
    with _pil_open(path, head) as im:
        fmt, w, h = _checked_header(im, name)
        _refuse_without_colour(name, im.mode)
        info = {str(k): v for k, v in im.info.items()}
        orientation = _orientation(im, fmt)
        _check_image_data(path, im, fmt)
        if FIELD_IMAGE_FORMATS[fmt] == "JPEG" or w * h <= FLAT_CHECK_MAX_PIXELS:
            # A JPEG was decoded at 1/8 scale just above; a small image costs little to decode.
            _refuse_flat(name, np.asarray(im.convert("RGB")))
    value, source = _resolve_mpp(_image_mpp(info, name), mpp, default_mpp, name)
    if orientation in (5, 6, 7, 8):  # shown turned by a quarter (exif_transpose when decoded)
        w, h = h, w
    return {
        "format": "image",
        "dimensions": [w, h],
        "mpp": value,
        "mpp_source": source,
        "level_count": 1,
        "level_dimensions": [[w, h]],
    }


def _orientation(im: Image.Image, fmt: str) -> int:
    """The EXIF orientation from the header alone (Pillow's ``getexif`` on a PNG decodes the whole
    image to look for a late eXIf chunk; only one before the image data is read here)."""
    try:
        if fmt == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(0x0112, 1))
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block only loses the orientation
        return 1


#: Decompressed bytes of a PNG's image data inflated at intake (the rest is the worker's).
PNG_INFLATE_CHECK_BYTES = 1 << 20
_READ_CHUNK = 1 << 20


def _check_image_data(path: Path, im: Image.Image, fmt: str) -> None:
    """Refuse a truncated or corrupt field image without decoding it whole.

    PNG: every chunk must lie inside the file with a matching CRC, up to IEND, and the start of the
    image data must inflate. JPEG: decoded at 1/8 scale (the decoder's DCT scaling: 1/64 of the
    memory), which reads every entropy-coded segment. BMP: the pixel rows must lie inside the file.
    TIFF: the strips were checked against the file's size already (``_check_tiff_readable``).
    """
    name = path.name
    corrupt = (
        f"{name}: the {FIELD_IMAGE_FORMATS[fmt]} image could not be decoded ({{}}); the file is probably "
        "truncated or corrupt — copy or upload it again"
    )
    try:
        if fmt == "PNG":
            problem = _png_problem(path)
            if problem:
                raise SlideError(corrupt.format(problem))
        elif FIELD_IMAGE_FORMATS[fmt] == "JPEG":
            w, h = im.size
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
        elif fmt == "BMP" and isinstance(im, ImageFile.ImageFile) and im.tile and im.tile[0][0] == "raw":
            _, extents, offset, args = im.tile[0]
            stride = int(args[1]) if isinstance(args, tuple) and len(args) > 1 else 0
            rows = int(extents[3]) - int(extents[1]) if extents else 0
            if stride > 0 and offset + stride * rows > path.stat().st_size:
                raise SlideError(corrupt.format("its pixel rows end beyond the end of the file"))
    except SlideError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise SlideError(corrupt.format(_why(exc))) from exc


def _png_problem(path: Path) -> str | None:
    """What is wrong with a PNG's chunk structure (None when nothing): reads the file once in 1 MiB
    pieces and inflates at most ``PNG_INFLATE_CHECK_BYTES`` of its image data."""
    import struct
    import zlib

    size = path.stat().st_size
    inflater = zlib.decompressobj()
    inflated = 0
    seen_idat = False
    with path.open("rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return "no PNG signature"
        while True:
            header = fh.read(8)
            if len(header) < 8:
                return "it ends before its IEND chunk"
            length, kind = struct.unpack(">I4s", header)
            if fh.tell() + length + 4 > size:
                return f"its {kind.decode('latin-1')!r} chunk ends beyond the end of the file"
            crc = zlib.crc32(kind)
            left = length
            while left:
                piece = fh.read(min(left, _READ_CHUNK))
                crc = zlib.crc32(piece, crc)
                left -= len(piece)
                if kind == b"IDAT" and inflated < PNG_INFLATE_CHECK_BYTES:
                    try:
                        inflated += len(inflater.decompress(piece, PNG_INFLATE_CHECK_BYTES - inflated))
                    except zlib.error as exc:
                        return f"its image data do not inflate ({_why(exc)})"
            if struct.unpack(">I", fh.read(4))[0] != crc & 0xFFFFFFFF:
                return f"its {kind.decode('latin-1')!r} chunk has a wrong checksum"
            seen_idat = seen_idat or kind == b"IDAT"
            if kind == b"IEND":
                return None if seen_idat else "it has no image data"


_SOURCE_MODE = "hematovision.source_mode"
#: Pillow modes of images without colour (a smear's stain cannot be told apart in them).
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: An image whose every channel spans at most this many grey levels shows nothing (blank glass,
#: black, one colour).
FLAT_IMAGE_RANGE = 4


#: Plain images up to this many pixels are decoded at intake to check their colour (~12 MB).
FLAT_CHECK_MAX_PIXELS = 4_000_000


def _check_content(slide: Slide, overview: np.ndarray) -> None:
    """Refuse what cannot be a stained smear: a grayscale image, or one flat colour (judged on
    ``overview``, a read of the lowest-resolution level)."""
    _refuse_without_colour(slide.path.name, getattr(slide, "_info", {}).get(_SOURCE_MODE))
    thumb = slide.thumbnail(256) if isinstance(slide, ImageSlide) else overview
    _refuse_flat(slide.path.name, thumb)


def _refuse_without_colour(name: str, mode: str | None) -> None:
    if mode in GRAYSCALE_MODES:
        raise SlideError(
            f"{name} is a grayscale image (mode {mode}): HematoVision needs a colour (RGB) image of a "
            "Romanowsky-stained smear; nuclei cannot be told from red cells without colour"
        )


def _refuse_flat(name: str, thumb: np.ndarray) -> None:
    spread = thumb.reshape(-1, 3).max(axis=0).astype(int) - thumb.reshape(-1, 3).min(axis=0).astype(int)
    if int(spread.max()) <= FLAT_IMAGE_RANGE:
        colour = "black" if thumb.mean() < 20 else "blank (glass only)" if thumb.mean() >= 200 else "one flat colour"
        raise SlideError(f"{name} is {colour}: the image holds no smear to analyse")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8 RGB: alpha over white, 16-bit scaled, palette/grey expanded."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB")).copy()
    return np.asarray(im.convert("RGB")).copy()


def _bomb_message(name: str, size: tuple[int, int] | None) -> str:
    dims = f" ({size[0]}×{size[1]} px)" if size else ""
    return (
        f"{name} declares a huge image{dims} that is not a tiled pyramid; plain images above "
        f"{FIELD_IMAGE_MAX_PIXELS // 1_000_000} megapixels are refused (decompression-bomb guard). "
        "Save large scans as a tiled pyramidal TIFF or the scanner's own format (e.g. "
        "vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg)"
    )


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def _check_mpp(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SlideError(f"{what} must be a number of microns per pixel, got {value!r}") from exc
    if not (v > 0 and math.isfinite(v)):
        raise SlideError(f"{what} must be a positive number of microns per pixel, got {value!r}")
    return v


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if v > 0 and math.isfinite(v) else None


def _plausible(mpp: float, name: str) -> float | None:
    lo, hi = PLAUSIBLE_MPP
    if lo <= mpp <= hi:
        return mpp
    logger.info("%s states %.4g µm/px, not a microscope scale; ignoring it", name, mpp)
    return None
