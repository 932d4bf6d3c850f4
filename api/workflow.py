"""Review workflow API: flag acknowledgements, comments on slides and cells, amendments and the
superseded report versions (the rules: :mod:`hematovision.service.workflow`).

An acknowledgement and an amendment are a person's acts (a login session; API keys are refused);
comments may also come from a key of scope review or admin (e.g. a middleware). Every change is
audited with what was decided.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from api.audit import commit_audited, note
from api.auth import Person, principal, refuse, session_person
from api.context import db
from api.errors import ApiError
from api.serializers import iso
from hematovision.core.access import printable
from hematovision.service.review import ReviewError, Signer
from hematovision.service.review import unacknowledged_flags as pending_flags
from hematovision.service.workflow import (
    Author,
    acknowledge_flag,
    acknowledgements,
    add_comment,
    amend,
    comment_json,
    comments,
    status_of,
    versions,
)
from hematovision.store.models import Cell, Slide

bp = Blueprint("workflow", __name__, url_prefix="/api/v1")

#: The shape of a flag code in a URL.
FLAG_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,49}$")


def _slide(slide_id: str) -> Slide:
    slide = db().get(Slide, slide_id)
    if slide is None:
        raise ApiError(404, "not_found", f"no slide {slide_id}")
    return slide


def _body(example: str) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", f"send a JSON object, e.g. {example}")
    return body


def _person(what: str) -> Person:
    person = session_person()
    if person is None:
        raise refuse(403, "forbidden", f"only a logged-in person can {what}", reason=f"{what} without a person")
    return person


def _author() -> Author:
    who = principal()
    return Author(who.actor, who.full_name if who.kind == "user" else None)


@bp.post("/slides/<hexid:slide_id>/flags/<code>/ack")
def acknowledge(slide_id: str, code: str) -> ResponseReturnValue:
    """Acknowledge one flag raised on the slide with a comment (``{"comment": …}``)."""
    _slide(slide_id)
    _person("acknowledge a flag")
    if not FLAG_CODE.match(code):
        raise ApiError(400, "invalid_code", "a flag code is upper-case letters, digits and _ (e.g. BLASTS_PRESENT)")
    comment = _body('{"comment": "blast confirmed on the smear"}').get("comment")
    note(code=code)
    session = db()
    row = acknowledge_flag(session, slide_id, code, comment, _author())
    slide = _slide(slide_id)
    pending = pending_flags(session, slide, slide.report or {})
    commit_audited(session, slide_id=slide_id, comment=row.comment[:200])
    return (
        jsonify(
            {
                "slide_id": slide_id,
                "acknowledgement": next(a for a in acknowledgements(session, slide) if a["id"] == row.id),
                "unacknowledged": pending,
            }
        ),
        201,
    )


@bp.get("/slides/<hexid:slide_id>/flags/acks")
def list_acknowledgements(slide_id: str) -> ResponseReturnValue:
    """The acknowledgements of the report's current version and the flags still without one."""
    slide = _slide(slide_id)
    return jsonify(
        {
            "slide_id": slide.id,
            "version": slide.report_version,
            "acknowledgements": acknowledgements(db(), slide),
            "unacknowledged": pending_flags(db(), slide, slide.report or {}),
        }
    )


def _post_comment(slide_id: str, cell_id: int | None) -> ResponseReturnValue:
    text = _body('{"text": "few smudge cells"}').get("text")
    session = db()
    row = add_comment(session, slide_id, text, _author(), cell_id=cell_id)
    note(comment_id=row.id, cell_id=cell_id, text=printable(row.text, 200))
    commit_audited(session, slide_id=slide_id)
    return jsonify({"slide_id": slide_id, "comment": comment_json(row)}), 201


@bp.route("/slides/<hexid:slide_id>/comments", methods=["GET", "POST"])
def slide_comments(slide_id: str) -> ResponseReturnValue:
    """The slide's comments (GET; its cells' too), or add one (POST ``{"text": …, "cell_id": …}``)."""
    _slide(slide_id)
    if request.method == "POST":
        raw = (request.get_json(silent=True) or {}).get("cell_id") if request.is_json else None
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int)):
            raise ApiError(400, "invalid_cell_id", "cell_id must be an integer")
        return _post_comment(slide_id, raw)
    found = comments(db(), slide_id)
    return jsonify({"slide_id": slide_id, "count": len(found), "comments": found})


@bp.route("/cells/<cellid:cell_id>/comments", methods=["GET", "POST"])
def cell_comments(cell_id: int) -> ResponseReturnValue:
    """One cell's comments (GET), or add one (POST ``{"text": …}``)."""
    cell = db().get(Cell, cell_id)
    if cell is None:
        raise ApiError(404, "not_found", f"no cell {cell_id}")
    if request.method == "POST":
        return _post_comment(cell.slide_id, cell_id)
    found = comments(db(), cell.slide_id, cell_id=cell_id)
    return jsonify({"slide_id": cell.slide_id, "cell_id": cell_id, "count": len(found), "comments": found})


@bp.post("/slides/<hexid:slide_id>/amend")
def amend_slide(slide_id: str) -> ResponseReturnValue:
    """Re-open a signed-off slide as a new report version (``{"reason": …}``; a technologist or a
    pathologist); the released report is kept and the next release is a corrected result."""
    _slide(slide_id)
    person = _person("amend a report")
    reason = _body('{"reason": "a blast was missed"}').get("reason")
    session = db()
    signer = Signer(person.user_id, person.username, person.full_name, person.role)
    try:
        slide = amend(session, slide_id, signer, reason)
    except ReviewError as e:
        if e.kind == "forbidden":
            raise refuse(403, e.code, e.message, reason=f"amend by role {person.role}") from None
        raise
    amendment = (slide.report or {}).get("amendment") or {}
    commit_audited(
        session,
        slide_id=slide_id,
        amend_reason=amendment.get("reason"),
        version=slide.report_version,
        previous_verified_by=amendment.get("previous_verified_by"),
    )
    return jsonify(
        {
            "slide_id": slide.id,
            "result_status": status_of(slide),
            "version": slide.report_version,
            "amendment": amendment,
        }
    )


@bp.get("/slides/<hexid:slide_id>/versions")
def report_versions(slide_id: str) -> ResponseReturnValue:
    """The slide's superseded report versions (each released, then amended) and the current one."""
    slide = _slide(slide_id)
    rows = versions(db(), slide_id)
    return jsonify(
        {
            "slide_id": slide.id,
            "current": {"version": slide.report_version, "result_status": status_of(slide)},
            "superseded": [
                {
                    "version": v.version,
                    "result_status": v.result_status,
                    "verified_by": v.verified_by,
                    "verified_at": iso(v.verified_at),
                    "amended_by": v.amended_by,
                    "amended_at": iso(v.amended_at),
                    "amend_reason": v.amend_reason,
                    "report_url": f"/api/v1/slides/{slide.id}/report?version={v.version}",
                }
                for v in rows
            ],
        }
    )
