"""LIS export: one HL7 v2.5.1 ORU^R01 (unsolicited observation result) message per signed-off slide.

The message is built element by element with hl7apy (a maintained HL7 v2 library), never by string
concatenation, and the segment order follows the ORU_R01 structure of HL7 v2.5.1. Every value that
comes from users or data (ids, names, file names, flag messages, model names, the caller's
parameters) goes through :func:`escape` first: the delimiters ``| ^ ~ \\ &`` become the escape
sequences ``\\F\\ \\S\\ \\R\\ \\E\\ \\T\\``, and CR, LF and every other control character become a
hexadecimal escape (``\\X0D\\``), so no value can end a field, a component or a segment:

    MSH
    PID                 PID-3 ``ID^^^authority^MR`` (the slide id as a placeholder ``ACSN`` without
                        a patient id), PID-7 birth date, PID-8 sex (from the slide's order)
    ORC                 RE; ORC-2/3 the accession
    OBR                 the differential panel; OBR-2 and OBR-3 the accession (the slide id without
                        one), OBR-7 the collection time
    NTE*                flags, rules not evaluated, sufficiency, model and rules version, verifier,
                        unidentified white cells (a note: never an OBX), the limits statement
    { OBX  NTE }        one OBX per differential class: percent, LOINC from ``result_codes.toml``
                        (local ``HV-…`` code as the alternate), OBX-7 the lab's limit for the age
                        partition (from the flag rules), OBX-8 H/L/N or HH/LL beyond a critical
                        limit; its NTE carries the count and the exact 95 % interval
    { OBX  NTE }        with a WBC count: absolute counts (10*9/L), same codes and flags
    OBX  OBX            classified white cells; NRBC per 100 white cells (58413-6)
    SPM                 SPM-2 accession & slide id, SPM-17 collection time

- **Result status.** Only a signed-off report is sent (final, ``F``; a released amendment is a
  corrected result, ``C``, with its reason in an NTE); an unverified one raises
  :class:`PreliminaryRefused` unless ``allow_preliminary`` (setting ``hl7_allow_preliminary``), and
  is then marked preliminary (``P``).
- **Reference intervals.** OBX-7 is the rules file's (non-critical) limit for the patient's age
  partition (``0-50`` for lymphocytes in adults), not the 95 % interval of the count (that is in the
  NTE). Blasts have no limit (no OBX-7; any blast is flagged by the rules instead).
- **Verifier.** OBX-16 (XCN ``username^family^given``) and an NTE. Never an API key.
- **Codes.** LOINC where the code map has one; blasts counted by a reviewer use the manual code
  (709-6), otherwise 26446-5; immature granulocytes # and blasts # keep local codes.
- **Character set.** MSH-18 ``UNICODE UTF-8``, or ASCII transliteration with ``ascii_only=True``.
"""

from __future__ import annotations

import tomllib
import unicodedata
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hl7apy.core import Field, Message, Segment

from hematovision.core.flags import load_rules, not_evaluated_lines

HL7_VERSION = "2.5.1"
#: The shipped observation-code map (LOINC per class), beside the flag rules.
DEFAULT_RESULT_CODES = Path(__file__).resolve().parent.parent / "core" / "result_codes.toml"


class PreliminaryRefused(ValueError):
    """An unverified report asked for as HL7 while preliminary messages are not allowed."""


def load_result_codes(path: Path | None = None) -> dict[str, Any]:
    """The observation-code map (``result_codes.toml``: LOINC per class, percent and absolute)."""
    with open(path or DEFAULT_RESULT_CODES, "rb") as fh:
        return tomllib.load(fh)


def reference_interval(
    rules: dict[str, Any], cls: str, partition: str, *, absolute: bool
) -> tuple[float | None, float | None, float | None, float | None]:
    """(low, high, critical low, critical high) of a class from the lab's flag rules, for the age
    partition: the limits of the non-critical rules make OBX-7, the critical ones HH/LL."""
    low = high = crit_low = crit_high = None
    section = rules.get("absolute" if absolute else "relative", {})
    for rule in section.values():
        if rule.get("class") != cls:
            continue
        key = "limit" if absolute else "high_pct"
        value = float((rule.get("by_age") or {}).get(partition, rule[key]))
        is_low = absolute and rule.get("direction") == "low"
        if rule.get("severity") == "critical":
            if is_low:
                crit_low = value
            else:
                crit_high = value
        elif is_low:
            low = value
        else:
            high = value
    return low, high, crit_low, crit_high


