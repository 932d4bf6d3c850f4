"""Where uploads go while a submission is checked: a staging folder per request in the upload folder.

Werkzeug's multipart parser writes each uploaded file through a stream factory; ours writes it
straight into the request's staging folder (``uploads/.incoming-<hex>``) once the view has made one,
so a slide of several GiB is streamed to the disk that keeps it (never held in memory, never copied
through the system's temporary folder) and becomes part of the batch by a rename. Staging folders
left by a killed API are removed when the next one starts (:func:`sweep_staging`).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Any

from flask import Request, g, has_request_context

log = logging.getLogger(__name__)

STAGING_PREFIX = ".incoming-"
#: Staging folders older than this are leftovers of a killed API process (a submission takes seconds).
STAGING_MAX_AGE_S = 3600.0


class IntakeRequest(Request):
    """Flask's request, with uploaded files written into the request's staging folder (when the
    view has set ``g.upload_staging``; elsewhere Werkzeug's default temporary files)."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        staging: Path | None = g.get("upload_staging") if has_request_context() else None
        if staging is None:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        n = int(g.get("upload_parts", 0)) + 1
        g.upload_parts = n
        return open(staging / f"part-{n:05d}", "w+b")  # Werkzeug closes it with the request


def make_staging(upload_dir: Path) -> Path:
    """A new staging folder; raises OSError when the upload folder is not writable."""
    staging = upload_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir(parents=False)
    return staging


def staged_path(stream: Any) -> Path | None:
    """The file a staged upload was written to (None for an upload Werkzeug kept elsewhere)."""
    name = getattr(stream, "name", None)
    return Path(name) if isinstance(name, str) else None


def sweep_staging(upload_dir: Path, max_age_s: float = STAGING_MAX_AGE_S, now: float | None = None) -> int:
    """Remove staging folders older than ``max_age_s`` (left by an API process that was killed
    mid-submission); returns how many. Newer ones may belong to another API process at work."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(upload_dir.glob(f"{STAGING_PREFIX}*"))
    except OSError:
        return 0
    for d in entries:
        try:
            if d.is_dir() and now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d staging folder(s) of interrupted submissions from %s", removed, upload_dir)
    return removed
