"""Log set-up for entry points: plain text or one JSON object per line.

``Settings.log_format = "json"`` (``HEMATOVISION_LOG_FORMAT``) makes every log line one JSON object;
``job_id``, ``slide_id`` and ``stage`` passed as ``extra=`` appear as fields. Modules only call
``logging.getLogger(__name__)``; handlers are configured here, by entry points only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and job/slide ids when given."""

    FIELDS = ("job_id", "slide_id", "batch_id", "stage", "worker")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in self.FIELDS:
            if hasattr(record, k):
                out[k] = getattr(record, k)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Entry points call this once; modules only use ``logging.getLogger(__name__)``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
