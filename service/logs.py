"""Log lines of the server: one format for batchstash's and uvicorn's loggers, text or JSON.

``text`` (the default) is one human line a record. ``json`` is one JSON object a line, made by
python-json-logger: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the fields a
call passes with ``extra=`` (``split``, ``done``, ``total``, ``fingerprint``...), ``exception``
as one string, and for uvicorn's access lines ``client``, ``method``, ``path``, ``status``.
Python warnings and exceptions that end a thread go through the same handler, and priming
workers started by the server log the way it does (:func:`worker_log_config`).
"""

from __future__ import annotations

import logging
import logging.config
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "FORMATS",
    "TEXT_FORMAT",
    "AccessFields",
    "configure_logging",
    "log_config",
    "worker_log_config",
]

logger = logging.getLogger(__name__)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_RENAMED = {"levelname": "level", "name": "logger", "exc_info": "exception", "stack_info": "stack"}
# LogRecord attributes python-json-logger does not know (3.12's taskName) and uvicorn's
# ANSI-coloured copy of some messages: never fields of their own
_NOT_FIELDS = ("taskName", "color_message")

_applied: dict[str, Any] | None = None


def _text() -> dict[str, Any]:
    return {"format": TEXT_FORMAT}


def _json() -> dict[str, Any]:
    from pythonjsonlogger.core import RESERVED_ATTRS

    return {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": ["levelname", "name", "message"],
        "rename_fields": dict(_RENAMED),
        "timestamp": "time",
        "reserved_attrs": [*RESERVED_ATTRS, *_NOT_FIELDS],
    }


FORMATS: dict[str, Callable[[], dict[str, Any]]] = {"text": _text, "json": _json}
"""The ``logging.config`` formatter of each ``log_format`` setting."""


class AccessFields(logging.Filter):
    """Give uvicorn's access lines fields of their own: client, method, path, status."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Copy the access line's arguments into fields (the line itself is unchanged)."""
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            record.client, record.method, record.path, _, record.status = args
        return True


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """The ``logging.config`` dict of batchstash's and uvicorn's loggers (uvicorn's ``log_config``).

    Args:
        level: a level name (``INFO``...).
        log_format: a key of :data:`FORMATS`.
    """
    handler: dict[str, Any] = {
        "class": "logging.StreamHandler",
        "formatter": log_format,
        "stream": "ext://sys.stderr",
    }
    filters: dict[str, Any] = {}
    if log_format == "json":
        filters = {"access": {"()": f"{__name__}.AccessFields"}}
        handler["filters"] = ["access"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {log_format: FORMATS[log_format]()},
        "filters": filters,
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logger.error("uncaught exception in thread %s", name, exc_info=exc_info)  # type: ignore[arg-type]


def configure_logging(level: str, log_format: str = "text") -> dict[str, Any]:
    """Send every log line, Python warning and uncaught thread exception through one handler.

    Returns:
        The config applied (also what :func:`worker_log_config` returns from now on).
    """
    global _applied
    config = log_config(level, log_format)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    _applied = config
    return config


def worker_log_config() -> dict[str, Any] | None:
    """The config :func:`configure_logging` applied in this process, for its priming workers.

    ``None`` when the process did not call it (a library user's script keeps its own logging).
    """
    return _applied
