"""Slide reports (JSON, CSV, PDF, HL7 v2.5) and the leukemia-flag report (JSON, CSV, PDF).

PDFs are rendered into memory for each request; nothing is served from a path a client names. The
slide file is opened only from the path stored when the slide was accepted.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from api.context import db, settings
from api.errors import ApiError
from api.params import query_id, query_text
from api.serializers import iso
from hematovision.core.flags import SEVERITY_RANK
from hematovision.exports.report_csv import report_csv
from hematovision.service.submission import order_of
from hematovision.service.workflow import status_of, versions, workflow_fields
from hematovision.store.models import Batch, Cell, FlagRecord, Slide

bp = Blueprint("reports", __name__, url_prefix="/api/v1")

SLIDE_REPORT_FORMATS = ("json", "csv", "pdf", "hl7")
FLAG_REPORT_FORMATS = ("json", "csv", "pdf")


def _format(allowed: tuple[str, ...]) -> str:
    fmt = request.args.get("format", "json")
    if fmt not in allowed:
        raise ApiError(400, "invalid_format", f"format must be one of {', '.join(allowed)}")
    return fmt


def _attachment(body: str | bytes, content_type: str, filename: str) -> Response:
    return Response(
        body,
        content_type=content_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


def _slide_pdf(slide: Slide, report: dict[str, Any]) -> bytes:
    from hematovision.exports.slide_pdf import slide_pictures, slide_report_pdf

    rows = (
        db()
        .execute(
            select(Cell.kind, Cell.x0, Cell.y0, Cell.x1, Cell.y1, Cell.label, Cell.probability).where(
                Cell.slide_id == slide.id, Cell.kind == "wbc"
            )
        )
        .all()
    )
    cells = [
        {"kind": r.kind, "bbox": [r.x0, r.y0, r.x1, r.y1], "label": r.label, "probability": r.probability} for r in rows
    ]
    from hematovision.core.flags import effective_rules

    red = (  # classified red cells, for the red-cell section's examples
        db()
        .execute(
            select(Cell.x0, Cell.y0, Cell.x1, Cell.y1, Cell.label, Cell.probability).where(
                Cell.slide_id == slide.id, Cell.kind == "rbc", Cell.label.is_not(None)
            )
        )
        .all()
    )
    red_cells = [
        {"kind": "rbc", "bbox": [r.x0, r.y0, r.x1, r.y1], "label": r.label, "probability": r.probability} for r in red
    ]
    pics = slide_pictures(slide.path, slide.mpp, cells + red_cells)
    buf = io.BytesIO()
    cfg = settings()
    slide_report_pdf(
        {**report, "lab": {"name": cfg.lab_name, "address": cfg.lab_address}},
        buf,
        thumbnail=pics.thumbnail,
        thumb_downsample=pics.thumb_downsample,
        cells=cells,
        gallery=pics.gallery,
        gallery_probabilities=pics.gallery_probabilities,
        pictures_note=pics.note,
        rules=effective_rules(cfg),
        rbc_examples=pics.rbc_examples,
    )
    return buf.getvalue()


@bp.get("/slides/<hexid:slide_id>/report")
def slide_report(slide_id: str) -> ResponseReturnValue:
    fmt = _format(SLIDE_REPORT_FORMATS)
    slide = db().get(Slide, slide_id)
    if slide is None:
        raise ApiError(404, "not_found", f"no slide {slide_id}")
    if slide.report is None:
        state = slide.job.state if slide.job else "unknown"
        raise ApiError(409, "not_ready", f"slide {slide_id} has no report yet (job {state})")
    version = request.args.get("version", "current")
    if version not in ("current", "machine") and not (version.isascii() and version.isdigit() and len(version) < 6):
        raise ApiError(
            400,
            "invalid_version",
            "version must be 'current' (the reviewed report), 'machine' or the number of a superseded version",
        )
    if version == "machine":
        if slide.machine_report is None:
            raise ApiError(404, "not_found", f"slide {slide_id} has no machine report stored")
        if fmt == "hl7":
            raise ApiError(400, "invalid_format", "the machine report is not sent to the LIS; ask for json, csv or pdf")
        report = dict(slide.machine_report)
        report["result_status"] = "machine"
    elif version == "current" or int(version) == slide.report_version:
        report = dict(slide.report)
        report.update(workflow_fields(slide, db()))
    else:
        old = next((v for v in versions(db(), slide.id) if v.version == int(version)), None)
        if old is None:
            raise ApiError(404, "not_found", f"slide {slide_id} has no superseded report version {version}")
        if fmt == "hl7":
            raise ApiError(
                400, "invalid_format", "a superseded report is not sent to the LIS; ask for json, csv or pdf"
            )
        report = dict(old.report)
        report["result_status"] = old.result_status
        report["version"] = old.version
        report["superseded"] = {
            "amended_by": old.amended_by,
            "amended_at": iso(old.amended_at),
            "reason": old.amend_reason,
        }
    report["report_version"] = version
    report["batch_id"] = slide.batch_id
    report["filename"] = slide.filename
    report["analysed_at"] = iso(slide.analysed_at)
    report["order"] = order_of(slide).to_dict()
    if fmt == "csv":
        return _attachment(report_csv(report), "text/csv; charset=utf-8", f"{slide.id}.csv")
    if fmt == "pdf":
        return _attachment(_slide_pdf(slide, report), "application/pdf", f"{slide.id}.pdf")
    if fmt == "hl7":
        from hematovision.core.flags import effective_rules
        from hematovision.exports.hl7 import HL7_MEDIA_TYPE, PreliminaryRefused, load_result_codes, oru_r01

        cfg = settings()
        try:
            message = oru_r01(
                report,
                allow_preliminary=cfg.hl7_allow_preliminary,
                rules=effective_rules(cfg),
                codes=load_result_codes(cfg.result_codes),
            )
        except PreliminaryRefused as e:
            raise ApiError(409, "not_verified", str(e)) from None
        return _attachment(message.encode("utf-8"), f"{HL7_MEDIA_TYPE}; charset=utf-8", f"{slide.id}.hl7")
    return jsonify(report)


@bp.get("/slides/<hexid:slide_id>/sampling-map")
def slide_sampling_map(slide_id: str) -> ResponseReturnValue:
    """PNG: the slide's thumbnail with the fields its differential was read from (spread sampling)."""
    from hematovision.exports.sampling_pdf import sampling_map_png
    from hematovision.exports.slide_pdf import slide_pictures

    slide = db().get(Slide, slide_id)
    if slide is None:
        raise ApiError(404, "not_found", f"no slide {slide_id}")
    if slide.report is None:
        raise ApiError(409, "not_ready", f"slide {slide_id} has no report yet")
    fields = (slide.report.get("sampling") or {}).get("fields")
    if not fields:
        raise ApiError(404, "not_found", f"slide {slide_id} has no record of the fields read")
    pics = slide_pictures(slide.path, slide.mpp, [], thumb_px=512)
    if pics.thumbnail is None:
        raise ApiError(404, "not_found", pics.note or "the slide picture is unavailable")
    png = sampling_map_png(pics.thumbnail, pics.thumb_downsample, fields)
    return Response(png, content_type="image/png", headers={"Cache-Control": "no-store"})


