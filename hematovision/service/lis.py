"""Results to the LIS: HL7 ORU^R01 messages kept in an outbox (``lis_outbox``) and sent over MLLP.

Why an outbox: a signed-off result must reach the LIS even when the LIS is down at that moment. The
sign-off writes the message row in its own transaction (:func:`queue_result`); a sender —a chore of
the API's and each worker's dispatcher thread, never the request thread— sends unsent rows over MLLP
(python-hl7's :class:`hl7.client.MLLPClient`), records the ACK (``sent_at``, ``ack``) or the error
(``attempts``, ``last_error``) and retries with backoff (1, 2, 4 … 300 s) until the LIS accepts it.
``hematovision lis send SLIDE`` queues a message (if the slide has none unsent) and sends now
(``--force`` ignores the backoff). On PostgreSQL each sender locks the rows it sends (``FOR UPDATE
SKIP LOCKED``), so two senders never send the same row at the same moment; MSH-10 (the control id)
is kept per row, so a resend after a lost ACK is recognisable as a duplicate by the LIS.

An ACK whose MSA-1 is ``AA`` or ``CA`` is success; ``AE``/``AR``/``CE``/``CR`` or no ACK is an error
(retried).
"""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hematovision.core.flags import effective_rules
from hematovision.core.settings import Settings
from hematovision.exports.hl7 import load_result_codes, oru_r01
from hematovision.service.submission import order_of
from hematovision.service.workflow import workflow_fields
from hematovision.store.db import transaction
from hematovision.store.models import LisMessage, Slide, utcnow

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 300.0
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
ACCEPTED = ("AA", "CA")


class LisError(RuntimeError):
    """The LIS could not be reached, or did not accept the message."""


def backoff_s(attempts: int) -> float:
    return float(min(MAX_BACKOFF_S, 2 ** max(0, attempts - 1)))


def export_report(slide: Slide) -> dict[str, Any]:
    """The slide's report as the exports read it: the stored report with the slide's order."""
    report = dict(slide.report or {})
    report["batch_id"] = slide.batch_id
    report["filename"] = slide.filename
    report["analysed_at"] = None if slide.analysed_at is None else slide.analysed_at.isoformat(timespec="seconds") + "Z"
    report["order"] = order_of(slide).to_dict()
    report.update(workflow_fields(slide))
    return report


def queue_result(session: Session, slide: Slide, settings: Settings) -> LisMessage:
    """Add (not commit) the slide's HL7 result message to the LIS outbox (the slide must be signed
    off, or ``hl7_allow_preliminary`` set: :class:`~hematovision.exports.hl7.PreliminaryRefused`)."""
    control_id = uuid.uuid4().hex[:20]
    message = oru_r01(
        export_report(slide),
        control_id=control_id,
        allow_preliminary=settings.hl7_allow_preliminary,
        rules=effective_rules(settings),
        codes=load_result_codes(settings.result_codes),
        receiving_application=settings.lis_application or None,
        receiving_facility=settings.lis_facility or None,
    )
    row = LisMessage(slide_id=slide.id, control_id=control_id, message=message)
    session.add(row)
    session.flush()
    return row


def mllp_send(host: str, port: int, message: str, *, timeout_s: float = 10.0) -> str:
    """Send one message over MLLP (python-hl7's client) and return the ACK's MSA-1 and MSA-3
    (``"AA"``, ``"AE: reason"``); raises :class:`LisError` when not accepted or not answered."""
    import hl7
    from hl7.client import MLLPClient

    client = MLLPClient.__new__(MLLPClient)  # its __init__ connects without a timeout
    try:
        client.socket = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise LisError(f"LIS {host}:{port} not reachable: {exc.__class__.__name__}: {exc}") from None
    client.encoding = "utf-8"
    try:
        with client:
            raw = client.send_message(message)
            while raw and not raw.rstrip(b"\r\n").endswith(b"\x1c"):
                more = client.socket.recv(65536)
                if not more:
                    break
                raw += more
    except OSError as exc:
        raise LisError(f"LIS {host}:{port}: {exc.__class__.__name__}: {exc}") from None
    text = raw.strip().strip(b"\x0b\x1c").decode("utf-8", "replace").strip()
    if not text:
        raise LisError(f"LIS {host}:{port} closed the connection without an ACK")
    try:
        ack = hl7.parse(text)
        msa = ack.segment("MSA")
        code = str(msa[1])
        detail = str(msa[3]) if len(msa) > 3 else ""
    except (KeyError, IndexError, hl7.ParseException) as exc:
        raise LisError(f"LIS {host}:{port} answered something that is not an ACK ({exc.__class__.__name__})") from None
    answer = f"{code}: {detail}" if detail else code
    if code not in ACCEPTED:
        raise LisError(f"LIS refused the message: {answer}"[:500])
    return answer[:200]


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0
    waiting: int = 0
    last_error: str | None = None


def send_pending(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    slide_id: str | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> SendResult:
    """Send the unsent LIS messages that are due (all of them with ``force``), one transaction per
    message so a sent one stays sent whatever happens to the next."""
    result = SendResult()
    if not settings.lis_host:
        return result
    now = now or utcnow()
    with transaction(factory) as s:
        q = select(LisMessage.id).where(LisMessage.sent_at.is_(None)).order_by(LisMessage.id)
        if slide_id is not None:
            q = q.where(LisMessage.slide_id == slide_id)
        ids = list(s.scalars(q))
    for row_id in ids:
        with transaction(factory) as s:
            q2 = select(LisMessage).where(LisMessage.id == row_id, LisMessage.sent_at.is_(None))
            if s.get_bind().dialect.name == "postgresql":
                q2 = q2.with_for_update(skip_locked=True)
            row = s.scalars(q2).one_or_none()
            if row is None:
                continue
            if not force and row.next_attempt_at is not None and row.next_attempt_at > now:
                result.waiting += 1
                continue
            row.attempts += 1
            try:
                row.ack = mllp_send(settings.lis_host, settings.lis_port, row.message, timeout_s=settings.lis_timeout_s)
            except LisError as exc:
                row.last_error = str(exc)[:2000]
                row.next_attempt_at = utcnow() + timedelta(seconds=backoff_s(row.attempts))
                result.failed += 1
                result.last_error = row.last_error
                log.warning(
                    "LIS message %s of slide %s not sent (attempt %d): %s", row.id, row.slide_id, row.attempts, exc
                )
                continue
            row.sent_at = utcnow()
            row.last_error = None
            result.sent += 1
            log.info("LIS message %s of slide %s sent: %s", row.id, row.slide_id, row.ack)
    return result


def lis_chore(factory: sessionmaker[Session], settings: Settings) -> Any:
    """The periodic sender for a dispatcher thread (None when no LIS is configured)."""
    if not settings.lis_host:
        return None
    return lambda: send_pending(factory, settings)
