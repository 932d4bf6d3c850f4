"""Is a slide stored, and scanned, as its classifier was validated? The rules behind
STORAGE_UNVALIDATED and SCALE_UNVALIDATED.

The slide's storage is measured (:mod:`hematovision.core.slide_storage`: compression and, for JPEG,
the quality from its own tables); what the model was validated on is its ``model.json``'s
``validated_storage``::

    {"jpeg_quality_min": [{"up_to_mpp": 0.275, "quality": 85},
                          {"up_to_mpp": 0.55, "quality": null}], ...}

A row holds for slides whose µm/px is at most ``up_to_mpp`` (the first such row); its ``quality`` is
the lowest JPEG quality validated at that scale, ``null`` none. Beyond the last row no JPEG is
validated. JPEG 2000 is judged the same way on its measured rate: ``jpeg2000_bpp_min`` rows carry
``bpp``, the fewest bits per pixel validated at that scale (the slide's rate is read from its tile
sizes); a model without such rows was never measured on JPEG 2000, and such a slide does not pass.
Lossless storage is what the model was trained and validated on (crops of PBC's lossless images) and
always passes; other lossy schemes were never measured and do not.

:func:`judge_storage` returns a :class:`StorageVerdict`: ``outside`` with a message and evidence, or
``not_judged`` with the reason when the storage or the model's record is missing, so the report says
the check could not run rather than staying silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STORAGE_CODE = "STORAGE_UNVALIDATED"
SCALE_CODE = "SCALE_UNVALIDATED"


@dataclass(frozen=True)
class StorageVerdict:
    """The outcome of the storage rule on one slide."""

    outside: bool = False
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    #: Why the rule could not be judged (None when it was).
    not_judged: str | None = None


@dataclass(frozen=True)
class _Measure:
    """How one lossy storage is judged: the slide's measured value (``field`` of the storage record),
    the model's floor rows (``rows``, each with ``row_key``), the evidence key and the words."""

    name: str
    field: str
    rows: str
    row_key: str
    evidence_key: str
    what: str  # what could not be measured
    stored: str  # the slide's storage, formatted with its value
    validated_from: str  # the floor, formatted with its value
    none_validated: str
    cast: type = float


_MEASURES = {
    "jpeg": _Measure(
        "JPEG",
        "jpeg_quality",
        "jpeg_quality_min",
        "quality",
        "validated_min_quality",
        "quality",
        "JPEG quality {:d}",
        "validated from quality {:d}",
        "no JPEG quality was validated",
        int,
    ),
    "jpeg2000": _Measure(
        "JPEG 2000",
        "jpeg2000_bpp",
        "jpeg2000_bpp_min",
        "bpp",
        "validated_min_bpp",
        "rate",
        "JPEG 2000 at {:.2f} bits per pixel",
        "validated from {:g} bits per pixel",
        "no JPEG 2000 rate was validated",
    ),
}


def _floor(measure: _Measure, validated: dict[str, Any], mpp: float) -> Any:
    """The floor of ``measure`` in the first of the model's rows that holds at ``mpp`` µm/px (None:
    nothing of that storage validated there)."""
    for row in validated.get(measure.rows) or []:
        if mpp <= float(row["up_to_mpp"]):
            value = row.get(measure.row_key)
            return None if value is None else measure.cast(value)
    return None


def judge_storage(
    storage: dict[str, Any] | None, validated: dict[str, Any] | None, mpp: float | None
) -> StorageVerdict:
    """Compare the slide's measured ``storage`` with the model's ``validated`` storage at ``mpp``.

    Args:
        storage: :func:`hematovision.core.slide_storage.read_storage`'s result (None: an analysis
            made before storage was measured; nothing is judged or said).
        validated: the model's ``validated_storage`` (None: the model records none).
        mpp: the scale the slide was analysed at.
    """
    if storage is None:
        return StorageVerdict()
    kind = storage.get("compression")
    if kind == "lossless":
        return StorageVerdict()
    if kind not in ("jpeg", "jpeg2000", "other"):
        return StorageVerdict(not_judged=f"how the slide stores its pixels could not be read ({storage.get('source')})")
    if validated is None:
        return StorageVerdict(not_judged=f"the classifier records no validated slide storage; this slide is {kind}")
    evidence: dict[str, Any] = {"compression": kind, "mpp": mpp}
    measure = _MEASURES.get(kind)
    if measure is None or validated.get(measure.rows) is None:  # never measured on this storage
        return StorageVerdict(
            True,
            f"The slide is stored as {kind.upper()}, a lossy compression the classifier was not validated on: "
            "the differential is not valid until reviewed.",
            evidence,
        )
    value = storage.get(measure.field)
    if value is None or mpp is None:
        return StorageVerdict(
            not_judged=f"the slide is stored as {measure.name} but its {measure.what} could not be measured"
        )
    floor = _floor(measure, validated, float(mpp))
    evidence |= {measure.field: value, measure.evidence_key: floor}
    if floor is not None and float(value) >= floor:
        return StorageVerdict()
    at = f"at {float(mpp):g} µm/px"
    limit = measure.none_validated if floor is None else measure.validated_from.format(floor)
    return StorageVerdict(
        True,
        f"The slide is stored as {measure.stored.format(measure.cast(value))} {at}; {limit} {at} (the classifier loses "
        "accuracy on compressed scans, most for immature granulocytes): the differential is not valid until reviewed.",
        evidence,
    )


def validated_max_mpp(validated: dict[str, Any] | None) -> float | None:
    """The coarsest scan scale the model's record covers: the largest ``up_to_mpp`` of its rows (each
    row was measured on crops rescanned at its ``scan_mpp``, uncompressed as well as stored, and holds
    up to 1.1 times it); None when the model records none."""
    rows = [row for m in _MEASURES.values() for row in (validated or {}).get(m.rows) or []]
    return max((float(row["up_to_mpp"]) for row in rows), default=None)


def judge_scale(validated: dict[str, Any] | None, mpp: float | None) -> StorageVerdict:
    """Is the slide's scale one the classifier was validated at? A scan coarser than the model's
    record (:func:`validated_max_mpp`) is ``outside`` whatever its storage: each white cell is drawn
    in fewer pixels than the classifier was ever measured on. Lossless storage passes the storage
    rule; this rule is what keeps a lossless 10x scan from passing silently."""
    limit = validated_max_mpp(validated)
    if limit is None:
        return StorageVerdict(not_judged="the classifier records no validated scan scales")
    if mpp is None:
        return StorageVerdict(not_judged="the slide's µm/px is unknown")
    if float(mpp) <= limit:
        return StorageVerdict()
    return StorageVerdict(
        True,
        f"The slide is at {float(mpp):g} µm/px; the classifier was validated on scans up to {limit:g} µm/px "
        "(a coarser scan draws each white cell in fewer pixels than it was ever measured on): the differential "
        "is not valid until reviewed.",
        {"stated_mpp": float(mpp), "validated_max_mpp": limit},
    )
