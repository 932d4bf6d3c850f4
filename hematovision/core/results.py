"""Plain records of one slide's analysis, shared by the pipeline, the reports and the database layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

WBC, RBC, PLATELET = "wbc", "rbc", "platelet"
UNIDENTIFIED = "unidentified"
#: The label of a platelet detection that is a clump of platelets (counted as one object).
PLATELET_CLUMP = "platelet_clump"

# What a white-cell candidate's label means for the differential (kept simple, and documented in
# docs/clinical_rules.md): the model's white-cell classes and any label not named below (a reviewer's
# ``blast``, say) are *classified* white cells, the differential's denominator; ``unidentified`` is
# reported beside it; erythroblasts and platelets are not white cells (counted apart); smudge cells are
# reported per 100 white cells; artefacts are left out altogether.
#: Classes a white-cell candidate may be given that are not white cells.
NON_WBC_LABELS = frozenset({"erythroblast", "platelet"})
SMUDGE = "smudge"
#: Labels of candidates that are no cell to count (left out of every count).
EXCLUDED_LABELS = frozenset({"artefact", "artifact", "not_classed"})


def is_classified_wbc(label: str | None) -> bool:
    """True for a label that counts in the differential's denominator (a named white cell)."""
    return bool(label) and label != UNIDENTIFIED and label != SMUDGE and label not in NON_WBC_LABELS | EXCLUDED_LABELS


@dataclass
class CellResult:
    """One detected cell; ``bbox`` is (x0, y0, x1, y1) in level-0 pixels of the slide."""

    kind: str
    bbox: tuple[int, int, int, int]
    score: float
    label: str | None = None
    probability: float | None = None
    #: The classifier's energy score of a white cell's crop (-logsumexp of its logits; higher =
    #: less like the training data), when the classifier gives one.
    energy: float | None = None

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


@dataclass
class SlideAnalysis:
    """Everything the pipeline learned from one slide."""

    mpp: float
    width: int
    height: int
    model_name: str
    model_version: str
    classes: list[str]
    cells: list[CellResult] = field(default_factory=list)
    fields_analysed: int = 0
    area_mm2: float = 0.0
    stopped_early: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    #: The domain and quality gate's measurements (:mod:`hemato_model.quality`): stain, focus,
    #: scale, and ``ood`` (the classifier's out-of-distribution score) once crops are classified.
    quality: dict[str, Any] = field(default_factory=dict)
    #: Where the differential's cells were read (:class:`hemato_model.sampling.Sampling`'s
    #: ``to_dict``: method, fields read, area read, monolayer area, field boxes).
    sampling: dict[str, Any] = field(default_factory=dict)
    #: What red-cell morphology did on this slide (:mod:`hemato_model.rbc.morphology`): ``status``
    #: (``classified``, ``empty``, ``not_evaluated``), ``reason``, the red-cell model, the scale's
    #: source, fields read and skipped as thick. The red cells' labels are on the cells.
    rbc: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {"wbc": 0, "rbc": 0, "platelets": 0}
        for c in self.cells:
            key = "platelets" if c.kind == PLATELET else c.kind
            out[key] = out.get(key, 0) + 1
        return out

    def wbc_labels(self) -> list[str]:
        return [c.label or UNIDENTIFIED for c in self.cells if c.kind == WBC]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cells"] = [asdict(c) for c in self.cells]
        return d
