"""Batches: submit slides (uploads and/or server-side paths), read a batch's progress.

Intake is strict and whole: the key is checked before the body is read (``api.auth``; the server
refuses a keyless body before reading it, ``api.server``); unknown fields, numbers that are not
plain ASCII numbers in range, over-long names and too many paths are refused (422/413); uploads
are streamed into a staging folder (503 when the upload folder cannot take them, checked before
reading); every slide is checked from its headers and a bounded read (``validate_slide``) and
every server-side path must lie below the import root (symlinks resolved). Only then are the
batch, its slides, its jobs, one outbox message per job and the submission's audit entry written
in ONE transaction (:func:`api.audit.commit_audited`): once it is committed the answer is 202 and
the slides WILL be analysed, whether the broker is up now (the messages are published at once) or
only later (the outbox dispatcher publishes them when it returns). A rejected submission leaves no
rows and no files. The 202 answer lists ``notices``: slides the classifier they will be analysed with
was not validated on as they are stored or scanned (:mod:`hematovision.service.intake_notice`); they
are analysed all the same, and their reports flagged.

An upload keeps the name the client gave (Unicode included) as its display name
(``hematovision.core.filenames.display_name``: ``slides.filename``) and is stored under a safe
internal name (``storage_name``); error messages name the slide as the client did and never show
a server path.

``Idempotency-Key`` belongs to the API key that sent it: the same key with the same submission
returns the batch (200, ``duplicate``), with another submission 409 ``idempotency_conflict``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import unicodedata
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import FileStorage

from api.audit import commit_audited
from api.auth import principal
from api.context import db, dispatcher, settings
from api.errors import ApiError
from api.serializers import batch_json
from api.uploads import make_staging, staged_path
from hematovision.core.filenames import FileNameError, display_name, redact_paths, storage_name
from hematovision.core.patient import OrderError, OrderInfo, match_order, parse_order, parse_worklist, wbc_10e9_per_l
from hematovision.service.intake_notice import intake_notices
from hematovision.service.submission import NewSlide, add_batch, outbox_ids
from hematovision.store.models import Batch, new_id

log = logging.getLogger(__name__)
bp = Blueprint("batches", __name__, url_prefix="/api/v1/batches")

#: The fields a submission may carry (JSON keys or multipart fields); uploads come as ``files``.
#: ``slides`` (JSON) / ``worklist`` (multipart CSV part) carry each slide's order and patient
#: (:mod:`hematovision.core.patient`); ``wbc_per_l`` (per litre, for every slide) is the old way to
#: give the WBC count, accepted for this release only.
#: ``census`` (JSON true/false; multipart ``true``/``false``/``1``/``0``) asks for a whole-smear census.
FIELDS = ("name", "priority", "mpp", "wbc_per_l", "paths", "slides", "worklist", "census")
MAX_WORKLIST_BYTES = 2 * 2**20
MAX_NAME_CHARS = 200
MAX_KEY_CHARS = 200
#: A JSON body holds fields and paths only: this much per allowed path, plus the fields.
JSON_BYTES_PER_PATH = 4200
_INT = re.compile(r"[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,4})?")


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_field", message)


def _number(raw: Any, field: str, *, low: float, high: float, integer: bool = False) -> float | int | None:
    """A strictly parsed number: a JSON number, or a string of ASCII digits (no ``1_0``, no other
    scripts' digits, no ``inf``/``nan``), finite and within ``low..high``."""
    if raw is None or raw == "":
        return None
    kind = "an integer" if integer else "a number"
    shown = repr(raw)[:40]
    if isinstance(raw, bool):
        raise _invalid(f"'{field}' must be {kind}, got {shown}")
    value: float | int
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if integer and not raw.is_integer():
            raise _invalid(f"'{field}' must be {kind}, got {shown}")
        value = raw
    elif isinstance(raw, str) and (_INT if integer else _FLOAT).fullmatch(raw):
        value = int(raw) if integer else float(raw)
    else:
        raise _invalid(f"'{field}' must be {kind} written in ASCII digits, got {shown}")
    if not math.isfinite(value) or not (low <= value <= high):
        raise _invalid(f"'{field}' must lie in {low:g}..{high:g}, got {shown}")
    return int(value) if integer else float(value)


def _flag(raw: Any, field: str) -> bool:
    """A yes/no option: a JSON boolean, or in a form ``true``/``false`` (any case), ``1``/``0`` (absent: no).
    Anything else is a 400 ``invalid_option`` (``"yes"``, ``2``, ``"TRUE "`` are not guessed at)."""
    if raw is None or raw is False or raw == "":
        return False
    if raw is True:
        return True
    if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0"):
        return raw.lower() in ("true", "1")
    raise ApiError(400, "invalid_option", f"'{field}' must be true or false, got {repr(raw)[:40]}")


def _name(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise _invalid("'name' must be a string")
    if len(raw) > MAX_NAME_CHARS:
        raise _invalid(f"'name' is {len(raw)} characters long; at most {MAX_NAME_CHARS} are allowed")
    if any(unicodedata.category(ch) == "Cc" for ch in raw):
        raise _invalid("'name' must not contain NUL or other control characters")
    return raw


def _unknown(names: Iterable[object], allowed: set[str]) -> None:
    extra = sorted({n if isinstance(n, str) else "" for n in names} - allowed)
    if extra:
        shown = ", ".join(repr(n[:50]) for n in extra[:10]) + (" …" if len(extra) > 10 else "")
        raise ApiError(
            422, "unknown_field", f"unknown field(s) {shown}; a submission takes {', '.join(sorted(allowed))}"
        )


def _json_body() -> tuple[dict[str, Any], list[str], list[FileStorage]]:
    limit = settings().max_paths * JSON_BYTES_PER_PATH + 65536
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"a JSON submission may be at most {limit // 1024} KiB")
    request.max_content_length = limit  # also bounds a chunked body while it is read
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the request body must be a JSON object")
    _unknown(set(body), set(FIELDS) - {"worklist"})
    paths = body.get("paths", [])
    if paths is None:
        paths = []
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise _invalid("'paths' must be a list of strings")
    body = {**body, "slides": _json_orders(body.get("slides"))}
    return body, paths, []


def _json_orders(raw: Any) -> dict[str, OrderInfo] | None:
    """The JSON ``slides`` entries (``{"file" | "path": …, "accession": …, …}``) as ``{name: order}``."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise _invalid("'slides' must be a list of objects, each with 'file' or 'path' and the order's fields")
    orders: dict[str, OrderInfo] = {}
    for i, entry in enumerate(raw):
        entry = dict(entry)
        names = [entry.pop(k) for k in ("file", "path") if k in entry]
        if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
            raise _invalid(f"slides[{i}]: give exactly one of 'file' or 'path' (the slide it describes)")
        if names[0] in orders:
            raise _invalid(f"slides[{i}]: {names[0][:200]!r} is described twice")
        try:
            orders[names[0]] = parse_order(entry)
        except OrderError as e:
            raise _invalid(f"slides[{i}] ({names[0][:200]}): {e}") from None
    return orders


def _worklist_part(part: FileStorage | None) -> dict[str, OrderInfo] | None:
    """The multipart ``worklist`` part (a CSV: :data:`hematovision.core.patient.WORKLIST_COLUMNS`)."""
    if part is None:
        return None
    data = part.stream.read(MAX_WORKLIST_BYTES + 1)
    if len(data) > MAX_WORKLIST_BYTES:
        raise ApiError(413, "too_large", f"the worklist may be at most {MAX_WORKLIST_BYTES // 2**20} MiB")
    try:
        return parse_worklist(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _invalid("the worklist must be UTF-8 text (CSV)") from None
    except OrderError as e:
        raise _invalid(str(e)) from None


def _form_body() -> tuple[dict[str, Any], list[str], list[FileStorage]]:
    form, files = request.form, request.files
    _unknown(set(form) | {f"{k} (a file)" for k in files if k not in ("files", "worklist")}, set(FIELDS) - {"slides"})
    if len(files.getlist("worklist")) > 1:
        raise ApiError(422, "duplicate_field", "'worklist' is given more than once; give it once")
    fields: dict[str, Any] = {"slides": _worklist_part(files.get("worklist"))}
    if "worklist" in form:
        fields["slides"] = _worklist_part(FileStorage(io.BytesIO(form["worklist"].encode()), "worklist.csv"))
    for k in FIELDS:
        if k in ("paths", "slides", "worklist"):
            continue
        values = form.getlist(k)
        if len(values) > 1:
            raise ApiError(422, "duplicate_field", f"'{k}' is given {len(values)} times; give it once")
        fields[k] = values[0] if values else None
    return fields, [p for p in form.getlist("paths") if p], files.getlist("files")


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


def _owner() -> str:
    """Whose Idempotency-Keys these are: the API key's row (``key:<id>``), the person's
    (``user:<id>``), or ``anonymous`` (only where authentication is off)."""
    who = principal()
    return f"{who.kind}:{who.id}" if who.kind in ("key", "user") and who.id is not None else "anonymous"


def _request_sha256(fields: dict[str, Any], files: list[tuple[str, int]], paths: list[str]) -> str:
    """What makes two submissions the same: the parsed fields, the files' names and sizes, the paths."""
    doc = {**fields, "files": [list(f) for f in files], "paths": paths}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay(key: str, digest: str) -> ResponseReturnValue | None:
    """The answer to a key already used by this client: the batch (200) or a conflict (409)."""
    existing = (
        db()
        .execute(select(Batch).where(Batch.idempotency_owner == _owner(), Batch.idempotency_key == key))
        .scalar_one_or_none()
    )
    if existing is None:
        return None
    if existing.request_sha256 != digest:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"this Idempotency-Key was used for batch {existing.id} with a different submission; "
            "use a new key for a new submission",
        )
    dispatcher().kick()  # its jobs' messages are in the outbox: make sure they go out
    return jsonify(batch_json(existing, with_jobs=True) | {"duplicate": True}), 200


