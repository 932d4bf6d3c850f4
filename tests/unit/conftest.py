"""Fixtures shared by the unit tests' API and slide tests: small images and an upload helper."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image


def _png_bytes(w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(150, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _upload(client, *files: tuple[str, bytes], **fields: Any):  # type: ignore[no-untyped-def]
    headers = fields.pop("headers", {})
    data = {k: str(v) for k, v in fields.items()}
    data["files"] = [(io.BytesIO(b), name) for name, b in files]
    return client.post("/api/v1/batches", data=data, content_type="multipart/form-data", headers=headers)


@pytest.fixture(scope="session")
def png_bytes() -> Callable[..., bytes]:
    """``png_bytes(w=64, h=48) -> bytes``: a small RGB PNG of smear-like noise (the same every call)."""
    return _png_bytes


@pytest.fixture(scope="session")
def png_header() -> Callable[[int, int], bytes]:
    """``png_header(width, height) -> bytes``: a tiny PNG that declares ``width``×``height`` (a
    decompression bomb's header)."""
    return _png_header


@pytest.fixture(scope="session")
def upload() -> Callable[..., Any]:
    """``upload(client, (name, bytes), ..., **form_fields)``: POST the files to ``/api/v1/batches``
    as a multipart submission; returns the response."""
    return _upload
