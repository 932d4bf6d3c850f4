"""What the flag rules may know of the patient: age, sex and the analyser's white-cell count.

All optional. Today only the white-cell count reaches HematoVision (a submission's ``wbc_per_l``,
converted at the call site); the intake of age and sex comes later. A rule that needs what is
missing is listed in the report's ``rules_not_evaluated`` (absolute counts without a WBC count) or
falls back to adult intervals, which the report says too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class PatientContext:
    """The patient facts a rule may use.

    Attributes:
        age_years: age in years (fractions for infants: 14 days = 14 / 365.25).
        sex: ``"F"``, ``"M"`` or another code of the lab; no shipped rule uses it yet.
        wbc_10e9_per_l: the analyser's white-cell count in 10⁹/L, for absolute counts.
    """

    age_years: float | None = None
    sex: str | None = None
    wbc_10e9_per_l: float | None = None

    def __post_init__(self) -> None:
        if self.age_years is not None and not 0 <= self.age_years <= 130:
            raise ValueError(f"age_years must lie in 0..130, got {self.age_years}")
        if self.wbc_10e9_per_l is not None and not 0 <= self.wbc_10e9_per_l <= 1000:
            raise ValueError(f"wbc_10e9_per_l must lie in 0..1000, got {self.wbc_10e9_per_l}")

    @classmethod
    def from_wbc_per_l(cls, wbc_per_l: float | None, **other: Any) -> PatientContext:
        """The context of a slide submitted with a WBC count per litre (the API's ``wbc_per_l``)."""
        return cls(wbc_10e9_per_l=None if wbc_per_l is None else float(wbc_per_l) / 1e9, **other)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