@bp.post("")
def submit_batch() -> ResponseReturnValue:
    cfg = settings()
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not (0 < len(key) <= MAX_KEY_CHARS) or any(unicodedata.category(ch) == "Cc" for ch in key)):
        raise ApiError(400, "invalid_header", "Idempotency-Key must be 1..200 characters without control characters")
    staging: Path | None = None
    final_dir: Path | None = None
    try:
        if request.mimetype == "multipart/form-data":
            # The uploads are written to the upload folder while the body is parsed: make sure it
            # can take them before reading anything.
            try:
                staging = make_staging(cfg.upload_dir)
                free = shutil.disk_usage(cfg.upload_dir).free
            except OSError as exc:
                log.error("upload folder unusable: %s", exc.__class__.__name__)
                raise ApiError(
                    503, "upload_storage_unavailable", "the upload storage is not writable; nothing was submitted"
                ) from None
            if request.content_length is not None and request.content_length > free:
                raise ApiError(503, "upload_storage_full", "the upload storage is full; nothing was submitted")
            g.upload_staging = staging
            try:
                raw_fields, paths, uploads = _form_body()
            except OSError as exc:  # e.g. the disk filled up while the uploads were written
                log.error("upload not stored: %s", exc.__class__.__name__)
                raise ApiError(
                    503, "upload_storage_unavailable", "the upload could not be stored; nothing was submitted"
                ) from None
        elif request.mimetype == "application/json":
            raw_fields, paths, uploads = _json_body()
        else:
            raw_fields, paths, uploads = _form_body()
        if len(paths) > cfg.max_paths:
            raise ApiError(
                413, "too_many_paths", f"{len(paths)} paths in one submission; at most {cfg.max_paths} are allowed"
            )
        fields = {
            "name": _name(raw_fields.get("name")),
            "priority": _number(raw_fields.get("priority"), "priority", low=0, high=9, integer=True),
            "mpp": _number(raw_fields.get("mpp"), "mpp", low=0.01, high=100.0),
            "wbc_per_l": _number(raw_fields.get("wbc_per_l"), "wbc_per_l", low=0, high=1e15),
        }
        census = _flag(raw_fields.get("census"), "census")
        orders: dict[str, OrderInfo] = raw_fields.get("slides") or {}
        legacy_wbc: float | None = None
        if fields["wbc_per_l"] is not None:  # deprecated: per litre, the same for every slide
            try:
                legacy_wbc = wbc_10e9_per_l(float(fields["wbc_per_l"]) / 1e9, "wbc_per_l")
            except OrderError as e:
                raise _invalid(
                    f"{e} (wbc_per_l is per litre: 7.5e9 is 7.5 ×10⁹/L; prefer per-slide wbc_10e9_per_l)"
                ) from None
        if fields["priority"] is None:
            fields["priority"] = 5
        if not uploads and not paths:
            raise ApiError(400, "no_slides", "submit at least one slide: multipart 'files' and/or 'paths'")
        staged = _stage_uploads(uploads)
        digest = _request_sha256(
            {
                **fields,
                "slides": {k: v.to_dict() for k, v in sorted(orders.items())},
                **({"census": True} if census else {}),  # absent when off: earlier digests still match
            },
            [(n, p.stat().st_size) for n, p in staged],
            paths,
        )
        if key:
            replay = _replay(key, digest)
            if replay is not None:
                return replay
        entries = _validated(staged, paths, fields["mpp"])
        notices = [
            n | {"message": redact_paths(n["message"])}
            for n in intake_notices(db(), [(name, path, info.get("mpp")) for name, path, info in entries], cfg)
        ]
        slide_orders = _slide_orders(orders, [(n,) for n, _ in staged] + [(p, os.path.basename(p)) for p in paths])
        if legacy_wbc is not None:
            slide_orders = [
                replace(o or OrderInfo(), wbc_10e9_per_l=o.wbc_10e9_per_l if o and o.wbc_10e9_per_l else legacy_wbc)
                for o in slide_orders
            ]
        batch_id = new_id()
        if staged:
            final_dir = cfg.upload_dir / batch_id
        session = db()
        try:
            batch, jobs = add_batch(
                session,
                [
                    NewSlide(
                        filename=name,
                        path=str(final_dir / path.name if final_dir is not None and path.parent == staging else path),
                        format=info.get("format"),
                        mpp=info.get("mpp"),
                        mpp_source=info.get("mpp_source"),
                        width=info["dimensions"][0],
                        height=info["dimensions"][1],
                        order=order,
                    )
                    for (name, path, info), order in zip(entries, slide_orders, strict=True)
                ],
                name=fields["name"],
                priority=int(fields["priority"]),
                idempotency_key=key or None,
                idempotency_owner=_owner(),
                request_sha256=digest,
                batch_id=batch_id,
                census=census,
            )
            messages = outbox_ids(session, jobs)  # flushed with the rows: published after the commit
        except IntegrityError:  # another request of this client with this key was first
            session.rollback()
            replay = _replay(key, digest) if key else None
            if replay is not None:
                return replay
            raise
        if staging is not None and final_dir is not None:
            os.rename(staging, final_dir)  # the uploads become the batch's files in one step
            staging = None
        g.audit_resource = f"batch:{batch.id}"
        commit_audited(session, status=202, slides=len(jobs))  # the rows, the outbox and the audit entry
        final_dir = None  # committed: the files belong to the batch now
    except BaseException:
        db().rollback()
        if final_dir is not None:
            shutil.rmtree(final_dir, ignore_errors=True)
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        g.pop("upload_staging", None)
    queued = dispatcher().publish_now(messages)
    if not queued:
        log.warning("batch %s accepted; its %d job(s) are queued when the broker is back", batch.id, len(jobs))
    return jsonify(batch_json(batch, with_jobs=True) | {"queued": queued, "notices": notices}), 202


