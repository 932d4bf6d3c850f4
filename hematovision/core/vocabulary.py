"""The review vocabulary: the labels a technologist may give a white-cell candidate, independent of the model.

The model names a few classes (keys 1-9 in the review UI); a reviewer may also name any term of the
laboratory's vocabulary (blast, band, smudge cell, platelet clump, …). The vocabulary is the
``[[vocabulary.term]]`` list of the flag-rules file (so a report's ``rules_sha256`` covers it), or
the TOML file the setting ``HEMATOVISION_REVIEW_VOCABULARY`` names (its own ``[[term]]`` list, or a
``[[vocabulary.term]]`` list), which replaces it (:func:`hematovision.core.flags.effective_rules`).

Each term has a ``code`` (the stored label), a display ``name``, a menu ``group``, whether it is
``in_differential``, what it ``counts_as`` and a keyboard ``key``:

- a term in the differential counts in the differential line ``counts_as`` names (its own code by
  default; e.g. ``band`` -> ``neutrophil``, ``metamyelocyte`` -> ``ig`` as the lab chooses), and the
  rules read that line;
- a term not in the differential ``counts_as`` one of :data:`OUTSIDE_CATEGORIES`: ``platelet``
  (a platelet, moved to the platelet count), ``platelet_clump`` (a platelet clump the white-cell
  detector took: the platelet count, and it feeds PLATELET_CLUMPS), ``erythroblast`` (nucleated red
  cells per 100 WBC), ``smudge`` (reported per 100 WBC) or ``excluded`` (in no count).

A label that is neither a vocabulary term nor one of the model's non-white-cell classes counts as
its own white-cell class (see :func:`hematovision.core.results.is_classified_wbc`).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hematovision.core.results import EXCLUDED_LABELS, SMUDGE, UNIDENTIFIED

OUTSIDE_CATEGORIES = ("platelet", "platelet_clump", "erythroblast", "smudge", "excluded")
#: Categories whose cells are not white cells at all (they leave the WBC count).
NOT_WBC = frozenset({"platelet", "platelet_clump", "erythroblast"})
#: What the model's own classes that are no white cells count as (the v1 model's ``platelet`` on a
#: white-cell candidate is a clump: it has always fed PLATELET_CLUMPS).
MODEL_CATEGORIES = {"platelet": "platelet_clump", "erythroblast": "erythroblast", SMUDGE: "smudge"} | {
    label: "excluded" for label in EXCLUDED_LABELS
}
CODE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class VocabularyError(ValueError):
    """A vocabulary file that cannot be used (the message says which term and why)."""


@dataclass(frozen=True)
class Term:
    code: str
    name: str
    group: str
    in_differential: bool
    counts_as: str
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_terms(entries: list[dict[str, Any]]) -> list[Term]:
    """Check and read a vocabulary's terms (``[[vocabulary.term]]`` tables)."""
    terms: list[Term] = []
    codes: set[str] = set()
    keys: set[str] = set()
    for i, e in enumerate(entries):
        code = e.get("code")
        where = f"vocabulary term {i + 1} ({code!r})"
        if not isinstance(code, str) or not code or set(code) - CODE_CHARS or len(code) > 50:
            raise VocabularyError(f"{where}: code must be 1-50 characters of a-z, 0-9 and _")
        if code in codes or code == UNIDENTIFIED:
            raise VocabularyError(f"{where}: code is repeated or reserved")
        in_diff = e.get("in_differential")
        if not isinstance(in_diff, bool):
            raise VocabularyError(f"{where}: in_differential must be true or false")
        counts_as = e.get("counts_as", code if in_diff else None)
        if not isinstance(counts_as, str) or not counts_as:
            raise VocabularyError(f"{where}: counts_as is required for a term outside the differential")
        if in_diff and (counts_as in OUTSIDE_CATEGORIES or counts_as == UNIDENTIFIED):
            raise VocabularyError(f"{where}: a differential term counts as a white-cell class, not {counts_as!r}")
        if not in_diff and counts_as not in OUTSIDE_CATEGORIES:
            raise VocabularyError(f"{where}: counts_as must be one of {', '.join(OUTSIDE_CATEGORIES)}")
        key = e.get("key")
        if key is not None and (not isinstance(key, str) or len(key) != 1 or key.isdigit() or key in keys):
            raise VocabularyError(f"{where}: key must be one character, not a digit (1-9 are the model's), unique")
        codes.add(code)
        if key:
            keys.add(key)
        terms.append(
            Term(code, str(e.get("name") or code), str(e.get("group") or "other"), in_diff, counts_as, key or None)
        )
    return terms


def load_vocabulary_file(path: Path) -> list[dict[str, Any]]:
    """The raw ``term`` tables of a vocabulary TOML (``[[term]]`` or ``[[vocabulary.term]]``), checked."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise VocabularyError(f"cannot read the vocabulary {path}: {e}") from None
    entries = data.get("term", (data.get("vocabulary") or {}).get("term"))
    if not isinstance(entries, list) or not entries:
        raise VocabularyError(f"{path} has no [[term]] (or [[vocabulary.term]]) entries")
    parse_terms(entries)
    return entries


@dataclass(frozen=True)
class Vocabulary:
    terms: tuple[Term, ...]

    @classmethod
    def from_rules(cls, rules: dict[str, Any]) -> Vocabulary:
        return cls(tuple(parse_terms((rules.get("vocabulary") or {}).get("term") or [])))

    def get(self, code: str) -> Term | None:
        return next((t for t in self.terms if t.code == code), None)

    def codes(self) -> list[str]:
        return [t.code for t in self.terms]

    def category(self, label: str) -> str:
        """What a white-cell candidate labelled ``label`` counts as: a differential line (a white-cell
        class), ``unidentified``, or one of :data:`OUTSIDE_CATEGORIES`."""
        if label == UNIDENTIFIED:
            return UNIDENTIFIED
        term = self.get(label)
        if term is not None:
            return term.counts_as
        return MODEL_CATEGORIES.get(label, label)

    def is_wbc(self, label: str) -> bool:
        """True when a candidate with this label stays a white cell (classified or unidentified)."""
        return self.category(label) not in NOT_WBC | {"smudge", "excluded"}
