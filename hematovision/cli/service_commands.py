"""Commands that run or talk to the service: serve, worker, db, submit, status, report, flags, process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from hematovision.settings import Settings, load_settings

API_URL_ENV = "HEMATOVISION_API_URL"


def _settings(var_dir: str | None = None) -> Settings:
    try:
        return load_settings(var_dir=var_dir)
    except Exception as e:  # pydantic validation of HEMATOVISION_* variables
        raise click.ClickException(f"invalid settings: {e}") from None


def _setup_logging(level: str = "INFO") -> None:
    from hematovision.observability import configure_logging

    configure_logging(level, os.environ.get("HEMATOVISION_LOG_FORMAT", "text"))


def _client(api: str, api_key: str | None):  # type: ignore[no-untyped-def]
    from hematovision.client import ApiClient

    return ApiClient(api, api_key)


def _api_errors(fn):  # type: ignore[no-untyped-def]
    """Turn API client errors into a one-line message and exit status 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
        from hematovision.client import ApiClientError

        try:
            return fn(*a, **kw)
        except ApiClientError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


_api_url = click.option("--api", envvar=API_URL_ENV, default="http://127.0.0.1:8000", show_default=True,
                        help="Base URL of the HematoVision API.")
_api_key = click.option("--api-key", envvar="HEMATOVISION_API_KEY", default=None,
                        help="API key (or HEMATOVISION_API_KEY); create one with `hematovision keys create`.")


def api_option(fn):  # type: ignore[no-untyped-def]
    return _api_url(_api_key(fn))


@click.command()
@click.option("--host", default=None, help="Interface to listen on (default: settings api_host).")
@click.option("--port", type=int, default=None, help="Port (default: settings api_port).")
@click.option("--threads", type=int, default=8, show_default=True)
def serve(host: str | None, port: int | None, threads: int) -> None:
    """Run the intake API (waitress WSGI server)."""
    import waitress

    from api.app import create_app

    _setup_logging()
    settings = _settings()
    app = create_app(settings)
    click.echo(f"HematoVision API on http://{host or settings.api_host}:{port or settings.api_port} "
               f"(database {settings.sqlalchemy_url.split('@')[-1]}, broker {settings.celery_broker_url.split('@')[-1]})")
    waitress.serve(app, host=host or settings.api_host, port=port or settings.api_port, threads=threads,
                   ident="hematovision")


@click.command()
@click.option("--concurrency", type=int, default=None, help="Worker processes (default: settings).")
@click.option("--pool", type=click.Choice(["solo", "prefork", "threads"]), default="solo", show_default=True,
              help="solo: one process (one per GPU); prefork: several processes.")
@click.option("--stages", default="prepare,classify,report", show_default=True,
              help="Stages this worker runs: prepare and report on CPU workers, classify on GPU workers.")
@click.option("--queues", "-Q", default=None,
              help="Consume these queues instead (comma-separated names; default: the stages' queues).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int | None, pool: str, stages: str, queues: str | None, loglevel: str) -> None:
    """Run a Celery worker for some or all stages of the slide analysis.

    Each stage has its own queue (HEMATOVISION_QUEUE_PREPARE, _CLASSIFY, _REPORT), so CPU and GPU
    workers scale independently: `--stages prepare,report` on CPU hosts, `--stages classify` on GPU
    hosts, all stages on a single box.
    """
    from hematovision.queueing import queues_for
    from workers.celery_app import create_worker_app

    _setup_logging(loglevel)
    settings = _settings()
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

        start_http_server(settings.worker_metrics_port, addr=settings.api_host)
    argv = ["worker", f"--loglevel={loglevel}", f"--pool={pool}", "-Q", queues,
            f"--concurrency={concurrency or settings.worker_concurrency}", "--without-gossip",
            "--without-mingle"]
    app.worker_main(argv)


@click.group()
def db() -> None:
    """Results database administration."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic revisions (creates the schema on a new database)."""
    from hematovision.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings, revision)
    except Exception as e:
        raise click.ClickException(f"database upgrade failed: {e.__class__.__name__}: {e}") from None
    click.echo(f"database at {revision}: {settings.sqlalchemy_url.split('@')[-1]}")


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--server-path", is_flag=True, help="PATHS are server-side paths below the import root.")
@click.option("--name", default=None, help="Batch name.")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0 = most urgent.")
@click.option("--mpp", type=float, default=None, help="Microns per pixel, for slides that state none.")
@click.option("--idempotency-key", default=None)
@click.option("--wait/--no-wait", default=False, help="Poll until the batch is finished.")
@api_option
@_api_errors
def submit(paths: tuple[str, ...], server_path: bool, name: str | None, priority: int | None,
           mpp: float | None, idempotency_key: str | None, wait: bool, api: str, api_key: str | None) -> None:
    """Submit slides to the API as one batch."""
    client = _client(api, api_key)
    files: list[Path] = []
    if not server_path:
        for p in paths:
            if not Path(p).is_file():
                raise click.ClickException(f"{p}: no such file")
            files.append(Path(p))
    batch = client.submit(files, paths if server_path else (), name=name, priority=priority, mpp=mpp,
                          idempotency_key=idempotency_key)
    click.echo(f"batch {batch['id']}: {len(batch['job_ids'])} job(s)")
    for j in batch.get("jobs", []):
        click.echo(f"  job {j['id']}  slide {j['slide_id']}  {j['filename']}")
    if wait:
        _wait(client, batch["id"])