def _slide_orders(orders: dict[str, OrderInfo], names: list[tuple[str, ...]]) -> list[OrderInfo | None]:
    """Each slide's order (matched by file name or path as the client gave it); a worklist row that
    matches no slide of the submission is refused (a typo would otherwise lose a patient's data)."""
    found = [match_order(orders, *n) for n in names]
    used = {k for n in names for k in n if k in orders}
    unused = sorted(set(orders) - used)
    if unused:
        shown = ", ".join(repr(u[:100]) for u in unused[:10])
        raise _invalid(f"worklist row(s) {shown} match no slide of this submission (match by file name or path)")
    return found


def _stage_uploads(uploads: list[FileStorage]) -> list[tuple[str, Path]]:
    """Give each upload its storage name in the staging folder: ``(display name, file)``."""
    staged: list[tuple[str, Path]] = []
    for i, up in enumerate(uploads):
        fname = _safe_upload_name(up.filename)
        src = staged_path(up.stream)
        if src is None:  # not written by our stream factory (no staging folder): nothing to keep
            raise ApiError(400, "invalid_upload", "uploads must be sent as multipart/form-data")
        up.stream.close()
        dest = src.with_name(storage_name(i, up.filename))
        os.replace(src, dest)
        if dest.stat().st_size == 0:
            raise ApiError(400, "empty_file", f"{fname}: the file is empty")
        staged.append((fname, dest))
    return staged


