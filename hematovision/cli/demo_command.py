"""``hematovision demo``: the whole path on embedded defaults, for a newcomer with nothing installed.

Makes a small batch of sample slides, starts the API and a worker as separate processes (SQLite
results database, Kombu's filesystem queue: a real broker that needs no server), submits the batch
over HTTP, shows progress while polling, prints a summary table and where the reports are.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

DEMO_SLIDES = (
    # name, format, white cells, class mix (None = normal adult differential)
    ("normal-smear.tiff", "tiff", 240, None),
    ("lymphocytosis.svs", "svs", 240, {"lymphocyte": 0.62, "neutrophil": 0.25, "monocyte": 0.05,
                                        "ig": 0.06, "eosinophil": 0.02}),
    ("scant-smear.tiff", "tiff", 60, None),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    return subprocess.Popen([sys.executable, "-m", "hematovision.cli", *args], env=env, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)


@click.command()
@click.option("--var-dir", type=click.Path(file_okay=False), default="var/demo", show_default=True,
              help="Where the demo keeps its database, queue, slides and reports (emptied first).")
@click.option("--size", type=int, default=4096, show_default=True, help="Slide width and height, px.")
@click.option("--mpp", type=float, default=0.25, show_default=True)
@click.option("--timeout", type=float, default=1800, show_default=True, help="Give up after this many seconds.")
def demo(var_dir: str, size: int, mpp: float, timeout: float) -> None:
    """Run the whole path on embedded defaults: sample slides -> API -> worker -> reports."""
    from hematovision.client import ApiClient, ApiClientError
    from hematovision.datasets import have_pbc
    from hematovision.migrate import upgrade
    from hematovision.settings import load_settings
    from hematovision.synthetic import make_slide

    var = Path(var_dir).resolve()
    if var.exists():
        shutil.rmtree(var)
    var.mkdir(parents=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMATOVISION_")}
    env.update({"HEMATOVISION_VAR_DIR": str(var), "HEMATOVISION_API_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    if "HEMATOVISION_DATA_ROOT" in os.environ:
        env["HEMATOVISION_DATA_ROOT"] = os.environ["HEMATOVISION_DATA_ROOT"]
    if "HEMATOVISION_MODEL_DIR" in os.environ:
        env["HEMATOVISION_MODEL_DIR"] = os.environ["HEMATOVISION_MODEL_DIR"]
    settings = load_settings(var_dir=var, api_port=port, database_url="", broker_url="")
    data_root = Path(os.environ.get("HEMATOVISION_DATA_ROOT", settings.data_root))
    real = have_pbc(data_root)
    click.secho("HematoVision demo (embedded defaults: SQLite + filesystem queue)", bold=True)
    if real:
        click.echo(f"1/4 making sample slides from real PBC cell images under {data_root}")
    else:
        click.secho(f"1/4 no real cell images under {data_root}: drawing procedural smears instead. "
                    "Point HEMATOVISION_DATA_ROOT at the shared data (see README) for real cells; "
                    "the classifier's calls on drawn cells mean nothing.", fg="yellow")
    slides_dir = var / "slides"
    slides_dir.mkdir()
    slide_paths = []
    for i, (name, fmt, n_wbc, mix) in enumerate(DEMO_SLIDES):
        out = slides_dir / name
        manifest = make_slide(out, data_root, size, size, mpp=mpp, n_wbc=n_wbc, seed=100 + i, fmt=fmt,
                              wbc_mix=mix)
        slide_paths.append(out)
        click.echo(f"    {name}: {size}x{size} px at {mpp} µm/px, {manifest['counts']['wbc']} white cells "
                   f"placed ({manifest['source']})")
    click.echo("2/4 migrating the results database and starting the API and a worker")
    upgrade(settings)
    from hematovision.apikeys import create_key
    from hematovision.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as s:
        api_key = create_key(s, "demo", "submit")
    engine.dispose()
    procs = [
        _start(["serve", "--port", str(port)], env, var / "api.log"),
        _start(["worker", "--loglevel", "WARNING"], env, var / "worker.log"),
    ]
    try:
        client = ApiClient(f"http://127.0.0.1:{port}", api_key)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.health()
                break
            except ApiClientError:
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise click.ClickException(f"the API did not start; see {var / 'api.log'}") from None
                time.sleep(0.5)
        click.echo(f"3/4 submitting {len(slide_paths)} slides to http://127.0.0.1:{port}/api/v1/batches")
        batch = client.submit(slide_paths, name="demo batch")
        click.echo(f"    batch {batch['id']} accepted: {len(batch['job_ids'])} jobs queued")
        shown = [0]
        with click.progressbar(length=1000, label="    analysing", show_eta=False) as bar:
            def update(b: dict) -> None:
                if procs[1].poll() is not None:
                    raise click.ClickException(f"the worker stopped; see {var / 'worker.log'}")
                target = int(1000 * b["progress"])
                if target > shown[0]:
                    bar.update(target - shown[0])
                    shown[0] = target

            final = client.wait_for_batch(batch["id"], timeout_s=timeout, on_update=update)
        reports_dir = var / "reports"
        reports_dir.mkdir(exist_ok=True)
        click.echo("4/4 results")
        header = f"{'slide':<22}{'state':<11}{'WBC':>5}{'RBC':>7}{'PLT':>6}  {'differential (top 3)':<42}flags"
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
            top = sorted(rep["differential"].items(), key=lambda kv: -kv[1]["count"])[:3]
            diff = ", ".join(f"{k} {v['percent']:.0f}% [{v['ci95'][0]:.0f}-{v['ci95'][1]:.0f}]" for k, v in top)
            fl = ", ".join(f["code"] for f in rep["flags"]) or "none"
            c = rep["counts"]
            click.echo(f"{job['filename']:<22}{job['state']:<11}{c['wbc']:>5}{c['rbc']:>7}{c['platelets']:>6}  "
                       f"{diff:<42}{fl}")
        flagged = client.flags(batch=batch["id"])
        click.echo(f"\nflag report: {flagged['count']} flagged slide(s), most severe first "
                   f"(GET /api/v1/flags?batch={batch['id']})")
        click.echo(f"reports: {reports_dir}  (JSON and CSV per slide)")
        click.echo(f"logs: {var / 'api.log'}, {var / 'worker.log'}")
        click.echo("Decision support only: a technologist reviews every differential.")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)


COMMANDS: list[click.Command] = [demo]
