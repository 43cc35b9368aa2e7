"""The retry shorthands of ``BatchClient`` (``retries=``, ``backoff=``, ...) applied to a policy.

The client's keywords ``retries``, ``backoff``, ``max_delay``, ``cooldown``, ``max_cooldown``
and ``wait_for_prime`` predate :class:`~batchstash.client.policy.RetryPolicy` and still work:
each one given replaces that setting of the client's policy (``retries=N`` is ``attempts=N+1``,
``max_delay`` also caps ``Retry-After``). A pure function.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .policy import RetryPolicy

__all__ = ["with_shorthands"]


def with_shorthands(
    policy: RetryPolicy,
    *,
    retries: int | None,
    backoff: float | None,
    max_delay: float | None,
    cooldown: float | None,
    max_cooldown: float | None,
    wait_for_prime: float | None,
) -> RetryPolicy:
    """``policy`` with the constructor's shorthands applied (those given).

    Raises:
        ValueError: ``retries`` is negative (the policy checks the others).
    """
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("backoff", backoff),
            ("cooldown", cooldown),
            ("max_cooldown", max_cooldown),
            ("wait_for_prime", wait_for_prime),
        )
        if value is not None
    }
    if retries is not None:
        if retries < 0:
            raise ValueError(f"retries must not be negative, not {retries}")
        changes["attempts"] = retries + 1
    if max_delay is not None:
        changes["max_delay"] = changes["retry_after_cap"] = max_delay
    return replace(policy, **changes) if changes else policy