def _validated(
    staged: list[tuple[str, Path]], paths: list[str], mpp: float | int | None
) -> list[tuple[str, Path, dict[str, Any]]]:
    """Every slide checked (headers and a bounded read) before anything is written."""
    from hematovision.core.slides import SlideError, validate_slide

    cfg = settings()
    items: list[tuple[str, Path, dict[str, Any]]] = []
    for fname, path in staged:
        try:
            info = validate_slide(path, mpp=mpp, default_mpp=cfg.default_mpp)
        except SlideError as e:
            raise ApiError(422, "invalid_slide", _client_message(e, fname, path)) from None
        items.append((fname, path, info))
    for raw in paths:
        real = _server_path(raw)
        try:
            info = validate_slide(real, mpp=mpp, default_mpp=cfg.default_mpp)
        except SlideError as e:
            raise ApiError(422, "invalid_slide", _client_message(e, raw, real)) from None
        items.append((real.name, real, info))
    return items


def _client_message(err: Exception, name: str, path: Path) -> str:
    """The slide's message in the client's terms: led by the name the client gave (once), with no
    server path in it. The file as the server knows it (``path``: an upload's staged file, a
    resolved link; ``err.file_name``: the name a ``SlideError`` gives it) is named as the client
    named it, the server's folders are removed and any other absolute path is cut to its last part
    (:func:`hematovision.core.filenames.redact_paths`)."""
    base = os.path.basename(name)
    msg = str(err).replace(str(path), base)
    cfg = settings()
    for folder in (path.parent, cfg.upload_dir, cfg.import_root, cfg.resolved_var_dir):
        if folder is not None and str(folder) not in ("", os.sep):
            msg = msg.replace(str(folder) + os.sep, "").replace(str(folder), "…")
    msg = redact_paths(msg)
    for stored in {getattr(err, "file_name", None), path.name}:
        if stored and stored != base:
            msg = msg.replace(stored, base)
    return msg if msg.startswith(base) or msg.startswith(name) else f"{name}: {msg}"


@bp.get("/<hexid:batch_id>")
def get_batch(batch_id: str) -> ResponseReturnValue:
    batch = db().get(Batch, batch_id)
    if batch is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}")
    return jsonify(batch_json(batch, with_jobs=True))