def _wait(client, batch_id: str) -> dict:  # type: ignore[no-untyped-def]
    with click.progressbar(length=1000, label="analysing", show_eta=False) as bar:
        done = [0]

        def update(b: dict) -> None:
            target = int(1000 * b["progress"])
            if target > done[0]:
                bar.update(target - done[0])
                done[0] = target

        final = client.wait_for_batch(batch_id, on_update=update)
    click.echo(f"batch {batch_id}: {final['states']}")
    return final


@click.command()
@click.argument("ident")
@api_option
@_api_errors
def status(ident: str, api: str, api_key: str | None) -> None:
    """Show a batch or a job (by id)."""
    from hematovision.client import ApiClientError

    client = _client(api, api_key)
    try:
        doc = client.batch(ident)
    except ApiClientError as e:
        if not str(e).startswith("404"):
            raise
        doc = client.job(ident)
    click.echo(json.dumps(doc, indent=2))


def _emit(data: bytes, out: str | None, what: str) -> None:
    """Write the bytes to ``out`` unchanged, or print them."""
    if out:
        Path(out).write_bytes(data)
        click.echo(f"{what} written to {out}")
    else:
        click.echo(data.decode("utf-8"))


@click.command()
@click.argument("slide_id")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "pdf", "hl7"]), default="json",
              show_default=True, help="pdf: the printable report with slide overview and cell gallery; "
                                      "hl7: an HL7 v2.5 ORU^R01 message for the LIS.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to a file (required for pdf).")
@api_option
@_api_errors
def report(slide_id: str, fmt: str, out: str | None, api: str, api_key: str | None) -> None:
    """Fetch one slide's report."""
    if fmt == "pdf" and not out:
        raise click.UsageError("--format pdf needs --out FILE")
    body = _client(api, api_key).report(slide_id, fmt)
    if isinstance(body, bytes):  # the PDF, written unchanged
        data = body
    else:
        text = json.dumps(body, indent=2) if fmt == "json" else str(body)
        if fmt == "hl7" and not out:
            text = text.replace("\r", "\n")  # one segment per line on a terminal; a file keeps \r
        data = text.encode("utf-8")
    _emit(data, out, "report")


@click.command()
@click.option("--batch", default=None, help="Only this batch.")
@click.option("--since", default=None, help="Only slides analysed since this ISO time.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "pdf"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to a file (required for pdf).")
@api_option
@_api_errors
def flags(batch: str | None, since: str | None, fmt: str, out: str | None, api: str, api_key: str | None) -> None:
    """The leukemia-flag report: flagged slides, most severe first."""
    if fmt == "pdf" and not out:
        raise click.UsageError("--format pdf needs --out FILE")
    body = _client(api, api_key).flags(batch, since, "json" if fmt == "table" else fmt)
    if isinstance(body, bytes):  # the PDF, written unchanged
        data = body
    elif fmt == "table":
        lines = [] if body["slides"] else ["no flagged slides"]
        for s in body["slides"]:
            lines.append(f"{(s['max_severity'] or '').upper():<10} {s['filename']:<30} slide {s['slide_id']}  "
                         f"WBC {s['counts']['wbc']}")
            lines += [f"    [{f['severity']}] {f['code']}: {f['message']}" for f in s["flags"]]
        data = "\n".join(lines).encode("utf-8")
    else:
        data = (json.dumps(body, indent=2) if fmt == "json" else str(body)).encode("utf-8")
    _emit(data, out, "flag report")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--mpp", type=float, default=None, help="Microns per pixel for slides that state none.")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None, help="Classifier model directory.")
