"""At submission: the slides the classifier new slides get now was not validated on, as stored or as
scanned.

After analysis the gate flags such a slide STORAGE_UNVALIDATED or SCALE_UNVALIDATED (critical: the
differential is not valid until reviewed). Both depend only on the file (compression, and the JPEG
quality or JPEG 2000 rate, read from its headers and tile sizes without decoding a pixel:
:func:`hematovision.core.slide_storage.read_storage`) and its µm/px, so the intake can say the same
the moment the slide is submitted, and lab staff learn it that evening rather than from the
morning's report.

The checks are the gate's own (:func:`hematovision.core.flags.storage_verdict` with the lab's rules,
:func:`hematovision.core.storage_rule.judge_scale`), against the ``validated_storage`` of the model a
slide submitted now is assigned (:func:`hematovision.service.model_registry.next_model_meta`). A
notice never refuses a slide: it is analysed, and its report carries the flag. Where a check cannot
be made (storage unreadable, the model records nothing, the check switched off) the notice says so:
silence would read as "validated".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from hematovision.core.flags import effective_rules, storage_verdict
from hematovision.core.settings import Settings
from hematovision.core.slide_storage import read_storage
from hematovision.core.storage_rule import SCALE_CODE, STORAGE_CODE, StorageVerdict, judge_scale
from hematovision.service.model_registry import RegistryError, next_model_meta

log = logging.getLogger(__name__)

OUTSIDE, NOT_JUDGED = "outside", "not_judged"
#: Said with every ``outside`` notice: what happens to the slide.
CONSEQUENCE = "The slide is analysed; its report will carry this flag and be held for review."


def intake_notices(
    session: Session, slides: Sequence[tuple[str, Path, float | None]], settings: Settings
) -> list[dict[str, Any]]:
    """One notice per submitted slide ``(display name, file, µm/px)`` and check (``"storage"``,
    ``"scale"``) that has something to say: ``outcome`` ``"outside"`` (the slide will get the flag
    ``code``; with ``severity``, ``message`` and ``evidence``) or ``"not_judged"`` (``message``: why
    the check could not be made). A slide stored and scanned as its model was validated gets none."""
    gate = effective_rules(settings).get("gate", {})
    try:
        model, meta = next_model_meta(session, settings.model_dir)
    except RegistryError as exc:  # the message names server paths: logged, not returned
        log.warning("intake checks not made: %s", exc.code)
        return [
            _notice(name, check, None, NOT_JUDGED, "the classifier's record could not be read")
            for name, _, _ in slides
            for check in ("storage", "scale")
        ]
    validated = meta.get("validated_storage")
    notices = []
    for name, path, mpp in slides:
        checks: list[tuple[str, str, StorageVerdict]] = [
            ("storage", STORAGE_CODE, storage_verdict(read_storage(path), validated, mpp, gate)),
            ("scale", SCALE_CODE, judge_scale(validated, mpp)),
        ]
        for check, code, verdict in checks:
            if verdict.outside:
                notices.append(
                    _notice(name, check, model, OUTSIDE, f"{verdict.message} {CONSEQUENCE}")
                    | {"code": code, "severity": "critical", "evidence": verdict.evidence}
                )
            elif verdict.not_judged:
                notices.append(_notice(name, check, model, NOT_JUDGED, verdict.not_judged))
    return notices


def _notice(slide: str, check: str, model: str | None, outcome: str, message: str) -> dict[str, Any]:
    return {"slide": slide, "check": check, "model": model, "outcome": outcome, "message": message}
