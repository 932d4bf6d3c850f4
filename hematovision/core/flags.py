"""Flag rules: turn a white-cell differential into flags a technologist acts on.

Every threshold lives in one versioned TOML file (``flag_rules.toml``; each rule, its threshold,
severity and source are listed in ``docs/clinical_rules.md``). Each flag carries a code, a severity,
a message and its evidence (count, percent or absolute count, exact 95 % interval, threshold).

How the rules read a differential:

- Percentages are of the *classified* white cells (the denominator); ``unidentified`` cells are
  judged apart, as a share of all white cells seen (UNIDENTIFIED_CELLS, UNRECOGNIZED_POPULATION).
- Comparisons are made on unrounded values; rounding is for display only.
- A result whose exact (Clopper–Pearson) interval reaches a limit its point estimate does not is a
  *borderline* (``<CODE>_BORDERLINE``): severity ``borderline`` for a review rule, and ``critical``
  for a critical rule, so an uncertain critical finding never ranks below a certain review one.
- Under the minimum count the differential is insufficient (INSUFFICIENT_WBC) and no negative
  statement is made, but every positive finding and borderline is kept.
- The domain and quality gate (:func:`evaluate_gate`, ``[gate]`` in the rules file) compares a
  slide's stain, focus, scale, storage (JPEG quality) and the classifier's out-of-distribution
  score with the validated ranges; outside them a critical flag (STAIN_OUT_OF_RANGE, FOCUS_POOR,
  SCALE_MISMATCH, DOMAIN_UNVALIDATED, STORAGE_UNVALIDATED, SCALE_UNVALIDATED, IMAGE_UNUSABLE) carries the measured
  value and the range, and the differential is not valid for release until reviewed.
- A rule that cannot run says so: the outcome's ``not_evaluated`` lists each rule with the reason (a
  model without a blast class, no WBC count for absolute counts, no age so adult intervals were
  used, …), and a model that cannot recognise blasts raises BLAST_DETECTION_UNAVAILABLE (info), so
  that the absence of a flag is never read as a negative result.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hematovision.core.patient import DAYS_PER_YEAR, PatientContext
from hematovision.core.results import NON_WBC_LABELS
from hematovision.core.stats import clopper_pearson
from hematovision.core.storage_rule import SCALE_CODE, STORAGE_CODE, StorageVerdict, judge_scale, judge_storage
from hematovision.core.vocabulary import load_vocabulary_file

if TYPE_CHECKING:
    from hematovision.core.settings import Settings

DEFAULT_RULES = Path(__file__).with_name("flag_rules.toml")
SEVERITY_RANK = {"critical": 4, "review": 3, "borderline": 2, "warning": 1, "info": 0}
#: Classes the model may emit that are not white cells: counted, kept out of the differential.
NON_WBC_CLASSES = NON_WBC_LABELS
BLAST = "blast"
BLAST_RULES = ("BLASTS_PRESENT", "BLASTS", "SUSPECTED_ACUTE_LEUKEMIA")
NO_BLAST_CLASS = "this model cannot recognise blasts; a negative blast statement cannot be made"


@dataclass
class Flag:
    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RuleOutcome:
    """What the rules made of one differential.

    Attributes:
        flags: most severe first.
        not_evaluated: ``{"rule", "reason"}`` of every rule that could not run (or ran on a fallback).
        absolute: per classified class, ``{"value", "ci95"}`` in 10⁹/L (rounded for display), when
            the WBC count is known; else ``None``.
        age_partition: the age partition whose limits were used.
    """

    flags: list[Flag]
    not_evaluated: list[dict[str, str]]
    absolute: dict[str, dict[str, Any]] | None
    age_partition: str


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
    if settings.review_vocabulary is not None:
        rules["vocabulary"] = {"term": load_vocabulary_file(settings.review_vocabulary)}
    return rules


def rules_sha256(rules: dict[str, Any]) -> str:
    """SHA-256 of the rules as canonical JSON (sorted keys, no spaces): equal rules, equal hash."""
    text = json.dumps(rules, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def age_partition(rules: dict[str, Any], age_years: float | None) -> str:
    """The name of the age partition ``age_years`` falls in (the default one without an age)."""
    parts = rules["age_partitions"]
    if age_years is None:
        return str(parts["default"])
    days = age_years * DAYS_PER_YEAR
    for name, upper in sorted(parts["upper_days"].items(), key=lambda kv: kv[1]):
        if days < upper:
            return str(name)
    return str(parts["default"])


def _limit(rule: dict[str, Any], key: str, partition: str) -> float:
    return float((rule.get("by_age") or {}).get(partition, rule[key]))


def _fmt(value: float, threshold: float, unit: str = "%") -> str:
    """``value`` with as many decimals as it takes to show on which side of ``threshold`` it lies
    (4.975 % against 5 % prints 4.97 %, never 5.0 %)."""
    digits = 1 if unit == "%" else 2
    for d in range(digits, digits + 4):
        text = f"{value:.{d}f}"
        if (float(text) >= threshold) == (value >= threshold):
            return text
    return f"{value:.6g}"


def _proportion(k: int, n: int) -> tuple[float, float, float]:
    """Point estimate and exact 95 % interval of k/n, in percent, unrounded."""
    lo, hi = clopper_pearson(k, n)
    return 100.0 * k / n, 100.0 * lo, 100.0 * hi


def _evidence(k: int, n: int, value: float, lo: float, hi: float) -> dict[str, Any]:
    return {"count": k, "of": n, "percent": round(value, 1), "ci95": [round(lo, 1), round(hi, 1)]}


def _high_percent(
    code: str,
    severity: str,
    what: str,
    k: int,
    n: int,
    pct: float,
    *,
    borderline: bool = True,
    borderline_pct: float | None = None,
) -> Flag | None:
    """Flag when k/n reaches ``pct``; a borderline when only its interval reaches ``borderline_pct``
    (``pct`` unless given). Everything is compared unrounded."""
    value, lo, hi = _proportion(k, n)
    ev = _evidence(k, n, value, lo, hi) | {"threshold_pct": pct}
    ci = f"95% CI {lo:.1f}–{hi:.1f}%"
    if value >= pct:
        if lo < pct:
            ev["borderline"] = True
        return Flag(code, severity, f"{what} {_fmt(value, pct)}% ({ci}) ≥ {pct:g}%", ev)
    reach = pct if borderline_pct is None else borderline_pct
    if borderline and hi >= reach:
        ev["borderline"] = True
        if borderline_pct is not None:
            ev["ci_threshold_pct"] = reach
        return Flag(
            code + "_BORDERLINE",
            severity if severity == "critical" else "borderline",
            f"{what} {_fmt(value, pct)}% is below {pct:g}% but its {ci} reaches {reach:g}%",
            ev,
        )
    return None


def _blast_flags(counts: dict[str, int], n: int, b: dict[str, Any]) -> list[Flag]:
    """SUSPECTED_ACUTE_LEUKEMIA, BLASTS and BLASTS_PRESENT: the most specific that applies (a
    leukemia borderline keeps the BLASTS flag beside it)."""
    k = counts.get(BLAST, 0)
    confirm = ": image confirmation required"
    out: list[Flag] = []
    sal = _high_percent("SUSPECTED_ACUTE_LEUKEMIA", "critical", "Blasts", k, n, float(b["leukemia_pct"]))
    if sal:
        sal.message += confirm
        out.append(sal)
        if not sal.code.endswith("_BORDERLINE"):
            return out
    blasts = _high_percent(
        "BLASTS",
        "critical",
        "Blasts",
        k,
        n,
        float(b["critical_pct"]),
        borderline_pct=float(b["critical_ci_high_pct"]),
    )
    if blasts:
        blasts.message += confirm
        out.append(blasts)
        return out
    if k >= int(b["present_count"]):
        value, lo, hi = _proportion(k, n)
        out.append(
            Flag(
                "BLASTS_PRESENT",
                "review",
                f"{k} blast{'s' if k != 1 else ''} in {n} classified white cells ({value:.1f}%, 95% CI "
                f"{lo:.1f}–{hi:.1f}%){confirm}",
                _evidence(k, n, value, lo, hi) | {"threshold_count": int(b["present_count"])},
            )
        )
    return out


def _absolute_flags(
    rules: dict[str, Any], counts: dict[str, int], n: int, wbc: float, partition: str
) -> tuple[list[Flag], list[dict[str, str]]]:
    flags: list[Flag] = []
    missing: list[dict[str, str]] = []
    fired: set[str] = set()
    for code, rule in rules["absolute"].items():
        cls = rule["class"]
        if cls not in counts:
            missing.append({"rule": code, "reason": f"the model has no {cls} class"})
            continue
        k = counts[cls]
        lo_f, hi_f = clopper_pearson(k, n)
        value, lo, hi = wbc * k / n, wbc * lo_f, wbc * hi_f
        limit = _limit(rule, "limit", partition)
        low = rule["direction"] == "low"
        ev = {
            "class": cls,
            "count": k,
            "of": n,
            "wbc_10e9_per_l": wbc,
            "absolute_10e9_per_l": round(value, 3),
            "ci95_10e9_per_l": [round(lo, 3), round(hi, 3)],
            "threshold_10e9_per_l": limit,
            "direction": rule["direction"],
            "age_partition": partition,
        }
        what, sev = rule["what"], rule["severity"]
        ci = f"95% CI {lo:.2f}–{hi:.2f}"
        sign = "<" if low else "≥"
        if (value < limit) if low else (value >= limit):
            if (hi >= limit) if low else (lo < limit):
                ev["borderline"] = True
            flags.append(Flag(code, sev, f"{what} {_fmt(value, limit, 'abs')} ({ci}) ×10⁹/L {sign} {limit:g}", ev))
            fired.add(code)
        elif rule.get("borderline", True) and ((lo < limit) if low else (hi >= limit)):
            ev["borderline"] = True
            side = "above" if low else "below"
            flags.append(
                Flag(
                    code + "_BORDERLINE",
                    sev if sev == "critical" else "borderline",
                    f"{what} {_fmt(value, limit, 'abs')} ×10⁹/L is {side} {limit:g} but its {ci} reaches it",
                    ev,
                )
            )
    if "SEVERE_NEUTROPENIA" in fired:  # the critical form says it all
        flags = [f for f in flags if not f.code.startswith("NEUTROPENIA")]
    return flags, missing


def evaluate_rules(
    counts: dict[str, int],
    n_classified: int,
    *,
    unidentified: int = 0,
    erythroblasts: int = 0,
    platelet_candidates: int = 0,
    blast_capable: bool | None = None,
    patient: PatientContext | None = None,
    rules: dict[str, Any] | None = None,
) -> RuleOutcome:
    """Apply the rules to one differential.

    Args:
        counts: classified white-cell class -> count; every class the model (or a reviewer) can name,
            zeros included (a rule on a class missing here is listed as not evaluated).
            ``unidentified`` is not a class here.
        n_classified: the classified white cells (the differential's denominator).
        unidentified: white cells the model would not name, seen beside ``n_classified``.
        erythroblasts: nucleated red cells seen while counting.
        platelet_candidates: white-cell candidates the classifier called platelets (clumps).
        blast_capable: the model has a blast class or a reviewer labelled a blast (default: a
            ``blast`` entry in ``counts``).
        patient: age, sex and WBC count, when known.
        rules: parsed rules (default: the shipped file).
    """
    rules = rules or load_rules()
    patient = patient or PatientContext()
    counts = {k: v for k, v in counts.items() if k not in NON_WBC_CLASSES}
    n = n_classified
    blast_capable = BLAST in counts if blast_capable is None else blast_capable
    partition = age_partition(rules, patient.age_years)
    flags: list[Flag] = []
    not_evaluated: list[dict[str, str]] = []
    absolute: dict[str, dict[str, Any]] | None = None

    if not blast_capable:
        flags.append(
            Flag(
                "BLAST_DETECTION_UNAVAILABLE",
                "info",
                NO_BLAST_CLASS.capitalize() + ".",
                {"model_has_blast_class": False},
            )
        )
        not_evaluated += [{"rule": code, "reason": NO_BLAST_CLASS} for code in BLAST_RULES]

    min_wbc = int(rules["insufficient"]["min_wbc"])
    if n < min_wbc:
        flags.append(
            Flag(
                "INSUFFICIENT_WBC",
                "review",
                f"Only {n} classified white cells (minimum {min_wbc}): differential insufficient; "
                "no negative statement is made.",
                {"count": n, "minimum": min_wbc, "unidentified": unidentified},
            )
        )

    seen = n + unidentified
    if seen:
        up = rules["unrecognized_population"]
        value, lo, hi = _proportion(unidentified, seen)
        if value >= float(up["unidentified_pct"]):
            flags.append(
                Flag(
                    "UNRECOGNIZED_POPULATION",
                    "critical",
                    f"{_fmt(value, float(up['unidentified_pct']))}% of {seen} white cells seen are unidentified "
                    f"(95% CI {lo:.1f}–{hi:.1f}%; threshold {float(up['unidentified_pct']):g}%, above normal "
                    "slides): a cell population the model does not recognise (blasts or other abnormal cells "
                    "are possible); review the images.",
                    _evidence(unidentified, seen, value, lo, hi) | {"threshold_pct": float(up["unidentified_pct"])},
                )
            )
        else:
            u = rules["unidentified"]
            f = _high_percent(
                "UNIDENTIFIED_CELLS",
                "review",
                "Unidentified cells (of all white cells seen)",
                unidentified,
                seen,
                float(u["review_pct"]),
                borderline=bool(u.get("borderline", True)),
            )
            if f:
                flags.append(f)

    if n == 0:
        reason = "no classified white cells"
        codes = [*(BLAST_RULES if blast_capable else ()), *rules["relative"], *rules["absolute"], "ERYTHROBLASTS"]
        not_evaluated += [{"rule": c, "reason": reason} for c in codes]
    else:
        if blast_capable:
            flags += _blast_flags(counts, n, rules["blasts"])
        for code, rule in rules["relative"].items():
            cls = rule["class"]
            if cls not in counts:
                not_evaluated.append({"rule": code, "reason": f"the model has no {cls} class"})
                continue
            f = _high_percent(
                code,
                rule["severity"],
                rule["what"],
                counts[cls],
                n,
                _limit(rule, "high_pct", partition),
                borderline=bool(rule.get("borderline", True)),
            )
            if f:
                f.evidence["age_partition"] = partition
                flags.append(f)
        per100 = 100.0 * erythroblasts / n
        limit = float(rules["erythroblasts"]["per_100_wbc"])
        if per100 >= limit:
            flags.append(
                Flag(
                    "ERYTHROBLASTS",
                    "review",
                    f"{erythroblasts} nucleated red cells per {n} classified white cells "
                    f"({_fmt(per100, limit, 'abs')}/100 WBC ≥ {limit:g})",
                    {"count": erythroblasts, "of": n, "per_100_wbc": round(per100, 2), "threshold_per_100_wbc": limit},
                )
            )
        if patient.wbc_10e9_per_l is None:
            reason = "no WBC count given: absolute counts cannot be computed"
            not_evaluated += [{"rule": code, "reason": reason} for code in rules["absolute"]]
        else:
            wbc = float(patient.wbc_10e9_per_l)
            absolute = {}
            for cls, k in counts.items():
                lo_f, hi_f = clopper_pearson(k, n)
                absolute[cls] = {"value": round(wbc * k / n, 3), "ci95": [round(wbc * lo_f, 3), round(wbc * hi_f, 3)]}
            more, missing = _absolute_flags(rules, counts, n, wbc, partition)
            flags += more
            not_evaluated += missing
    pc = rules["platelet_clumps"]
    if platelet_candidates >= int(pc["min_count"]):
        flags.append(
            Flag(
                "PLATELET_CLUMPS",
                "review",
                f"{platelet_candidates} white-cell candidates were classified as platelets: platelet clumps "
                "likely (the analyser's platelet count may be falsely low); check the smear.",
                {"count": platelet_candidates, "threshold_count": int(pc["min_count"])},
            )
        )
    if patient.age_years is None:
        label = rules["age_partitions"].get("labels", {}).get(partition, partition)
        not_evaluated.append({"rule": "AGE_PARTITIONED_LIMITS", "reason": f"no age given: {label} intervals used"})
    flags.sort(key=lambda f: -SEVERITY_RANK.get(f.severity, 0))
    return RuleOutcome(flags, not_evaluated, absolute, partition)


def evaluate_flags(
    counts: dict[str, int],
    n_classified: int,
    **kwargs: Any,
) -> list[Flag]:
    """The flags of :func:`evaluate_rules` alone, most severe first."""
    return evaluate_rules(counts, n_classified, **kwargs).flags


def max_severity(flags: list[dict[str, Any]] | list[Flag]) -> str | None:
    sev = [f.severity if isinstance(f, Flag) else f["severity"] for f in flags]
    return max(sev, key=lambda s: SEVERITY_RANK.get(s, 0)) if sev else None


def not_evaluated_lines(entries: list[dict[str, str]] | None) -> list[str]:
    """The report's ``rules_not_evaluated`` for people: one line per reason, its rules named."""
    by_reason: dict[str, list[str]] = {}
    for e in entries or []:
        by_reason.setdefault(str(e.get("reason")), []).append(str(e.get("rule")))
    return [f"{', '.join(rules)}: {reason}" for reason, rules in by_reason.items()]


GATE_CODES = (
    "IMAGE_UNUSABLE",
    "STAIN_OUT_OF_RANGE",
    "FOCUS_POOR",
    "SCALE_MISMATCH",
    "DOMAIN_UNVALIDATED",
    STORAGE_CODE,
    SCALE_CODE,
)


def _outside(value: float, bounds: list[float]) -> bool:
    return value < float(bounds[0]) or value > float(bounds[1])


def evaluate_gate(quality: dict[str, Any] | None, rules: dict[str, Any]) -> list[Flag]:
    """The domain and quality gate: a critical flag per measurement outside its validated range.

    Args:
        quality: the slide's gate measurements (:mod:`hemato_model.quality`; ``SlideAnalysis.quality``);
            None or empty for an analysis made before the gate existed (no flag is raised then).
        rules: the effective rules (``[gate]``: ranges calibrated on in-domain slides,
            ``benchmarks/gate_calibration.py``).
    """
    if not quality or "gate" not in rules:
        return []
    g = rules["gate"]
    flags: list[Flag] = []
    if int(quality.get("fields_measured") or 0) < int(g["min_fields_measured"]):
        flags.append(
            Flag(
                "IMAGE_UNUSABLE",
                "critical",
                f"No stained cells could be measured on the {quality.get('fields_sampled', 0)} fields sampled: "
                "the image is blank, black, one colour or not a blood smear; no differential can be given.",
                {
                    "fields_sampled": quality.get("fields_sampled", 0),
                    "fields_measured": quality.get("fields_measured", 0),
                },
            )
        )
        return flags
    stain = quality.get("stain") or {}
    outside: list[str] = []
    evidence: dict[str, Any] = {}
    for key, rng_key in (("rbc_od_chroma", "rbc_od_chroma"), ("nucleus_od_chroma", "nucleus_od_chroma")):
        vec = stain.get(key)
        if vec is None:
            if key == "nucleus_od_chroma":
                outside.append("no nuclear stain found")
                evidence[key] = None
            continue
        for i, channel in enumerate(("red", "green", "blue")):
            bounds = g.get(f"{rng_key}_{channel}")
            if bounds is not None and _outside(float(vec[i]), bounds):
                outside.append(
                    f"{key.replace('_od_chroma', '')} OD share {channel} {vec[i]:.3f} not in {bounds[0]}–{bounds[1]}"
                )
                evidence[f"{key}_{channel}"] = {"value": vec[i], "range": list(bounds)}
    glass = stain.get("glass_brightness")
    if glass is not None and _outside(float(glass), g["glass_brightness"]):
        outside.append(f"glass brightness {glass:.0f} not in {g['glass_brightness'][0]}–{g['glass_brightness'][1]}")
        evidence["glass_brightness"] = {"value": glass, "range": list(g["glass_brightness"])}
    if outside:
        flags.append(
            Flag(
                "STAIN_OUT_OF_RANGE",
                "critical",
                "Stain or illumination outside the validated range (" + "; ".join(outside) + "): the model was "
                "not validated on this stain; the differential is not valid until reviewed.",
                evidence,
            )
        )
    focus = quality.get("focus")
    if focus is not None and float(focus) < float(g["focus_min"]):
        flags.append(
            Flag(
                "FOCUS_POOR",
                "critical",
                f"Focus measure {focus:.3f} under the validated minimum {g['focus_min']}: the slide is blurred or "
                "out of focus; the differential is not valid until reviewed.",
                {"value": focus, "minimum": float(g["focus_min"])},
            )
        )
    scale = quality.get("scale") or {}
    ratio = scale.get("ratio")
    enough_fields = int(scale.get("fields_measured") or 0) >= int(g["scale_min_fields"])
    if ratio is not None and enough_fields and _outside(float(ratio), g["scale_ratio"]):
        flags.append(
            Flag(
                "SCALE_MISMATCH",
                "critical",
                f"Stated scale {scale['stated_mpp']:g} µm/px but the red cells measure "
                f"{scale['measured_mpp']:.3f} µm/px (ratio {ratio:.2f}, validated {g['scale_ratio'][0]}–"
                f"{g['scale_ratio'][1]}): cells are cut at the wrong size; check the slide's µm/px.",
                {
                    "stated_mpp": scale["stated_mpp"],
                    "measured_mpp": scale["measured_mpp"],
                    "ratio": ratio,
                    "range": list(g["scale_ratio"]),
                },
            )
        )
    ood = quality.get("ood")
    if ood and _ood_not_judged(ood, g) is None and float(ood["share_above"]) > float(g["ood_share_max"]):
        flags.append(
            Flag(
                "DOMAIN_UNVALIDATED",
                "critical",
                f"{100 * ood['share_above']:.0f}% of {ood['crops']} white-cell crops lie outside what the "
                f"classifier was trained on (energy above {ood['energy_threshold']:.2f}; validated at most "
                f"{100 * float(g['ood_share_max']):.0f}%): the differential is not valid until reviewed.",
                {
                    "share_above": ood["share_above"],
                    "crops": ood["crops"],
                    "median_energy": ood["median_energy"],
                    "energy_threshold": ood["energy_threshold"],
                    "maximum_share": float(g["ood_share_max"]),
                },
            )
        )
    storage = _storage_verdict(quality, g)
    if storage.outside:
        flags.append(Flag(STORAGE_CODE, "critical", storage.message, storage.evidence))
    scanned = _scale_verdict(quality)
    if scanned.outside:
        flags.append(Flag(SCALE_CODE, "critical", scanned.message, scanned.evidence))
    return flags


def _scale_verdict(quality: dict[str, Any]) -> StorageVerdict:
    """The scale the slide was analysed at against the model's record (carried with its storage;
    an analysis made before storage was measured is not judged, as for storage)."""
    storage = quality.get("storage")
    if storage is None:
        return StorageVerdict()
    return judge_scale(storage.get("validated"), (quality.get("scale") or {}).get("stated_mpp"))


def _storage_verdict(quality: dict[str, Any], gate: dict[str, Any]) -> StorageVerdict:
    scale = quality.get("scale") or {}
    storage = quality.get("storage")
    return storage_verdict(storage, (storage or {}).get("validated"), scale.get("stated_mpp"), gate)


def storage_verdict(
    storage: dict[str, Any] | None, validated: dict[str, Any] | None, mpp: float | None, gate: dict[str, Any]
) -> StorageVerdict:
    """The storage check as the lab's rules apply it (``gate``: the rules' ``[gate]`` table): the
    rule of :func:`~hematovision.core.storage_rule.judge_storage`, unless the lab switched it off.
    The gate uses it after analysis; the intake (``hematovision.service.intake_notice``) before."""
    if not gate.get("storage_check", True):
        return StorageVerdict(not_judged="the storage check is switched off in the lab's rules")
    return judge_storage(storage, validated, mpp)


def _ood_not_judged(ood: dict[str, Any] | None, gate: dict[str, Any]) -> str | None:
    """Why the classifier's out-of-distribution share (DOMAIN_UNVALIDATED) cannot be judged on this
    slide, or None when it can: no crop was scored, or too few for a share to mean anything."""
    if ood is None:
        return (
            "no white-cell crop was scored for the out-of-distribution share "
            "(none classified, or the classifier has no ood.json)"
        )
    if int(ood.get("crops") or 0) < int(gate["ood_min_crops"]):
        return (
            f"only {int(ood.get('crops') or 0)} white-cell crops were scored; the out-of-distribution share "
            f"is judged from {int(gate['ood_min_crops'])}"
        )
    return None


def gate_not_evaluated(quality: dict[str, Any] | None, rules: dict[str, Any]) -> list[dict[str, str]]:
    """The gate's checks that could not run on this slide (``{"rule", "reason"}``, as the other rules'
    ``not_evaluated``): the classifier's out-of-distribution share when too few crops were scored
    (or none: another lab's slide with a handful of white cells must not read as "in domain"), the
    storage check when the slide's storage or the model's validated storage is unknown, and the scale
    check (SCALE_UNVALIDATED) when the model records no validated scan scales."""
    if (
        not quality
        or "gate" not in rules
        or int(quality.get("fields_measured") or 0) < int(rules["gate"]["min_fields_measured"])
    ):
        return []
    out = []
    ood_reason = _ood_not_judged(quality.get("ood"), rules["gate"])
    if ood_reason:
        out.append({"rule": "DOMAIN_UNVALIDATED", "reason": ood_reason})
    for code, verdict in (
        (STORAGE_CODE, _storage_verdict(quality, rules["gate"])),
        (SCALE_CODE, _scale_verdict(quality)),
    ):
        if verdict.not_judged:
            out.append({"rule": code, "reason": verdict.not_judged})
    return out