def abnormal_flag(value: float, interval: tuple[float | None, float | None, float | None, float | None]) -> str:
    """OBX-8 (HL7 table 0078): ``LL``/``HH`` beyond a critical limit, ``L``/``H`` beyond the
    interval, ``N`` inside it, empty when the lab states no interval for the result."""
    low, high, crit_low, crit_high = interval
    if crit_low is not None and value < crit_low:
        return "LL"
    if crit_high is not None and value > crit_high:
        return "HH"
    if low is not None and value < low:
        return "L"
    if high is not None and value > high:
        return "H"
    return "N" if (low, high) != (None, None) else ""


#: Cells that are abnormal in peripheral blood whatever their share: OBX-8 ``A``, or ``AA`` when a
#: critical flag of theirs was raised (HL7 table 0078).
PRESENCE_ABNORMAL = {"blast": ("BLASTS", "SUSPECTED_ACUTE_LEUKEMIA", "BLASTS_PRESENT")}


def _presence_flag(cls: str, entry: dict[str, Any], report: dict[str, Any]) -> str:
    codes = PRESENCE_ABNORMAL.get(cls)
    if not codes or not entry.get("count"):
        return ""
    critical = any(
        f.get("code", "").removesuffix("_BORDERLINE") in codes and f.get("severity") == "critical"
        for f in report.get("flags", [])
    )
    return "AA" if critical else "A"


def range_text(interval: tuple[float | None, float | None, float | None, float | None]) -> str:
    """OBX-7 text of an interval (``0-50``, ``1-20``, ``>1``); empty when the lab states none."""
    low, high = interval[0], interval[1]
    if low is None and high is None:
        return ""
    if high is None:
        return f">{_number(low)}" if low is not None else ""
    return f"{_number(low if low is not None else 0.0)}-{_number(high)}"


#: Media type used by the API for ER7-encoded messages.
HL7_MEDIA_TYPE = "x-application/hl7-v2+er7"
_ASCII = {"≥": ">=", "≤": "<=", "–": "-", "—": "-", "×10⁹": "x10^9", "×": "x", "µ": "u", "⁹": "^9"}


def _text(value: Any, ascii_only: bool) -> str:
    text = "" if value is None else str(value)
    if not ascii_only:
        return text
    for k, v in _ASCII.items():
        text = text.replace(k, v)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
#: While the message is built, a hexadecimal escape is held between these two private-use
#: characters: hl7apy would otherwise escape its backslashes again (it keeps only the escape
#: sequences it knows, \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\H\\ \\N\\). They become ``\\X`` and ``\\`` at the end.
_HEX_OPEN, _HEX_CLOSE = "\ue000", "\ue001"


