"""The review workflow's rules: result statuses, what needs a pathologist, signature meanings, and
the free text reviewers write (comments, acknowledgements, reasons).

A slide's report moves **preliminary** → (**awaiting_pathologist**) → **final**; an amendment
re-opens a final report as a new version (preliminary again) whose release is **amended** (HL7
result status ``C``, a corrected result). A report needs a pathologist's second signature when any
flag is critical or any blast was counted, by the model or a reviewer (the ICSG review criteria send
such slides to a pathologist: Barnes et al., Lab Hematol 2005;11:83-90; CLSI H20-A2 on the
confirmation of abnormal cells). Pure functions: no database here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

from hematovision.core.access import SIGNOFF_MEANING

PRELIMINARY, AWAITING_PATHOLOGIST, FINAL, AMENDED = "preliminary", "awaiting_pathologist", "final", "amended"
RESULT_STATUSES = (PRELIMINARY, AWAITING_PATHOLOGIST, FINAL, AMENDED)
#: ``slides.review_state`` values (None: open for review).
STATE_AWAITING, STATE_FINAL = AWAITING_PATHOLOGIST, FINAL

#: The meaning of a first signature that does not release the report (a pathologist must sign too).
FIRST_SIGNATURE_MEANING = "reviewed: technologist review; awaiting pathologist sign-off"
#: The meaning of the pathologist's second signature, which releases the report.
PATHOLOGIST_MEANING = "approved: pathologist review; results released"
#: The meaning of a single signature that releases the report.
RELEASE_MEANING = SIGNOFF_MEANING
#: The role whose signature a slide with a critical flag or a blast needs.
PATHOLOGIST = "pathologist"

MAX_COMMENT_CHARS = 2000
MAX_REASON_CHARS = 1000
#: Characters allowed in free text beyond the printable ones: line breaks and tabs.
_ALLOWED_CONTROLS = frozenset("\n\t")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def result_status(review_state: str | None, report_version: int, verified: bool) -> str:
    """The report's ``result_status``: preliminary, awaiting_pathologist, final or amended."""
    if verified:
        return AMENDED if report_version > 1 else FINAL
    if review_state == STATE_AWAITING:
        return AWAITING_PATHOLOGIST
    return PRELIMINARY


def blast_count(report: dict[str, Any], labels: Iterable[str | None] = ()) -> int:
    """Blasts counted on the slide: the differential's ``blast`` line, or cells labelled blast."""
    entry = (report.get("differential") or {}).get("blast") or {}
    return max(int(entry.get("count") or 0), sum(1 for label in labels if label == "blast"))


def pathologist_reasons(report: dict[str, Any], labels: Iterable[str | None] = ()) -> list[str]:
    """Why the report needs a pathologist's signature (empty: it does not)."""
    reasons = [f"critical flag {f['code']}" for f in report.get("flags") or [] if f.get("severity") == "critical"]
    blasts = blast_count(report, labels)
    if blasts:
        reasons.append(f"{blasts} blast{'s' if blasts != 1 else ''} counted")
    return reasons


def insufficient(report: dict[str, Any]) -> bool:
    """Whether the differential is insufficient (fewer classified white cells than the target)."""
    return report.get("differential_sufficient") is False


def clean_text(raw: object, what: str, max_chars: int) -> str:
    """Reviewer free text (NFC, surrounding blanks removed), or ``ValueError`` saying why not: not
    text, empty, longer than ``max_chars``, or holding a control character other than a line break
    or tab. Output escaping is each renderer's job (HTML, PDF, HL7, CSV)."""
    if not isinstance(raw, str):
        raise ValueError(f"{what} must be text")
    text = unicodedata.normalize("NFC", raw).strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    if len(text) > max_chars:
        raise ValueError(f"{what} is too long ({len(text)} characters; at most {max_chars})")
    bad = next(
        (ch for ch in text if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) in _REFUSED_CATEGORIES), None
    )
    if bad is not None:
        raise ValueError(f"{what} contains a control character (U+{ord(bad):04X})")
    return text
