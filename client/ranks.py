"""This process's rank and world size: given, from ``torch.distributed``, or from torchrun's env.

The one place the client reads the environment: ``RANK`` and ``WORLD_SIZE`` are the contract
``torchrun`` (and ``torch.distributed.launch``, SLURM wrappers, Lightning...) documents for
telling a process its share of the work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["Ranks", "detect_rank", "resolve_rank"]

logger = logging.getLogger(__name__)


def _process_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the initialized default process group, if there is one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return None


def _environment(env: Mapping[str, str]) -> tuple[int, int] | None:
    """``(rank, world_size)`` from ``RANK`` and ``WORLD_SIZE``; ``None`` when neither is set.

    Raises:
        ValueError: only one of them is set, or either is not a valid integer.
    """
    rank, world = env.get("RANK"), env.get("WORLD_SIZE")
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        have, lack = ("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK")
        raise ValueError(
            f"{have} is set in the environment but {lack} is not: set both (as torchrun does) "
            "or neither, or pass rank= and world_size= explicitly"
        )
    try:
        found = int(rank), int(world)
    except ValueError:
        raise ValueError(
            f"RANK={rank!r} and WORLD_SIZE={world!r} in the environment must be integers"
        ) from None
    return found


@dataclass(frozen=True)
class Ranks:
    """A rank and world size, and where they came from.

    Attributes:
        rank: this process's rank.
        world_size: the number of ranks.
        source: where they came from, in words (``""``: both given).
    """

    rank: int
    world_size: int
    source: str

    def log(self) -> None:
        """Say where the rank came from: one INFO line (DEBUG when both were given)."""
        if self.source:
            logger.info("batchstash: rank %d of %d, from %s", *self.as_tuple(), self.source)
        else:
            logger.debug("batchstash: rank %d of %d, given", *self.as_tuple())

    def as_tuple(self) -> tuple[int, int]:
        """``(rank, world_size)``."""
        return self.rank, self.world_size


def detect_rank(
    rank: int | None = None,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Ranks:
    """:func:`resolve_rank`'s answer with its source, without logging it."""
    if rank is not None and world_size is not None:
        return Ranks(int(rank), int(world_size), "")
    detected, source = _process_group(), "the torch.distributed process group"
    if detected is None:
        environ = os.environ if env is None else env
        detected, source = _environment(environ), "the RANK/WORLD_SIZE environment"
    if detected is None:
        detected, source = (0, 1), "the default (no process group, no RANK/WORLD_SIZE)"
    given = "; rank given" if rank is not None else ""
    given = "; world_size given" if world_size is not None else given
    return Ranks(
        detected[0] if rank is None else int(rank),
        detected[1] if world_size is None else int(world_size),
        source + given,
    )


def resolve_rank(
    rank: int | None = None,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """Return ``(rank, world_size)``: the explicit values, else the launcher's, else ``(0, 1)``.

    A value left ``None`` comes from the first of:

    1. the initialized default ``torch.distributed`` process group (``get_rank()``,
       ``get_world_size()``);
    2. the ``RANK`` and ``WORLD_SIZE`` environment variables, which ``torchrun`` sets for every
       process it starts (both must be set, as integers). ``LOCAL_RANK`` is not read: it picks
       a process's GPU on its node, not its share of the data;
    3. rank 0 of 1.

    An explicit value always wins. Which source was used is logged at INFO, in one line.
    ``RANK``/``WORLD_SIZE`` are the only environment variables the client reads: they are the
    contract ``torchrun`` documents for telling each process its rank.

    Args:
        rank: this process's rank, or ``None`` to detect it.
        world_size: the number of ranks, or ``None`` to detect it.
        env: the environment to read (default: ``os.environ``).

    Raises:
        ValueError: only one of ``RANK`` and ``WORLD_SIZE`` is set, or one is not an integer,
            while a value is to be detected.
    """
    found = detect_rank(rank, world_size, env)
    found.log()
    return found.as_tuple()
