"""The review workflow around the signatures: flag acknowledgements, comments, amendments, and the
workflow's part of a report (status, version, acknowledgements, comments).

- **Acknowledgements.** A reviewer acknowledges each flag raised on the slide with a comment
  (``flag_acks``: who, when, the report version). Sign-off (:func:`hematovision.service.review.sign_off`)
  is refused while a standing flag has none; an acknowledgement holds as long as its code stays
  raised, and a flag a reclassification newly raises needs its own.
- **Comments** on the slide or one of its cells (``review_comments``), until the report is released.
- **Amendments.** A released report is re-opened as a new version by a technologist or pathologist
  with a reason: the released report is kept unchanged in ``report_versions`` with who amended it,
  when and why; the slide becomes editable, signs off under the same rules, and its release is an
  ``amended`` (HL7 ``C``: corrected) result.

Plain functions on a SQLAlchemy session (the caller commits and audits): no Flask here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from hematovision.core.workflow import (
    MAX_COMMENT_CHARS,
    MAX_REASON_CHARS,
    PRELIMINARY,
    clean_text,
    result_status,
)
from hematovision.service.review import ReviewError, Signer, _check_editable, _locked_slide
from hematovision.store.models import (
    Cell,
    FlagAcknowledgement,
    ReportVersion,
    ReviewComment,
    Slide,
    utcnow,
)

#: Roles that may amend a released report.
AMEND_ROLES = ("technologist", "pathologist")
#: Report keys that belong to a release and are cleared when it is amended.
RELEASE_KEYS = (
    "verified_by",
    "verified_by_id",
    "verified_at",
    "signature",
    "signatures",
    "signoff_reason",
    "pathologist_reasons",
)


@dataclass(frozen=True)
class Author:
    """Who writes a comment or acknowledgement: the audit actor and, for a person, the full name."""

    actor: str
    full_name: str | None = None


def _stamp(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat(timespec="seconds") + "Z"


def status_of(slide: Slide) -> str:
    """The slide report's ``result_status``."""
    return result_status(slide.review_state, slide.report_version, slide.verified_at is not None)