@click.option("--full-count", is_flag=True, help="Analyse the whole smear, not just the target WBC count.")
def process(paths: tuple[str, ...], out_dir: str, mpp: float | None, model_dir: str | None, full_count: bool) -> None:
    """Analyse slides locally (no server) and write one report JSON per slide."""
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import PipelineParams, analyze_slide
    from hematovision.flags import load_rules
    from hematovision.reports import build_report
    from hematovision.slides import SlideError, open_slide

    settings = _settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier(Path(model_dir) if model_dir else settings.model_dir)
    rules = load_rules(settings.flag_rules)
    rules["insufficient"]["min_wbc"] = settings.min_wbc
    params = PipelineParams(target_wbc=settings.target_wbc, full_count=full_count or settings.full_count)
    failures = 0
    for p in paths:
        try:
            with open_slide(p, mpp=mpp, default_mpp=settings.default_mpp) as slide:
                with click.progressbar(length=100, label=Path(p).name[:40]) as bar:
                    shown = [0]

                    def progress(f: float, _m: str) -> None:
                        step = int(100 * f) - shown[0]
                        if step > 0:
                            bar.update(step)
                            shown[0] += step

                    analysis = analyze_slide(slide, classifier, params, progress=progress)
        except SlideError as e:
            click.echo(f"error: {p}: {e}", err=True)
            failures += 1
            continue
        except Exception as e:  # one bad slide must not stop the batch
            click.echo(f"error: {p}: analysis failed: {e.__class__.__name__}: {e}", err=True)
            failures += 1
            continue
        rep = build_report(analysis, slide_id=Path(p).stem, source=str(p), rules=rules)
        target = out / f"{Path(p).name}.report.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(rep, indent=2))
        tmp.replace(target)
        diff = ", ".join(f"{k} {v['percent']}%" for k, v in rep["differential"].items() if v["count"])
        click.echo(f"{Path(p).name}: WBC {rep['counts']['wbc']} RBC {rep['counts']['rbc']} "
                   f"PLT {rep['counts']['platelets']} | {diff} | flags: "
                   f"{', '.join(f['code'] for f in rep['flags']) or 'none'} -> {target}")
    if failures:
        click.echo(f"{failures} of {len(paths)} slide(s) failed", err=True)
        sys.exit(1)


@click.group()
def keys() -> None:
    """API keys (stored hashed; a key is shown once, when created)."""


@keys.command("create")
@click.option("--scope", type=click.Choice(["read", "submit", "admin"]), required=True,
              help="read: results; submit: also submit and cancel; admin: everything.")
@click.option("--name", default="default", show_default=True, help="Who or what uses the key (audit log).")
def keys_create(scope: str, name: str) -> None:
    """Create an API key and print it."""
    from hematovision.apikeys import create_key
    from hematovision.db import make_engine, make_session_factory, transaction

    settings = _settings()
    try:
        with transaction(make_session_factory(make_engine(settings))) as s:
            key = create_key(s, name, scope)
    except Exception as e:
        raise click.ClickException(f"cannot store the key: {e.__class__.__name__} (run `hematovision db upgrade`?)") from None
    click.echo(key)
    click.echo(f"scope {scope}, name {name}: keep it safe, it is not shown again", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (prefix, name, scope, state)."""
    from sqlalchemy import select

    from hematovision.db import make_engine, make_session_factory
    from hematovision.models import ApiKey

    with make_session_factory(make_engine(_settings()))() as s:
        for k in s.execute(select(ApiKey).order_by(ApiKey.id)).scalars():
            click.echo(f"{k.prefix}…  {k.scope:<7} {k.name:<20} {'revoked' if k.revoked_at else 'active'}")


@keys.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke the key(s) starting with PREFIX (as `keys list` shows it)."""
    from hematovision.apikeys import revoke_key
    from hematovision.db import make_engine, make_session_factory, transaction

    with transaction(make_session_factory(make_engine(_settings()))) as s:
        n = revoke_key(s, prefix)
    if not n:
        raise click.ClickException(f"no active key with prefix {prefix}")
    click.echo(f"revoked {n} key(s)")


COMMANDS: list[click.Command] = [serve, worker, db, submit, status, report, flags, process, keys]
