"""Review API: cells, reclassification, sign-off, a slide's audit history, DeepZoom tiles and cell crops.

Sign-off is an electronic signature: only a logged-in person (role technologist, pathologist or
admin) may sign, and only after re-entering their password in the request (re-authentication);
API keys never sign. The signature records the user id, full name, time and its meaning.

The slide image is opened only from the path stored when the slide was accepted (never one a client
names), through OpenSlide (``openslide.open_slide``: OpenSlide for WSI formats, its ``ImageSlide``
for plain images); DeepZoom tiles come from ``openslide.deepzoom.DeepZoomGenerator`` without
``limit_bounds``, so viewer coordinates are level-0 pixels, the same as the stored cell boxes.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from api.audit import commit_audited, note, note_slide
from api.auth import principal, refuse, session_person
from api.context import db, dispatcher, settings
from api.errors import ApiError
from api.params import query_int, query_text
from api.serializers import batch_json, iso, job_json
from hematovision.core.access import SIGNOFF_MEANING, printable
from hematovision.core.flags import effective_rules
from hematovision.core.vocabulary import Vocabulary
from hematovision.service.review import (
    Signer,
    allowed_labels,
    label_effect,
    reclassify,
    red_cell_classes,
    sign_off,
    slide_classes,
)
from hematovision.service.workflow import status_of
from hematovision.store.models import AuditEntry, Batch, Cell, CellReview, Slide, User
from hematovision.store.users import LOCK_MINUTES, verify_password

bp = Blueprint("review", __name__, url_prefix="/api/v1")

TILE_PX, TILE_OVERLAP, TILE_QUALITY = 254, 1, 80
CROP_OUT_PX = 160


def _slide(slide_id: str) -> Slide:
    slide = db().get(Slide, slide_id)
    if slide is None:
        raise ApiError(404, "not_found", f"no slide {slide_id}")
    return slide


def _rules() -> dict[str, Any]:
    return effective_rules(settings())


def cell_json(cell: Cell, original: dict[int, str | None] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cell.id,
        "kind": cell.kind,
        "bbox": [cell.x0, cell.y0, cell.x1, cell.y1],
        "label": cell.label,
        "probability": cell.probability,
        "image_url": f"/api/v1/cells/{cell.id}/image",
    }
    if original is not None:
        body["reviewed"] = cell.id in original
        body["model_label"] = original.get(cell.id, cell.label)
    return body


def _review_state(report: dict[str, Any]) -> dict[str, Any]:
    return {
        k: report.get(k)
        for k in (
            "counts",
            "differential",
            "differential_sufficient",
            "differential_valid",
            "differential_invalid_reason",
            "unidentified",
            "unidentified_percent",
            "absolute_10e9_per_l",
            "flags",
            "max_severity",
            "rules_not_evaluated",
            "rules_version",
            "rules_sha256",
            "reviewed_cells",
            "review_terms",
            "smudge_per_100_wbc",
            "rbc_morphology",
        )
    }


# --- batches (the morning screen's list) -----------------------------------------------------------


@bp.get("/batches")
def list_batches() -> ResponseReturnValue:
    """The most recent batches with state and progress (``limit``, default 50, at most 500)."""
    limit = query_int("limit", 50, 1, 500)
    q = (
        select(Batch)
        .options(selectinload(Batch.slides).selectinload(Slide.job))
        .order_by(Batch.created_at.desc())
        .limit(limit)
    )
    batches = db().execute(q).scalars().all()
    return jsonify({"count": len(batches), "batches": [batch_json(b, with_jobs=True) for b in batches]})


# --- cells, reclassification, sign-off ------------------------------------------------------------


@bp.get("/slides/<hexid:slide_id>/cells")
def slide_cells(slide_id: str) -> ResponseReturnValue:
    """The slide's cells (``kind``: wbc (default), rbc, platelet or all; optional ``label``)."""
    slide = _slide(slide_id)
    kind = request.args.get("kind", "wbc")
    if kind not in ("wbc", "rbc", "platelet", "all"):
        raise ApiError(400, "invalid_kind", "kind must be one of wbc, rbc, platelet, all")
    q = select(Cell).where(Cell.slide_id == slide.id).order_by(Cell.id)
    if kind != "all":
        q = q.where(Cell.kind == kind)
    label = query_text("label", 50)
    if label:
        q = q.where(Cell.label.is_(None) | (Cell.label == label) if label == "unidentified" else Cell.label == label)
    cells = db().execute(q).scalars().all()
    original: dict[int, str | None] = {}
    for r in (
        db()
        .execute(
            select(CellReview)
            .where(CellReview.slide_id == slide.id)
            .order_by(CellReview.at.desc(), CellReview.id.desc())
        )
        .scalars()
    ):
        original[r.cell_id] = r.from_label  # oldest review last: its from_label is the model's
    report = slide.report or {}
    classes = slide_classes(report) if report else []
    labels = allowed_labels(report, _rules()) if report else []
    vocabulary = [t.to_dict() for t in Vocabulary.from_rules(_rules()).terms]
    if kind == "rbc":  # the red-cell review: the red-cell model's classes (the first nine keyed)
        red = red_cell_classes(report)
        classes, labels = red, [*red, "unidentified"] if red else []
        vocabulary = [{"code": c, "name": c, "key": None, "in_differential": True} for c in red[9:]]
    return jsonify(
        {
            "slide_id": slide.id,
            "filename": slide.filename,
            "batch_id": slide.batch_id,
            "width": slide.width,
            "height": slide.height,
            "mpp": slide.mpp,
            "ready": slide.report is not None,
            "kind": kind,
            "classes": classes,
            "labels": labels,
            "vocabulary": vocabulary,
            "verified_by": slide.verified_by,
            "verified_by_id": report.get("verified_by_id"),
            "verified_at": iso(slide.verified_at),
            "result_status": status_of(slide),
            "version": slide.report_version,
            "count": len(cells),
            "cells": [cell_json(c, original) for c in cells],
        }
    )


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", 'send a JSON object, e.g. {"label": "lymphocyte"}')
    return body


