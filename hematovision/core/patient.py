"""What is known of the patient and the order behind a slide, and what the flag rules may use of it.

A slide's order (:class:`OrderInfo`) comes with the submission — a worklist row (CSV column names
:data:`WORKLIST_COLUMNS`) or a JSON ``slides`` entry — or is set later with ``PATCH
/api/v1/slides/<id>`` (before sign-off). :func:`parse_order` is the one place its fields are
checked, for the API and the CLI alike; the white-cell count is in 10⁹/L and must be plausible
(:data:`WBC_10E9_PER_L_RANGE`), so a count given in another unit (``25000`` per µL, ``2.5e10`` per
litre) is refused with a message naming the unit rather than silently disabling the absolute rules.

The flag rules get a :class:`PatientContext` (age at collection, sex, WBC) built from it
(:meth:`OrderInfo.context`). A rule that needs what is missing is listed in the report's
``rules_not_evaluated`` (absolute counts without a WBC count) or falls back to adult intervals.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, date, datetime
from typing import Any

DAYS_PER_YEAR = 365.25
#: Plausible analyser white-cell counts, in 10⁹/L (anything else is a unit error or a typo).
WBC_10E9_PER_L_RANGE = (0.1, 500.0)
#: The columns of a worklist CSV (``file`` matches the slide by file name or path).
WORKLIST_COLUMNS = (
    "file",
    "accession",
    "patient_id",
    "assigning_authority",
    "birth_date",
    "sex",
    "collected_at",
    "wbc_10e9_per_l",
)
#: Also accepted in a JSON ``slides`` entry / PATCH: the age when the birth date is not known.
ORDER_FIELDS = (*WORKLIST_COLUMNS[1:], "age_years")
SEXES = ("F", "M", "O", "U")  # HL7 table 0001 (female, male, other, unknown)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_MAX_ROWS = 10000


class OrderError(ValueError):
    """A worklist row or order field that cannot be taken (the message names field and row)."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OrderInfo:
    """The order and patient of one slide (every field optional; see :data:`WORKLIST_COLUMNS`).

    ``collected_at`` is naive UTC (as every time the database holds); ``age_years`` is given only
    when the birth date is not (else it is computed at collection).
    """

    accession: str | None = None
    patient_id: str | None = None
    assigning_authority: str | None = None
    birth_date: date | None = None
    age_years: float | None = None
    sex: str | None = None
    collected_at: datetime | None = None
    wbc_10e9_per_l: float | None = None

    def age_at_collection(self) -> float | None:
        """Age in years at collection (or now, when the collection time is not known)."""
        if self.birth_date is None:
            return self.age_years
        when = (self.collected_at or datetime.now(UTC).replace(tzinfo=None)).date()
        return round(max(0, (when - self.birth_date).days) / DAYS_PER_YEAR, 4)

    def context(self) -> PatientContext:
        return PatientContext(age_years=self.age_at_collection(), sex=self.sex, wbc_10e9_per_l=self.wbc_10e9_per_l)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (dates as ISO text; ``collected_at`` with ``Z``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, datetime):
                v = v.isoformat(timespec="seconds") + "Z"
            elif isinstance(v, date):
                v = v.isoformat()
            out[f.name] = v
        return out

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def merged(self, changes: OrderInfo, given: set[str]) -> OrderInfo:
        """This order with the ``given`` fields of ``changes`` (None clears a field)."""
        return replace(self, **{k: getattr(changes, k) for k in given})


def _text(raw: Any, name: str, *, pattern: re.Pattern[str] | None = _ID, max_chars: int = 64) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise OrderError(f"'{name}' must be text")
    raw = raw.strip()
    if len(raw) > max_chars or any(unicodedata.category(ch) == "Cc" for ch in raw):
        raise OrderError(f"'{name}' must be at most {max_chars} characters without control characters")
    if pattern is not None and not pattern.fullmatch(raw):
        raise OrderError(f"'{name}' {raw[:40]!r} may hold only letters, digits and . _ : / -")
    return raw


def _date(raw: Any, name: str) -> date | None:
    if raw is None or raw == "":
        return None
    try:
        return date.fromisoformat(str(raw).strip())
    except ValueError:
        raise OrderError(f"'{name}' must be a date YYYY-MM-DD, got {str(raw)[:40]!r}") from None


