"""Process-wide TensorFlow set-up shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def limit_tensorflow_threads(threads: int | None) -> None:
    """Cap TensorFlow's thread pools (must run before TensorFlow executes anything; later calls in
    the same process are ignored). ``threads`` 0 or None leaves TensorFlow's default (all cores)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # already initialised in this process
        log.debug("TensorFlow threads already configured")
