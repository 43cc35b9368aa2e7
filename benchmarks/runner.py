"""Which sections run, in which order, and the run itself.

Sections (:data:`SECTIONS`) run in their order, those without the consumer pool first (priming
and the in-process ones: the pool's start-up would slow them); then the stores the others read
are built and the pool starts. ``--only`` picks sections by name or alias (:data:`ALIASES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .consumers import ConsumerPool
from .profiles import Profile
from .suite import Suite

__all__ = ["ALIASES", "SECTIONS", "Section", "run", "select"]


@dataclass(frozen=True)
class Section:
    """A section: its measurement and whether it needs the consumer pool.

    Attributes:
        measure: the :class:`Suite` method.
        stores: the stores it reads (built before the pool starts when it uses the pool).
        pool: it runs consumers.
    """

    measure: Callable[[Suite], None]
    stores: tuple[str, ...] = ()
    pool: bool = True


SECTIONS: dict[str, Section] = {
    "priming": Section(Suite.priming, pool=False),
    "reference_prime": Section(Suite.reference_prime, pool=False),
    "status": Section(Suite.status_cost, pool=False),  # in process: before the consumer pool
    "ray": Section(Suite.ray, pool=False),  # priming too
    "own_data": Section(Suite.own_data, pool=False),  # priming too
    "compression": Section(Suite.compression, pool=False),  # servers and clients of its own
    "baselines": Section(Suite.local_baselines, ("large",), pool=False),
    "gpu": Section(Suite.cuda, pool=False),
    "dataloader": Section(Suite.dataloader, ("large",), pool=False),
    "link": Section(Suite.link, ("large", "small"), pool=False),  # root only
    "ceiling": Section(Suite.ceilings),
    "serving": Section(Suite.serving, ("large", "small")),
    "naive": Section(Suite.naive, ("large", "small")),
    "memory": Section(Suite.memory, ("prime", "large")),
    "rebatch": Section(Suite.rebatch, ("large", "small")),
    "s3": Section(Suite.s3_store),  # serving needs the consumers; they are idle while it primes
}
"""Every section, in run order (within: those without the pool, then those with it)."""

ALIASES = {"wire": ("ceiling", "serving")}
"""Names for several sections: ``wire`` is the ceiling and every serving row."""


def select(only: Sequence[str] | None = None) -> list[str]:
    """The sections to run, in run order: all of them, or those ``only`` names (or aliases).

    Raises:
        ValueError: an unknown name.
    """
    if not only:
        return list(SECTIONS)
    names = {n for name in only for n in ALIASES.get(name, (name,))}
    unknown = sorted(names - SECTIONS.keys())
    if unknown:
        raise ValueError(
            f"unknown section(s) {', '.join(unknown)}; choose from "
            f"{', '.join([*SECTIONS, *ALIASES])}"
        )
    return [name for name in SECTIONS if name in names]


def run(
    profile: Profile, work: Path, logs: Path, device: str, only: Sequence[str] | None = None
) -> dict[str, Any]:
    """Measure the chosen sections; servers and consumers are stopped whatever happens."""
    suite = Suite(profile, work, logs, device)
    chosen = select(only)
    later = [name for name in chosen if SECTIONS[name].pool]
    for name in chosen:
        if name not in later:
            SECTIONS[name].measure(suite)
    for name in later:  # built before the pool: priming and pool start-up would share the CPUs
        for store in SECTIONS[name].stores:
            suite.store(store)
    if later:
        with ConsumerPool(4) as pool:
            suite.pool = pool
            for name in later:
                SECTIONS[name].measure(suite)
    suite.results["sections"] = chosen
    return suite.results
