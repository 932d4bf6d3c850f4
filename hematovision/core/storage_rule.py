"""Is a slide stored as its classifier was validated? The rule behind STORAGE_UNVALIDATED.

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


@dataclass(frozen=True)
class StorageVerdict:
    """The outcome of the storage rule on one slide."""

    outside: bool = False
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    #: Why the rule could not be judged (None when it was).
    not_judged: str | None = None


def _floor(rows: list[dict[str, Any]] | None, key: str, mpp: float) -> float | None:
    """The ``key`` of the first of ``rows`` that holds at ``mpp`` µm/px (None: nothing validated)."""
    for row in rows or []:
        if mpp <= float(row["up_to_mpp"]):
            value = row.get(key)
            return None if value is None else float(value)
    return None


def jpeg_floor(validated: dict[str, Any], mpp: float) -> int | None:
    """The lowest JPEG quality the model was validated on at ``mpp`` µm/px (None: no JPEG)."""
    q = _floor(validated.get("jpeg_quality_min"), "quality", mpp)
    return None if q is None else int(q)


def jpeg2000_floor(validated: dict[str, Any], mpp: float) -> float | None:
    """The fewest JPEG 2000 bits per pixel the model was validated on at ``mpp`` µm/px (None: none)."""
    return _floor(validated.get("jpeg2000_bpp_min"), "bpp", mpp)


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
    if kind == "jpeg2000" and validated.get("jpeg2000_bpp_min") is not None:
        return _judge_jpeg2000(storage, validated, mpp, evidence)
    if kind != "jpeg":
        return StorageVerdict(
            True,
            f"The slide is stored as {kind.upper()}, a lossy compression the classifier was not validated on: "
            "the differential is not valid until reviewed.",
            evidence,
        )
    quality = storage.get("jpeg_quality")
    if quality is None or mpp is None:
        return StorageVerdict(not_judged="the slide is stored as JPEG but its quality could not be measured")
    floor = jpeg_floor(validated, float(mpp))
    evidence |= {"jpeg_quality": quality, "validated_min_quality": floor}
    if floor is not None and quality >= floor:
        return StorageVerdict()
    at = f"at {float(mpp):g} µm/px"
    limit = f"validated from quality {floor}" if floor is not None else "no JPEG quality was validated"
    return StorageVerdict(
        True,
        f"The slide is stored as JPEG quality {quality} {at}; {limit} {at} (the classifier loses accuracy on "
        "compressed scans, most for immature granulocytes): the differential is not valid until reviewed.",
        evidence,
    )


def _judge_jpeg2000(
    storage: dict[str, Any], validated: dict[str, Any], mpp: float | None, evidence: dict[str, Any]
) -> StorageVerdict:
    """The JPEG 2000 rule for a model measured on JPEG 2000 (its ``jpeg2000_bpp_min`` rows)."""
    bpp = storage.get("jpeg2000_bpp")
    if bpp is None or mpp is None:
        return StorageVerdict(not_judged="the slide is stored as JPEG 2000 but its rate could not be measured")
    floor = jpeg2000_floor(validated, float(mpp))
    evidence |= {"jpeg2000_bpp": bpp, "validated_min_bpp": floor}
    if floor is not None and float(bpp) >= floor:
        return StorageVerdict()
    at = f"at {float(mpp):g} µm/px"
    limit = f"validated from {floor:g} bits per pixel" if floor is not None else "no JPEG 2000 rate was validated"
    return StorageVerdict(
        True,
        f"The slide is stored as JPEG 2000 at {float(bpp):.2f} bits per pixel {at}; {limit} {at} (the "
        "classifier loses accuracy on compressed scans): the differential is not valid until reviewed.",
        evidence,
    )