def _datetime(raw: Any, name: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise OrderError(f"'{name}' must be an ISO 8601 time (2026-12-01T08:30:00Z), got {text[:40]!r}") from None
    if value.tzinfo is None:
        raise OrderError(f"'{name}' must state its time zone (Z or ±hh:mm), got {text[:40]!r}")
    return value.astimezone(UTC).replace(tzinfo=None)


def _number(raw: Any, name: str) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise OrderError(f"'{name}' must be a number")
    try:
        value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
    except ValueError:
        raise OrderError(f"'{name}' must be a number, got {str(raw)[:40]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise OrderError(f"'{name}' must be a finite number")
    return value


def wbc_10e9_per_l(raw: Any, name: str = "wbc_10e9_per_l") -> float | None:
    """A white-cell count in 10⁹/L, refused (naming the unit) outside :data:`WBC_10E9_PER_L_RANGE`."""
    value = _number(raw, name)
    low, high = WBC_10E9_PER_L_RANGE
    if value is not None and not low <= value <= high:
        raise OrderError(
            f"'{name}' is the white-cell count in ×10⁹/L (10^9 cells per litre) and must lie in "
            f"{low:g}..{high:g}; got {value:g} — a count per µL or per litre is in another unit"
        )
    return value


def parse_order(raw: dict[str, Any], *, allowed: tuple[str, ...] = ORDER_FIELDS) -> OrderInfo:
    """Check one order's fields (unknown names refused); raises :class:`OrderError`."""
    extra = sorted(set(raw) - set(allowed))
    if extra:
        raise OrderError(
            f"unknown field(s) {', '.join(repr(str(e)[:40]) for e in extra)}; allowed: {', '.join(allowed)}"
        )
    sex = _text(raw.get("sex"), "sex", pattern=None, max_chars=1)
    if sex is not None:
        sex = sex.upper()
        if sex not in SEXES:
            raise OrderError(f"'sex' must be one of {', '.join(SEXES)} (HL7 table 0001), got {sex!r}")
    age = _number(raw.get("age_years"), "age_years")
    if age is not None and not 0 <= age <= 130:
        raise OrderError(f"'age_years' must lie in 0..130, got {age:g}")
    order = OrderInfo(
        accession=_text(raw.get("accession"), "accession"),
        patient_id=_text(raw.get("patient_id"), "patient_id"),
        assigning_authority=_text(raw.get("assigning_authority"), "assigning_authority"),
        birth_date=_date(raw.get("birth_date"), "birth_date"),
        age_years=age,
        sex=sex,
        collected_at=_datetime(raw.get("collected_at"), "collected_at"),
        wbc_10e9_per_l=wbc_10e9_per_l(raw.get("wbc_10e9_per_l")),
    )
    if order.birth_date is not None:
        if order.age_years is not None:
            raise OrderError("give 'birth_date' or 'age_years', not both")
        latest = (order.collected_at or datetime.now(UTC).replace(tzinfo=None)).date()
        if order.birth_date > latest:
            raise OrderError("'birth_date' is after the collection time")
        if (order.age_at_collection() or 0) > 130:
            raise OrderError("'birth_date' is more than 130 years before collection")
    if order.assigning_authority and not order.patient_id:
        raise OrderError("'assigning_authority' is given without 'patient_id'")
    return order


def parse_worklist(text: str) -> dict[str, OrderInfo]:
    """A worklist CSV (header row with :data:`WORKLIST_COLUMNS`; ``file`` required, others optional)
    as ``{file: order}``. Every bad row is reported at once (``line N: ...``) in one
    :class:`OrderError`; a file named twice is an error."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "file" not in header:
        raise OrderError(
            f"the worklist needs a header row with a 'file' column; columns: {', '.join(WORKLIST_COLUMNS)}"
        )
    unknown = sorted(set(header) - set(WORKLIST_COLUMNS) - {"age_years"})
    if unknown:
        raise OrderError(f"worklist: unknown column(s) {', '.join(unknown)}; columns: {', '.join(WORKLIST_COLUMNS)}")
    reader.fieldnames = header
    orders: dict[str, OrderInfo] = {}
    problems: list[str] = []
    for n, row in enumerate(reader, start=2):
        if n > _MAX_ROWS + 1:
            raise OrderError(f"worklist: more than {_MAX_ROWS} rows")
        if None in row:
            problems.append(f"line {n}: more values than columns")
            continue
        name = (row.pop("file") or "").strip()
        if not name:
            problems.append(f"line {n}: 'file' is empty")
            continue
        if name in orders:
            problems.append(f"line {n}: {name!r} is listed twice")
            continue
        try:
            orders[name] = parse_order({k: v for k, v in row.items() if v not in (None, "")})
        except OrderError as e:
            problems.append(f"line {n} ({name}): {e}")
    if problems:
        raise OrderError("worklist: " + "; ".join(problems[:20]) + (" …" if len(problems) > 20 else ""))
    return orders


def match_order(orders: dict[str, OrderInfo], *names: str) -> OrderInfo | None:
    """The order of a slide known by any of ``names`` (its path as given, its file name)."""
    for name in names:
        if name in orders:
            return orders[name]
    return None
