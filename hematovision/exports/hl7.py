"""LIS export: one HL7 v2.5 ORU^R01 (unsolicited observation result) message per analysed slide.

The message is built element by element with hl7apy (a maintained HL7 v2 library), never by string
concatenation, and the segment order follows the ORU_R01 structure of HL7 v2.5. Every value that
comes from users or data (ids, names, file names, flag messages, model names, the caller's
parameters) goes through :func:`escape` first: the delimiters ``| ^ ~ \\ &`` become the escape
sequences ``\\F\\ \\S\\ \\R\\ \\E\\ \\T\\``, and CR, LF and every other control character become a
hexadecimal escape (``\\X0D\\``), so no value can end a field, a component or a segment (a CR in a
name would otherwise start a second ``MSH``):

    MSH
    PID                 the patient, which HematoVision does not know (see below)
    OBR                 the white-cell differential panel; OBR-3 = the slide id
    NTE*                flags (one per flag), the rules not evaluated (one per reason), differential
                        sufficiency, model and rules version (with the rules' SHA-256), the
                        decision-support statement
    { OBX  NTE }        one OBX per differential class: percent (NM, UCUM ``%``); its NTE carries the
                        count and the exact 95 % interval
    { OBX  NTE }        with a WBC count: one OBX per class, absolute count (10*9/L) and its interval
    OBX  OBX  OBX       classified white cells; unidentified (% of all seen); NRBC per 100 white cells
    SPM                 the specimen (the slide)

Choices a receiving LIS should know about:

- **Patient identity.** A slide reaches HematoVision without a patient identifier. PID-3 is required
  by HL7, so when no ``patient_id`` is given it carries the slide id as a placeholder, typed as an
  accession id (``ACSN``) whose assigning authority is the sending facility — never a medical record
  number (``MR``) — so an interface engine cannot mistake it for a patient. The LIS matches the
  result on OBR-2 (``placer_order``, the lab's accession, when known) or OBR-3/SPM-2 (the slide).
- **The 95 % interval is not a reference range.** OBX-7 is left empty: an LIS shows OBX-7 as the
  normal range and would flag against it. The interval is in the NTE that follows each OBX.
- **Result status.** Unverified results are preliminary (OBR-25 / OBX-11 ``P``); a report that
  carries ``verified_by`` is sent as final (``F``).
- **Verifier.** The person who signed the slide off is the responsible observer of every OBX
  (OBX-16, XCN ``username^family^given``) and is named, with the signature's time and meaning, in
  an NTE. Only a person's name and login id appear: never an API key or any part of one.
- **Codes.** Observation codes are local (coding system ``L``, ``HV-…``); mapping them to LOINC is
  the receiving interface's configuration, not guessed here.
- **Character set.** Flag messages contain ``≥``, ``–`` and superscripts; the message declares
  MSH-18 ``UNICODE UTF-8``. With ``ascii_only=True`` text is transliterated to ASCII instead (for
  interfaces that accept nothing else) and MSH-18 is left empty.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any

from hl7apy.core import Field, Message, Segment

from hematovision.core.flags import not_evaluated_lines

HL7_VERSION = "2.5"
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

    def obx(self, order: Any, code: str, text: str, value: str, units: tuple[str, str] | None) -> Any:
        self.obx_id += 1
        obs = order.add_group("ORU_R01_OBSERVATION")
        seg = obs.obx
        seg.obx_1 = str(self.obx_id)
        seg.obx_2 = "NM"
        _set(seg.obx_3, code, _text(text, self.ascii_only), "L")
        seg.obx_5 = _protected(value)
        if units:
            _set(seg.obx_6, units[0], units[1], "UCUM")
        seg.obx_11 = self.status
        seg.obx_14 = self.observed
        if self.observer is not None:  # OBX-16 responsible observer (XCN): id^family^given
            ident, family, given = self.observer
            _set(seg.obx_16, ident, _text(family, self.ascii_only), _text(given, self.ascii_only))
        _set(seg.obx_18, self.model, "HEMATOVISION")
        seg.obx_19 = self.observed
        return obs


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
) -> str:
    """Build the ORU^R01 message of one slide report.

    Args:
        report: the slide report dictionary (``hematovision.service.slide_results.build_report``; optionally with
            ``analysed_at``, ``verified_by``, ``verified_by_id``, ``verified_at``, ``signature``,
            ``patient_id``).
        sending_facility: MSH-4, and the assigning authority of the placeholder patient id.
        sending_application: MSH-3.
        receiving_application: MSH-5 (the LIS), if the interface needs it.
        receiving_facility: MSH-6.
        patient_id: the patient identifier when the lab supplied one (PID-3, type ``MR``); without
            it the slide id is sent as a placeholder accession id (see the module docstring).
        placer_order: the LIS order/accession number (OBR-2), when known.
        control_id: MSH-10; a new random id when not given (it must be unique per message).
        processing_id: MSH-11: ``P`` production, ``T`` training, ``D`` debugging.
        ascii_only: transliterate free text to ASCII instead of declaring UTF-8.

    Returns:
        The message in ER7 encoding, segments separated by ``\\r``.
    """
    slide_id = str(report["slide_id"])
    verified = bool(report.get("verified_by"))
    status = "F" if verified else "P"
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
    patient_id = patient_id or report.get("patient_id")
    if patient_id:
        _set(pid.pid_3, patient_id, None, None, None, "MR")
    else:
        _set(pid.pid_3, slide_id, None, None, sending_facility, "ACSN")
    pid.pid_5 = '""'  # HL7's explicit null: the name is required, and unknown here

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    _set(obr.obr_2, placer_order)
    _set(obr.obr_3, slide_id, sending_facility)
    _set(obr.obr_4, "HV-DIFF", "White cell differential (digital morphology)", "L")
    obr.obr_7 = observed
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
        notes.append("Not yet verified by a technologist: preliminary result.")
    notes.append(str(report.get("limits") or "Decision support only: review by a qualified technologist."))
    for i, text in enumerate(notes, start=1):
        b.nte(order, i, text)

    for cls, d in report.get("differential", {}).items():
        obs = b.obx(order, _class_code(cls), _class_text(cls), _number(d["percent"]), ("%", "percent"))
        lo, hi = d["ci95"]
        b.nte(obs, 1, f"{d['count']} of {n_wbc} classified white cells; 95% CI {_number(lo)}-{_number(hi)} %.")
    for cls, a in (report.get("absolute_10e9_per_l") or {}).items():
        obs = b.obx(
            order, _class_code(cls) + "#", _class_text(cls) + " (absolute)", _number(a["value"]), ("10*9/L", "10^9/L")
        )
        b.nte(obs, 1, f"95% CI {_number(a['ci95'][0])}-{_number(a['ci95'][1])} x10^9/L (WBC given x proportion).")
    b.obx(order, "HV-WBCN", "Classified white cells", str(n_wbc), ("{cells}", "cells"))
    if report.get("unidentified_percent") is not None:
        b.obx(
            order,
            "HV-UNID",
            "Unidentified white cells (of all seen)",
            _number(report["unidentified_percent"]),
            ("%", "percent"),
        )
    if report.get("nrbc_per_100_wbc") is not None:
        b.obx(
            order,
            "HV-NRBC100",
            "Nucleated red cells per 100 white cells",
            _number(report["nrbc_per_100_wbc"]),
            ("/100{WBCs}", "per 100 WBC"),
        )

    spm = order.add_group("ORU_R01_SPECIMEN").spm
    spm.spm_1 = "1"
    _set(spm.spm_2, slide_id)  # EIP: the slide is the specimen HematoVision saw
    _set(spm.spm_4, "BLD", "Whole blood", "HL70487")
    return _finish(str(msg.to_er7()))
