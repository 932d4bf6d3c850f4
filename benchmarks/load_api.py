"""Load against a real API and worker on loopback (issue 5); prints one JSON object.

1. Submissions: N small slides (JPEG fields cut from a generated smear of real PBC cells) in ONE
   batch over HTTP; waits until every job is final; counts lost (not succeeded) and duplicated work
   (stored cell rows that differ from the report's counts, or more than one job per slide).
2. Polling: status polls (GET /api/v1/jobs/<id>) at a target rate for a fixed time from a pool of
   threads, with p50/p95/p99 latency and the rate actually reached.

Workers: --workers N processes running every stage, or one process per --worker STAGES (e.g. a CPU
worker `--worker prepare,report` and a classify worker `--worker classify`). Per stage it reports
the median seconds, how many jobs ran the stage more than once, and on how many workers it ran.

Runs on PostgreSQL + Redis on 127.0.0.1 (its own database, dropped afterwards; Redis db 12 flushed),
or on the embedded defaults with --embedded. Only processes it starts are touched.

    python benchmarks/load_api.py --slides 1000 --rate 200 --seconds 60
    python benchmarks/load_api.py --slides 1000 --worker prepare,report --worker classify
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/12"


def make_fields(out: Path, data_root: Path, n: int, field_px: int = 384) -> list[Path]:
    """Cut n JPEG fields from one generated smear (so every field holds real cells)."""
    from PIL import Image

    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import make_slide

    side = 8192
    slide = out / "source.tiff"
    make_slide(slide, data_root, side, side, mpp=0.25, n_wbc=900, seed=5)
    paths = []
    with open_slide(slide) as s:
        per_row = side // field_px
        for i in range(n):
            x = (i % per_row) * field_px
            y = ((i // per_row) % per_row) * field_px
            p = out / f"field-{i:04d}.jpg"
            Image.fromarray(s.read_region((x, y), 0, (field_px, field_px))).save(p, quality=90, dpi=(101600, 101600))
            paths.append(p)
    return paths


def poll_load(api: str, key: str, job_ids: list[str], rate: float, seconds: float, threads: int) -> dict:
    import requests

    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    total = int(rate * seconds)
    counter = iter(range(total))

    def worker() -> None:
        http = requests.Session()
        http.headers["X-API-Key"] = key
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.perf_counter()
            try:
                r = http.get(f"{api}/api/v1/jobs/{job_ids[i % len(job_ids)]}", timeout=30)
                code = str(r.status_code)
            except requests.RequestException as e:  # refused, reset, timed out: counted by kind
                code = e.__class__.__name__
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                if code != "200":
                    errors[code] = errors.get(code, 0) + 1

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    q = statistics.quantiles(lat, n=100)
    return {
        "requests": len(lat),
        "target_rate": rate,
        "achieved_rate": round(len(lat) / elapsed, 1),
        "seconds": round(elapsed, 1),
        "p50_ms": round(1000 * q[49], 1),
        "p95_ms": round(1000 * q[94], 1),
        "p99_ms": round(1000 * q[98], 1),
        "max_ms": round(1000 * max(lat), 1),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="worker processes running every stage")
    ap.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="STAGES",
        help="instead: one worker for these stages, e.g. --worker prepare,report --worker classify",
    )
    ap.add_argument("--embedded", action="store_true", help="SQLite + filesystem queue instead")
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()

    import psycopg
    import redis
    from sqlalchemy import create_engine, text

    from hematovision.core.settings import load_settings
    from hematovision.devtools.localstack import start_stack

    work = Path(tempfile.mkdtemp(prefix="hv-load-"))
    db_name = f"hv_load_{uuid.uuid4().hex[:8]}"
    if a.embedded:
        db_url, broker = "", ""
    else:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db_name}"')
        db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
        broker = REDIS
        redis.Redis.from_url(REDIS).flushdb()
    result: dict = {"backend": "embedded" if a.embedded else "postgresql+redis", "machine_cpus": os.cpu_count()}
    try:
        t = time.perf_counter()
        fields = make_fields(work, load_settings().data_root, a.slides)
        result["fields_made_s"] = round(time.perf_counter() - t, 1)
        with start_stack(work / "var", db_url, broker, key_name="load", api_threads=16) as stack:
            roles = a.worker or ["prepare,classify,report"] * a.workers
            for i, stages in enumerate(roles):
                stack.start_worker(f"worker{i}", loglevel="WARNING", stages=stages)
            result["workers"] = roles
            client = stack.client()
            client.timeout_s = 600
            t = time.perf_counter()
            batch = client.submit(fields, name="load")
            submit_s = time.perf_counter() - t
            final = client.wait_for_batch(batch["id"], timeout_s=a.timeout, poll_s=2.0)
            total_s = time.perf_counter() - t
            states = final["states"]
            eng = create_engine(db_url or f"sqlite:///{work / 'var' / 'hematovision.db'}")
            with eng.connect() as c:
                jobs_per_slide = c.execute(
                    text("SELECT max(n) FROM (SELECT count(*) n FROM jobs GROUP BY slide_id) j")
                ).scalar()
                mismatched = 0
                for sid, rep in c.execute(text("SELECT id, report FROM slides WHERE report IS NOT NULL")):
                    rep = rep if isinstance(rep, dict) else json.loads(rep)
                    stored = c.execute(text("SELECT count(*) FROM cells WHERE slide_id = :s"), {"s": sid}).scalar()
                    counts = rep["counts"]
                    expected = counts["wbc"] + counts["rbc"] + counts["platelets"] + counts["erythroblasts"]
                    mismatched += int(stored != expected)
                stage_rows = [
                    r[0] if isinstance(r[0], dict) else json.loads(r[0])
                    for r in c.execute(text("SELECT stages FROM jobs WHERE stages IS NOT NULL"))
                ]
            eng.dispose()
            result["stages"] = {
                st: {
                    "median_s": round(statistics.median(r[st].get("seconds", 0.0) for r in stage_rows if st in r), 3),
                    "runs_above_one": sum(1 for r in stage_rows if r.get(st, {}).get("runs", 0) > 1),
                    "workers": len({r[st]["worker"] for r in stage_rows if st in r}),
                }
                for st in ("prepare", "classify", "report")
            }
            result["submissions"] = {
                "slides": a.slides,
                "submit_s": round(submit_s, 1),
                "all_final_s": round(total_s, 1),
                "slides_per_hour": round(3600 * a.slides / total_s, 0),
                "states": states,
                "lost": a.slides - states.get("succeeded", 0),
                "max_jobs_per_slide": jobs_per_slide,
                "slides_with_cell_rows_not_matching_report": mismatched,
            }
            result["polling"] = poll_load(stack.api_url, stack.api_key, final["job_ids"], a.rate, a.seconds, a.threads)
    finally:
        if not a.embedded:
            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
