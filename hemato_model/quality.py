"""The domain and quality gate's measurements on a slide: stain, focus, scale and usable cells.

:func:`measure_quality` reads ``GATE_FIELDS`` fields of ``GATE_FIELD_UM`` µm spread over the smear
area (fixed seed: the staged and the one-process path read the same fields) and measures, per field:

- **Stain** (Beer–Lambert optical density over the field's glass, as in :mod:`.detection.stain`):
  the OD *chromaticity* (each channel's share of the OD sum) of red-cell pixels and of nuclear
  pixels. A Romanowsky stain of the validated kind has red cells absorbing mostly green (pink) and
  nuclei absorbing green and red (purple); another stain or camera moves these shares. The glass
  brightness (the field's 95th percentile, 0..255) is kept beside them.
- **Focus**: a contrast-normalised gradient energy at a fixed physical scale. The green optical
  density is resampled to ``FOCUS_MPP`` µm/px; focus = std(Laplacian of Gaussian, σ = 1 px) /
  std(band-pass, Gaussian σ 1 − σ 4 px) over cell pixels. A defocused or blurred field loses the
  fine band first, so the ratio falls whatever the stain's strength (variance of the Laplacian,
  Pech-Pacheco et al. 2000, normalised by the coarser band).
- **Scale**: µm/px measured from the field's red cells
  (:func:`hemato_model.detection.scale.estimate_image_mpp`, on the field enlarged to
  ``GATE_SCALE_SIDE_PX`` when smaller, as at 20×); the slide's is the median over fields measured on
  isolated red cells (over every field when fewer than ``SCALE_MIN_ISOLATED_FIELDS`` are), compared
  with the stated µm/px.
- **Cells**: the share of field pixels that are cells; a field without cells is not measured.
- **Storage**: how the file stores its full-resolution pixels (compression and JPEG quality, measured
  from the file's quantisation tables: :func:`hematovision.core.slide_storage.read_storage`).

The classifier's own out-of-distribution score (the energy of each white-cell crop) comes later, from
the classify stage (:meth:`hemato_model.classifier.Classifier.classify_scored`). The flags are
decided with the other rules (:func:`hematovision.core.flags.evaluate_gate`), against ranges in the
rules file calibrated on in-domain slides (``benchmarks/gate_calibration.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from hemato_model.detection.scale import MEASURE_SIDE_PX
from hemato_model.detection.stain import check_image, nucleus_threshold, resample, stain_field
from hematovision.core.slide_storage import read_storage

if TYPE_CHECKING:
    from hematovision.core.slides import Slide

#: Fields measured per slide and their side, µm.
GATE_FIELDS = 6
GATE_FIELD_UM = 100.0
#: Resolution of the focus measure, µm/px (finer images are reduced to it; coarser ones cannot show
#: focus at this scale and report ``None``).
FOCUS_MPP = 0.25
#: Working resolution of the stain measures, µm/px.
STAIN_MPP = 0.4
#: Least share of cell pixels for a field to be measured.
MIN_CELL_FRACTION = 0.02
#: Fields measured on isolated red cells that make the slide's scale without the packed-cell ones.
SCALE_MIN_ISOLATED_FIELDS = 2
#: Least longest side, px, a field's red cells are measured at (a 100 µm field of a 20× scan is
#: 200 px and is enlarged; see :data:`hemato_model.detection.scale.MEASURE_SIDE_PX`).
GATE_SCALE_SIDE_PX = MEASURE_SIDE_PX


def _od(rgb: np.ndarray) -> np.ndarray:
    """Per-channel optical density over the field's glass (95th percentile per channel)."""
    glass = np.percentile(rgb.reshape(-1, 3), 95, axis=0).astype(np.float32)
    return np.asarray(-np.log10(np.clip((rgb.astype(np.float32) + 1.0) / (glass + 1.0), 1e-3, 1.0)))


def _chroma(od: np.ndarray, mask: np.ndarray) -> list[float] | None:
    if mask.sum() < 20:
        return None
    mean = od[mask].mean(axis=0)
    total = float(mean.sum())
    if total <= 1e-6:
        return None
    return [round(float(v / total), 4) for v in mean]


