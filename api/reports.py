"""Slide reports and the leukemia-flag report."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from api.context import db
from api.errors import ApiError
from api.serializers import iso
from hematovision.flags import SEVERITY_RANK
from hematovision.models import Batch, FlagRecord, Slide
from hematovision.reports import report_csv

bp = Blueprint("reports", __name__, url_prefix="/api/v1")


@bp.get("/slides/<slide_id>/report")
def slide_report(slide_id: str):  # type: ignore[no-untyped-def]
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "invalid_format", "format must be json or csv")
    slide = db().get(Slide, slide_id)
    if slide is None:
        raise ApiError(404, "not_found", f"no slide {slide_id}")
    if slide.report is None:
        state = slide.job.state if slide.job else "unknown"
        raise ApiError(409, "not_ready", f"slide {slide_id} has no report yet (job {state})")
    report = dict(slide.report)
    report["batch_id"] = slide.batch_id
    report["filename"] = slide.filename
    if fmt == "csv":
        return Response(report_csv(report), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{slide_id}.csv"'})
    return jsonify(report)


@bp.get("/flags")
def flag_report():  # type: ignore[no-untyped-def]
    """Flagged slides, most severe first (then most recent)."""
    session = db()
    batch_id = request.args.get("batch")
    since_raw = request.args.get("since")
    q = select(Slide).where(Slide.analysed_at.is_not(None), Slide.max_severity.is_not(None))
    if batch_id:
        if session.get(Batch, batch_id) is None:
            raise ApiError(404, "not_found", f"no batch {batch_id}")
        q = q.where(Slide.batch_id == batch_id)
    if since_raw:
        try:
            since = datetime.fromisoformat(since_raw.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "invalid_since", f"'since' must be an ISO 8601 time, got {since_raw!r}") from None
        if since.tzinfo is not None:
            since = since.astimezone(UTC).replace(tzinfo=None)
        q = q.where(Slide.analysed_at >= since)
    slides = session.execute(q).scalars().all()
    slides = sorted(slides, key=lambda s: (-SEVERITY_RANK.get(s.max_severity or "", 0), -(s.analysed_at.timestamp())))
    items = []
    for s in slides:
        flags = session.execute(select(FlagRecord).where(FlagRecord.slide_id == s.id)).scalars().all()
        flags = sorted(flags, key=lambda f: -SEVERITY_RANK.get(f.severity, 0))
        items.append({
            "slide_id": s.id,
            "batch_id": s.batch_id,
            "filename": s.filename,
            "max_severity": s.max_severity,
            "analysed_at": iso(s.analysed_at),
            "counts": {"wbc": s.n_wbc, "rbc": s.n_rbc, "platelets": s.n_platelets},
            "flags": [{"code": f.code, "severity": f.severity, "message": f.message,
                       "evidence": f.evidence} for f in flags],
        })
    return jsonify({"batch": batch_id, "since": since_raw, "count": len(items), "slides": items})
