"""``python -m benchmarks --update-doc`` rewrites the results block of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import benchmarks.__main__ as bench

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_LINK = re.compile(r"!\[benchmark chart\]\(([^)]+)\)")


def test_the_doc_it_rewrites_has_a_results_block_whose_chart_resolves() -> None:
    assert bench.DOC == REPO_ROOT / "docs" / "benchmarks.md"
    text = bench.DOC.read_text(encoding="utf-8")
    assert text.count(bench.START) == 1 and text.count(bench.END) == 1
    block = text.split(bench.START, 1)[1].split(bench.END, 1)[0]
    (link,) = CHART_LINK.findall(block)
    assert (bench.DOC.parent / link).resolve() == bench.CHART.resolve()
    assert bench.CHART.read_bytes()[:4] == b"\x89PNG"


def test_update_doc_replaces_only_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Head\n\n{bench.START}\nold table\n{bench.END}\n\n## Tail\n")
    monkeypatch.setattr(bench, "DOC", doc)
    bench._update_doc("Run 2026-12-06 10:00 on: a machine\n\n| new |", "../benchmarks/chart.png")
    assert doc.read_text() == (
        f"# Head\n\n{bench.START}\nRun 2026-12-06 10:00 on: a machine\n\n| new |\n"
        f"![benchmark chart](../benchmarks/chart.png)\n{bench.END}\n\n## Tail\n"
    )
