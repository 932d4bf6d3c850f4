"""``hematovision demo``: the whole path on embedded defaults, for a newcomer with nothing installed.

Makes a small batch of sample slides, starts the API and a worker as separate processes (SQLite
results database, Kombu's filesystem queue: a real broker that needs no server), submits the batch
over HTTP, shows progress while polling, prints a summary table and where the reports are.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import click

NORMAL = {"neutrophil": 0.58, "lymphocyte": 0.30, "monocyte": 0.07, "eosinophil": 0.03, "basophil": 0.01, "ig": 0.01}
DEMO_SLIDES = (
    # name, format, white cells, class mix of the white cells placed
    ("normal-smear.tiff", "tiff", 240, NORMAL),
    (
        "lymphocytosis.svs",
        "svs",
        240,
        {"lymphocyte": 0.66, "neutrophil": 0.22, "monocyte": 0.05, "ig": 0.05, "eosinophil": 0.02},
    ),
    ("scant-smear.tiff", "tiff", 60, NORMAL),
)


@click.command()
@click.option(
    "--var-dir",
    type=click.Path(file_okay=False),
    default="var/demo",
    show_default=True,
    help="Where the demo keeps its database, queue, slides and reports (emptied first).",
)
@click.option("--size", type=int, default=4096, show_default=True, help="Slide width and height, px.")
@click.option("--mpp", type=float, default=0.25, show_default=True)
@click.option("--timeout", type=float, default=1800, show_default=True, help="Give up after this many seconds.")
def demo(var_dir: str, size: int, mpp: float, timeout: float) -> None:
    """Run the whole path on embedded defaults: sample slides -> API -> worker -> reports."""
    from hematovision.core.datasets import have_pbc
    from hematovision.core.settings import load_settings
    from hematovision.devtools.localstack import start_stack
    from hematovision.devtools.sample_build import have_sample, read_sample, sample_root
    from hematovision.devtools.synthetic import SOURCE_WORDS, make_slide

    var = Path(var_dir).resolve()
    if var.exists():
        shutil.rmtree(var)
    var.mkdir(parents=True)
    data_root = load_settings().data_root
    click.secho("HematoVision demo (embedded defaults: SQLite + filesystem queue)", bold=True)
    if have_pbc(data_root):
        click.echo(f"1/4 making sample slides from real PBC cell images under {data_root}")
    elif have_sample():
        click.echo(
            f"1/4 no shared data under {data_root}: making sample slides from the {len(read_sample())} real PBC "
            f"cells packaged with HematoVision ({sample_root()}; CC BY 4.0, Acevedo et al. 2020). Point "
            "HEMATOVISION_DATA_ROOT at the shared data (see README) for more varied slides."
        )
    else:
        click.secho(
            f"1/4 no real cell images under {data_root} and no packaged sample at {sample_root()}: drawing "
            "procedural smears instead. Point HEMATOVISION_DATA_ROOT at the shared data (see README) for "
            "real cells; the classifier's calls on drawn cells mean nothing.",
            fg="yellow",
        )
    slides_dir = var / "slides"
    slides_dir.mkdir()
    logging.getLogger("hematovision.devtools.synthetic").setLevel(logging.ERROR)  # step 1 said where cells come from
    slide_paths = []
    sources = set()
    for i, (name, fmt, n_wbc, mix) in enumerate(DEMO_SLIDES):
        out = slides_dir / name
        manifest = make_slide(out, data_root, size, size, mpp=mpp, n_wbc=n_wbc, seed=100 + i, fmt=fmt, wbc_mix=mix)
        slide_paths.append(out)
        sources.add(manifest["source"])
        click.echo(
            f"    {name}: {size}x{size} px at {mpp} µm/px, {manifest['counts']['wbc']} white cells "
            f"placed ({manifest['source']})"
        )
    click.echo("2/4 migrating the results database and starting the API and a worker")
    stack = start_stack(var, key_scope="submit", key_name="demo")
    try:
        stack.start_worker(loglevel="WARNING")
        client = stack.client()
        port = stack.api_url.rsplit(":", 1)[1]
        click.echo(f"3/4 submitting {len(slide_paths)} slides to http://127.0.0.1:{port}/api/v1/batches")
        batch = client.submit(slide_paths, name="demo batch")
        click.echo(f"    batch {batch['id']} accepted: {len(batch['job_ids'])} jobs queued")
        shown = [0]
        with click.progressbar(length=1000, label="    analysing", show_eta=False) as bar:

            def update(b: dict) -> None:
                if stack.procs["worker"].poll() is not None:
                    raise click.ClickException(f"the worker stopped; see {var / 'worker.log'}")
                target = int(1000 * b["progress"])
                if target > shown[0]:
                    bar.update(target - shown[0])
                    shown[0] = target

            final = client.wait_for_batch(batch["id"], timeout_s=timeout, on_update=update)
        reports_dir = var / "reports"
        reports_dir.mkdir(exist_ok=True)
        click.echo("4/4 results")
        header = f"{'slide':<22}{'state':<11}{'WBC':>5}{'RBC':>7}{'PLT':>6}  differential (top 3, 95% CI) / flags"
        click.echo(header)
        click.echo("-" * (len(header) + 20))
        for job in final["jobs"]:
            if job["state"] != "succeeded":
                click.echo(f"{job['filename']:<22}{job['state']:<11}{job.get('error') or ''}")
                continue
            rep = client.report(job["slide_id"])
            assert isinstance(rep, dict)
            (reports_dir / f"{job['filename']}.json").write_text(json.dumps(rep, indent=2))
            (reports_dir / f"{job['filename']}.csv").write_text(str(client.report(job["slide_id"], "csv")))
            pdf = client.report(job["slide_id"], "pdf")
            (reports_dir / f"{job['filename']}.pdf").write_bytes(pdf if isinstance(pdf, bytes) else pdf.encode())
            top = sorted(rep["differential"].items(), key=lambda kv: -kv[1]["count"])[:3]
            diff = ", ".join(f"{k} {v['percent']:.0f}% [{v['ci95'][0]:.0f}-{v['ci95'][1]:.0f}]" for k, v in top)
            fl = ", ".join(f["code"] for f in rep["flags"]) or "none raised"
            not_run = sorted({e["rule"] for e in rep.get("rules_not_evaluated", [])})
            fl += f" (not evaluated: {', '.join(not_run)})" if not_run else ""
            c = rep["counts"]
            click.echo(f"{job['filename']:<22}{job['state']:<11}{c['wbc']:>5}{c['rbc']:>7}{c['platelets']:>6}  {diff}")
            click.echo(f"{'':<53}flags: {fl}")
        flagged = client.flags(batch=batch["id"])
        click.echo(
            f"\nflag report: {flagged['count']} flagged slide(s), most severe first "
            f"(GET /api/v1/flags?batch={batch['id']})"
        )
        (reports_dir / "flag-report.pdf").write_bytes(client.flags(batch=batch["id"], fmt="pdf"))
        click.echo(f"white cells on these slides: {'; '.join(SOURCE_WORDS[s] for s in sorted(sources))}")
        click.echo(f"reports: {reports_dir}  (JSON, CSV and PDF per slide; flag-report.pdf)")
        click.echo(f"logs: {var / 'api.log'}, {var / 'worker.log'}")
        click.echo("Decision support only: a technologist reviews every differential.")
    finally:
        stack.stop_all()


COMMANDS: list[click.Command] = [demo]