def focus_measure(image: np.ndarray, mpp: float) -> float | None:
    """Contrast-normalised gradient energy of a field at ``FOCUS_MPP`` (see the module docstring)."""
    if mpp > FOCUS_MPP * 1.05:
        return None
    small = resample(image, FOCUS_MPP / mpp).astype(np.float32)
    od = _od(small)[..., 1]
    fine = ndi.gaussian_laplace(od, 1.0)
    band = ndi.gaussian_filter(od, 1.0) - ndi.gaussian_filter(od, 4.0)
    cells = ndi.gaussian_filter(od, 2.0) > 0.05
    if cells.sum() < 100:
        return None
    coarse = float(band[cells].std())
    if coarse <= 1e-6:
        return None
    return float(fine[cells].std()) / coarse


def measure_field(image: np.ndarray, mpp: float, scale_side_px: int = GATE_SCALE_SIDE_PX) -> dict[str, Any] | None:
    """Stain, focus and scale of one field; None when it holds too few cells to measure.
    ``scale_side_px``: see :data:`GATE_SCALE_SIDE_PX` (0: the field as read)."""
    from hemato_model.detection.scale import estimate_image_mpp

    arr = check_image(image)
    field = stain_field(arr, mpp, STAIN_MPP)
    cell_fraction = float(field.cells.mean())
    if cell_fraction < MIN_CELL_FRACTION or not np.isfinite(field.od).all():
        return None
    small = resample(arr, field.scale)
    od = _od(small)
    h, w = field.cells.shape
    od = od[:h, :w]
    nuclear = (field.stain > nucleus_threshold(field)) & field.cells
    rbc = field.cells & ~ndi.binary_dilation(nuclear, iterations=2)
    try:
        scale = estimate_image_mpp(arr, centred_cell=False, min_side_px=scale_side_px)
        measured, source = round(scale.mpp, 5), scale.source
    except ValueError:
        measured, source = None, None
    return {
        "cell_fraction": round(cell_fraction, 4),
        "rbc_od_chroma": _chroma(od, rbc),
        "nucleus_od_chroma": _chroma(od, nuclear),
        "rbc_od": round(float(field.od[rbc].mean()), 4) if rbc.any() else None,
        "glass_brightness": round(float(np.percentile(arr.reshape(-1, 3).mean(axis=1), 95)), 1),
        "focus": None if (f := focus_measure(arr, mpp)) is None else round(f, 4),
        "measured_mpp": measured,
        "mpp_source": source,
    }


