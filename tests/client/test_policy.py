"""RetryPolicy: which failures retry, the delays, the budget, on an injected clock."""

from __future__ import annotations

import dataclasses

import pytest

from batchstash.client import RetryPolicy
from batchstash.client.policy import CONNECT, READ, Failure

from .fakeserver import FakeClock


def exact(**kwargs: object) -> tuple[RetryPolicy, FakeClock]:
    """A policy without jitter on a clock at 0 that moves only when told."""
    clock = FakeClock(now=0.0)
    return clock.policy(RetryPolicy(**kwargs)), clock  # type: ignore[arg-type]


def test_the_default_rides_out_a_minute_of_outage() -> None:
    policy = RetryPolicy()
    assert policy.attempts is None and policy.budget >= 60
    assert policy.describe() == "up to 90 s"
    assert RetryPolicy(attempts=3, budget=10).describe() == "3 attempts within 10 s"
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.budget = 1  # type: ignore[misc]


def test_backoff_doubles_up_to_max_delay() -> None:
    policy, _ = exact()
    assert [policy.next_delay(n) for n in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert policy.next_delay(10_000) == 5.0  # no overflow


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 0.4), (0.5, 0.8), (0.999, 1.1992)])
def test_jitter_spreads_each_delay(rand: float, expected: float) -> None:
    policy = RetryPolicy(backoff=0.2, rand=lambda: rand)
    assert policy.next_delay(2) == pytest.approx(expected)
    capped = RetryPolicy(backoff=4.0, max_delay=5.0, rand=lambda: 0.999)
    assert capped.next_delay(0) == 5.0  # never beyond max_delay, jitter included


def test_retry_after_is_honoured_and_capped() -> None:
    policy, _ = exact(retry_after_cap=30.0)
    assert policy.next_delay(0, retry_after=3.0) == 3.0
    assert policy.next_delay(4, retry_after=3.0) == 3.0  # the server's hint, not the backoff
    assert policy.next_delay(0, retry_after=120.0) == 30.0
    assert policy.next_delay(0, retry_after=-5.0) == 0.0


@pytest.mark.parametrize(
    ("method", "failure", "retry_after", "retried"),
    [
        ("GET", CONNECT, None, True),
        ("POST", CONNECT, None, True),  # never sent: safe for any method
        ("GET", READ, None, True),
        ("PUT", READ, None, True),
        ("DELETE", READ, None, True),
        ("POST", READ, None, False),  # may have been acted on
        ("GET", 500, None, True),
        ("GET", 502, None, True),
        ("POST", 502, None, False),
        ("POST", 500, None, False),
        ("POST", 503, None, True),  # the server refused to act
        ("GET", 404, None, False),
        ("GET", 400, None, False),
        ("GET", 409, None, False),
        ("GET", 409, 1.0, True),
        ("POST", 409, 1.0, True),
        ("GET", 501, None, False),
    ],
)
def test_which_failures_are_retried(
    method: str, failure: Failure, retry_after: float | None, retried: bool
) -> None:
    assert RetryPolicy().retries(method, failure, retry_after) is retried


def test_methods_and_statuses_are_configurable() -> None:
    policy = RetryPolicy(methods=frozenset({"get", "post"}), statuses=frozenset({502}))
    assert policy.methods == {"GET", "POST"}
    assert policy.retries("POST", READ) and policy.retries("POST", 502)
    assert not policy.retries("GET", 500) and not policy.retries("DELETE", READ)


def test_the_budget_ends_the_retries_and_shortens_the_last_wait() -> None:
    policy, clock = exact(budget=10.0, backoff=4.0, max_delay=4.0)
    assert policy.delay("GET", CONNECT, 0, started=0.0) == 4.0
    clock.now = 8.0
    assert policy.delay("GET", CONNECT, 3, started=0.0) == 2.0  # lands on the budget
    clock.now = 10.0
    assert policy.delay("GET", CONNECT, 4, started=0.0) is None
    assert policy.delay("GET", 404, 0, started=10.0) is None  # not retried at all


def test_attempts_count_every_try() -> None:
    policy, _ = exact(attempts=3)
    assert policy.delay("GET", CONNECT, 0, started=0.0) is not None
    assert policy.delay("GET", CONNECT, 1, started=0.0) is not None
    assert policy.delay("GET", CONNECT, 2, started=0.0) is None
    once, _ = exact(attempts=1)
    assert once.delay("GET", 503, 0, started=0.0, retry_after=1.0) is None


def test_cooldowns_use_the_same_backoff() -> None:
    policy = RetryPolicy(cooldown=1.0, max_cooldown=30.0)
    assert [policy.cooldown_for(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("budget", -1.0, "budget must not be negative"),
        ("backoff", -0.1, "backoff must not be negative"),
        ("cooldown", -1.0, "cooldown must not be negative"),
        ("attempts", 0, "attempts must be at least 1"),
        ("jitter", 1.5, "jitter must be at most 1"),
    ],
)
def test_bad_settings_are_refused(field: str, value: float, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
