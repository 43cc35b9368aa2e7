"""One trial of tests/e2e/netlab_trials.py: Ray priming into S3 and two replicas on six hosts.

Runs only with ``-m netlab`` (minutes; see tests/conftest.py), as root, where
``../shared/tools/netlab.sh`` (or ``NETLAB_SH``) and the ray extra are present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .netlab import unavailable
from .netlab_trials import passed, run_trial

pytestmark = [pytest.mark.netlab, pytest.mark.slow]


def test_prime_and_epochs_survive_a_dead_ray_host_a_lossy_link_and_a_cut_cable(
    tmp_path: Path,
) -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(f"netlab: {why}")
    pytest.importorskip("ray", reason="the ray extra is not installed")
    result = run_trial(0, tmp_path)
    assert result["worker_processes_killed"] > 0  # the Ray worker's host died mid-prime
    assert result["prime_exit"] == 0, result
    assert result["prime"].startswith("prime done: 30 batches"), result
    assert result["trainer_exit"] == 0, result
    assert (result["lost"], result["duplicated"], result["wrong"]) == (0, 0, 0), result
    assert result["half_written"] == [] and result["objects"] > 30, result
    # what happened, one line each: Ray's task lost with the worker's node (then retried), the
    # trainer's client marking the cut replica down
    assert any("node it was running on is dead" in line for line in result["logs"]["prime"])
    assert any(" is down (" in line for line in result["logs"]["trainer"]), result["logs"]
    assert passed(result)
