"""Commands that talk to a running API: submit slides, poll status, fetch reports and flag lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hematovision.cli.api_client import ApiClient
from hematovision.cli.options import api_client, api_errors, api_option


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--server-path", is_flag=True, help="PATHS are server-side paths below the import root.")
@click.option("--name", default=None, help="Batch name.")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0 = most urgent.")
@click.option("--mpp", type=float, default=None, help="Microns per pixel, for slides that state none.")
@click.option("--idempotency-key", default=None)
@click.option("--wait/--no-wait", default=False, help="Poll until the batch is finished.")
@api_option
@api_errors
def submit(
    paths: tuple[str, ...],
    server_path: bool,
    name: str | None,
    priority: int | None,
    mpp: float | None,
    idempotency_key: str | None,
    wait: bool,
    api: str,
    api_key: str | None,
) -> None:
    """Submit slides to the API as one batch."""
    client = api_client(api, api_key)
    files: list[Path] = []
    if not server_path:
        for p in paths:
            if not Path(p).is_file():
                raise click.ClickException(f"{p}: no such file")
            files.append(Path(p))
    batch = client.submit(
        files, paths if server_path else (), name=name, priority=priority, mpp=mpp, idempotency_key=idempotency_key
    )
    click.echo(f"batch {batch['id']}: {len(batch['job_ids'])} job(s)")
    for j in batch.get("jobs", []):
        click.echo(f"  job {j['id']}  slide {j['slide_id']}  {j['filename']}")
    if wait:
        _wait(client, batch["id"])


def _wait(client: ApiClient, batch_id: str) -> dict[str, Any]:
    with click.progressbar(length=1000, label="analysing", show_eta=False) as bar:
        done = [0]

        def update(b: dict[str, Any]) -> None:
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
@api_errors
def status(ident: str, api: str, api_key: str | None) -> None:
    """Show a batch or a job (by id)."""
    from hematovision.cli.api_client import ApiClientError

    client = api_client(api, api_key)
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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "pdf", "hl7"]),
    default="json",
    show_default=True,
    help="pdf: the printable report with slide overview and cell gallery; "
    "hl7: an HL7 v2.5 ORU^R01 message for the LIS.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Write to a file (required for pdf)."
)
@api_option
@api_errors
def report(slide_id: str, fmt: str, out: str | None, api: str, api_key: str | None) -> None:
    """Fetch one slide's report."""
    if fmt == "pdf" and not out:
        raise click.UsageError("--format pdf needs --out FILE")
    body = api_client(api, api_key).report(slide_id, fmt)
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
@click.option(
    "--since",
    default=None,
    help="Only slides analysed since this ISO time ('all': no limit; default: the last sign-off session).",
)
@click.option(
    "--status",
    type=click.Choice(["pending", "verified", "all"]),
    default="pending",
    show_default=True,
    help="Slides not yet signed off (a to-do list), signed off, or both.",
)
@click.option("--search", default=None, help="Only slides whose filename (or accession) contains this.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "pdf"]), default="table", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Write to a file (required for pdf)."
)
@api_option
@api_errors
def flags(
    batch: str | None,
    since: str | None,
    status: str,
    search: str | None,
    fmt: str,
    out: str | None,
    api: str,
    api_key: str | None,
) -> None:
    """The triaged flag list: critical first, then review, then the rest; slides with information
    notes only are counted, not listed."""
    if fmt == "pdf" and not out:
        raise click.UsageError("--format pdf needs --out FILE")
    from hematovision.core.flags import not_evaluated_lines

    body = api_client(api, api_key).flags(batch, since, "json" if fmt == "table" else fmt, status=status, search=search)
    if isinstance(body, bytes):  # the PDF, written unchanged
        data = body
    elif fmt == "table":
        lines = (
            [] if body["slides"] else ["no flagged slides (a slide not listed is not thereby normal: see its report)"]
        )
        for s in body["slides"]:
            lines.append(
                f"{(s['max_severity'] or '').upper():<10} {s['filename']:<30} slide {s['slide_id']}  "
                f"WBC {s['counts']['wbc']}"
            )
            lines += [f"    [{f['severity']}] {f['code']}: {f['message']}" for f in s["flags"]]
            lines += [f"    not evaluated: {line}" for line in not_evaluated_lines(s.get("rules_not_evaluated"))]
        if body.get("info_only_note"):
            lines.append(body["info_only_note"])
        data = "\n".join(lines).encode("utf-8")
    else:
        data = (json.dumps(body, indent=2) if fmt == "json" else str(body)).encode("utf-8")
    _emit(data, out, "flag report")


COMMANDS: list[click.Command] = [submit, status, report, flags]
