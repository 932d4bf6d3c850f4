"""Commands that run the service: the API server and the stage workers."""

from __future__ import annotations

import click

from hematovision.cli.options import settings_or_exit, setup_logging


@click.command()
@click.option("--host", default=None, help="Interface to listen on (default: settings api_host).")
@click.option("--port", type=int, default=None, help="Port (default: settings api_port).")
@click.option("--threads", type=int, default=8, show_default=True)
def serve(host: str | None, port: int | None, threads: int) -> None:
    """Run the intake API (waitress WSGI server; request bodies up to HEMATOVISION_MAX_UPLOAD_MB)."""
    from api.app import create_app, stop_app
    from api.server import make_server

    settings = settings_or_exit()
    setup_logging(settings)
    app = create_app(settings)
    click.echo(
        f"HematoVision API on http://{host or settings.api_host}:{port or settings.api_port} "
        f"(database {settings.sqlalchemy_url.split('@')[-1]}, broker {settings.celery_broker_url.split('@')[-1]})"
    )
    server = make_server(app, settings, host or settings.api_host, port or settings.api_port, threads)
    try:
        server.run()
    finally:
        stop_app(app)


@click.command()
@click.option("--concurrency", type=int, default=None, help="Worker processes (default: settings).")
@click.option(
    "--pool",
    type=click.Choice(["solo", "prefork", "threads"]),
    default="solo",
    show_default=True,
    help="solo: one process (one per GPU); prefork: several processes.",
)
@click.option(
    "--stages",
    default="prepare,classify,report",
    show_default=True,
    help="Stages this worker runs: prepare and report on CPU workers, classify on GPU workers.",
)
@click.option(
    "--queues",
    "-Q",
    default=None,
    help="Consume these queues instead (comma-separated names; default: the stages' queues).",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int | None, pool: str, stages: str, queues: str | None, loglevel: str) -> None:
    """Run a Celery worker for some or all stages of the slide analysis.

    Each stage has its own queue (HEMATOVISION_QUEUE_PREPARE, _CLASSIFY, _REPORT), so CPU and GPU
    workers scale independently: `--stages prepare,report` on CPU hosts, `--stages classify` on GPU
    hosts, all stages on a single box.
    """
    from hematovision.service.queueing import queues_for
    from workers.celery_app import create_worker_app

    settings = settings_or_exit()
    setup_logging(settings, loglevel)
    if not queues:
        try:
            queues = ",".join(queues_for(settings, [s.strip() for s in stages.split(",") if s.strip()]))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--stages") from None
        if not queues:
            raise click.BadParameter("name at least one stage", param_hint="--stages")
    app = create_worker_app(settings)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        "-Q",
        queues,
        f"--concurrency={concurrency or settings.worker_concurrency}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


COMMANDS: list[click.Command] = [serve, worker]