def _needs_hex(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029" or ch in (_HEX_OPEN, _HEX_CLOSE)


def _escaped(text: str, hex_open: str, hex_close: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _needs_hex(ch):
            out.append(f"{hex_open}{ch.encode('utf-8').hex().upper()}{hex_close}")
        else:
            out.append(ch)
    return "".join(out)


def escape(text: str) -> str:
    """ER7-escape one value with the default delimiters: ``\\`` -> ``\\E\\``, ``|`` -> ``\\F\\``,
    ``^`` -> ``\\S\\``, ``&`` -> ``\\T\\``, ``~`` -> ``\\R\\``, and CR, LF and any other control
    character (C0, DEL, C1, U+2028/U+2029) -> ``\\Xhh…\\`` (its UTF-8 bytes in hexadecimal)."""
    return _escaped(text, "\\X", "\\")


def _protected(text: str) -> str:
    """:func:`escape` for a value handed to hl7apy (hexadecimal escapes held by placeholders)."""
    return _escaped(text, _HEX_OPEN, _HEX_CLOSE)


def _finish(er7: str) -> str:
    return er7.replace(_HEX_OPEN, "\\X").replace(_HEX_CLOSE, "\\")


def _set(field: Field, *components: Any) -> None:
    """Fill a field's components (1-based order) with escaped text; ``None`` leaves one empty."""
    name = field.name.lower()
    for i, value in enumerate(components, start=1):
        if value is None or value == "":
            continue
        setattr(field, f"{name}_{i}", _protected(str(value)))


def _hl7_time(value: str | datetime | None) -> str:
    """HL7 DTM (``YYYYMMDDHHMMSS+0000``) of an ISO time (naive times are UTC, as stored)."""
    if value is None:
        dt = datetime.now(UTC)
    elif isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _class_code(cls: str) -> str:
    return "HV-" + "".join(ch for ch in cls.upper() if ch.isalnum())[:16]


def _class_text(cls: str) -> str:
    return {"ig": "Immature granulocytes", "unidentified": "Unidentified white cells"}.get(
        cls, cls.replace("_", " ").capitalize() + ("s" if not cls.endswith("s") else "")
    )


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def split_name(full_name: str) -> tuple[str, str]:
    """(family, given) of a person's full name: ``"Doe, Jane"`` -> ("Doe", "Jane"); otherwise the
    last word is the family name (``"Jane Q. Doe"`` -> ("Doe", "Jane Q."))."""
    name = " ".join(full_name.split())
    if "," in name:
        family, given = name.split(",", 1)
        return family.strip(), given.strip()
    given, _, family = name.rpartition(" ")
    return family, given


def verifier(report: dict[str, Any]) -> tuple[str, str, str] | None:
    """(id, family, given) of the person who signed the report off, or None when unsigned."""
    if not report.get("verified_by"):
        return None
    sig = report.get("signature") or {}
    name = str(sig.get("name") or report["verified_by"])
    family, given = split_name(name)
    return str(sig.get("username") or report.get("verified_by_id") or ""), family, given


class _Builder:
    """Keeps the running set ids of OBX and NTE segments while the message is filled."""

    def __init__(
        self, ascii_only: bool, status: str, model: str, observed: str, observer: tuple[str, str, str] | None
    ) -> None:
        self.ascii_only, self.status, self.model, self.observed = ascii_only, status, model, observed
        self.observer = observer
        self.obx_id = 0

    def nte(self, group: Any, set_id: int, text: str) -> None:
        seg: Segment = group.add_segment("NTE")
        seg.nte_1 = str(set_id)
        seg.nte_2 = "L"  # source: the filler (ancillary department)
        _set(seg.nte_3, _text(text, self.ascii_only))

    def obx(
        self,
        order: Any,
        code: str,
        text: str,
        value: str,
        units: tuple[str, str] | None,
        *,
        loinc: str | None = None,
        reference: str = "",
        abnormal: str = "",
    ) -> Any:
        self.obx_id += 1
        obs = order.add_group("ORU_R01_OBSERVATION")
        seg = obs.obx
        seg.obx_1 = str(self.obx_id)
        seg.obx_2 = "NM"
        if loinc:  # CWE: LOINC first, the local code as the alternate
            _set(seg.obx_3, loinc, _text(text, self.ascii_only), "LN", code, _text(text, self.ascii_only), "L")
        else:
            _set(seg.obx_3, code, _text(text, self.ascii_only), "L")
        seg.obx_5 = _protected(value)
        if units:
            _set(seg.obx_6, units[0], units[1], "UCUM")
        _set(seg.obx_7, reference)
        _set(seg.obx_8, abnormal)
        seg.obx_11 = self.status
        seg.obx_14 = self.observed
        if self.observer is not None:  # OBX-16 responsible observer (XCN): id^family^given
            ident, family, given = self.observer
            _set(seg.obx_16, ident, _text(family, self.ascii_only), _text(given, self.ascii_only))
        _set(seg.obx_18, self.model, "HEMATOVISION")
        seg.obx_19 = self.observed
        return obs


#: Red-cell findings are sent with local codes (coding system L): no LOINC code for a morphology
#: finding as a percentage of red cells was verified here (docs/clinical_rules.md).
RBC_CODE_PREFIX = "HV-RBC-"


def _red_cell_obx(b: _Builder, order: Any, section: dict[str, Any] | None) -> None:
    """One OBX per graded red-cell finding and the schistocyte percentage (always, when the section
    was evaluated), percent of named red cells, OBX-8 ``A`` when graded/flagged; NTE: count, CI, grade."""
    if not section or section.get("status") not in ("ok", "insufficient"):
        return  # the order's notes say why
    n = section.get("n_classified", 0)
    for cls, f in (section.get("findings") or {}).items():
        is_schisto = cls == "schistocyte"
        if not (f.get("grade") or is_schisto):
            continue
        graded = bool(f.get("grade")) and not is_schisto
        abnormal = "A" if graded or (is_schisto and f["ci95"][1] >= 1.0) else ""
        obs = b.obx(
            order,
            RBC_CODE_PREFIX + cls.upper(),
            f"{cls.capitalize()}s/100 red cells" if not cls.endswith("ia") else f"{cls.capitalize()}/100 red cells",
            _number(f["percent"]),
            ("%", "percent"),
            abnormal=abnormal,
        )
        grade = f"; ICSH 2015 grade {f['grade']}" if graded else ""
        b.nte(
            obs,
            1,
            f"{f['count']} of {n} named red cells; 95% CI {_number(f['ci95'][0])}-{_number(f['ci95'][1])} %{grade}.",
        )


def oru_r01(
    report: dict[str, Any],
    *,
    sending_facility: str = "HEMATOVISION",
    sending_application: str = "HEMATOVISION",
    receiving_application: str | None = None,
    receiving_facility: str | None = None,
    patient_id: str | None = None,
    placer_order: str | None = None,
    control_id: str | None = None,
    processing_id: str = "P",
    ascii_only: bool = False,
    allow_preliminary: bool = False,
    rules: dict[str, Any] | None = None,
    codes: dict[str, Any] | None = None,
) -> str:
    """Build the ORU^R01 (v2.5.1) message of one slide report.

    Args:
        report: the slide report dictionary (``hematovision.service.slide_results.build_report``; optionally with
            ``analysed_at``, ``verified_by``, ``verified_by_id``, ``verified_at``, ``signature``,
            ``order`` (``OrderInfo.to_dict()``: accession, patient, birth date, sex, collection)).
        sending_facility: MSH-4, and the assigning authority of the placeholder patient id.
        sending_application: MSH-3.
        receiving_application: MSH-5 (the LIS), if the interface needs it.
        receiving_facility: MSH-6.
        patient_id: overrides the order's patient identifier (PID-3).
        placer_order: overrides the order's accession (OBR-2/ORC-2).
        control_id: MSH-10; a new random id when not given (it must be unique per message).
        processing_id: MSH-11: ``P`` production, ``T`` training, ``D`` debugging.
        ascii_only: transliterate free text to ASCII instead of declaring UTF-8.
        allow_preliminary: send an unverified report (result status ``P``); otherwise it is refused
            (:class:`PreliminaryRefused`): only a signed-off report goes out, as final (``F``).
        rules: the lab's flag rules (OBX-7 reference intervals, OBX-8); the shipped ones by default.
        codes: the observation-code map (:func:`load_result_codes`); the shipped one by default.

    Returns:
        The message in ER7 encoding, segments separated by ``\\r``.
    """
    if not report.get("verified_by") and not allow_preliminary:
        raise PreliminaryRefused(
            f"slide {report.get('slide_id')} is not signed off: its results may not be sent as HL7 "
            "(preliminary messages are disabled: HEMATOVISION_HL7_ALLOW_PRELIMINARY)"
        )
    rules = rules or load_rules()
    codes = codes or load_result_codes()
    class_codes: dict[str, dict[str, str]] = codes.get("classes", {})
    order_info: dict[str, Any] = report.get("order") or {}
    partition = str(report.get("age_partition") or rules["age_partitions"]["default"])
    slide_id = str(report["slide_id"])
    verified = bool(report.get("verified_by"))
    # A released amendment replaces a final result the LIS holds: a corrected result (HL7 table 0085).
    status = ("C" if report.get("result_status") == "amended" else "F") if verified else "P"
    model = report.get("model") or {}
    model_text = f"{model.get('name', '?')} {model.get('version', '?')}"
    observed = _hl7_time(report.get("analysed_at") or report.get("generated_at"))
    observer = verifier(report)
    b = _Builder(ascii_only, status, model_text, observed, observer)

    msg = Message("ORU_R01", version=HL7_VERSION)
    _set(msg.msh.msh_3, sending_application)
    _set(msg.msh.msh_4, sending_facility)
    _set(msg.msh.msh_5, receiving_application)
    _set(msg.msh.msh_6, receiving_facility)
    msg.msh.msh_7 = _hl7_time(None)
    msg.msh.msh_9 = "ORU^R01^ORU_R01"
    msg.msh.msh_10 = _protected(control_id or uuid.uuid4().hex[:20])
    msg.msh.msh_11 = _protected(processing_id)
    if not ascii_only:
        msg.msh.msh_18 = "UNICODE UTF-8"

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    patient_id = patient_id or order_info.get("patient_id") or report.get("patient_id")
    if patient_id:  # CX: ID^^^assigning authority^MR
        _set(pid.pid_3, patient_id, None, None, order_info.get("assigning_authority"), "MR")
    else:
        _set(pid.pid_3, slide_id, None, None, sending_facility, "ACSN")
    pid.pid_5 = '""'  # HL7's explicit null: the name is required, and unknown here
    if order_info.get("birth_date"):
        pid.pid_7 = str(order_info["birth_date"]).replace("-", "")
    if order_info.get("sex"):
        _set(pid.pid_8, order_info["sex"])

    accession = placer_order or order_info.get("accession")
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = order.orc
    orc.orc_1 = "RE"  # observations to follow
    _set(orc.orc_2, accession)
    _set(orc.orc_3, accession or slide_id, sending_facility)
    orc.orc_5 = "CM"  # order status: completed
    obr = order.obr
    obr.obr_1 = "1"
    _set(obr.obr_2, accession)  # placer order number: the lab's accession
    _set(obr.obr_3, accession or slide_id, sending_facility)  # filler order number
    _set(obr.obr_4, "HV-DIFF", "White cell differential (digital morphology)", "L")
    obr.obr_7 = _hl7_time(order_info["collected_at"]) if order_info.get("collected_at") else observed
    obr.obr_22 = _hl7_time(report.get("verified_at") or report.get("generated_at"))
    obr.obr_24 = "HM"  # diagnostic service section: hematology
    obr.obr_25 = status

    notes = [f"FLAG [{f['severity']}] {f['code']}: {f['message']}" for f in report.get("flags", [])]
    if not notes:
        notes.append("No flags raised by the rules.")
    notes += [f"NOT EVALUATED {line}" for line in not_evaluated_lines(report.get("rules_not_evaluated"))]
    n_wbc = report.get("counts", {}).get("wbc", 0)
    unidentified = ""
    if report.get("unidentified_percent") is not None:
        unidentified = (
            f"; {report.get('unidentified', 0)} unidentified ({report['unidentified_percent']}% of "
            f"{report['counts'].get('wbc_seen', '?')} seen), not in the denominator"
        )
    notes.append(
        f"Differential {'sufficient' if report.get('differential_sufficient') else 'INSUFFICIENT'}: "
        f"{n_wbc} classified white cells{unidentified}."
    )
    if report.get("differential_valid") is False:
        notes.append(f"Differential NOT VALID for release until reviewed: {report.get('differential_invalid_reason')}.")
    digest = f" (SHA-256 {report['rules_sha256']})" if report.get("rules_sha256") else ""
    notes.append(
        f"Model {model_text}; flag rules {report.get('rules_version')}{digest}; "
        f"intervals: {report.get('ci_method', 'exact binomial 95%')}."
    )
    if observer is not None:
        meaning = (report.get("signature") or {}).get("meaning")
        who = f"{report['verified_by']} (ID {observer[0]})" if observer[0] else str(report["verified_by"])
        notes.append(f"Verified by {who} at {report.get('verified_at', '?')}" + (f": {meaning}." if meaning else "."))
    else:
        notes.append(
            "Awaiting a pathologist's signature: preliminary result."
            if report.get("result_status") == "awaiting_pathologist"
            else "Not yet verified by a technologist: preliminary result."
        )
    releasing = report.get("signature") or {}
    for sig in report.get("signatures") or []:
        if observer is not None and (sig.get("username"), sig.get("signed_at")) == (
            releasing.get("username"),
            releasing.get("signed_at"),
        ):
            continue  # the releasing signature: the note above
        notes.append(
            f"Signed by {sig.get('name')} ({sig.get('role')}) at {sig.get('signed_at')}: {sig.get('meaning')}."
        )
    if report.get("signoff_reason"):
        notes.append(f"Insufficient differential released because: {report['signoff_reason']}")
    amendment = report.get("amendment") or {}
    if amendment:
        notes.append(
            f"{'Corrected result' if status == 'C' else 'Amendment in progress'} (version {amendment.get('version')}): "
            f"amended by {amendment.get('amended_by')} at {amendment.get('amended_at')} because: "
            f"{amendment.get('reason')}; replaces the result verified by {amendment.get('previous_verified_by')} "
            f"at {amendment.get('previous_verified_at')}."
        )
    notes.append(str(report.get("limits") or "Decision support only: review by a qualified technologist."))
    if report.get("unidentified_percent") is not None:  # a note, never a result (OBX)
        notes.append(
            f"Unidentified white cells: {report.get('unidentified', 0)} ({report['unidentified_percent']}% of all "
            "seen); not reported as a result."
        )
    rbc = report.get("rbc_morphology")
    if rbc:
        notes.append(
            f"Red-cell morphology: {rbc.get('status')}"
            + (f" ({rbc.get('reason')})" if rbc.get("reason") else "")
            + (
                f"; {rbc.get('n_classified')} named red cells, local codes HV-RBC-*."
                if rbc.get("n_classified")
                else "."
            )
        )
    for i, text in enumerate(notes, start=1):
        b.nte(order, i, text)

    manual = bool(report.get("reviewed_cells"))  # a reviewer's labels: a manual count
    for cls, d in report.get("differential", {}).items():
        if cls == "unidentified":
            continue  # unidentified cells are a note, never a result
        entry = class_codes.get(cls, {})
        interval = reference_interval(rules, cls, partition, absolute=False)
        obs = b.obx(
            order,
            _class_code(cls),
            _class_text(cls),
            _number(d["percent"]),
            ("%", "percent"),
            loinc=(entry.get("loinc_manual") if manual else None) or entry.get("loinc") or None,
            reference=range_text(interval),
            abnormal=abnormal_flag(float(d["percent"]), interval) or _presence_flag(cls, d, report),
        )
        lo, hi = d["ci95"]
        b.nte(obs, 1, f"{d['count']} of {n_wbc} classified white cells; 95% CI {_number(lo)}-{_number(hi)} %.")
    for cls, a in (report.get("absolute_10e9_per_l") or {}).items():
        interval = reference_interval(rules, cls, partition, absolute=True)
        obs = b.obx(
            order,
            _class_code(cls) + "#",
            _class_text(cls) + " (absolute)",
            _number(a["value"]),
            ("10*9/L", "10^9/L"),
            loinc=class_codes.get(cls, {}).get("loinc_abs") or None,
            reference=range_text(interval),
            abnormal=abnormal_flag(float(a["value"]), interval),
        )
        b.nte(obs, 1, f"95% CI {_number(a['ci95'][0])}-{_number(a['ci95'][1])} x10^9/L (WBC given x proportion).")
    b.obx(order, "HV-WBCN", "Classified white cells", str(n_wbc), ("{cells}", "cells"))
    if report.get("nrbc_per_100_wbc") is not None:
        b.obx(
            order,
            "HV-NRBC100",
            "Nucleated red cells per 100 white cells",
            _number(report["nrbc_per_100_wbc"]),
            ("/100{WBCs}", "per 100 WBC"),
            loinc=(codes.get("other") or {}).get("nrbc_per_100_wbc") or None,
        )
    _red_cell_obx(b, order, report.get("rbc_morphology"))
    spm = order.add_group("ORU_R01_SPECIMEN").spm
    spm.spm_1 = "1"
    _set(spm.spm_2, accession or slide_id, slide_id)  # EIP: the accession (placer) and the slide (filler)
    _set(spm.spm_4, "BLD", "Whole blood", "HL70487")
    if order_info.get("collected_at"):
        spm.spm_17 = _hl7_time(order_info["collected_at"])
    return _finish(str(msg.to_er7()))
