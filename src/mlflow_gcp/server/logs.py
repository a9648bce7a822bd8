"""The entrypoint's log lines: one JSON object per line for Cloud Logging, or plain text locally.

Cloud Logging turns a JSON line on stdout/stderr into a structured entry and reads its
`severity` and `message` fields. Every line goes through `env.redact`, so a URI's password never
reaches the logs even when an exception message quotes it.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from mlflow_gcp.server.env import redact

LOGGER_NAME = "mlflow_gcp.server"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "severity": record.levelname,
            "message": redact(message),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "logger": record.name,
        }
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(log_format: str = "json", level: int = logging.INFO) -> logging.Logger:
    """Configure the entrypoint's logger (stderr) and return it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def fatal_line(message: str, log_format: str) -> str:
    """The single line printed for a fatal error, in the configured format."""
    if log_format == "json":
        return json.dumps({"severity": "ERROR", "message": redact(message)}, ensure_ascii=False)
    return redact(message)
