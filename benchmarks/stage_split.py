"""Seconds per slide of each stage (prepare, classify, report), for sizing CPU against GPU workers.

Runs the three stage functions of the service (workers.stages, with their database writes on a
scratch SQLite database and their hand-over files on disk) on the benchmark whole slide of
`hematovision bench` (generated once under --work-dir and reused), --slides times, and prints one
JSON object: per stage the median seconds, the white-cell crops handed over and their size on disk,
and the ratio of CPU-stage seconds to classify seconds: how many CPU workers (prepare + report) keep
one classify worker busy, on this machine. Classification here runs where the model runs on this
machine (the CPU unless a GPU is visible): on a GPU the classify stage is faster and the ratio grows.

Usage: python benchmarks/stage_split.py [--size 40000] [--mpp 0.25] [--wbc 1200] [--slides 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    import numpy as np

    from hemato_model.classifier import load_classifier
    from hematovision.core.settings import load_settings
    from hematovision.devtools.throughput import ensure_slide
    from hematovision.service.submission import NewSlide, add_batch
    from hematovision.store.db import make_engine, make_session_factory
    from hematovision.store.migrate import upgrade
    from hematovision.store.models import Job
    from workers.stages import job_folder, run_classify, run_prepare, run_report

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=40_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--wbc", type=int, default=1200)
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("var/bench"))
    a = ap.parse_args()

    base = load_settings()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    slide_path = a.work_dir / f"bench-{a.size}px-{a.mpp}mpp.tiff"
    ensure_slide(slide_path, base.data_root, a.size, a.mpp, a.wbc)
    with tempfile.TemporaryDirectory(prefix="hv-stage-bench-") as tmp:
        settings = load_settings(var_dir=Path(tmp), database_url="", broker_url="")
        upgrade(settings)
        factory = make_session_factory(make_engine(settings))
        clf = load_classifier(settings.model_dir)
        clf.classify(np.zeros((8, clf.input_px, clf.input_px, 3), np.uint8))  # compile once, untimed
        rows: list[dict[str, float]] = []
        for _ in range(a.slides):
            with factory() as s, s.begin():
                entry = NewSlide(filename=slide_path.name, path=str(slide_path.resolve()), mpp=a.mpp)
                _, (job,) = add_batch(s, [entry], name="bench", queue=False)
                job_id = job.id
            row: dict[str, float] = {}
            t = time.perf_counter()
            assert run_prepare(settings, factory, job_id).state == "done"
            row["prepare_s"] = time.perf_counter() - t
            t = time.perf_counter()
            assert run_classify(settings, factory, clf, job_id).state == "done"
            row["classify_s"] = time.perf_counter() - t
            row["handoff_mb"] = _dir_bytes(job_folder(settings, job_id)) / 2**20
            t = time.perf_counter()
            assert run_report(settings, factory, job_id).state == "succeeded"
            row["report_s"] = time.perf_counter() - t
            with factory() as s:
                row["crops"] = s.get(Job, job_id).stages["classify"]["cells"]
            rows.append(row)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    cpu_s, gpu_s = med("prepare_s") + med("report_s"), med("classify_s")
    print(
        json.dumps(
            {
                "slide": {"size_px": a.size, "mpp": a.mpp, "wbc_placed_about": a.wbc, "slides_timed": a.slides},
                "prepare_s": med("prepare_s"),
                "classify_s": gpu_s,
                "report_s": med("report_s"),
                "crops_per_slide": med("crops"),
                "classify_cells_per_s": round(med("crops") / gpu_s, 1),
                "handoff_mb_per_slide": round(med("handoff_mb"), 2),
                "cpu_stage_s_per_classify_s": round(cpu_s / gpu_s, 2),
                "note": "medians over slides_timed runs of the service's stage functions; classify ran on "
                f"{os.environ.get('KERAS_BACKEND', 'tensorflow')} on this machine's "
                f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), not a GPU",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
