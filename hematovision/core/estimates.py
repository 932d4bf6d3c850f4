"""Smear estimates of the white-cell and platelet counts, with their method, unit and 95 % interval.

What a technologist does at the microscope to check an analyser's count (the "smear estimate"):

- **WBC estimate** from white cells per unit area of the monolayer: ``WBC (×10⁹/L) = white cells per
  mm² × WBC_FACTOR``. A monolayer of blood holds the cells of a film of blood a couple of µm deep:
  a normal red-cell count (``REFERENCE_RBC_10E12_PER_L`` = 5.0 ×10¹²/L) in a monolayer where red
  cells cover ~40 % of the glass (``REFERENCE_RBC_PER_MM2`` ≈ 9,000 cells of 7.5 µm per mm², the
  density ``make-slide`` lays down: 30-50 % cover from the thin to the thick end) makes the film
  ``9,000 / 5.0·10⁶ per µL`` = 1.8·10⁻³ mm ≈ 1.8 µm deep, so one white cell per mm² stands for
  ``1 / (1.8·10⁻³ mm · 1 mm²) = 556 per µL`` = 0.556 ×10⁹/L. The factor is an assumption about the
  smear's thickness, the estimate's main error on real slides (a lab calibrates it against its CBC
  counts); the per-mm² density is what the slide itself shows and is reported beside it. Interval:
  exact (Garwood) Poisson interval of the count, over the area read.
- **Platelet estimate** from platelets per 100 red cells in the fields counted for red cells and
  platelets; times the CBC red-cell count when the order gives one (``platelets ×10⁹/L = platelets
  per RBC × RBC ×10¹²/L × 1000``), else per field and per mm² (no unitless raw counts). Interval:
  exact binomial (Clopper–Pearson) interval of platelets among (platelets + red cells), turned into
  a ratio (the conditional method for a ratio of two Poisson counts).

Every estimate is a dict ``{"method", "value", "unit", "ci95", ...}``; ``value`` is ``None`` when
nothing was read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hematovision.core.results import EXCLUDED_LABELS, NON_WBC_LABELS, PLATELET, PLATELET_CLUMP, RBC, WBC, CellResult
from hematovision.core.stats import clopper_pearson, poisson_interval

#: Red cells per mm² of a monolayer in which red cells cover ~40 % of the glass (7.5 µm discs).
REFERENCE_RBC_PER_MM2 = 9000.0
#: A normal red-cell count, ×10¹²/L (reference for the monolayer's blood depth).
REFERENCE_RBC_10E12_PER_L = 5.0
#: ×10⁹/L of white cells per white cell per mm² of monolayer: 1 / blood depth (see the docstring).
WBC_FACTOR = round(1.0 / (REFERENCE_RBC_PER_MM2 / (REFERENCE_RBC_10E12_PER_L * 1e6)) / 1000.0, 3)
#: A sampling field counts as inside the monolayer (its cells are counted for the WBC estimate, its
#: area is known exactly) when at least this share of it is monolayer.
INTERIOR_FIELD_COVER = 0.98


def wbc_estimate(n_wbc: int, area_mm2: float, factor: float = WBC_FACTOR) -> dict[str, Any]:
    """WBC estimate from ``n_wbc`` white cells counted in ``area_mm2`` of monolayer.

    Args:
        n_wbc: white cells (named and unidentified, smudge included; not erythroblasts, platelets or
            artefacts) whose centre lies in the fields read.
        area_mm2: monolayer area of those fields.
        factor: ×10⁹/L per white cell per mm² (:data:`WBC_FACTOR`).
    """
    if n_wbc < 0:
        raise ValueError(f"a count cannot be negative, got {n_wbc}")
    out: dict[str, Any] = {
        "method": "white cells per mm² of monolayer read × factor",
        "factor_10e9_per_l_per_cell_mm2": factor,
        "cells": n_wbc,
        "area_mm2": round(area_mm2, 4),
        "unit": "10^9/L",
        "value": None,
        "ci95": None,
        "per_mm2": None,
        "per_mm2_ci95": None,
        "ci_method": "exact Poisson (Garwood) 95% of the count",
    }
    if area_mm2 <= 0:
        return out
    lo, hi = poisson_interval(n_wbc)
    out["per_mm2"] = round(n_wbc / area_mm2, 2)
    out["per_mm2_ci95"] = [round(lo / area_mm2, 2), round(hi / area_mm2, 2)]
    out["value"] = round(factor * n_wbc / area_mm2, 2)
    out["ci95"] = [round(factor * lo / area_mm2, 2), round(factor * hi / area_mm2, 2)]
    return out


def platelet_estimate(
    n_platelets: int,
    n_rbc: int,
    *,
    fields: int,
    field_area_mm2: float,
    rbc_10e12_per_l: float | None = None,
    n_clumps: int = 0,
) -> dict[str, Any]:
    """Platelet estimate from ``n_platelets`` and ``n_rbc`` red cells counted in ``fields`` fields.

    Args:
        n_platelets: platelets found in the fields (a clump counts as one object).
        n_clumps: how many of them are platelet clumps (reported as ``clumps``: a clump holds
            several platelets, so with clumps the estimate is a lower bound).
        n_rbc: red cells found in the same fields.
        fields: how many fields were counted.
        field_area_mm2: the fields' total area.
        rbc_10e12_per_l: the CBC red-cell count, when the order gives one.
    """
    if n_platelets < 0 or n_rbc < 0:
        raise ValueError(f"counts cannot be negative, got {n_platelets} platelets, {n_rbc} red cells")
    out: dict[str, Any] = {
        "method": "platelets per 100 red cells in the counted fields",
        "platelets": n_platelets,
        "clumps": n_clumps,
        "rbc": n_rbc,
        "fields": fields,
        "area_mm2": round(field_area_mm2, 4),
        "per_100_rbc": None,
        "per_100_rbc_ci95": None,
        "per_field": round(n_platelets / fields, 2) if fields > 0 else None,
        "per_mm2": round(n_platelets / field_area_mm2, 1) if field_area_mm2 > 0 else None,
        "ci_method": "exact binomial (Clopper-Pearson) 95% of platelets among platelets + red cells",
        "rbc_10e12_per_l": rbc_10e12_per_l,
        "value": None,
        "unit": "platelets/100 RBC",
        "ci95": None,
    }
    total = n_platelets + n_rbc
    if n_rbc == 0 or total == 0:
        return out
    lo, hi = clopper_pearson(n_platelets, total)

    def ratio(p: float) -> float:
        return p / (1.0 - p) if p < 1.0 else float("inf")

    per_100 = [100.0 * ratio(lo), 100.0 * ratio(hi)]
    out["per_100_rbc"] = round(100.0 * n_platelets / n_rbc, 2)
    out["per_100_rbc_ci95"] = [round(per_100[0], 2), round(per_100[1], 2)]
    if rbc_10e12_per_l is not None and rbc_10e12_per_l > 0:
        k = rbc_10e12_per_l * 1000.0 / 100.0  # ×10⁹/L per (platelet per 100 RBC)
        out["method"] = "platelets per 100 red cells in the counted fields × CBC red-cell count"
        out["unit"] = "10^9/L"
        out["value"] = round(out["per_100_rbc"] * k, 1)
        out["ci95"] = [round(per_100[0] * k, 1), round(per_100[1] * k, 1)]
    else:
        out["value"] = out["per_100_rbc"]
        out["ci95"] = out["per_100_rbc_ci95"]
    return out


def _is_white_cell(cell: CellResult) -> bool:
    """A white cell for the WBC estimate: named, unidentified or smudge (not an erythroblast,
    platelet or artefact)."""
    return cell.kind == WBC and (cell.label or "") not in NON_WBC_LABELS | EXCLUDED_LABELS


def smear_estimates(
    cells: Iterable[CellResult], sampling: dict[str, Any], rbc_10e12_per_l: float | None = None
) -> dict[str, Any]:
    """The report's ``estimates``: ``{"wbc": ..., "platelets": ...}`` from a slide's cells and its
    ``sampling`` record (:meth:`hemato_model.sampling.Sampling.to_dict`).

    White cells are counted in the fields read that lie inside the monolayer (at least
    :data:`INTERIOR_FIELD_COVER` of them; a field on the monolayer's border would need the mask to
    know which of its cells are in the monolayer), over those fields' area; a slide read whole counts
    every white cell over the monolayer area. Platelets and red cells are all those found (they are
    found only in the fields counted for them, ``sampling["count_fields"]``).
    """
    cells = list(cells)
    fields = [tuple(f) for f in sampling.get("fields") or []]
    mono_areas = list(sampling.get("field_monolayer_mm2") or [0.0] * len(fields))
    mpp_area = sampling.get("field_px_area_mm2")  # mm² per level-0 pixel²
    interior: list[tuple[int, ...]] = []
    area = 0.0
    if mpp_area:
        for f, a in zip(fields, mono_areas, strict=False):
            full = f[2] * f[3] * float(mpp_area)
            if full > 0 and a >= INTERIOR_FIELD_COVER * full:
                interior.append(f)
                area += full
    white = [c for c in cells if _is_white_cell(c)]
    if interior:
        n = 0
        for c in white:
            cx, cy = c.center
            if any(x <= cx < x + w and y <= cy < y + h for x, y, w, h in interior):
                n += 1
        wbc = wbc_estimate(n, area)
        wbc["fields"] = len(interior)
    else:
        wbc = wbc_estimate(len(white), float(sum(mono_areas)))
        wbc["fields"] = len(fields)
    count_fields = sampling.get("count_fields") or {}
    plt = platelet_estimate(
        sum(1 for c in cells if c.kind == PLATELET),
        sum(1 for c in cells if c.kind == RBC),
        fields=int(count_fields.get("fields") or 0),
        field_area_mm2=float(count_fields.get("area_mm2") or 0.0),
        rbc_10e12_per_l=rbc_10e12_per_l,
        n_clumps=sum(1 for c in cells if c.kind == PLATELET and c.label == PLATELET_CLUMP),
    )
    return {"wbc": wbc, "platelets": plt}
