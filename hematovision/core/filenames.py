"""File names: the name people see, the name a file is stored under, and server paths kept out of text.

An uploaded slide has two names. The **display name** is the name the client gave, as people know
it (``血液.svs``, ``Probe Müller 3.tiff``): shown in the API, the review pages and the reports and
stored in ``slides.filename``. The **storage name** is what the file is called on the server's
disk: ASCII, predictable, unique within its batch folder, and never taken from the client as it is.
Werkzeug's ``secure_filename`` did both jobs at once and so destroyed every non-Latin name
(``血液.svs`` became ``svs``).

:func:`redact_paths` takes server paths out of a text meant for a client (an error message of a
library that names the file by its full path).
"""

from __future__ import annotations

import os
import re
import unicodedata

#: Extensions of the files HematoVision reads (OpenSlide's whole-slide formats and the field images
#: Pillow decodes). A storage name keeps one of these, lower-cased; OpenSlide recognises some
#: formats (Hamamatsu VMS, MIRAX, Sakura, DICOM) by their extension.
SLIDE_EXTENSIONS = frozenset(
    {
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".svslide",
        ".bif",
        ".dcm",
        ".czi",
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
    }
)
#: Longest display name kept (characters); a longer one is shortened in the middle of its stem.
DISPLAY_NAME_MAX = 200
#: Longest ASCII stem in a storage name.
STORAGE_STEM_MAX = 60

# Characters a name never keeps: C0/C1 controls, surrogates (undecodable bytes), line and paragraph
# separators, the byte-order mark and the bidirectional embeddings, overrides and isolates, which
# can make ``gpj.exe`` look like ``exe.jpg``. Zero-width (non-)joiners stay: Persian, Indic and
# emoji spelling needs them.
_DROPPED = frozenset("\u2028\u2029\ufeff\u061c\u200e\u200f") | frozenset(map(chr, range(0x202A, 0x202F)))
_DROPPED |= frozenset(map(chr, range(0x2066, 0x206A)))
_PATH_SEPARATORS = re.compile(r"[/\\]")
_SPACES = re.compile(r"\s+")
_NOT_STEM = re.compile(r"[^A-Za-z0-9_-]+")
# An absolute POSIX path of two or more parts, not inside a URL or a ratio (``12/233``, ``µm/px``).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"()\[\]<>,;|]+/)+([^\s/'\"()\[\]<>,;|]*)")


class FileNameError(ValueError):
    """A name from which nothing showable is left (empty, only controls, ``.`` or ``..``)."""


def _kept(ch: str) -> bool:
    return ch not in _DROPPED and unicodedata.category(ch) not in ("Cc", "Cs")


def display_name(raw: str | None, max_len: int = DISPLAY_NAME_MAX) -> str:
    """The name as the client gave it, fit to show and store.

    Normalised to NFC (a name typed on macOS, which sends NFD, equals the same name typed
    elsewhere); path parts dropped (``C:\\scans\\a.svs`` and ``scans/a.svs`` are ``a.svs``);
    control, bidirectional-override and other invisible characters removed; runs of white space
    made one space and the ends trimmed; shortened to ``max_len`` characters, keeping the extension.

    Raises:
        FileNameError: when nothing showable is left.
    """
    text = "".join(ch for ch in unicodedata.normalize("NFC", raw or "") if _kept(ch))
    text = _SPACES.sub(" ", _PATH_SEPARATORS.split(text)[-1]).strip()
    if text in ("", ".", ".."):
        raise FileNameError(f"{(raw or '')[:100]!r} is not a file name")
    if len(text) > max_len:
        stem, ext = os.path.splitext(text)
        ext = ext if len(ext) <= 16 else ""
        keep = max_len - len(ext) - 1
        text = stem[: keep - keep // 3] + "…" + stem[len(stem) - keep // 3 :] + ext
    return text


def slide_extension(name: str) -> str:
    """The name's extension, lower-cased, when it is a slide extension (:data:`SLIDE_EXTENSIONS`); else ``""``."""
    ext = os.path.splitext(name)[1].lower()
    return ext if ext in SLIDE_EXTENSIONS else ""


def storage_name(index: int, raw: str | None) -> str:
    """The name an upload is stored under: ``{index:04d}-{ascii stem}{slide extension}``.

    The stem is the display name's, folded to ASCII (``Müller`` → ``Muller``) and reduced to letters,
    digits, ``_`` and ``-`` (``slide`` when nothing is left, as for ``血液``); the extension is kept,
    lower-cased, only when it is a known slide extension. The index (the upload's position in its
    submission) makes the name unique within the batch's folder.
    """
    try:
        name = display_name(raw)
    except FileNameError:
        name = ""
    stem, _ = os.path.splitext(name)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    ascii_stem = _NOT_STEM.sub("_", ascii_stem).strip("_-")[:STORAGE_STEM_MAX].strip("_-") or "slide"
    return f"{index:04d}-{ascii_stem}{slide_extension(name)}"


def redact_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last part (the file's own name).

    ``Short read of file /var/lib/hv/uploads/.incoming-1f/0000-a.svs: 440 < 4096`` becomes
    ``Short read of file 0000-a.svs: 440 < 4096``; URLs, ratios (``12/233``) and units (``µm/px``)
    are left alone.
    """
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "…", text)