@bp.post("/cells/<cellid:cell_id>/label")
def label_cell(cell_id: int) -> ResponseReturnValue:
    """Reclassify one white cell (or a classified red cell); answers the cell and the recomputed
    differential, red-cell section and flags."""
    label = _json_body().get("label")
    if not isinstance(label, str) or not label:
        raise ApiError(400, "invalid_label", 'the body needs "label": a class name or "unidentified"')
    session = db()
    rules = _rules()
    before = session.get(Cell, cell_id)
    previous = before.label if before else None
    note(cell_id=cell_id, **{"from": previous, "to": printable(label)})
    cell, report = reclassify(session, cell_id, label, principal().actor, rules=rules)
    if cell.kind == "rbc":  # a red cell: the red-cell section is recomputed; the white-cell count is not touched
        effect = {"counts_as": label, "was_counted_as": previous, "in_wbc_count": False, "wbc_change": 0}
        effect["message"] = f"red cell relabelled {label}: red-cell morphology recomputed"
    else:
        effect = label_effect(rules, previous, label)
    note(counts_as=effect["counts_as"], wbc_change=effect["wbc_change"])
    if effect.get("message"):
        note(effect=effect["message"])
    commit_audited(session, slide_id=cell.slide_id)
    return jsonify({"cell": cell_json(cell), "slide_id": cell.slide_id, "effect": effect, **_review_state(report)})


