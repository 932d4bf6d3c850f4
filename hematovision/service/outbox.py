"""The transactional outbox: stage messages are written to the results database in the same
transaction as the job state that needs them, and published to the broker afterwards.

Why: a submission (or a finished stage) must never be lost because the broker was away at that
moment. The batch, slide and job rows and one outbox row per job are committed together; the
client gets 202 once they are. A dispatcher then publishes unsent rows and marks them sent. When
the broker is down it leaves them unsent and retries with exponential backoff, so the slides are
queued when the broker returns. Publishing twice is harmless: every stage task is idempotent (a
re-delivered stage neither redoes finished work nor adds rows).

A dispatcher runs in the API process (a background thread started by ``create_app``) and in every
worker (at start and periodically, beside the reconciler). Several dispatchers may run at once: on
PostgreSQL each takes the rows it publishes with ``FOR UPDATE SKIP LOCKED``, so two never publish
the same row at the same moment (on SQLite a rare duplicate is absorbed by the stages' idempotence).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from hematovision.service.queueing import enqueue_stage
from hematovision.store.db import transaction
from hematovision.store.models import FINAL_STATES, Job, OutboxMessage, utcnow

log = logging.getLogger(__name__)

#: Longest wait between two attempts to publish the same row while the broker is down.
MAX_BACKOFF_S = 60.0
#: Rows published per transaction (the rows stay locked while they are published).
DISPATCH_CHUNK = 200
#: Sent rows are kept this long (the reconciler reads when a job's last message was sent), then pruned.
KEEP_SENT = timedelta(days=2)


def add_message(session: Session, job_id: str, stage: str, priority: int) -> OutboxMessage:
    """Add (not commit) the outbox row of one stage message; flushed, so its id is known."""
    row = OutboxMessage(job_id=job_id, stage=stage, priority=max(0, min(9, priority)))
    session.add(row)
    session.flush()
    return row


def backoff_s(attempts: int) -> float:
    """Wait before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... up to a minute."""
    return float(min(MAX_BACKOFF_S, 2 ** max(0, attempts - 1)))


@dataclass
class DispatchResult:
    """What one dispatch did: rows published, rows skipped (their job had ended), rows left for a
    later attempt, and the broker's error if it failed."""

    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    error: str | None = None


def dispatch(
    factory: sessionmaker[Session],
    app: Any,
    *,
    ids: Iterable[int] | None = None,
    now: datetime | None = None,
) -> DispatchResult:
    """Publish unsent outbox rows: the given ``ids`` now (whatever their backoff), else every row
    whose next attempt is due. Stops at the first broker error (the rows not published get a later
    attempt, with backoff) and returns what it did."""
    result = DispatchResult()
    wanted = None if ids is None else sorted(set(ids))
    if wanted == []:
        return result
    while True:
        at = now or utcnow()
        with transaction(factory) as s:
            q = select(OutboxMessage, Job.state).join(Job, Job.id == OutboxMessage.job_id)
            q = q.where(OutboxMessage.sent_at.is_(None))
            if wanted is not None:
                q = q.where(OutboxMessage.id.in_(wanted))
            else:
                q = q.where(or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= at))
            q = q.order_by(OutboxMessage.priority, OutboxMessage.id).limit(DISPATCH_CHUNK)
            rows = s.execute(q.with_for_update(skip_locked=True, of=OutboxMessage)).all()
            if not rows:
                return result
            for i, (row, state) in enumerate(rows):
                if state in FINAL_STATES:  # cancelled or failed meanwhile: nothing to run
                    row.sent_at, row.last_error = at, f"not sent: the job is {state}"
                    result.skipped += 1
                    continue
                try:
                    enqueue_stage(app, row.stage, row.job_id, row.priority)
                except Exception as exc:  # noqa: BLE001 - whatever the transport raises: retry later
                    result.error = f"{exc.__class__.__name__}: {exc}"[:500]
                    for later, _ in rows[i:]:
                        later.attempts += 1
                        later.next_attempt_at = at + timedelta(seconds=backoff_s(later.attempts))
                        later.last_error = result.error
                        result.deferred += 1
                    break
                row.sent_at = utcnow()
                result.sent += 1
        if result.error is not None or len(rows) < DISPATCH_CHUNK:
            return result


def prune_sent(factory: sessionmaker[Session], *, now: datetime | None = None) -> int:
    """Delete outbox rows sent longer ago than :data:`KEEP_SENT`; returns how many."""
    from sqlalchemy import delete

    cutoff = (now or utcnow()) - KEEP_SENT
    with transaction(factory) as s:
        res = s.execute(delete(OutboxMessage).where(OutboxMessage.sent_at < cutoff))
        return int(getattr(res, "rowcount", 0) or 0)


@dataclass
class Dispatcher:
    """A stoppable background thread that publishes the outbox, and may run other periodic chores
    (the workers add the reconciler).

    ``kick()`` wakes it at once; ``publish_now(ids)`` publishes rows from the calling thread when
    the broker was reachable at the last attempt (a request answered 202 has then queued its slides
    already), else leaves them to the thread.
    """

    factory: sessionmaker[Session]
    app: Any
    interval_s: float = 5.0
    #: Extra chores: (every seconds, function), each run at start and then every so often.
    chores: Sequence[tuple[float, Callable[[], object]]] = ()
    name: str = "outbox-dispatcher"
    broker_ok: bool = True
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _failures: int = 0

    def start(self) -> Dispatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (it finishes the dispatch it is in)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kick(self) -> None:
        self._wake.set()

    def dispatch_once(self, ids: Iterable[int] | None = None) -> DispatchResult:
        with self._lock:
            result = dispatch(self.factory, self.app, ids=ids)
        if result.error is None and result.sent == 0:
            return result  # nothing was published: nothing learnt about the broker
        if result.error is None:
            if not self.broker_ok:
                log.info("broker reachable again: outbox messages are being published")
            self.broker_ok, self._failures = True, 0
        else:
            if self.broker_ok:
                log.warning("broker unavailable (%s): messages stay in the outbox and are retried", result.error)
            self.broker_ok = False
            self._failures += 1
        return result

    def publish_now(self, ids: Sequence[int]) -> bool:
        """Publish these rows now if the broker seemed reachable; True when all were sent."""
        if not ids:
            return True
        if not self.broker_ok:
            self.kick()
            return False
        try:
            result = self.dispatch_once(ids)
        except Exception as exc:  # noqa: BLE001 - the rows are committed; the thread tries again
            log.warning("outbox: publishing now failed (%s); left to the dispatcher", exc.__class__.__name__)
            self.kick()
            return False
        if result.error is not None:
            self.kick()
        return result.error is None and result.deferred == 0

    def _run(self) -> None:
        last: dict[int, float] = {}
        while not self._stop.is_set():
            for i, (every_s, chore) in enumerate(self.chores):
                t = time.monotonic()
                if i not in last or t - last[i] >= every_s:
                    last[i] = t
                    try:
                        chore()
                    except Exception:  # a chore must not stop the thread; it is logged
                        log.exception("%s: periodic chore failed", self.name)
            try:
                result = self.dispatch_once()
            except Exception as exc:  # noqa: BLE001 - database away: try again later
                log.warning("%s: outbox not read (%s)", self.name, exc.__class__.__name__)
                result = DispatchResult(error=str(exc))
                self._failures += 1
            wait = self.interval_s if result.error is None else min(MAX_BACKOFF_S, backoff_s(self._failures))
            self._wake.wait(wait)
            self._wake.clear()
