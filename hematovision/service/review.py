"""Technologist review: reclassify white cells and sign a slide off.

A reclassification changes one cell's label, records who changed it, when, from what and to what
(``cell_reviews``), and recomputes the slide's differential, exact intervals and flags from the
current labels of all its white cells in the one home the worker uses too
(:mod:`hematovision.service.slide_results`). The report JSON, the slide's summary columns and the
``differential`` and ``flags`` rows are replaced in the caller's one transaction, so a reader never
sees a differential that disagrees with its flags.

A sign-off is a person's electronic signature (:class:`Signer`: user id, username, full name,
role; checked and re-authenticated by the caller): it stores a ``signatures`` row (who, when, the
meaning), sets ``verified_by`` (the full name) and ``verified_at``, and makes the slide read-only;
it is refused while any white cell is still ``unidentified`` or a flag is not acknowledged, needs a
reason when the differential is insufficient, and leaves the slide awaiting a pathologist's second
signature when a flag is critical or a blast was counted (:mod:`hematovision.core.workflow`;
acknowledgements, comments and amendments: :mod:`hematovision.service.workflow`). Plain functions on
a SQLAlchemy session: no Flask here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hematovision.core.access import SIGNOFF_MEANING
from hematovision.core.datasets import PBC_CLASSES
from hematovision.core.flags import NON_WBC_CLASSES, load_rules
from hematovision.core.patient import OrderInfo
from hematovision.core.results import RBC, UNIDENTIFIED, WBC
from hematovision.core.vocabulary import Vocabulary
from hematovision.core.workflow import (
    FIRST_SIGNATURE_MEANING,
    MAX_REASON_CHARS,
    PATHOLOGIST,
    PATHOLOGIST_MEANING,
    STATE_AWAITING,
    STATE_FINAL,
    clean_text,
    insufficient,
    pathologist_reasons,
    result_status,
)
from hematovision.service.slide_results import replace_result_rows, resummarise
from hematovision.service.submission import order_of, set_order
from hematovision.store.models import Cell, CellReview, FlagAcknowledgement, Signature, Slide, utcnow


class ReviewError(ValueError):
    """A review request that cannot be carried out; ``kind`` is ``not_found``, ``invalid``,
    ``forbidden`` or ``conflict`` (the API answers 404, 400, 403 and 409)."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message


@dataclass(frozen=True)
class Signer:
    """The person signing a slide off, as identified (and re-authenticated) by the caller."""

    user_id: int
    username: str
    full_name: str
    role: str


def slide_classes(report: dict[str, Any]) -> list[str]:
    """The classes a technologist may assign on this slide, in a stable order (keys 1-9).

    The model's classes are not stored with the report; they are the differential's classes (the
    white-cell classes, ``unidentified`` excepted) plus the non-white-cell classes the model may
    emit (erythroblast, platelet), ordered as the PBC data set orders them.
    """
    names = {k for k in report.get("differential", {}) if k != UNIDENTIFIED} | set(NON_WBC_CLASSES)
    order = {c: i for i, c in enumerate(PBC_CLASSES)}
    return sorted(names, key=lambda c: (order.get(c, len(order)), c))


#: Red-cell findings in the order the review offers them (keys 1-9 take the first nine): the
#: urgent and graded findings first.
RED_CELL_ORDER = (
    "schistocyte", "spherocyte", "target", "teardrop", "burr", "stomatocyte", "ovalocyte", "hypochromia", "normal",
    "macrocyte", "microcyte", "elliptocyte", "uncategorised",
)  # fmt: skip


def red_cell_classes(report: dict[str, Any]) -> list[str]:
    """The red-cell model's classes on this slide (``[]`` when red cells were not classified), in
    :data:`RED_CELL_ORDER`."""
    ctx = (report.get("rbc_morphology") or {}).get("context") or {}
    classes = list((ctx.get("model") or {}).get("classes") or [])
    rank = {c: i for i, c in enumerate(RED_CELL_ORDER)}
    return sorted(classes, key=lambda c: (rank.get(c, len(rank)), c))


