"""How a slide file stores its pixels: the compression of its full-resolution image and, for JPEG,
the quality, measured from the file's own quantisation tables.

A classifier's accuracy depends on how the scan was stored as well as on its scale: the white-cell
classifier loses 4-5 points of accuracy on 20x (0.5 µm/px) crops stored as JPEG even at quality 95
(docs/validation.md, *Slide storage*). The gate (:func:`hematovision.core.flags.evaluate_gate`)
compares what this module measures with the storage the model was validated on
(``validated_storage`` in its ``model.json``).

The quality is **measured**, never taken from a header's claim: a baseline JPEG carries its
quantisation tables (DQT segments; in a tiled TIFF either in every tile or once in the JPEGTables
tag). Encoders built on the IJG library (libjpeg, libjpeg-turbo: scanners, libvips, Pillow,
tifffile) scale one standard table by the quality setting, so the luminance table gives the quality
back exactly; a table that no IJG quality reproduces gets the quality whose table is as coarse overall
(the same sum of quantisation steps), marked not exact.

JPEG 2000 has no quality table: its loss is set by how many bits the encoder keeps. That rate is
measured from the file too, as the bytes each level-0 tile takes (bits per pixel over the tile's
pixels). A slide's figure is the median over the tiles that hold the smear, those at least
:data:`SMEAR_TILE_FRACTION` of the 95th-percentile tile's rate: glass-only tiles compress to a few
hundred bytes, and a scan whose area is mostly glass would otherwise read as coarsely stored.

:func:`read_storage` returns ``{"compression", "jpeg_quality", "quality_exact", "source"}``:
``compression`` one of ``"jpeg"``, ``"jpeg2000"``, ``"lossless"`` (no compression, LZW, deflate,
PNG, BMP ...), ``"other"`` (a lossy or unknown scheme) or ``"unknown"`` (the file could not be read
for it); ``jpeg_quality`` 1-100 for JPEG when the tables were found, else None; for JPEG 2000 also
``jpeg2000_bpp``, the level-0 tiles' bits per pixel as above (None when the tiles' sizes are unknown).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hematovision.core.slides import TIFF_MAGIC, quiet_tifffile

#: TIFF Compression tag values by kind (TIFF 6.0, Adobe, Aperio).
_TIFF_LOSSLESS = {1, 5, 8, 32773, 32946, 34925, 50000}  # none, LZW, deflate, PackBits, zstd ...
_TIFF_JPEG = {6, 7}
_TIFF_JPEG2000 = {33003, 33004, 33005, 34712}
_JPEG_SOI = b"\xff\xd8"
#: Bytes of a JPEG file read for its tables (they precede the scan data).
_HEAD_BYTES = 1 << 16
#: A JPEG 2000 tile holds the smear when its rate is at least this share of the 95th-percentile
#: tile's (see the module docstring).
SMEAR_TILE_FRACTION = 0.25


def dqt_tables(data: bytes) -> dict[int, list[int]]:
    """The quantisation tables of a JPEG stream (or a TIFF JPEGTables block), by table id, in the
    stream's (zig-zag) order. Reading stops at the first start-of-scan."""
    tables: dict[int, list[int]] = {}
    i = 2 if data.startswith(_JPEG_SOI) else 0
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no tables follow
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDB:
            seg, j = data[i + 4 : i + 2 + length], 0
            while j < len(seg):
                precision, table_id = seg[j] >> 4, seg[j] & 0x0F
                width = 2 if precision else 1
                raw = seg[j + 1 : j + 1 + 64 * width]
                if len(raw) < 64 * width:
                    break
                tables[table_id] = [int.from_bytes(raw[k : k + width], "big") for k in range(0, 64 * width, width)]
                j += 1 + 64 * width
        i += 2 + length
    return tables


@lru_cache(maxsize=1)
def _ijg_luma_tables() -> np.ndarray:
    """The luminance table the IJG library writes at each quality 1..100 (row q-1)."""
    grey = Image.new("L", (8, 8), 128)
    rows = []
    for q in range(1, 101):
        buf = io.BytesIO()
        grey.save(buf, format="JPEG", quality=q)
        rows.append(dqt_tables(buf.getvalue())[0])
    return np.array(rows, dtype=np.int64)