def _median(values: list[Any]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return round(float(np.median(v)), 5) if v else None


def _median_vec(values: list[Any]) -> list[float] | None:
    v = [x for x in values if x is not None]
    return [round(float(x), 4) for x in np.median(np.array(v, dtype=float), axis=0)] if v else None


def summarise_fields(fields: list[dict[str, Any] | None], stated_mpp: float) -> dict[str, Any]:
    """The slide's gate measurements: per-measure medians over the fields that could be measured."""
    ok = [f for f in fields if f is not None]
    # Fields whose red cells lie apart give the scale directly; the packed-cell stand-in of a dense
    # field reads up to a third low at 20x (docs/validation.md, *the scale at 20×*), so it is used only
    # where too few fields have isolated red cells.
    isolated = [f["measured_mpp"] for f in ok if f.get("mpp_source") == "red_cells" and f["measured_mpp"]]
    measured = _median(isolated if len(isolated) >= SCALE_MIN_ISOLATED_FIELDS else [f["measured_mpp"] for f in ok])
    return {
        "fields_sampled": len(fields),
        "fields_measured": len(ok),
        "stain": {
            "rbc_od_chroma": _median_vec([f["rbc_od_chroma"] for f in ok]),
            "nucleus_od_chroma": _median_vec([f["nucleus_od_chroma"] for f in ok]),
            "rbc_od": _median([f["rbc_od"] for f in ok]),
            "glass_brightness": _median([f["glass_brightness"] for f in ok]),
        },
        "focus": _median([f["focus"] for f in ok]),
        "scale": {
            "stated_mpp": stated_mpp,
            "measured_mpp": measured,
            "ratio": round(measured / stated_mpp, 4) if measured else None,
            "fields_measured": sum(1 for f in ok if f["measured_mpp"] is not None),
            "fields_isolated_cells": len(isolated),
        },
    }


def field_origins(
    mask: np.ndarray, down: float, width: int, height: int, field_px: int, n: int
) -> list[tuple[int, int]]:
    """Level-0 origins of ``n`` fields spread over the smear mask (seeded; whole image if small)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    rng = np.random.default_rng(1)
    picks = sorted(rng.choice(len(xs), size=min(n, len(xs)), replace=False))
    out = []
    for p in picks:
        gx, gy = int(xs[p] * down), int(ys[p] * down)
        x0 = min(max(0, gx - field_px // 2), max(0, width - field_px))
        y0 = min(max(0, gy - field_px // 2), max(0, height - field_px))
        if (x0, y0) not in out:
            out.append((x0, y0))
    return out


def measure_fields(
    slide: Slide, mask: np.ndarray, down: float, n_fields: int = GATE_FIELDS, scale_side_px: int = GATE_SCALE_SIDE_PX
) -> list[dict[str, Any] | None]:
    """:func:`measure_field` on each of the slide's gate fields (None where one holds too few cells)."""
    mpp = float(slide.mpp)
    w, h = slide.dimensions
    field_px = min(int(round(GATE_FIELD_UM / mpp)), w, h)
    fields: list[dict[str, Any] | None] = []
    for x0, y0 in field_origins(mask, down, w, h, field_px, n_fields):
        region = slide.read_region((x0, y0), 0, (min(field_px, w - x0), min(field_px, h - y0)))
        try:
            fields.append(measure_field(region, mpp, scale_side_px))
        except ValueError:
            fields.append(None)
    return fields


def measure_quality(slide: Slide, mask: np.ndarray, down: float, n_fields: int = GATE_FIELDS) -> dict[str, Any]:
    """The gate's measurements of a slide (see the module docstring)."""
    fields = measure_fields(slide, mask, down, n_fields)
    return summarise_fields(fields, float(slide.mpp)) | {"storage": read_storage(slide.path)}


def model_evidence(classifier: Any) -> dict[str, Any]:
    """What the gate takes from a classifier (see :func:`add_model_evidence`): its ``ood.json`` and
    its ``model.json``'s ``validated_storage``, either None when it has none."""
    return {
        "ood": getattr(classifier, "ood_stats", None),
        "validated_storage": (getattr(classifier, "meta", None) or {}).get("validated_storage"),
    }


def add_model_evidence(quality: dict[str, Any], energies: list[float | None], model: dict[str, Any] | None) -> None:
    """Add what the gate needs from the classifier to a slide's measurements, in place: the
    out-of-distribution score of its crops (``quality["ood"]``, from the model's ``ood.json``) and
    the storage the model was validated on beside the slide's measured storage
    (``quality["storage"]["validated"]``, the model's ``validated_storage``; None when it records none).

    Args:
        model: ``{"ood": ood.json or None, "validated_storage": ... or None}`` of the classifier that
            labelled the crops (None: neither is known).
    """
    model = model or {}
    ood = ood_summary(energies, model.get("ood"))
    if ood is not None:
        quality["ood"] = ood
    if isinstance(quality.get("storage"), dict):
        quality["storage"]["validated"] = model.get("validated_storage")


def ood_summary(energies: list[float | None], stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """The slide's out-of-distribution score from its white-cell crops' energies.

    Args:
        energies: ``-logsumexp(logits)`` per crop (None where the model gives none).
        stats: the model's ``ood.json`` (``energy_threshold``: the per-crop cut-off, the
            ``crop_quantile`` of the training crops' energies).

    Returns:
        ``{"crops", "median_energy", "share_above", "energy_threshold"}``, or None when the model
        has no OOD statistics or no crop has an energy.
    """
    e = np.array([x for x in energies if x is not None], dtype=float)
    if stats is None or len(e) == 0:
        return None
    thr = float(stats["energy_threshold"])
    return {
        "crops": len(e),
        "median_energy": round(float(np.median(e)), 4),
        "share_above": round(float((e > thr).mean()), 4),
        "energy_threshold": thr,
    }
