"""``hematovision lis``: results to the LIS (HL7 ORU^R01 over MLLP, :mod:`hematovision.service.lis`)."""

from __future__ import annotations

import click

from hematovision.cli.options import settings_or_exit


@click.group()
def lis() -> None:
    """Send results to the LIS (HEMATOVISION_LIS_HOST / _PORT) and see what is waiting."""


@lis.command("send")
@click.argument("slide_id")
@click.option("--force", is_flag=True, help="Send now even while a failed message waits for its next attempt.")
@click.option("--requeue", is_flag=True, help="Queue a new message even if one was already sent.")
def send(slide_id: str, force: bool, requeue: bool) -> None:
    """Queue SLIDE's HL7 result (if none is waiting) and send the waiting message(s) now."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.exports.hl7 import PreliminaryRefused
    from hematovision.service.lis import queue_result, send_pending
    from hematovision.store.db import make_engine, make_session_factory, transaction
    from hematovision.store.models import LisMessage, Slide

    settings = settings_or_exit()
    if not settings.lis_host:
        raise click.ClickException("no LIS is configured: set HEMATOVISION_LIS_HOST and HEMATOVISION_LIS_PORT")
    try:
        factory = make_session_factory(make_engine(settings))
        with transaction(factory) as s:
            slide = s.get(Slide, slide_id)
            if slide is None:
                raise click.ClickException(f"no slide {slide_id}")
            if slide.report is None:
                raise click.ClickException(f"slide {slide_id} has no results yet")
            rows = list(s.scalars(select(LisMessage).where(LisMessage.slide_id == slide_id)))
            sent = [r for r in rows if r.sent_at is not None]
            if sent and not requeue and all(r.sent_at is not None for r in rows):
                click.echo(f"slide {slide_id}: already sent ({sent[-1].ack}); --requeue sends it again")
                return
            if requeue or not rows:
                try:
                    queue_result(s, slide, settings)
                except PreliminaryRefused as e:
                    raise click.ClickException(str(e)) from None
        result = send_pending(factory, settings, slide_id=slide_id, force=force)
    except SQLAlchemyError as e:
        raise click.ClickException(f"cannot open the results database: {e.__class__.__name__}") from None
    if result.waiting and not result.sent and not result.failed:
        raise click.ClickException("the message waits for its next attempt after a failure; --force sends it now")
    if result.failed:
        raise click.ClickException(f"not sent: {result.last_error}; the message stays queued and is retried")
    click.echo(f"slide {slide_id}: {result.sent} message(s) sent to {settings.lis_host}:{settings.lis_port}")


COMMANDS: list[click.Command] = [lis]
