"""Crash safety: kill -9 a priming server or one of its workers, resume, and lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .chaos import ORPHAN_LIMIT_S, run_trials

pytestmark = pytest.mark.slow


def test_killed_primes_resume_without_lost_or_corrupt_batches(tmp_path: Path) -> None:
    results = run_trials(4, seed=20240601, workdir=tmp_path)
    details = json.dumps(results, indent=1, default=str)
    assert len(results) == 4
    assert {r["kind"] for r in results} == {"server", "worker"}, details
    for result in results:
        assert result["problems"] == [], details
        assert result["ok"], details
        assert result["resumed"] is True, details
        assert result["lost"] == 0 and result["corrupt"] == 0, details
        assert result["checked"] == result["total_batches"] > 0, details
        assert result["tmp_files"] == [], details
        if result["kind"] == "server":
            assert result["survivors"] == [], details
            assert result["orphans_gone_s"] is not None, details
            assert result["orphans_gone_s"] <= ORPHAN_LIMIT_S, details
            assert "worker" in result["descendants"], details
        else:
            assert result["first_prime"] == "failed" and result["first_error"], details
            assert result["pool_gone_s"] is not None, details
            assert result["pool_gone_s"] <= ORPHAN_LIMIT_S, details
