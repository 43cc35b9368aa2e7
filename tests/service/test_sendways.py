"""data_sendfile=auto: stored files go out the way that costs this server's process less CPU."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from batchstash.service.api.datapath import DataListener
from batchstash.service.api.sending import SendWays
from batchstash.service.config import build_settings

from .test_datapath import make_api

MIB = 1024**2


class Process:
    """A fake process clock: each reply costs its way's nanoseconds a byte (plus any burst)."""

    def __init__(self, sendfile_ns: float, mapped_ns: float) -> None:
        self.cost = {True: sendfile_ns, False: mapped_ns}
        self.now = 0

    def clock(self) -> int:
        return self.now

    def reply(self, ways: SendWays, nbytes: int = MIB) -> bool:
        way = ways.way()
        self.now += int(self.cost[way] * nbytes)
        ways.record(way, nbytes)
        return way

    def trial(self, ways: SendWays) -> list[bool]:
        taken = []
        while ways.choice is None:
            taken.append(self.reply(ways))
            assert len(taken) < 1000
        return taken


def make(process: Process, **kwargs: object) -> SendWays:
    options: dict = {"window_bytes": 4 * MIB, "windows": 3, **kwargs}
    return SendWays(clock=process.clock, **options)


def test_the_trial_alternates_windows_then_keeps_the_cheaper_way() -> None:
    process, chosen = Process(sendfile_ns=0.5, mapped_ns=0.3), []
    ways = make(process, on_choice=chosen.append)
    taken = process.trial(ways)
    # the first reply starts the first window; then 4 MiB windows, sendfile first, in turn
    assert taken == [True] + ([True] * 4 + [False] * 4) * 3
    assert ways.choice is False  # the mapped pages cost 0.6 x: they win
    assert all(process.reply(ways) is False for _ in range(10))
    assert chosen == [False]


@pytest.mark.parametrize(
    ("mapped_ns", "sendfile_kept"),
    [(0.30, False), (0.44, False), (0.47, True), (0.50, True), (0.70, True)],
)
def test_sendfile_stays_unless_the_mapped_pages_are_clearly_cheaper(
    mapped_ns: float, sendfile_kept: bool
) -> None:
    process = Process(sendfile_ns=0.5, mapped_ns=mapped_ns)
    ways = make(process, margin=0.9)  # the mapped pages must cost 0.9 x sendfile or less
    process.trial(ways)
    assert ways.choice is sendfile_kept


def test_one_busy_window_does_not_decide() -> None:
    process = Process(sendfile_ns=0.5, mapped_ns=0.3)
    ways = make(process)
    for _ in range(1 + 4 + 2):  # into the first mapped window
        process.reply(ways)
    process.now += 100 * MIB  # a burst of other work in this process, in a mapped window
    process.trial(ways)
    assert ways.choice is False  # the median of the three mapped windows is still cheaper


def test_the_trial_runs_again_after_retrial_bytes() -> None:
    process = Process(sendfile_ns=0.5, mapped_ns=0.2)
    ways = make(process, retrial_bytes=8 * MIB)
    process.trial(ways)
    for _ in range(7):
        process.reply(ways)
    assert ways.choice is False
    process.reply(ways)  # 8 MiB since the choice
    assert ways.choice is None
    process.cost = {True: 0.2, False: 0.5}  # the load changed
    process.trial(ways)
    assert ways.choice is True


def test_the_choice_is_logged_with_both_costs(caplog: pytest.LogCaptureFixture) -> None:
    process = Process(sendfile_ns=0.4, mapped_ns=0.25)
    with caplog.at_level(logging.INFO, logger="batchstash.service.api.sending"):
        process.trial(make(process))
    assert "stored files go out by mapped pages" in caplog.text
    assert "0.400 s/GB" in caplog.text and "0.250 by mapped pages" in caplog.text


def test_a_choice_is_logged_once_until_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    process = Process(sendfile_ns=0.5, mapped_ns=0.2)
    ways = make(process, retrial_bytes=MIB)
    with caplog.at_level(logging.INFO, logger="batchstash.service.api.sending"):
        for _ in range(3):  # three trials, the same choice
            process.trial(ways)
            process.reply(ways)
        process.cost = {True: 0.2, False: 0.5}
        process.trial(ways)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 2, lines
    assert "by mapped pages (" in lines[0] and "by sendfile (" in lines[1]


def test_concurrent_connections_record_safely() -> None:
    ways = SendWays(window_bytes=16 * MIB, windows=3)

    def connection() -> None:
        for _ in range(200):
            ways.record(ways.way(), MIB)

    threads = [threading.Thread(target=connection) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ways.choice is not None  # 800 MiB: the trial (96 MiB and a few) is over


def test_settings_take_true_false_or_auto() -> None:
    assert build_settings().data_sendfile == "auto"
    for given, parsed in (("auto", "auto"), ("AUTO", "auto"), ("true", True), ("off", False)):
        assert build_settings(data_sendfile=given).data_sendfile == parsed
    with pytest.raises(ValueError, match="expected true, false or auto, not 'sometimes'"):
        build_settings(data_sendfile="sometimes")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    api = make_api(tmp_path)
    yield api
    api.__exit__(None, None, None)


def test_auto_serves_the_same_bytes_both_ways_and_reports_its_choice(api: TestClient) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    # one stored group a batch: each payload is a stored file, sent unread once verified
    query = {"ids": "0,1,2,3,4,5", "attributes": "flower_dims"}
    expected = api.get("/v1/splits/train/payloads", params=query).content  # verified now
    with DataListener(state, "127.0.0.1", 0, sendfile="auto") as listener:
        assert listener.ways is not None
        # small trials, so that this test sees both ways and the choice
        listener.ways = SendWays(
            window_bytes=len(expected),
            windows=2,
            on_choice=lambda way: state.metrics.observe_send_way("auto", way),
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as http:
            metrics = api.get("/metrics").text
            assert 'batchstash_data_sendfile{setting="auto"} -1.0' in metrics
            for _ in range(8):  # 1 to start, 2 windows of 1 reply each way, then the choice
                got = http.get("/v1/splits/train/payloads", params=query)
                assert got.status_code == 200 and got.content == expected
            choice = listener.ways.choice
            assert choice is not None
            metrics = api.get("/metrics").text
            assert f'batchstash_data_sendfile{{setting="auto"}} {float(choice)}' in metrics


def test_the_listener_ways_follow_the_setting(api: TestClient) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    for sendfile, ways, fixed in ((True, False, True), (False, False, False), ("auto", True, True)):
        with DataListener(state, "127.0.0.1", 0, sendfile=sendfile) as listener:
            assert (listener.ways is not None) is ways and listener.sendfile is fixed
        metric = f'batchstash_data_sendfile{{setting="{str(sendfile).lower()}"}}'
        value = {True: "1.0", False: "0.0", "auto": "-1.0"}[sendfile]
        assert f"{metric} {value}" in api.get("/metrics").text
