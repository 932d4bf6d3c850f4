"""Operators' commands for slide jobs: re-queue one, fail one, run the reconciler now.

Each action is written to the audit log (actor ``cli:<user>``, action, ``job:<id>``, tied to the
job's slide so it shows in the slide's audit history; outcome ``allowed``). The message
goes through the outbox like any other: it is published at once when the broker answers, else by
the next dispatcher (API or worker) when it is back.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any

import click

from hematovision.cli.options import settings_or_exit

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from hematovision.core.settings import Settings


def _actor() -> str:
    from hematovision.core.access import printable

    try:
        return f"cli:{printable(getpass.getuser())}"[:100]
    except (KeyError, OSError):  # no user name for this uid (e.g. a container)
        return "cli:unknown"


def _open() -> tuple[Settings, sessionmaker[Session], Any]:
    """(settings, session factory, Celery app) for the installation, or a message and exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.queueing import make_celery
    from hematovision.store.db import make_engine, make_session_factory

    settings = settings_or_exit()
    try:
        factory = make_session_factory(make_engine(settings))
    except (SQLAlchemyError, OSError) as e:
        raise click.ClickException(f"cannot open the results database: {e.__class__.__name__}") from None
    return settings, factory, make_celery(settings)


def _audit(session: Session, action: str, job_id: str, slide_id: str, status: int, **detail: Any) -> None:
    from hematovision.store.models import AuditEntry

    session.add(
        AuditEntry(
            actor=_actor(),
            action=action,
            resource=f"job:{job_id}"[:300],
            status=status,
            outcome="allowed",
            remote_addr=None,
            slide_id=slide_id,
            detail={"job_id": job_id, **detail},
        )
    )


def _publish(factory: sessionmaker[Session], app: Any, row_id: int) -> bool:
    from hematovision.service.outbox import dispatch

    try:
        return dispatch(factory, app, ids=[row_id]).sent == 1
    except Exception:  # noqa: BLE001 - committed: a dispatcher publishes it later
        return False


@click.group()
def jobs() -> None:
    """Slide jobs: re-queue, fail, reconcile (operators)."""


@jobs.command("requeue")
@click.argument("job_id")
def jobs_requeue(job_id: str) -> None:
    """Queue JOB_ID again: a queued or running job restarts its current stage, a failed or cancelled
    one starts over. A succeeded job is refused."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.reconcile import JobActionError, requeue_job
    from hematovision.store.db import transaction

    _settings, factory, app = _open()
    try:
        with transaction(factory) as s:
            try:
                job, row_id = requeue_job(s, job_id, actor=_actor())
            except JobActionError as e:
                raise click.ClickException(str(e)) from None
            stage = job.stage
            _audit(s, "requeue", job_id, job.slide_id, 200, stage=stage)
    except SQLAlchemyError as e:
        raise click.ClickException(f"results database unavailable: {e.__class__.__name__}") from None
    sent = _publish(factory, app, row_id)
    click.echo(
        f"job {job_id} queued again in stage {stage}"
        + ("" if sent else " (the broker is not reachable: it is published when it is back)")
    )


@jobs.command("fail")
@click.argument("job_id")
@click.option("--reason", required=True, help="Why (shown with the job, kept in its error).")
def jobs_fail(job_id: str, reason: str) -> None:
    """End JOB_ID as failed (a queued or running job; its slide will not be analysed)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.reconcile import JobActionError, fail_job
    from hematovision.store.db import transaction

    if not reason.strip():
        raise click.BadParameter("give a reason", param_hint="--reason")
    _settings, factory, _app = _open()
    try:
        with transaction(factory) as s:
            try:
                job = fail_job(s, job_id, reason.strip(), actor=_actor())
            except JobActionError as e:
                raise click.ClickException(str(e)) from None
            _audit(s, "fail", job_id, job.slide_id, 200, reason=reason.strip()[:500])
    except SQLAlchemyError as e:
        raise click.ClickException(f"results database unavailable: {e.__class__.__name__}") from None
    click.echo(f"job {job_id} failed: {reason.strip()}")


@jobs.command("reconcile")
def jobs_reconcile() -> None:
    """Run the reconciler and the outbox dispatcher once (workers run them on their own, at start
    and every HEMATOVISION_RECONCILE_INTERVAL_S)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.outbox import dispatch
    from hematovision.service.reconcile import reconcile

    settings, factory, app = _open()
    try:
        result = reconcile(factory, settings)
        sent = dispatch(factory, app)
    except SQLAlchemyError as e:
        raise click.ClickException(f"results database unavailable: {e.__class__.__name__}") from None
    click.echo(
        f"re-queued {len(result.stale)} job(s) without heartbeat and {len(result.lost)} whose message was lost"
        + ("" if result.broker_checked else " (the broker could not be read: queued jobs not checked)")
    )
    click.echo(
        f"published {sent.sent} outbox message(s)" + (f"; broker unavailable: {sent.error}" if sent.error else "")
    )


COMMANDS: list[click.Command] = [jobs]
