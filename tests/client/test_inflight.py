"""The pipelined window is the link's bandwidth-delay product, measured with an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchstash.client.inflight import InFlight


class Link:
    """One connection: requests take ``rtt`` to answer and bodies share the link's ``rate``.

    The reader keeps ``InFlight.window`` requests outstanding and sends the next when an answer
    ends, as the pipelined reader does; the clock is the simulation's.
    """

    def __init__(self, rtt: float, rate: float, size: int, floor: int, **kwargs: int) -> None:
        self.now = 0.0
        self.rtt, self.rate, self.size = rtt, rate, size
        self.sizer = InFlight(floor, clock=lambda: self.now, **kwargs)
        self.outstanding: list[float] = []  # send times
        self.ends: list[float] = []
        self.now += rtt  # the handshake
        self.sizer.connected(rtt)

    def run(self, answers: int, starved: bool = True) -> None:
        link_free = self.now
        while len(self.ends) < answers:
            while len(self.outstanding) < self.sizer.window:
                self.outstanding.append(self.now)
            sent = self.outstanding.pop(0)
            head = max(sent + self.rtt, link_free)  # the answer queues behind the previous one
            self.now = head
            self.sizer.head()
            self.now = link_free = head + self.size / self.rate
            self.sizer.body(self.size, starved=starved)
            self.ends.append(self.now)

    def throughput(self, last: int) -> float:
        span = self.ends[-1] - self.ends[-last - 1]
        return last * self.size / span


def test_a_long_link_grows_the_window_to_its_bandwidth_delay_product() -> None:
    # 1 Gbit/s, 10 ms round trip, 67 KB batches: three in flight carry 20 MB/s of 125
    link = Link(rtt=0.010, rate=125e6, size=67_584, floor=3)
    link.run(400)
    assert link.sizer.window == math.ceil(125e6 * 0.010 / 67_584) + 1  # 20
    assert link.sizer.round_trip == pytest.approx(0.010)
    assert link.sizer.rate == pytest.approx(125e6)
    assert link.throughput(100) >= 0.95 * 125e6


def test_loopback_keeps_the_callers_window() -> None:
    link = Link(rtt=100e-6, rate=3e9, size=2**20, floor=3)  # the product is a fraction of a batch
    link.run(200)
    assert link.sizer.window == 3


def test_the_byte_budget_caps_the_window() -> None:
    link = Link(rtt=0.050, rate=1.25e9, size=2**20, floor=3, budget=16 * 2**20)
    link.run(300)
    assert link.sizer.window == 16  # the product is 60 batches; 16 MiB hold 16


def test_a_window_never_shrinks_after_a_slow_spell() -> None:
    link = Link(rtt=0.010, rate=125e6, size=67_584, floor=3)
    link.run(300)
    grown = link.sizer.window
    link.rate = 10e6  # the link slows down
    link.run(400)
    assert link.sizer.window == grown


@settings(max_examples=60, deadline=None)
@given(
    rtt=st.floats(1e-4, 0.05),
    rate=st.floats(1e7, 1.25e9),
    size=st.integers(4_096, 4 * 2**20),
    floor=st.integers(1, 8),
)
def test_the_window_reaches_the_link_rate_within_the_budget(
    rtt: float, rate: float, size: int, floor: int
) -> None:
    link = Link(rtt=rtt, rate=rate, size=size, floor=floor)
    link.run(400)
    budget_groups = max(floor, (64 * 2**20) // size)
    assert floor <= link.sizer.window <= budget_groups
    if link.sizer.window < budget_groups:  # not capped: the pipe is full
        assert link.throughput(50) >= 0.9 * rate


def test_no_round_trip_yet_keeps_the_floor() -> None:
    clock = iter(range(100))
    sizer = InFlight(4, clock=lambda: float(next(clock)))
    for _ in range(5):
        sizer.head()
        assert sizer.body(10**6) == 4  # a rate, but no connection timed


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="floor must be at least 1"):
        InFlight(0)
    with pytest.raises(ValueError, match="budget must not be negative"):
        InFlight(3, budget=-1)


def test_a_zero_budget_keeps_the_floor() -> None:
    link = Link(rtt=0.010, rate=125e6, size=67_584, floor=3, budget=0)
    link.run(200)
    assert link.sizer.window == 3


def test_a_consumer_that_is_never_starved_keeps_the_floor() -> None:
    link = Link(rtt=0.010, rate=125e6, size=67_584, floor=3)
    link.run(200, starved=False)  # a trainer slower than the link: answers wait for it
    assert link.sizer.window == 3
    assert link.sizer.link() == (pytest.approx(125e6), pytest.approx(0.010))  # still measured
    link.run(210)  # it falls behind the link: the window grows to the product
    assert link.sizer.window == math.ceil(125e6 * 0.010 / 67_584) + 1


@pytest.mark.parametrize(("budget", "expected"), [(64 * 2**20, 20), (0, 3)])
def test_a_learned_link_sizes_the_next_window_from_its_first_answer(
    budget: int, expected: int
) -> None:
    first = Link(rtt=0.010, rate=125e6, size=67_584, floor=3)
    first.run(100)
    now = [0.0]
    sizer = InFlight(3, budget=budget, clock=lambda: now[0])
    sizer.learn(first.sizer.link())  # a new reader of the same URL
    sizer.head()
    now[0] = 0.001
    assert sizer.body(67_584) == expected  # no ramp: the first answer sizes it (budget 0: never)
    fresh = InFlight(3, clock=lambda: now[0])
    fresh.learn(None)
    assert fresh.link() is None and fresh.body(67_584) == 3