def acknowledge_flag(
    session: Session, slide_id: str, code: str, comment: object, author: Author, *, at: datetime | None = None
) -> FlagAcknowledgement:
    """Acknowledge the flag ``code`` raised on the slide, with a non-empty comment (current version)."""
    slide = _locked_slide(session, slide_id)
    report = _check_editable(slide)
    raised = [str(f["code"]) for f in report.get("flags") or []]
    if code not in raised:
        raise ReviewError(
            "not_found",
            "flag_not_raised",
            f"flag {code!r} is not raised on slide {slide.id}"
            + (f" (raised: {', '.join(raised)})" if raised else " (no flag is raised)"),
        )
    try:
        text = clean_text(comment, "comment", MAX_COMMENT_CHARS)
    except ValueError as e:
        raise ReviewError("invalid", "comment_required", f"an acknowledgement needs a comment: {e}") from None
    row = FlagAcknowledgement(
        slide_id=slide.id,
        report_version=slide.report_version,
        code=code,
        comment=text,
        actor=author.actor,
        full_name=author.full_name,
        at=at or utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def acknowledgements(session: Session, slide: Slide) -> list[dict[str, Any]]:
    """The acknowledgements of the current report version, oldest first, each saying whether its
    flag is still raised (``standing``)."""
    raised = {str(f["code"]) for f in (slide.report or {}).get("flags") or []}
    rows = session.execute(
        select(FlagAcknowledgement)
        .where(FlagAcknowledgement.slide_id == slide.id, FlagAcknowledgement.report_version == slide.report_version)
        .order_by(FlagAcknowledgement.at, FlagAcknowledgement.id)
    ).scalars()
    return [
        {
            "id": r.id,
            "code": r.code,
            "comment": r.comment,
            "by": r.full_name or r.actor,
            "actor": r.actor,
            "at": _stamp(r.at),
            "report_version": r.report_version,
            "standing": r.code in raised,
        }
        for r in rows
    ]


def add_comment(
    session: Session,
    slide_id: str,
    text: object,
    author: Author,
    *,
    cell_id: int | None = None,
    at: datetime | None = None,
) -> ReviewComment:
    """Add a comment to the slide (or to one of its cells); refused once the report is released."""
    slide = _locked_slide(session, slide_id)
    if slide.verified_at is not None:
        raise ReviewError(
            "conflict", "signed_off", f"slide {slide.id} is signed off: amend it to add a comment to its report"
        )
    if cell_id is not None:
        cell = session.get(Cell, cell_id)
        if cell is None or cell.slide_id != slide.id:
            raise ReviewError("not_found", "not_found", f"no cell {cell_id} on slide {slide.id}")
    try:
        body = clean_text(text, "comment", MAX_COMMENT_CHARS)
    except ValueError as e:
        raise ReviewError("invalid", "invalid_comment", str(e)) from None
    row = ReviewComment(
        slide_id=slide.id,
        cell_id=cell_id,
        report_version=slide.report_version,
        text=body,
        actor=author.actor,
        full_name=author.full_name,
        at=at or utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def comment_json(row: ReviewComment) -> dict[str, Any]:
    return {
        "id": row.id,
        "cell_id": row.cell_id,
        "text": row.text,
        "by": row.full_name or row.actor,
        "actor": row.actor,
        "at": _stamp(row.at),
        "report_version": row.report_version,
    }


def comments(session: Session, slide_id: str, *, cell_id: int | None = None) -> list[dict[str, Any]]:
    """The slide's comments (all versions; only ``cell_id``'s when given), oldest first."""
    q = select(ReviewComment).where(ReviewComment.slide_id == slide_id)
    if cell_id is not None:
        q = q.where(ReviewComment.cell_id == cell_id)
    rows = session.execute(q.order_by(ReviewComment.at, ReviewComment.id)).scalars()
    return [comment_json(r) for r in rows]


def amend(session: Session, slide_id: str, person: Signer, reason: object, *, at: datetime | None = None) -> Slide:
    """Re-open the released report as a new version (technologist or pathologist, with a reason).

    The released report is kept in ``report_versions``; the slide's report loses its release
    (verifier, signatures) and gains ``amendment`` (the new version, the reason, who and when, the
    previous verifier); the slide is editable again and ``result_status`` preliminary.
    """
    slide = _locked_slide(session, slide_id)
    if person.role not in AMEND_ROLES:
        raise ReviewError(
            "forbidden", "forbidden", f"only a technologist or a pathologist may amend; not a {person.role}"
        )
    if slide.verified_at is None or slide.report is None:
        raise ReviewError(
            "conflict",
            "not_signed_off",
            f"slide {slide.id} is not signed off: correct it directly, no amendment needed",
        )
    try:
        why = clean_text(reason, "reason", MAX_REASON_CHARS)
    except ValueError as e:
        raise ReviewError("invalid", "reason_required", f'an amendment needs a "reason": {e}') from None
    when = at or utcnow()
    released = dict(slide.report)
    session.add(
        ReportVersion(
            slide_id=slide.id,
            version=slide.report_version,
            report=released,
            result_status=status_of(slide),
            verified_by=slide.verified_by,
            verified_at=slide.verified_at,
            amended_by=person.full_name,
            amended_at=when,
            amend_reason=why,
        )
    )
    version = slide.report_version + 1
    report = {k: v for k, v in released.items() if k not in RELEASE_KEYS}
    report["amendment"] = {
        "version": version,
        "previous_version": slide.report_version,
        "reason": why,
        "amended_by": person.full_name,
        "amended_by_id": person.username,
        "amended_at": _stamp(when),
        "previous_verified_by": slide.verified_by,
        "previous_verified_at": _stamp(slide.verified_at),
    }
    report["result_status"] = PRELIMINARY
    slide.report = report
    slide.report_version = version
    slide.verified_by = None
    slide.verified_at = None
    slide.review_state = None
    session.flush()
    return slide


def versions(session: Session, slide_id: str) -> list[ReportVersion]:
    """The slide's superseded (amended) report versions, oldest first."""
    return list(
        session.execute(
            select(ReportVersion).where(ReportVersion.slide_id == slide_id).order_by(ReportVersion.version)
        ).scalars()
    )


def workflow_fields(slide: Slide, session: Session | None = None) -> dict[str, Any]:
    """The workflow's part of the slide's current report: ``result_status``, ``version`` (1, 2 … per amendment),
    the acknowledgements of this version and the comments (all versions)."""
    session = session or object_session(slide)
    out: dict[str, Any] = {"result_status": status_of(slide), "version": slide.report_version}
    if session is not None:
        out["flag_acknowledgements"] = acknowledgements(session, slide)
        out["comments"] = comments(session, slide.id)
    return out
