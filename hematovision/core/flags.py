"""Flag rules: turn a white-cell differential into flags a technologist acts on.

Thresholds live in one TOML file (``flag_rules.toml``, versioned). Each flag carries a code, a
severity, a message and its evidence (count, percent, exact 95 % interval). A result whose interval
straddles a threshold is flagged as borderline instead of being silently passed; below the minimum
white-cell count the differential is marked insufficient and no negative statement is made.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hematovision.core.stats import percent_interval

if TYPE_CHECKING:
    from hematovision.core.settings import Settings

DEFAULT_RULES = Path(__file__).with_name("flag_rules.toml")
SEVERITY_RANK = {"critical": 4, "review": 3, "borderline": 2, "warning": 1, "info": 0}
#: Classes the model may emit that are not white cells: counted, kept out of the differential.
NON_WBC_CLASSES = frozenset({"erythroblast", "platelet"})


@dataclass
class Flag:
    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_rules(path: Path | None = None) -> dict[str, Any]:
    """The rules file as written (the shipped one by default)."""
    with open(path or DEFAULT_RULES, "rb") as fh:
        return tomllib.load(fh)


def effective_rules(settings: Settings) -> dict[str, Any]:
    """The rules an installation applies: its rules file with the settings' overrides on top.

    The one place where settings change a rule, so the worker, the review recompute and
    ``hematovision process`` all flag a slide alike.
    """
    rules = load_rules(settings.flag_rules)
    rules["insufficient"]["min_wbc"] = settings.min_wbc
    return rules


def _evidence(k: int, n: int) -> dict[str, Any]:
    lo, hi = percent_interval(k, n)
    return {"count": k, "of": n, "percent": round(100.0 * k / n, 1) if n else 0.0, "ci95": [lo, hi]}


def _threshold_flag(code: str, severity: str, what: str, k: int, n: int, pct: float) -> Flag | None:
    """Flag when the point estimate reaches ``pct``; borderline when only the interval does."""
    ev = _evidence(k, n)
    ev["threshold_pct"] = pct
    lo, hi = ev["ci95"]
    if ev["percent"] >= pct:
        if lo < pct:
            ev["borderline"] = True
        return Flag(code, severity, f"{what} {ev['percent']}% (95% CI {lo}–{hi}%) ≥ {pct}%", ev)
    if hi >= pct:
        ev["borderline"] = True
        return Flag(
            code + "_BORDERLINE",
            "borderline",
            f"{what} {ev['percent']}% is below {pct}% but its 95% CI ({lo}–{hi}%) reaches it",
            ev,
        )
    return None


def _blast_flags(flags: list[Flag], blasts: int, n_wbc: int, b: dict[str, Any]) -> None:
    crit = _threshold_flag("SUSPECTED_ACUTE_LEUKEMIA", "critical", "Blasts", blasts, n_wbc, b["critical_pct"])
    if crit:
        flags.append(crit)
    if crit is None or crit.severity != "critical":
        rev = _threshold_flag("BLASTS", "review", "Blasts", blasts, n_wbc, b["review_pct"])
        if rev:
            flags.append(rev)


def evaluate_flags(
    differential_counts: dict[str, int],
    n_wbc: int,
    *,
    erythroblasts: int = 0,
    wbc_per_l: float | None = None,
    rules: dict[str, Any] | None = None,
) -> list[Flag]:
    """Apply the rules; return flags, most severe first.

    Args:
        differential_counts: white-cell class -> count (``unidentified`` included).
        n_wbc: white cells counted (the differential's denominator).
        erythroblasts: nucleated red cells seen while counting ``n_wbc`` white cells.
        wbc_per_l: the white-cell count supplied with the submission, for absolute counts.
        rules: parsed rules (default: the shipped file).
    """
    rules = rules or load_rules()
    flags: list[Flag] = []
    min_wbc = int(rules["insufficient"]["min_wbc"])
    if n_wbc < min_wbc:
        flags.append(
            Flag(
                "INSUFFICIENT_WBC",
                "review",
                f"Only {n_wbc} white cells counted (minimum {min_wbc}): differential insufficient; "
                "no negative statement is made.",
                {"count": n_wbc, "minimum": min_wbc},
            )
        )
    if n_wbc == 0:
        return flags
    if "blast" in differential_counts:  # only a model with a blast class can say anything of blasts
        _blast_flags(flags, differential_counts["blast"], n_wbc, rules["blasts"])
    checks = [
        (
            "IMMATURE_GRANULOCYTES",
            "review",
            "Immature granulocytes",
            "ig",
            rules["immature_granulocytes"]["review_pct"],
        ),
        ("LYMPHOCYTOSIS", "review", "Lymphocytes", "lymphocyte", rules["lymphocytosis"]["review_pct"]),
        ("UNIDENTIFIED_CELLS", "review", "Unidentified cells", "unidentified", rules["unidentified"]["review_pct"]),
    ]
    for code, severity, what, cls, pct in checks:
        f = _threshold_flag(code, severity, what, differential_counts.get(cls, 0), n_wbc, pct)
        if f:
            flags.append(f)
    per100 = 100.0 * erythroblasts / n_wbc
    if per100 >= rules["erythroblasts"]["per_100_wbc"]:
        flags.append(
            Flag(
                "ERYTHROBLASTS",
                "review",
                f"{erythroblasts} nucleated red cells per {n_wbc} white cells ({per100:.1f}/100 WBC)",
                {"count": erythroblasts, "of": n_wbc, "per_100_wbc": round(per100, 1)},
            )
        )
    if wbc_per_l is not None:
        lym_abs = wbc_per_l * differential_counts.get("lymphocyte", 0) / n_wbc
        limit = rules["lymphocytosis"]["absolute_per_l"]
        if lym_abs >= limit:
            flags.append(
                Flag(
                    "ABSOLUTE_LYMPHOCYTOSIS",
                    "review",
                    f"Absolute lymphocytes {lym_abs / 1e9:.2f}×10⁹/L ≥ {limit / 1e9:.1f}×10⁹/L",
                    {"absolute_per_l": lym_abs, "threshold_per_l": limit},
                )
            )
    if n_wbc < min_wbc:  # too few cells to say a value is *not* reached: keep positive findings only
        flags = [f for f in flags if f.severity != "borderline"]
    flags.sort(key=lambda f: -SEVERITY_RANK.get(f.severity, 0))
    return flags


def max_severity(flags: list[dict[str, Any]] | list[Flag]) -> str | None:
    sev = [f.severity if isinstance(f, Flag) else f["severity"] for f in flags]
    return max(sev, key=lambda s: SEVERITY_RANK.get(s, 0)) if sev else None