FLAG_STATUSES = ("pending", "verified", "all")
#: Columns the flag list's ``q`` searches (case-insensitive substring). An ``accession`` column, when
#: the slide model has one, joins them without further change.
SEARCH_COLUMNS = ("filename", "accession")


def _parse_since(since_raw: str) -> datetime:
    try:
        since = datetime.fromisoformat(since_raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_since", f"'since' must be an ISO 8601 time or 'all', got {since_raw!r}") from None
    if since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    return since


def default_window(session: Session) -> datetime | None:
    """Where the flag list starts without ``since``: the last sign-off session. That is the earliest
    analysis of a slide not yet signed off (nothing still to do drops out of the list), or, when every
    slide is signed, the start (UTC midnight) of the day of the latest sign-off. None: no slide yet."""
    pending = session.execute(
        select(func.min(Slide.analysed_at)).where(Slide.analysed_at.is_not(None), Slide.verified_at.is_(None))
    ).scalar_one_or_none()
    if pending is not None:
        return pending  # type: ignore[no-any-return]
    last = session.execute(select(func.max(Slide.verified_at))).scalar_one_or_none()
    return None if last is None else last.replace(hour=0, minute=0, second=0, microsecond=0)


def _flag_document(
    batch_id: str | None, since_raw: str | None, status: str = "pending", search: str | None = None
) -> dict[str, Any]:
    """The triaged flag list: slides with a flag above ``info``, most severe first (critical, review,
    borderline, warning), then most recent; slides whose only flags are ``info`` notes are counted
    (``info_only``), not listed. ``status``: pending (not signed off; the default: a to-do list),
    verified or all. ``since``: an ISO time, ``all``, or by default :func:`default_window`."""
    session = db()
    if status not in FLAG_STATUSES:
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(FLAG_STATUSES)}")
    q = select(Slide).where(Slide.analysed_at.is_not(None), Slide.max_severity.is_not(None))
    if batch_id:
        if session.get(Batch, batch_id) is None:
            raise ApiError(404, "not_found", f"no batch {batch_id}")
        q = q.where(Slide.batch_id == batch_id)
    if status == "pending":
        q = q.where(Slide.verified_at.is_(None))
    elif status == "verified":
        q = q.where(Slide.verified_at.is_not(None))
    since: datetime | None = None
    if since_raw and since_raw != "all":
        since = _parse_since(since_raw)
    elif not since_raw and not batch_id:
        since = default_window(session)
    if since is not None:
        q = q.where(Slide.analysed_at >= since)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        columns = [getattr(Slide, c) for c in SEARCH_COLUMNS if hasattr(Slide, c)]
        q = q.where(or_(*(col.ilike(pattern, escape="\\") for col in columns)))
    slides = session.execute(q).scalars().all()
    slides = sorted(slides, key=lambda s: (-SEVERITY_RANK.get(s.max_severity or "", 0), -(s.analysed_at.timestamp())))
    items = []
    info_only = 0
    by_severity: dict[str, int] = {}
    for s in slides:
        flags = session.execute(select(FlagRecord).where(FlagRecord.slide_id == s.id)).scalars().all()
        flags = sorted(flags, key=lambda f: -SEVERITY_RANK.get(f.severity, 0))
        if all(SEVERITY_RANK.get(f.severity, 0) <= SEVERITY_RANK["info"] for f in flags):
            info_only += 1
            continue
        top = flags[0].severity
        by_severity[top] = by_severity.get(top, 0) + 1
        items.append(
            {
                "slide_id": s.id,
                "batch_id": s.batch_id,
                "filename": s.filename,
                "accession": getattr(s, "accession", None),
                "max_severity": top,
                "status": "verified" if s.verified_at is not None else "pending",
                "result_status": status_of(s),
                "verified_by": s.verified_by,
                "verified_at": iso(s.verified_at),
                "analysed_at": iso(s.analysed_at),
                "counts": {"wbc": s.n_wbc, "rbc": s.n_rbc, "platelets": s.n_platelets},
                "flags": [
                    {"code": f.code, "severity": f.severity, "message": f.message, "evidence": f.evidence}
                    for f in flags
                ],
                "rules_not_evaluated": (s.report or {}).get("rules_not_evaluated", []),
            }
        )
    return {
        "batch": batch_id,
        "since": since_raw if since_raw else (iso(since) if since is not None else None),
        "since_default": not since_raw,
        "status": status,
        "search": search,
        "count": len(items),
        "by_severity": by_severity,
        "info_only": info_only,
        "info_only_note": f"{info_only} slide{'s' if info_only != 1 else ''} with information notes only (not listed)",
        "slides": items,
    }


@bp.get("/flags")
def flag_report() -> ResponseReturnValue:
    """The triaged flag list (critical, then review, then the rest; info-only slides counted apart;
    ``status`` pending (default) / verified / all; ``since`` default: the last sign-off session;
    ``q``: search by filename or accession), as JSON, CSV or PDF."""
    fmt = _format(FLAG_REPORT_FORMATS)
    doc = _flag_document(
        query_id("batch"),
        request.args.get("since"),
        request.args.get("status", "pending"),
        query_text("q", 200),
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        from hematovision.exports.flag_report import flag_report_csv

        return _attachment(flag_report_csv(doc), "text/csv; charset=utf-8", f"flags-{stamp}.csv")
    if fmt == "pdf":
        from hematovision.exports.flag_report import flag_report_pdf

        buf = io.BytesIO()
        flag_report_pdf(doc, buf)
        return _attachment(buf.getvalue(), "application/pdf", f"flags-{stamp}.pdf")
    return jsonify(doc)
