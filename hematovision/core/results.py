"""Plain records of one slide's analysis, shared by the pipeline, the reports and the database layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

WBC, RBC, PLATELET = "wbc", "rbc", "platelet"
UNIDENTIFIED = "unidentified"


@dataclass
class CellResult:
    """One detected cell; ``bbox`` is (x0, y0, x1, y1) in level-0 pixels of the slide."""

    kind: str
    bbox: tuple[int, int, int, int]
    score: float
    label: str | None = None
    probability: float | None = None

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
