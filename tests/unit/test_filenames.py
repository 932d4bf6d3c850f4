"""File names: the display name keeps what people wrote, the storage name is safe ASCII, and server
paths are taken out of text meant for a client (hematovision/core/filenames.py)."""

from __future__ import annotations

import unicodedata

import pytest

from hematovision.core.filenames import (
    DISPLAY_NAME_MAX,
    FileNameError,
    display_name,
    redact_paths,
    slide_extension,
    storage_name,
)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("血液.svs", "血液.svs"),
        ("Probe Müller 3.tiff", "Probe Müller 3.tiff"),
        (unicodedata.normalize("NFD", "Probe Müller.tiff"), "Probe Müller.tiff"),  # macOS sends NFD
        ("C:\\scans\\2026\\血液.svs", "血液.svs"),  # an old browser's full Windows path
        ("scans/ночь/мазок.ndpi", "мазок.ndpi"),
        ("a\x00b\x1f\x7fc.png", "abc.png"),  # control characters
        ("slide\u202egpj.exe", "slidegpj.exe"),  # a right-to-left override cannot disguise the name
        ("  two   spaces\t.png  ", "two spaces.png"),  # a tab is a control character
        ("خون\u200cشناسی.png", "خون\u200cشناسی.png"),  # the zero-width non-joiner Persian needs stays
        (".hidden.svs", ".hidden.svs"),
    ],
)
def test_display_name_keeps_what_people_wrote(raw: str, shown: str) -> None:
    assert display_name(raw) == shown


@pytest.mark.parametrize("raw", [None, "", "   ", "\x00\x01", ".", "..", "dir/", "a/..", "\u202e"])
def test_display_name_refuses_names_with_nothing_left(raw: str | None) -> None:
    with pytest.raises(FileNameError):
        display_name(raw)


def test_display_name_is_length_limited_and_keeps_the_extension() -> None:
    long = "血" * 500 + ".svs"
    shown = display_name(long)
    assert len(shown) == DISPLAY_NAME_MAX and shown.endswith(".svs") and "…" in shown
    assert display_name("x" * 30 + ".png", max_len=20) == "xxxxxxxxxx…xxxxx.png"


@pytest.mark.parametrize(
    ("index", "raw", "stored"),
    [
        (0, "血液.svs", "0000-slide.svs"),
        (1, "Probe Müller 3.TIFF", "0001-Probe_Muller_3.tiff"),
        (2, "../../etc/passwd.png", "0002-passwd.png"),
        (3, "notes.exe", "0003-notes"),  # not a slide extension: dropped
        (4, "C:\\scans\\Äpfel.NDPI", "0004-Apfel.ndpi"),
        (5, None, "0005-slide"),
        (12, "x" * 300 + ".jpg", "0012-" + "x" * 60 + ".jpg"),
        (7, "$(rm -rf ~).png", "0007-rm_-rf.png"),
    ],
)
def test_storage_name_is_safe_ascii_with_the_slide_extension(index: int, raw: str | None, stored: str) -> None:
    name = storage_name(index, raw)
    assert name == stored
    assert name.isascii() and "/" not in name and "\\" not in name and not name.startswith(".")


def test_slide_extension() -> None:
    assert slide_extension("a.SVS") == ".svs" and slide_extension("a.tar.gz") == "" and slide_extension("svs") == ""


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            "Cannot hash TIFF tiles: Short read of file /var/lib/hv/uploads/.incoming-1f/0000-a.svs: 440 < 4096",
            "Cannot hash TIFF tiles: Short read of file 0000-a.svs: 440 < 4096",
        ),
        ("cannot identify image file '/srv/import/2026/x.png'", "cannot identify image file 'x.png'"),
        ("(/tmp/probe/dir/)", "(…)"),
        ("12/233 = 5.2 %; 0.25 µm/px", "12/233 = 5.2 %; 0.25 µm/px"),
        ("see https://example.org/a/b/c for more", "see https://example.org/a/b/c for more"),
        ("nothing here", "nothing here"),
    ],
)
def test_redact_paths(text: str, redacted: str) -> None:
    assert redact_paths(text) == redacted
