"""The ``../shared/tools/netlab.sh`` lab from Python: hosts in network namespaces, shaped links.

Root only (network namespaces, tc, iptables); :func:`link_skip` says why a run cannot use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["NETLAB", "lab", "link_skip"]

NETLAB = Path(
    os.environ.get(
        "NETLAB_SH", Path(__file__).resolve().parents[2] / "shared" / "tools" / "netlab.sh"
    )
)
"""The tool: beside the repository, or ``$NETLAB_SH``."""
REPO = Path(__file__).resolve().parents[1]


def lab(*args: str, check: bool = True) -> str:
    """Run ``netlab.sh ARGS``; its standard output (``check``: a failure raises)."""
    done = subprocess.run(
        ["bash", str(NETLAB), *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"netlab {args[0]}: {done.stderr.strip()[-300:]}")
    return done.stdout


def link_skip() -> str | None:
    """Why the link runs cannot happen here (``None``: they can)."""
    if os.geteuid() != 0:
        return "skipped: the link runs need root (network namespaces)"
    if not NETLAB.exists():
        return f"skipped: no {NETLAB} (set NETLAB_SH)"
    missing = [tool for tool in ("ip", "tc", "iptables") if shutil.which(tool) is None]
    if missing:  # netlab's shaped links run them in the lab's namespaces
        return f"skipped: netlab needs {', '.join(missing)} (iproute2, iptables)"
    return None
