"""Classified cells per second: the shipped classifier vs Keras ResNet50 at 224 px, same crops, same run.

Prints ONE JSON object (see hematovision.devtools.classifier_speed). Same as `hematovision bench-classifier`.

    python benchmarks/classifier_speed.py [--model DIR] [--n 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from hematovision.core.settings import load_settings
    from hematovision.devtools.classifier_speed import run_benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory [default: the shipped model]")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    settings = load_settings()
    print(
        json.dumps(
            run_benchmark(args.model or settings.model_dir, settings.data_root, args.n, args.threads, args.batch)
        )
    )


if __name__ == "__main__":
    main()