def jpeg_quality(tables: dict[int, list[int]]) -> tuple[int, bool] | None:
    """The IJG quality whose luminance table is the stream's table 0 (exact), else the one whose table
    is as coarse overall (not exact)."""
    luma = tables.get(0)
    if luma is None:
        return None
    ref = _ijg_luma_tables()
    table = np.array(luma, dtype=np.int64)
    same = np.nonzero((ref == table).all(axis=1))[0]
    if len(same):
        return int(same[0]) + 1, True
    # not an IJG table: the quality whose table is as coarse overall (the same sum of steps)
    return int(np.argmin(np.abs(ref.sum(axis=1) - table.sum()))) + 1, False


def _jpeg_result(tables: dict[int, list[int]], source: str) -> dict[str, Any]:
    q = jpeg_quality(tables)
    return {
        "compression": "jpeg",
        "jpeg_quality": q[0] if q else None,
        "quality_exact": q[1] if q else None,
        "source": source if q else f"{source}: no quantisation table found",
    }


def _tiff_storage(path: Path) -> dict[str, Any]:
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            page: Any = tif.series[0].levels[0].pages[0] if tif.series else tif.pages[0]
            if page is None:
                raise ValueError("the TIFF has no image page")
            code = int(page.compression)
            if code in _TIFF_LOSSLESS:
                return {"compression": "lossless", "jpeg_quality": None, "quality_exact": None, "source": "TIFF"}
            if code in _TIFF_JPEG2000:
                return {
                    "compression": "jpeg2000",
                    "jpeg_quality": None,
                    "quality_exact": None,
                    "jpeg2000_bpp": jpeg2000_bpp(page),
                    "source": "TIFF tile sizes",
                }
            if code not in _TIFF_JPEG:
                source = f"TIFF compression {code}"
                return {"compression": "other", "jpeg_quality": None, "quality_exact": None, "source": source}
            tables = dqt_tables(bytes(page.jpegtables)) if page.jpegtables else {}
            if 0 not in tables:  # no JPEGTables tag: every tile carries its own tables
                offsets, counts = page.dataoffsets, page.databytecounts
                first = next((k for k, n in enumerate(counts) if n), None)
                if first is not None:
                    tif.filehandle.seek(offsets[first])
                    tables = dqt_tables(tif.filehandle.read(min(int(counts[first]), _HEAD_BYTES)))
            return _jpeg_result(tables, "TIFF JPEG tables" if page.jpegtables else "TIFF tile")
    except tifffile.TiffFileError as exc:
        raise ValueError(str(exc)) from exc


def jpeg2000_bpp(page: Any) -> float | None:
    """Bits per pixel of a JPEG 2000 TIFF page's tiles (or strips): each segment's bytes over the
    pixels it covers (a tile's full size, edge tiles included, as TIFF stores them), the median over
    the segments that hold the smear (at least :data:`SMEAR_TILE_FRACTION` of the 95th-percentile
    rate). None when the page records no segment sizes."""
    counts = np.asarray([int(n) for n in page.databytecounts or () if n], dtype=np.float64)
    if not len(counts):
        return None
    if page.is_tiled:
        px = int(page.tilewidth) * int(page.tilelength)
    else:
        px = int(page.imagewidth) * min(int(page.rowsperstrip or page.imagelength), int(page.imagelength))
    if px <= 0:
        return None
    rates = 8.0 * counts / px
    smear = rates[rates >= SMEAR_TILE_FRACTION * np.quantile(rates, 0.95)]
    return round(float(np.median(smear)), 4)


def read_storage(path: str | Path) -> dict[str, Any]:
    """How the file at ``path`` stores its full-resolution pixels (see the module docstring).

    Never raises for a readable file of an unknown kind: ``compression`` is then ``"unknown"``."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
        if head.startswith(_JPEG_SOI):
            return _jpeg_result(dqt_tables(head), "JPEG file")
        if head.startswith(TIFF_MAGIC):
            return _tiff_storage(path)
        if head.startswith(b"\x89PNG") or head.startswith(b"BM"):
            return {"compression": "lossless", "jpeg_quality": None, "quality_exact": None, "source": "PNG/BMP"}
    except (OSError, ValueError, IndexError, KeyError) as exc:  # a file this cannot parse: say so
        return {"compression": "unknown", "jpeg_quality": None, "quality_exact": None, "source": f"unreadable: {exc}"}
    return {"compression": "unknown", "jpeg_quality": None, "quality_exact": None, "source": "format not inspected"}
