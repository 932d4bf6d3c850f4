"""Batches: submit slides (uploads and/or server-side paths), read a batch's progress.

A submission is validated whole before anything is written: every slide is opened and decoded
(``validate_slide``), every server-side path must lie below the configured import root (symlinks
resolved). Only then are the batch, its slides and jobs inserted in one transaction and the jobs
queued; if queueing fails the rows and the stored files are removed again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.context import celery, db, settings
from api.errors import ApiError
from api.serializers import batch_json
from hematovision.core.filenames import FileNameError, display_name, redact_paths, storage_name
from hematovision.service.queueing import enqueue_slide
from hematovision.service.submission import NewSlide, add_batch
from hematovision.store.models import Batch, new_id

log = logging.getLogger(__name__)
bp = Blueprint("batches", __name__, url_prefix="/api/v1/batches")


def _number(raw: Any, field: str, *, low: float, high: float, integer: bool = False) -> float | int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise ApiError(400, "invalid_field", f"'{field}' must be {kind}, got {raw!r}") from None
    if isinstance(raw, bool) or not (low <= value <= high):
        raise ApiError(400, "invalid_field", f"'{field}' must lie in {low}..{high}, got {raw!r}")
    return value


def _request_fields() -> tuple[dict[str, Any], list[str]]:
    """Fields and server-side paths from a multipart form or a JSON body."""
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "malformed_json", "the request body must be a JSON object")
        paths = body.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ApiError(400, "invalid_field", "'paths' must be a list of strings")
        return body, paths
    form = request.form
    fields = {k: form.get(k) for k in ("name", "priority", "mpp", "wbc_per_l")}
    return fields, [p for p in form.getlist("paths") if p]


def _server_path(raw: str) -> Path:
    root = settings().import_root
    if root is None:
        raise ApiError(400, "paths_disabled", "server-side paths are disabled (no import root is configured)")
    if not raw or "\x00" in raw or len(raw) > 4096 or any(len(part) > 255 for part in raw.split("/")):
        raise ApiError(400, "invalid_path", "a server-side path must be a non-empty path without NUL bytes")
    root_real = Path(os.path.realpath(root))
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root_real / candidate
    try:
        real = Path(os.path.realpath(candidate))
        inside = real == root_real or root_real in real.parents
        exists = inside and real.is_file()
    except (OSError, ValueError):
        raise ApiError(400, "invalid_path", f"path {raw[:200]!r} cannot be resolved") from None
    if not inside:
        raise ApiError(400, "path_outside_root", f"path {raw!r} is outside the import root")
    if not exists:
        raise ApiError(400, "path_not_found", f"path {raw!r} does not exist below the import root")
    return real


def _safe_upload_name(name: str | None) -> str:
    """The upload's display name (``hematovision.core.filenames.display_name``: the client's name,
    Unicode kept, folders and control characters dropped); a name that climbs out of its folder
    (``../x.svs``) is refused as hostile. The file is stored under ``storage_name``, never this."""
    if not name:
        raise ApiError(400, "invalid_upload", "an uploaded file has no filename")
    if ".." in re.split(r"[/\\]", name):
        raise ApiError(400, "invalid_filename", f"upload name {name[:200]!r} is not a plain file name")
    try:
        return display_name(name)
    except FileNameError:
        raise ApiError(400, "invalid_filename", f"upload name {name[:200]!r} is not a plain file name") from None


@bp.post("")
def submit_batch() -> ResponseReturnValue:
    from hematovision.core.slides import SlideError, validate_slide

    cfg = settings()
    fields, paths = _request_fields()
    name = fields.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "invalid_field", "'name' must be a string")
    priority = _number(fields.get("priority"), "priority", low=0, high=9, integer=True)
    mpp = _number(fields.get("mpp"), "mpp", low=0.01, high=100.0)
    wbc_per_l = _number(fields.get("wbc_per_l"), "wbc_per_l", low=0, high=1e12)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 200):
        raise ApiError(400, "invalid_header", "Idempotency-Key must be 1..200 characters")
    session = db()
    if key:
        existing = session.execute(select(Batch).where(Batch.idempotency_key == key)).scalar_one_or_none()
        if existing is not None:
            return jsonify(batch_json(existing, with_jobs=True) | {"duplicate": True}), 200
    uploads = request.files.getlist("files") if request.mimetype != "application/json" else []
    if not uploads and not paths:
        raise ApiError(400, "no_slides", "submit at least one slide: multipart 'files' and/or 'paths'")
    staging = cfg.upload_dir / f".incoming-{uuid.uuid4().hex}"
    staged: list[tuple[str, Path, dict[str, Any]]] = []
    final_dir: Path | None = None
    try:
        staging.mkdir(parents=True)
        for i, up in enumerate(uploads):
            fname = _safe_upload_name(up.filename)
            dest = staging / storage_name(i, up.filename)
            up.save(dest)
            if dest.stat().st_size == 0:
                raise ApiError(400, "empty_file", f"{fname}: the file is empty")
            try:
                info = validate_slide(dest, mpp=mpp, default_mpp=cfg.default_mpp)
            except SlideError as e:
                raise ApiError(422, "invalid_slide", _named(fname, e)) from None
            staged.append((fname, dest, info))
        server_items: list[tuple[str, Path, dict[str, Any]]] = []
        for raw in paths:
            real = _server_path(raw)
            try:
                info = validate_slide(real, mpp=mpp, default_mpp=cfg.default_mpp)
            except SlideError as e:
                raise ApiError(422, "invalid_slide", _named(raw, e)) from None
            server_items.append((real.name, real, info))
        batch_id = new_id()
        final_dir = cfg.upload_dir / batch_id
        entries = [
            NewSlide(
                filename=fname,
                path=str(final_dir / path.name if path.parent == staging else path),
                format=info.get("format"),
                mpp=info.get("mpp"),
                mpp_source=info.get("mpp_source"),
                width=info["dimensions"][0],
                height=info["dimensions"][1],
                wbc_per_l=wbc_per_l,
            )
            for fname, path, info in staged + server_items
        ]
        batch, jobs = add_batch(
            session,
            entries,
            name=name,
            priority=5 if priority is None else int(priority),
            idempotency_key=key or None,
            batch_id=batch_id,
        )
        if staged:
            final_dir.mkdir(parents=True, exist_ok=True)
        for _fname, path, _ in staged:
            shutil.move(str(path), str(final_dir / path.name))
        session.commit()
    except IntegrityError:
        session.rollback()
        _cleanup(staging, None)
        existing = session.execute(select(Batch).where(Batch.idempotency_key == key)).scalar_one_or_none()
        if existing is not None:
            return jsonify(batch_json(existing, with_jobs=True) | {"duplicate": True}), 200
        raise
    except BaseException:
        session.rollback()
        _cleanup(staging, final_dir)
        raise
    _cleanup(staging, None)
    try:
        for job in jobs:
            enqueue_slide(celery(), job.id, priority=batch.priority)
    except Exception as exc:  # noqa: BLE001 - whatever the transport raises, nothing was queued
        log.error("could not queue batch %s: %s", batch.id, exc)
        session.delete(batch)
        session.commit()
        _cleanup(None, cfg.upload_dir / batch.id)
        raise ApiError(503, "broker_unavailable", "the job queue is unavailable; nothing was submitted") from None
    body = batch_json(batch, with_jobs=True)
    return jsonify(body), 202


def _named(name: str, err: Exception) -> str:
    """The slide's message, led by the name the client gave (once), with no server path in it: the
    name the file has on the server (an upload's storage name, a resolved link) becomes the client's."""
    base = os.path.basename(name)
    msg = redact_paths(str(err))
    stored = getattr(err, "file_name", None)
    if stored and stored != base:
        msg = msg.replace(stored, base)
    return msg if msg.startswith(base) else f"{name}: {msg}"


def _cleanup(staging: Path | None, final_dir: Path | None) -> None:
    for d in (staging, final_dir):
        if d is not None and d.exists():
            shutil.rmtree(d, ignore_errors=True)


@bp.get("/<hexid:batch_id>")
def get_batch(batch_id: str) -> ResponseReturnValue:
    batch = db().get(Batch, batch_id)
    if batch is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}")
    return jsonify(batch_json(batch, with_jobs=True))
