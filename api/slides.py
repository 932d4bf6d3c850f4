"""Slides by accession, and a slide's order and patient (``PATCH`` before sign-off).

``GET /api/v1/slides?accession=…`` finds the slides of an order (a lab looks a slide up by the
accession number on its label, not by our id). ``PATCH /api/v1/slides/<id>`` corrects the order
and patient fields (:data:`hematovision.core.patient.ORDER_FIELDS`; ``null`` clears one): audited
with the old and new values, refused once the slide is signed off, and an analysed slide's flags
are evaluated again with the new age, sex and WBC count.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from api.audit import commit_audited, note
from api.context import db, settings
from api.errors import ApiError
from api.serializers import iso
from hematovision.core.flags import effective_rules
from hematovision.core.patient import ORDER_FIELDS, OrderError, parse_order
from hematovision.service.review import update_order
from hematovision.service.submission import order_of
from hematovision.store.models import Slide

bp = Blueprint("slides", __name__, url_prefix="/api/v1")
MAX_LISTED = 200


def slide_json(slide: Slide) -> dict[str, Any]:
    """A slide's identity, order and state (no results: those are in its report)."""
    return {
        "id": slide.id,
        "slide_id": slide.id,
        "batch_id": slide.batch_id,
        "filename": slide.filename,
        "order": order_of(slide).to_dict(),
        "state": slide.job.state if slide.job else None,
        "analysed_at": iso(slide.analysed_at),
        "verified_by": slide.verified_by,
        "verified_at": iso(slide.verified_at),
        "result_status": "final" if slide.verified_at else ("preliminary" if slide.report else None),
        "report_url": f"/api/v1/slides/{slide.id}/report" if slide.report is not None else None,
        # The model the slide was assigned when it was prepared (the model registry), else None.
        "model": (
            {"name": mv.name, "version": mv.version, "sha256": mv.sha256}
            if (mv := slide.model_version) is not None
            else None
        ),
    }


@bp.get("/slides")
def find_slides() -> ResponseReturnValue:
    """The slides of one accession (``?accession=``), newest first."""
    accession = request.args.get("accession", "")
    if not accession or len(accession) > 64:
        raise ApiError(400, "invalid_accession", "give ?accession= (1..64 characters)")
    q = select(Slide).where(Slide.accession == accession).order_by(Slide.created_at.desc()).limit(MAX_LISTED)
    return jsonify({"accession": accession, "slides": [slide_json(s) for s in db().scalars(q)]})


@bp.get("/slides/<hexid:slide_id>")
def get_slide(slide_id: str) -> ResponseReturnValue:
    slide = db().get(Slide, slide_id)
    if slide is None:
        raise ApiError(404, "not_found", f"no slide {slide_id}")
    return jsonify(slide_json(slide))


@bp.patch("/slides/<hexid:slide_id>")
def patch_slide(slide_id: str) -> ResponseReturnValue:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "malformed_json", f"send a JSON object with any of {', '.join(ORDER_FIELDS)}")
    try:
        changes = parse_order(body)
    except OrderError as e:
        raise ApiError(422, "invalid_field", str(e)) from None
    session = db()
    slide, changed = update_order(session, slide_id, changes, set(body), rules=effective_rules(settings()))
    note(changed=changed)
    commit_audited(session, slide_id=slide.id)
    return jsonify(slide_json(slide) | {"changed": sorted(changed)})
