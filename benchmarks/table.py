"""The report's table: a row type with its CPU columns, number formats, markdown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CPU_COLUMNS", "Row", "div", "fmt", "latency", "markdown", "rate", "times"]

CPU_COLUMNS = ("server CPU s/GB", "client CPU s/GB", "cores: server / client", "limit")


def fmt(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators, ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def div(a: float | None, b: float | None) -> float | None:
    """``a / b``, ``None`` when either is missing or ``b`` is zero."""
    return None if a is None or not b else a / b


def times(value: float | None, digits: int = 2) -> str:
    """A ratio as ``1.23 x``."""
    return "n/a" if value is None else f"{value:,.{digits}f} x"


def rate(run: Mapping[str, Any]) -> str:
    """MB/s and batches/s of a load run."""
    return f"{fmt(run['mb_s'])} MB/s, {fmt(run['batches_s'])} batches/s"


def latency(run: Mapping[str, Any]) -> str:
    """p50 and p99 of a load run's steps."""
    return f"p50 {fmt(run['p50_ms'], 2)} ms, p99 {fmt(run['p99_ms'], 2)} ms"


@dataclass(frozen=True)
class Row:
    """One line: a measurement, its value, its target's verdict, and its run's CPU columns.

    Attributes:
        section: the table section.
        measurement: what was measured.
        result: the value, formatted.
        target: the target, empty for information rows.
        met: the verdict; ``None`` with a target: not measured in this run.
        run: the load run the row shows, whose CPU columns it carries (``None``: no columns).
    """

    section: str
    measurement: str
    result: str
    target: str = ""
    met: bool | None = None
    run: Mapping[str, Any] | None = None

    @property
    def status(self) -> str:
        """``met``, ``NOT met``, ``n/a`` (a target not measured) or empty (no target)."""
        if not self.target:
            return ""
        return "n/a" if self.met is None else ("met" if self.met else "NOT met")

    def cpu(self) -> dict[str, str]:
        """The CPU columns (:data:`CPU_COLUMNS`), empty strings when the row has no run."""
        run = self.run
        if run is None or "client_cpu_s" not in run:
            return dict.fromkeys(CPU_COLUMNS, "")
        return dict(
            zip(
                CPU_COLUMNS,
                (
                    fmt(run["server_s_gb"], 2),
                    fmt(run["client_s_gb"], 2),
                    f"{fmt(run['server_cores'], 2)} / {fmt(run['client_cores'], 2)}",
                    run["limit"] or "n/a",
                ),
                strict=True,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        """The row for ``results.json``: its cells, the verdict as a boolean or ``None``."""
        return {
            "section": self.section,
            "measurement": self.measurement,
            "result": self.result,
            **self.cpu(),
            "target": self.target,
            "met": self.met,
        }


def markdown(table: list[Row], cpu: bool = True) -> str:
    """The rows as a GitHub markdown table, with the CPU columns or without."""
    names = ["section", "measurement", "result", *(CPU_COLUMNS if cpu else ()), "target", "status"]
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    for r in table:
        cells = [
            r.section,
            r.measurement,
            r.result,
            *(r.cpu().values() if cpu else ()),
            r.target,
            r.status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
