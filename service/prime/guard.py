"""Binds a priming worker's life to its parent, before anything heavy is imported.

A spawned worker imports this module first (it is the pool's initializer), and it imports only
the standard library, so the death signal is armed within a fraction of a second of the spawn,
not after torch and the dataset have been imported.
"""

from __future__ import annotations

import ctypes
import logging.config
import os
import signal
import sys
import threading
import time
from typing import Any

__all__ = ["init_worker"]

_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def init_worker(parent: int, log_config: dict[str, Any] | None = None) -> None:
    """End this process when ``parent`` (the priming process) dies, however it dies.

    ``PR_SET_PDEATHSIG`` where Linux offers it, and a watchdog thread that notices a new parent
    everywhere. ``log_config`` (the server's, see :mod:`batchstash.service.logs`) makes the
    worker's log lines and warnings look like the server's.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends this worker
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if log_config is not None:
        logging.config.dictConfig(log_config)
        logging.captureWarnings(True)