def allowed_labels(report: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """Every label a reviewer may give a white cell on this slide: the model's classes, the review
    vocabulary's codes, ``unidentified``."""
    out = slide_classes(report)
    out += [c for c in Vocabulary.from_rules(rules).codes() if c not in out]
    return [*out, UNIDENTIFIED]


def label_effect(rules: dict[str, Any], before: str | None, after: str) -> dict[str, Any]:
    """What a relabel does to the counts, for the response and the audit: what the new label counts
    as, and whether the cell left (or joined) the white-cell count, said in words."""
    vocab = Vocabulary.from_rules(rules)
    was, now = vocab.category(before or UNIDENTIFIED), vocab.category(after)
    was_wbc, now_wbc = vocab.is_wbc(before or UNIDENTIFIED), vocab.is_wbc(after)
    effect: dict[str, Any] = {"counts_as": now, "was_counted_as": was, "in_wbc_count": now_wbc}
    if was_wbc and not now_wbc:
        where = {
            "platelet": "the platelet count",
            "platelet_clump": "the platelet count and the platelet-clump count (PLATELET_CLUMPS)",
            "erythroblast": "nucleated red cells per 100 WBC",
            "smudge": "smudge cells per 100 WBC",
            "excluded": "no count (excluded)",
        }.get(now, now)
        effect["wbc_change"] = -1
        effect["message"] = f"relabelled {after}: removed from the white-cell count; now counted in {where}"
    elif now_wbc and not was_wbc:
        effect["wbc_change"] = 1
        effect["message"] = f"relabelled {after}: added to the white-cell count (as {now})"
    else:
        effect["wbc_change"] = 0
    return effect


def _locked_slide(session: Session, slide_id: str) -> Slide:
    slide = session.execute(select(Slide).where(Slide.id == slide_id).with_for_update()).scalar_one_or_none()
    if slide is None:
        raise ReviewError("not_found", "not_found", f"no slide {slide_id}")
    return slide


def _check_editable(slide: Slide) -> dict[str, Any]:
    if slide.report is None:
        raise ReviewError("conflict", "not_ready", f"slide {slide.id} has no results yet; nothing to review")
    if slide.verified_at is not None:
        raise ReviewError(
            "conflict",
            "signed_off",
            f"slide {slide.id} was signed off by {slide.verified_by} at "
            f"{slide.verified_at.isoformat(timespec='seconds')}Z and is read-only (amend it to change it)",
        )
    if slide.review_state == STATE_AWAITING:
        raise ReviewError(
            "conflict",
            "awaiting_pathologist",
            f"slide {slide.id} awaits a pathologist's signature and is read-only",
        )
    return slide.report


def recompute(session: Session, slide: Slide, rules: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the slide's differential, counts and flags from its cells' current labels.

    Summarised and written by :mod:`hematovision.service.slide_results`, as the worker does; flags
    that still stand keep the time they were first raised. Returns the new report.
    """
    report = resummarise(session, slide, slide_classes(slide.report or {}), rules)
    report["reviewed_cells"] = session.execute(
        select(func.count()).select_from(CellReview).where(CellReview.slide_id == slide.id)
    ).scalar_one()
    replace_result_rows(session, slide, report, keep_flag_times=True)
    return report


def reclassify(
    session: Session,
    cell_id: int,
    label: str,
    actor: str,
    *,
    rules: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> tuple[Cell, dict[str, Any]]:
    """Give a white cell a new label, record it, and recompute the slide. Returns (cell, report).

    ``label`` is one of :func:`allowed_labels` (the model's classes, the review vocabulary,
    ``unidentified``). Setting the label a cell
    already has changes nothing and records nothing. Call inside a transaction.
    """
    cell = session.get(Cell, cell_id)
    if cell is None:
        raise ReviewError("not_found", "not_found", f"no cell {cell_id}")
    red = cell.kind == RBC and cell.label is not None  # a red cell the red-cell model classified
    if cell.kind != WBC and not red:
        raise ReviewError(
            "invalid",
            "not_a_white_cell",
            f"cell {cell_id} is a {cell.kind} detection; only white cells and classified red cells are classified",
        )
    slide = _locked_slide(session, cell.slide_id)
    report = _check_editable(slide)
    rules = rules or load_rules()
    allowed = [*red_cell_classes(report), UNIDENTIFIED] if red else allowed_labels(report, rules)
    if label not in allowed:
        raise ReviewError("invalid", "invalid_label", f"label must be one of {', '.join(allowed)}; got {label!r}")
    current = cell.label or UNIDENTIFIED
    if current == label:
        return cell, report
    session.add(
        CellReview(
            cell_id=cell.id, slide_id=slide.id, from_label=cell.label, to_label=label, actor=actor, at=at or utcnow()
        )
    )
    cell.label = label
    session.flush()
    return cell, recompute(session, slide, rules)


def _signature_dict(sig: Signature) -> dict[str, Any]:
    stamp = sig.signed_at.isoformat(timespec="seconds") + "Z"
    out: dict[str, Any] = {
        "user_id": sig.user_id,
        "username": sig.username,
        "name": sig.full_name,
        "role": sig.role,
        "meaning": sig.meaning,
        "signed_at": stamp,
    }
    if sig.reason:
        out["reason"] = sig.reason
    return out


def unacknowledged_flags(session: Session, slide: Slide, report: dict[str, Any]) -> list[str]:
    """The codes of the flags standing on the report that have no acknowledgement (of the current
    report version) yet, in the report's order."""
    acked = set(
        session.execute(
            select(FlagAcknowledgement.code).where(
                FlagAcknowledgement.slide_id == slide.id, FlagAcknowledgement.report_version == slide.report_version
            )
        ).scalars()
    )
    codes = [str(f["code"]) for f in report.get("flags") or []]
    return [c for c in dict.fromkeys(codes) if c not in acked]


def _release(slide: Slide, report: dict[str, Any], sig: Signature, signatures: list[dict[str, Any]]) -> None:
    stamp = sig.signed_at.isoformat(timespec="seconds") + "Z"
    slide.verified_by = sig.full_name
    slide.verified_at = sig.signed_at
    slide.review_state = STATE_FINAL
    released = _signature_dict(sig)
    released.pop("reason", None)
    slide.report = {
        **report,
        "verified_by": sig.full_name,
        "verified_by_id": sig.username,
        "verified_at": stamp,
        "signature": released,
        "signatures": signatures,
        "result_status": result_status(slide.review_state, slide.report_version, True),
    }


def _second_signature(session: Session, slide: Slide, signer: Signer, when: datetime) -> Slide:
    """The pathologist's signature of a slide awaiting it: releases the report."""
    report = slide.report or {}
    first = (
        session.execute(
            select(Signature)
            .where(Signature.slide_id == slide.id, Signature.report_version == slide.report_version)
            .order_by(Signature.signed_at, Signature.id)
        )
        .scalars()
        .first()
    )
    if signer.role != PATHOLOGIST:
        raise ReviewError(
            "forbidden",
            "pathologist_required",
            f"slide {slide.id} awaits a pathologist's signature "
            f"({', '.join(report.get('pathologist_reasons') or [])}); a {signer.role} cannot give it",
        )
    if first is not None and first.user_id == signer.user_id:
        raise ReviewError(
            "conflict",
            "same_signer",
            f"slide {slide.id} was first signed by you ({signer.username}): the pathologist's signature must be "
            "another person's",
        )
    sig = Signature(
        slide_id=slide.id,
        user_id=signer.user_id,
        username=signer.username,
        full_name=signer.full_name,
        role=signer.role,
        meaning=PATHOLOGIST_MEANING,
        signed_at=when,
        report_version=slide.report_version,
    )
    session.add(sig)
    _release(slide, report, sig, [*(report.get("signatures") or []), _signature_dict(sig)])
    return slide


def sign_off(
    session: Session,
    slide_id: str,
    signer: Signer,
    *,
    meaning: str = SIGNOFF_MEANING,
    reason: str | None = None,
    at: datetime | None = None,
) -> Slide:
    """Sign the slide's report as ``signer``.

    The first signature is refused (conflict) while white cells are unidentified or a standing flag
    has no acknowledgement, and (invalid) without a ``reason`` when the differential is
    insufficient. When a flag is critical or a blast was counted it does not release the report:
    the slide awaits a pathologist (``review_state`` ``awaiting_pathologist``, read-only, nothing
    sent). Otherwise, and at the pathologist's second signature (refused to other roles and to the
    first signer), the report is released: ``verified_by``/``verified_at`` and the report's
    ``verified_by`` (full name), ``verified_by_id`` (username), ``signature`` (the releasing one) and
    ``signatures`` (all of this version). Every signature is a ``signatures`` row."""
    slide = _locked_slide(session, slide_id)
    when = at or utcnow()
    if slide.review_state == STATE_AWAITING and slide.verified_at is None and slide.report is not None:
        return _second_signature(session, slide, signer, when)
    report = _check_editable(slide)
    open_cells = session.execute(
        select(func.count())
        .select_from(Cell)
        .where(Cell.slide_id == slide.id, Cell.kind == WBC, (Cell.label.is_(None)) | (Cell.label == UNIDENTIFIED))
    ).scalar_one()
    if open_cells:
        raise ReviewError(
            "conflict",
            "unidentified_cells",
            f"{open_cells} white cell{'s are' if open_cells != 1 else ' is'} still unidentified: "
            "classify each one (keys 1-9) before signing off",
        )
    pending = unacknowledged_flags(session, slide, report)
    if pending:
        raise ReviewError(
            "conflict",
            "unacknowledged_flags",
            f"acknowledge each flag with a comment before signing off; not acknowledged: {', '.join(pending)}",
        )
    if reason is not None or insufficient(report):
        try:
            reason = clean_text(reason, "reason", MAX_REASON_CHARS)
        except ValueError as e:
            if insufficient(report):
                n = (report.get("counts") or {}).get("wbc", 0)
                raise ReviewError(
                    "invalid",
                    "reason_required",
                    f"the differential is insufficient ({n} classified white cells): signing it off needs a "
                    f'"reason" ({e})',
                ) from None
            raise ReviewError("invalid", "invalid_reason", str(e)) from None
    labels = session.execute(select(Cell.label).where(Cell.slide_id == slide.id, Cell.kind == WBC)).scalars()
    needs = pathologist_reasons(report, labels)
    sig = Signature(
        slide_id=slide.id,
        user_id=signer.user_id,
        username=signer.username,
        full_name=signer.full_name,
        role=signer.role,
        meaning=FIRST_SIGNATURE_MEANING if needs else meaning,
        signed_at=when,
        reason=reason,
        report_version=slide.report_version,
    )
    session.add(sig)
    report = {**report, "signoff_reason": reason} if reason else dict(report)
    if needs:
        slide.review_state = STATE_AWAITING
        slide.report = {
            **report,
            "signatures": [_signature_dict(sig)],
            "pathologist_reasons": needs,
            "result_status": result_status(slide.review_state, slide.report_version, False),
        }
        return slide
    _release(slide, report, sig, [_signature_dict(sig)])
    return slide


def review_history(session: Session, slide_id: str) -> Sequence[CellReview]:
    """The slide's reclassifications, oldest first."""
    return (
        session.execute(
            select(CellReview).where(CellReview.slide_id == slide_id).order_by(CellReview.at, CellReview.id)
        )
        .scalars()
        .all()
    )


def update_order(
    session: Session, slide_id: str, changes: OrderInfo, given: set[str], *, rules: dict[str, Any] | None = None
) -> tuple[Slide, dict[str, Any]]:
    """Correct a slide's order and patient (the ``given`` fields of ``changes``) before sign-off;
    an analysed slide's flags are evaluated again with the new patient context (age, sex, WBC).
    Returns (slide, ``{field: [old, new]}`` of what changed). Refused once the slide is signed off.
    Call inside a transaction (the caller audits)."""
    slide = _locked_slide(session, slide_id)
    if slide.verified_at is not None or slide.review_state == STATE_AWAITING:
        if slide.report is not None:
            _check_editable(slide)  # says who signed it and when
        raise ReviewError("conflict", "signed_off", f"slide {slide.id} was signed off and is read-only")
    before = order_of(slide)
    after = before.merged(changes, given)
    if after.birth_date is not None and after.age_years is not None:
        if "birth_date" in given and "age_years" not in given:
            after = after.merged(OrderInfo(), {"age_years"})
        elif "age_years" in given and "birth_date" not in given:
            after = after.merged(OrderInfo(), {"birth_date"})
        else:
            raise ReviewError("invalid", "invalid_field", "give 'birth_date' or 'age_years', not both")
    old, new = before.to_dict(), after.to_dict()
    changed = {k: [old[k], new[k]] for k in old if old[k] != new[k]}
    set_order(slide, after)
    session.flush()
    if changed and slide.report is not None:
        recompute(session, slide, rules or load_rules())
    return slide, changed
