"""Commands that talk to a running API: submit slides, poll status, fetch reports and flag lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hematovision.cli.api_client import ApiClient
from hematovision.cli.options import api_client, api_errors, api_option


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--server-path", is_flag=True, help="PATHS are server-side paths below the import root.")
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Worklist CSV (file,accession,patient_id,assigning_authority,birth_date,sex,collected_at,"
    "wbc_10e9_per_l): each slide's order and patient. Without PATHS, its 'file' column names the slides.",
)
@click.option("--name", default=None, help="Batch name.")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0 = most urgent.")
@click.option("--mpp", type=float, default=None, help="Microns per pixel, for slides that state none.")
@click.option("--idempotency-key", default=None)
@click.option("--wait/--no-wait", default=False, help="Poll until the batch is finished.")
@click.option("--census", is_flag=True, help="Whole-smear census: classify every white cell of each slide.")
@api_option
@api_errors
def submit(
    paths: tuple[str, ...],
    server_path: bool,
    manifest: str | None,
    name: str | None,
    priority: int | None,
    mpp: float | None,
    idempotency_key: str | None,
    wait: bool,
    census: bool,
    api: str,
    api_key: str | None,
) -> None:
    """Submit slides to the API as one batch."""
    worklist, paths = read_manifest(manifest, paths, resolve=not server_path)
    client = api_client(api, api_key)
    files: list[Path] = []
    if not server_path:
        for p in paths:
            if not Path(p).is_file():
                raise click.ClickException(f"{p}: no such file")
            files.append(Path(p))
    batch = client.submit(
        files,
        paths if server_path else (),
        name=name,
        priority=priority,
        mpp=mpp,
        idempotency_key=idempotency_key,
        worklist=worklist,
        census=census,
    )
    click.echo(f"batch {batch['id']}: {len(batch['job_ids'])} job(s)")
    for j in batch.get("jobs", []):
        click.echo(f"  job {j['id']}  slide {j['slide_id']}  {j['filename']}")
    for n in batch.get("notices", []):
        label = n.get("code") or f"{n.get('check', 'storage')} not checked"
        click.echo(f"  notice: {n['slide']}: {label}: {n['message']}", err=True)
    if wait:
        _wait(client, batch["id"])


def read_manifest(
    manifest: str | None, paths: tuple[str, ...], *, resolve: bool = True
) -> tuple[str | None, tuple[str, ...]]:
    """The worklist's text and the slides to submit: PATHS, or (none given) the worklist's files,
    relative to the worklist's folder. Every row is checked here first; a bad row, or a row that
    names no slide of PATHS, stops the command before anything is sent."""
    from hematovision.core.patient import OrderError, match_order, parse_worklist

    if manifest is None:
        if not paths:
            raise click.UsageError("give the slides (PATHS) or a --manifest naming them")
        return None, paths
    text = Path(manifest).read_text(encoding="utf-8-sig")
    try:
        orders = parse_worklist(text)
    except OrderError as e:
        raise click.ClickException(f"{manifest}: {e}; nothing was submitted") from None
    if not paths:
        base = Path(manifest).parent
        paths = tuple(str(base / f) if resolve and not Path(f).is_absolute() else f for f in orders)
        rows = {p: f for p, f in zip(paths, orders, strict=True)}
        # the rows name the slides as the server will see them: by file name
        text = _renamed(text, {f: Path(p).name if resolve else f for p, f in rows.items()})
        return text, paths
    unused = set(orders) - {k for p in paths for k in (p, Path(p).name) if match_order(orders, k)}
    if unused:
        raise click.ClickException(
            f"{manifest}: row(s) {', '.join(sorted(unused)[:10])} match none of the slides given; nothing was submitted"
        )
    if resolve:  # uploads are matched by file name at the server
        text = _renamed(text, {f: Path(f).name for f in orders})
    return text, paths


def _renamed(text: str, names: dict[str, str]) -> str:
    """The worklist CSV with its ``file`` column renamed (``names``: old -> new)."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    out = io.StringIO()
    if not rows:
        return text
    writer = csv.DictWriter(out, fieldnames=[k.strip() for k in rows[0]], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row = {k.strip(): v for k, v in row.items()}
        row["file"] = names.get(row["file"].strip(), row["file"])
        writer.writerow(row)
    return out.getvalue()


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