@bp.post("/slides/<hexid:slide_id>/signoff")
def signoff(slide_id: str) -> ResponseReturnValue:
    """Sign the slide off as the logged-in person, who re-enters their password (``{"password": …,
    "reason": …}``; the reason is required for an insufficient differential); the slide is
    read-only afterwards. A slide with a critical flag or a blast then awaits a pathologist, whose
    signature (this same endpoint) releases it."""
    person = session_person()
    if person is None:  # the auth hook lets only people through; anything else is a bug
        raise ApiError(403, "forbidden", "only a logged-in person can sign off")
    body = request.get_json(silent=True)
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(password, str) or not password:
        raise refuse(
            401,
            "reauthentication_required",
            'signing off needs your password: send {"password": …} to re-authenticate',
            reason="sign-off without re-authentication",
        )
    session = db()
    _slide(slide_id)
    check = verify_password(session, session.get(User, person.user_id), password)
    if check.user is None:
        locked = "locked" in (check.reason or "")
        why = check.reason or "unknown"
        refusal = refuse(
            403,
            "reauthentication_failed",
            f"too many wrong passwords: the account is locked for {LOCK_MINUTES} minutes"
            if locked
            else "the password is not correct; the slide was not signed off",
            reason=f"re-authentication failed: {why}",
        )
        commit_audited(session, status=403, outcome="refused")  # keeps the failed-attempt count
        raise refusal
    signer = Signer(check.user.id, check.user.username, check.user.full_name, check.user.role)
    reason = body.get("reason") if isinstance(body, dict) else None
    slide = sign_off(session, slide_id, signer, meaning=SIGNOFF_MEANING, reason=reason)
    report = slide.report or {}
    signed = (report.get("signatures") or [{}])[-1]
    released = slide.verified_at is not None
    cfg = settings()
    lis_queued = bool(released and cfg.lis_host and cfg.lis_send_on_signoff)
    if lis_queued:  # in the sign-off's transaction: the result reaches the LIS even if it is down now
        from hematovision.service.lis import queue_result

        queue_result(session, slide, cfg)
    commit_audited(
        session,
        meaning=signed.get("meaning"),
        signer=signer.full_name,
        role=signer.role,
        result_status=status_of(slide),
        lis_queued=lis_queued,
        **({"signoff_reason": signed["reason"]} if signed.get("reason") else {}),
    )
    if lis_queued:
        dispatcher().kick()  # sent by the dispatcher thread, not in this request
    return jsonify(
        {
            "slide_id": slide.id,
            "result_status": status_of(slide),
            "verified_by": slide.verified_by,
            "verified_by_id": signer.username if released else None,
            "verified_at": iso(slide.verified_at),
            "signature": report.get("signature") if released else signed,
            "signatures": report.get("signatures") or [],
            "pathologist_reasons": report.get("pathologist_reasons") or [],
        }
    )


@bp.post("/slides/<hexid:slide_id>/census")
def census(slide_id: str) -> ResponseReturnValue:
    """Count all cells: queue the slide again as a whole-smear census (a new job, 202). The slide's
    current results stay until the census stores its own; 409 while its job is queued or running
    and once the slide is signed off."""
    from hematovision.service.submission import RequeueRefused, outbox_ids, requeue_slide

    session = db()
    slide = _slide(slide_id)
    try:
        job = requeue_slide(session, slide, census=True)
    except RequeueRefused as e:
        raise ApiError(409, e.code, str(e)) from None
    messages = outbox_ids(session, [job])
    note(job_id=job.id, mode="census")
    commit_audited(session, status=202, slide_id=slide.id)
    queued = dispatcher().publish_now(messages)
    return jsonify(job_json(job) | {"queued": queued}), 202


@bp.get("/slides/<hexid:slide_id>/audit")
def slide_audit(slide_id: str) -> ResponseReturnValue:
    """The slide's audit history, oldest first: reclassifications, sign-off, reads and exports of its
    report, refused attempts (``limit``: the most recent N, default 500, at most 5000)."""
    slide = _slide(slide_id)
    raw = request.args.get("limit", "500")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 5000:
        raise ApiError(400, "invalid_limit", "limit must be an integer from 1 to 5000")
    note_slide(None)  # reading the history is audited, but not as part of it
    rows = (
        db()
        .execute(
            select(AuditEntry)
            .where(AuditEntry.slide_id == slide.id)
            .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
            .limit(int(raw))
        )
        .scalars()
        .all()
    )
    entries = [
        {
            "at": iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "outcome": e.outcome,
            "status": e.status,
            "detail": e.detail or {},
        }
        for e in reversed(rows)
    ]
    return jsonify({"slide_id": slide.id, "count": len(entries), "entries": entries})


# --- images: DeepZoom tiles and cell crops ---------------------------------------------------------


class _SlideCache:
    """A few open slides and their DeepZoom generators per process (OpenSlide handles are thread-safe;
    Pillow-backed ``ImageSlide`` reads are serialised by the lock)."""

    def __init__(self, size: int = 8) -> None:
        self.size, self.lock, self.items = size, threading.Lock(), OrderedDict[str, Any]()

    def get(self, path: str) -> Any:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        with self.lock:
            if path in self.items:
                self.items.move_to_end(path)
                return self.items[path]
        try:
            osr = openslide.open_slide(path)
        except (OSError, openslide.OpenSlideError, ValueError) as e:
            raise ApiError(
                404, "image_unavailable", f"the slide image cannot be opened ({e.__class__.__name__})"
            ) from None
        entry = (
            osr,
            DeepZoomGenerator(osr, tile_size=TILE_PX, overlap=TILE_OVERLAP, limit_bounds=False),
            threading.Lock(),
        )
        with self.lock:
            self.items[path] = entry
            while len(self.items) > self.size:
                old = self.items.popitem(last=False)[1]
                old[0].close()
        return entry


_cache = _SlideCache()


def _jpeg(image: Any, quality: int = TILE_QUALITY) -> Response:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return Response(buf.getvalue(), content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/slides/<hexid:slide_id>/dzi")
def slide_dzi(slide_id: str) -> ResponseReturnValue:
    """The DeepZoom descriptor (XML) of the slide image."""
    slide = _slide(slide_id)
    _osr, dz, _lock = _cache.get(slide.path)
    return Response(dz.get_dzi("jpeg"), content_type="application/xml")


@bp.get("/slides/<hexid:slide_id>/tiles/<int:level>/<int:col>_<int:row>.jpeg")
def slide_tile(slide_id: str, level: int, col: int, row: int) -> ResponseReturnValue:
    slide = _slide(slide_id)
    _osr, dz, lock = _cache.get(slide.path)
    if not 0 <= level < dz.level_count:
        raise ApiError(404, "no_such_tile", f"level must be 0..{dz.level_count - 1}")
    cols, rows = dz.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        raise ApiError(404, "no_such_tile", f"level {level} has {cols}x{rows} tiles")
    with lock:
        tile = dz.get_tile(level, (col, row))
    return _jpeg(tile)


@bp.get("/cells/<cellid:cell_id>/image")
def cell_image(cell_id: int) -> ResponseReturnValue:
    """The cell cut from level 0 with a margin of half its size, as JPEG (at most 160 px)."""
    from PIL import Image

    cell = db().get(Cell, cell_id)
    if cell is None:
        raise ApiError(404, "not_found", f"no cell {cell_id}")
    slide = _slide(cell.slide_id)
    osr, _dz, lock = _cache.get(slide.path)
    w, h = max(1, cell.x1 - cell.x0), max(1, cell.y1 - cell.y0)
    side = min(2048, int(max(w, h) * 1.5) + 8)
    x = int((cell.x0 + cell.x1) / 2 - side / 2)
    y = int((cell.y0 + cell.y1) / 2 - side / 2)
    with lock:
        region = osr.read_region((x, y), 0, (side, side))
    canvas = Image.new("RGB", region.size, (255, 255, 255))
    canvas.paste(region, mask=region.getchannel("A"))
    if side > CROP_OUT_PX:
        canvas = canvas.resize((CROP_OUT_PX, CROP_OUT_PX), Image.Resampling.LANCZOS)
    return _jpeg(canvas, quality=88)
