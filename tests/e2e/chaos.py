"""Crash-safety trials: ``kill -9`` a priming server or one of its workers, resume, verify.

Each trial starts a real ``batchstash serve`` on a fresh data dir with the slow iris factory (30
small batches, about 3 s of priming on 2 cores), POSTs a prime and, at a seeded random moment of
it, sends ``SIGKILL`` to either

* the server: every process that descended from it (the priming workers and multiprocessing's
  resource tracker) must be gone within :data:`ORPHAN_LIMIT_S`; then a new server is started on
  the same data dir and primes again (a resume);
* one priming worker: that prime must fail with an error and the pool's other workers must end;
  then the same server primes again.

The resumed prime must reach ``done`` and leave no ``.tmp`` file, and every batch of every split
is fetched over HTTP (the client verifies checksums and identity) and compared with an in-process
load of the data dir and with a reference store encoded by the trial runner: a batch that is missing
counts as lost, one that fails a check or differs as corrupt. Both must be 0.

To snapshot the server's process tree exactly at the kill (no new child can appear in between),
the server is stopped with ``SIGSTOP``, its descendants are read from ``/proc`` and ``SIGKILL``
follows at once; to its children that is the same as a plain ``kill -9``.

The trials run in a child process against a copy of the code (``<workdir>/code``) taken when the
run starts, so a working tree edited during a run cannot mix two versions (a server and the
in-process loads disagreeing on the dataset's fingerprint).

Run it as ``python -m tests.e2e.chaos --trials 20``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from batchstash.client import (
    BatchClient,
    BatchstashError,
    NotFoundError,
    NotPrimedError,
)
from batchstash.service import BatchStash

from .conftest import REPO_ROOT, TOKEN, Server, start_server

FACTORY = "tests.e2e.factories:slow_iris"
OPTIONS: dict[str, Any] = {"delay": 0.02, "batch_size": 5}  # 30 batches of 5 flowers
WORKERS = 2
ORPHAN_LIMIT_S = 5.0  # every descendant of a killed server must be gone within this
OBSERVE_S = 10.0  # how long survivors are watched before they are reported and killed
PRIME_TIMEOUT_S = 40.0
START_TIMEOUT_S = 30.0
POLL_S = 0.05
RESULT_MARK = "@@chaos-result "


# -- processes, from /proc --------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, str] | None:
    """``(state, ppid, start ticks)`` of a process, ``None`` when there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), fields[19]


def _alive(pid: int, started: str) -> bool:
    """Whether the process that had ``started`` ticks still runs (a zombie has ended)."""
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                found.update(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            pass
    return sorted(found)


def _descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` with its start ticks."""
    result: dict[int, str] = {}
    stack = [pid]
    while stack and len(result) < 1000:
        for child in _children(stack.pop()):
            stat = _stat(child)
            if stat is not None and child not in result and stat[0] not in ("Z", "X"):
                result[child] = stat[2]
                stack.append(child)
    return result


def _role(cmdline: str) -> str:
    if "resource_tracker" in cmdline:
        return "resource_tracker"
    if "multiprocessing.spawn" in cmdline or "spawn_main" in cmdline:
        return "worker"
    return "other"


def _workers(pid: int) -> list[int]:
    return [p for p in _children(pid) if _role(_cmdline(p)) == "worker"]


def _describe(pid: int, started: str) -> dict[str, Any]:
    stat = _stat(pid)
    return {
        "pid": pid,
        "state": None if stat is None or stat[2] != started else stat[0],
        "ppid": None if stat is None else stat[1],
        "cmdline": _cmdline(pid)[:200],
    }


def _watch_gone(
    procs: dict[int, str], since: float, timeout: float
) -> tuple[dict[int, float], list[dict[str, Any]]]:
    """Poll until every process of ``procs`` ended (or ``timeout``).

    Returns:
        Seconds from ``since`` until each one was seen gone, and the survivors (described).
    """
    gone: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        for pid, started in procs.items():
            if pid not in gone and not _alive(pid, started):
                gone[pid] = now - since
        if len(gone) == len(procs) or now >= deadline:
            break
        time.sleep(0.01)
    survivors = [_describe(p, s) for p, s in procs.items() if p not in gone]
    return gone, survivors


def _kill_procs(procs: dict[int, str]) -> None:
    """SIGKILL what is left of processes this run started (checked by start ticks)."""
    for pid, started in procs.items():
        if _alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- servers ----------------------------------------------------------------------------------


def _start(data_dir: Path, log: Path) -> Server:
    env = {"BATCHSTASH_DATASET_OPTIONS": json.dumps(OPTIONS)}
    return start_server(
        data_dir,
        log,
        "--dataset",
        FACTORY,
        "--workers",
        str(WORKERS),
        env=env,
        timeout=START_TIMEOUT_S,
    )


def _stop(server: Server, seen: dict[int, str]) -> list[dict[str, Any]]:
    """Terminate the server (kill it after a timeout), then anything left of its descendants.

    Returns:
        The descendants still alive 3 s after the server ended (they are killed).
    """
    if server.process.poll() is None:
        seen.update(_descendants(server.process.pid))
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)
    _, survivors = _watch_gone(seen, time.monotonic(), 3.0)
    if survivors:
        _kill_procs(seen)
    return survivors


def _client(url: str) -> BatchClient:
    """A client with bounded waits: 10 s a request, 2 quick retries."""
    return BatchClient(url, token=TOKEN, timeout=10, retries=2, backoff=0.1, max_delay=1)


def _wait(what: str, check: Callable[[], dict[str, Any] | None], timeout: float) -> dict[str, Any]:
    """Poll ``check`` until it returns a body (never past ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = check()
        if body is not None:
            return body
        time.sleep(POLL_S)
    raise TrialError(f"timed out after {timeout:.0f}s waiting for {what}")


def _until_not_running(client: BatchClient, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = client.status()
        return None if status["state"] == "running" else status

    return _wait("the prime to end", check, timeout)


class TrialError(Exception):
    """A trial could not go on (the reason is reported)."""


# -- verification -----------------------------------------------------------------------------


def _stored_batches(data_dir: Path, groups: int) -> int:
    """Batches whose every group object is in the data dir."""
    return sum(
        1
        for d in data_dir.glob("batches/*/*/*")
        if d.is_dir() and len(list(d.glob("*.safetensors"))) == groups
    )


def _leftover_tmp(data_dir: Path) -> tuple[list[str], list[str]]:
    """``.tmp`` files left behind, and those that were only a write in flight.

    Every write makes a uniquely named temporary file for a moment (the server may still renew
    ``job.json`` just after reporting ``done``), so a file counts as left behind only when it is
    still there a second later.
    """
    seen = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*.tmp"))
    if not seen:
        return [], []
    time.sleep(1.0)
    left = [name for name in seen if (data_dir / name).exists()]
    return left, [name for name in seen if name not in left]


def _verify(url: str, data_dir: Path, reference: BatchStash) -> dict[str, Any]:
    """Fetch every batch of every split and compare; count lost and corrupt batches."""
    engine = BatchStash.from_factory(FACTORY, path=str(data_dir), **OPTIONS)
    expected = reference.split_counts()
    lost, corrupt, checked = 0, 0, 0
    problems: list[str] = []
    with _client(url) as client:
        splits = client.splits()
        if splits.get("primed") is not True:
            problems.append(f"splits()['primed'] is {splits.get('primed')!r}")
        if splits.get("fingerprint") != reference.config_hash:
            problems.append(f"fingerprint {splits.get('fingerprint')} != {reference.config_hash}")
        for split, counts in sorted(expected.items()):
            served = splits["splits"].get(split)
            if served is None or served["batches"] != counts["batches"]:
                problems.append(f"split {split}: served {served}, expected {counts}")
            ids = client.batch_ids(split) if served is not None else []
            if ids != list(range(counts["batches"])):
                problems.append(f"split {split}: batch ids {ids}")
            if served is not None and served.get("stored") != counts["batches"]:
                problems.append(f"split {split}: stored {served.get('stored')}")
            for batch_id in range(counts["batches"]):
                checked += 1
                try:
                    batch = client.batch(split, batch_id)
                    local = engine.load(split, batch_id)
                except (NotFoundError, NotPrimedError) as exc:
                    lost += 1
                    problems.append(f"lost {split}/{batch_id}: {exc.code}: {exc.message}")
                    continue
                except BatchstashError as exc:  # checksum, payload, corrupt store...
                    corrupt += 1
                    problems.append(f"corrupt {split}/{batch_id}: {exc.code}: {exc.message}")
                    continue
                ref = reference.load(split, batch_id)
                why = _difference(split, batch_id, batch, local, ref)
                if why:
                    corrupt += 1
                    problems.append(f"corrupt {split}/{batch_id}: {why}")
    return {"checked": checked, "lost": lost, "corrupt": corrupt, "problems": problems}


def _difference(split: str, batch_id: int, served: Any, local: Any, ref: Any) -> str:
    if served.split_name != split or served.id != batch_id:
        return f"served as {served.split_name}/{served.id}"
    for name, other in (("in-process load", local), ("reference", ref)):
        if list(served.data_point_ids) != list(other.data_point_ids):
            return f"data point ids differ from the {name}"
        if set(served.attributes) != set(other.attributes):
            return f"attributes {sorted(served.attributes)} != {name} {sorted(other.attributes)}"
        for attr, tensor in other.attributes.items():
            if not torch.equal(served[attr], tensor):
                return f"attribute {attr} differs from the {name}"
    return ""


def _reference(workdir: Path) -> BatchStash:
    """The same dataset, encoded in this process into its own store (the expected batches)."""
    stash = BatchStash.from_factory(FACTORY, path=str(workdir / "reference"), **OPTIONS)
    counts = stash.split_counts()
    if any(c["stored"] != c["batches"] for c in counts.values()):
        stash.prime()
    return stash


# -- one trial --------------------------------------------------------------------------------


def _kill_point(rng: random.Random, started: float, data_dir: Path, groups: int, total: int) -> str:
    """Wait for a random moment of the prime: a random time, or a random number of batches
    stored (counted in the data dir, so at least a third of them are left) plus a jitter."""
    if rng.random() < 0.5:
        delay = rng.uniform(0.1, 2.0)
        time.sleep(max(0.0, started + delay - time.monotonic()))
        return f"t+{delay:.2f}s"
    target = rng.randint(1, max(1, total * 2 // 3))
    jitter = rng.uniform(0.0, 0.2)
    _wait(
        f"{target} stored batches",
        lambda: {} if _stored_batches(data_dir, groups) >= target else None,
        15.0,
    )
    time.sleep(jitter)
    return f"{target} stored+{jitter:.2f}s"


def _kill_server(server: Server, result: dict[str, Any], seen: dict[int, str]) -> None:
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)  # freeze the tree: no child can start between snapshot and kill
    try:
        tree = _descendants(pid)
        roles = {p: _role(_cmdline(p)) for p in tree}
    finally:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    seen.update(tree)
    result["killed"] = {"pid": pid, "role": "server"}
    server.process.wait(timeout=10)  # reap it, as a container's init would
    gone, survivors = _watch_gone(tree, killed, OBSERVE_S)
    result["descendants"] = sorted(roles.values())
    result["orphans_gone_s"] = max(gone.values(), default=0.0) if not survivors else None
    result["orphans"] = [
        {"pid": p, "role": roles[p], "gone_s": round(gone[p], 3)} for p in sorted(gone)
    ]
    result["survivors"] = survivors
    if survivors or max(gone.values(), default=0.0) > ORPHAN_LIMIT_S:
        result["problems"].append(
            f"descendants of the killed server outlived {ORPHAN_LIMIT_S}s: "
            + (json.dumps(survivors) if survivors else json.dumps(result["orphans"]))
        )
    _kill_procs(tree)


def _kill_worker(
    server: Server, rng: random.Random, result: dict[str, Any], seen: dict[int, str]
) -> None:
    pid = server.process.pid
    workers = _workers(pid)
    if not workers:
        raise TrialError("no priming worker to kill")
    victim = rng.choice(workers)
    pool = {p: stat[2] for p in workers if (stat := _stat(p)) is not None}
    seen.update(pool)
    command = _cmdline(victim)[:120]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    result["killed"] = {"pid": victim, "role": "worker", "cmdline": command}
    result["descendants"] = sorted(_role(_cmdline(p)) for p in _descendants(pid))
    gone, survivors = _watch_gone(pool, killed, OBSERVE_S)
    result["pool_gone_s"] = max(gone.values(), default=0.0) if not survivors else None
    result["survivors"] = survivors
    if survivors or max(gone.values(), default=0.0) > ORPHAN_LIMIT_S:
        result["problems"].append(
            f"workers of the broken pool outlived {ORPHAN_LIMIT_S}s: {json.dumps(survivors)}"
        )


def _prime_until_done(client: BatchClient, result: dict[str, Any]) -> dict[str, Any]:
    """POST a prime that starts a new job and wait for its end.

    A prime POSTed when no job runs must start one. If the answer is ``joined`` to a job that is
    no longer running (the server's last prime thread had not quite ended), that is recorded in
    ``join_race`` and the POST is sent again (for at most 5 s): the trial goes on to test the
    resume.
    """
    deadline = time.monotonic() + 5.0
    while True:
        body = client.prime()
        if not body.get("joined"):
            break
        if body.get("state") == "running":
            result["problems"].append(f"the resuming prime joined a running job: {body}")
            break
        result["join_race"].append(
            {"state": body.get("state"), "job_id": body.get("job_id"), "error": body.get("error")}
        )
        if time.monotonic() >= deadline:
            result["problems"].append(f"every prime POSTed for 5 s joined a finished job: {body}")
            break
        time.sleep(0.1)
    return _until_not_running(client, PRIME_TIMEOUT_S)


def run_trial(
    index: int, kind: str, rng: random.Random, workdir: Path, reference: BatchStash
) -> dict[str, Any]:
    """One trial (``kind`` is ``server`` or ``worker``); the result says what happened."""
    root = workdir / f"trial-{index:02d}-{kind}"
    root.mkdir(parents=True, exist_ok=False)
    data = root / "data"
    result: dict[str, Any] = {
        "trial": index,
        "kind": kind,
        "dir": str(root),
        "problems": [],
        "lost": None,
        "corrupt": None,
        "resumed": False,
        "orphans_gone_s": None,
        "pool_gone_s": None,
        "join_race": [],
    }
    groups = len(reference.groups)
    servers: list[Server] = []
    seen: dict[int, str] = {}
    began = time.monotonic()
    try:
        server = _start(data, root / "server-1.log")
        servers.append(server)
        with _client(server.url) as client:
            total = sum(c["batches"] for c in client.splits()["splits"].values())
            result["total_batches"] = total
            body = client.prime()
            started = time.monotonic()
            if body.get("joined"):
                raise TrialError(f"the first prime joined a job: {body}")
            _wait("the priming workers", lambda: {} if _workers(server.process.pid) else None, 10.0)
            result["kill_point"] = _kill_point(rng, started, data, groups, total)
            result["state_at_kill"] = client.status()["state"]
            result["stored_before_kill"] = _stored_batches(data, groups)
            result["kill_at_s"] = round(time.monotonic() - started, 3)
            if kind == "server":
                _kill_server(server, result, seen)
            else:
                _kill_worker(server, rng, result, seen)
            result["stored_after_kill"] = _stored_batches(data, groups)
            if kind == "worker":
                first = _until_not_running(client, PRIME_TIMEOUT_S)
                result["first_prime"] = first["state"]
                result["first_error"] = first.get("error")
                late = result["stored_before_kill"] >= total  # nothing was left to encode
                if not late and (first["state"] != "failed" or not first.get("error")):
                    result["problems"].append(
                        f"the prime whose worker was killed ended {first['state']!r} "
                        f"(error {first.get('error')}), not 'failed' with an error"
                    )
        if kind == "server":
            server = _start(data, root / "server-2.log")
            servers.append(server)
        with _client(server.url) as client:
            if kind == "server":
                status = client.status()
                result["first_prime"] = status["state"]
                result["first_error"] = status.get("error")
            final = _prime_until_done(client, result)
            result["resume_state"] = final["state"]
            result["resume_error"] = final.get("error")
            result["resumed"] = final["state"] == "done" and final.get("error") is None
            if not result["resumed"]:
                result["problems"].append(
                    f"the resumed prime ended {final['state']!r}: {final.get('error')}"
                )
        result["tmp_files"], result["transient_tmp"] = _leftover_tmp(data)
        if result["tmp_files"]:
            result["problems"].append(
                f".tmp files left after the resumed prime: {result['tmp_files']}"
            )
        checked = _verify(server.url, data, reference)
        result.update(lost=checked["lost"], corrupt=checked["corrupt"], checked=checked["checked"])
        result["problems"].extend(checked["problems"])
    except TrialError as exc:
        result["problems"].append(str(exc))
    except Exception as exc:  # whatever broke, the trial is reported and the next one runs
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result["problems"].append(
            f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {exc}"
        )
    finally:
        for server in servers:
            try:
                left = _stop(server, seen)
                if left:  # reported, not failed: a graceful stop is not what is on trial
                    result.setdefault("left_after_stop", []).extend(left)
            except (OSError, subprocess.TimeoutExpired) as exc:
                result["problems"].append(f"stopping {server.url}: {exc}")
        _kill_procs(seen)
    result["logs"] = [str(p) for p in sorted(root.glob("*.log"))]
    result["seconds"] = round(time.monotonic() - began, 2)
    result["ok"] = (
        not result["problems"]
        and result["resumed"]
        and result["lost"] == 0
        and result["corrupt"] == 0
    )
    return result


def _kind(seed: int, index: int) -> str:
    """What trial ``index`` kills: server and worker alternate, the seed picks the first."""
    return ("server", "worker")[(index + random.Random(seed).randrange(2)) % 2]


def _run_here(
    trials: int, seed: int, workdir: Path, report: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """The trials, in this process (see :func:`run_trials`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    reference = _reference(workdir)
    results = []
    for index in range(trials):
        rng = random.Random(f"{seed}-{index}")
        result = run_trial(index, _kind(seed, index), rng, workdir, reference)
        results.append(result)
        if report:
            report(result)
    return results


def _snapshot(workdir: Path) -> Path:
    """A frozen copy of the code the trials run (the package, and the tests they import)."""
    code = workdir / "code"
    if code.exists():
        shutil.rmtree(code)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "client", code / "batchstash" / "client", ignore=skip)
    shutil.copytree(REPO_ROOT / "service", code / "batchstash" / "service", ignore=skip)
    (code / "tests" / "e2e").mkdir(parents=True)
    for name in (
        "tests/__init__.py",
        "tests/e2e/__init__.py",
        "tests/e2e/conftest.py",
        "tests/e2e/factories.py",
        "tests/e2e/chaos.py",
    ):
        shutil.copy2(REPO_ROOT / name, code / name)
    return code


def _placeholder(index: int, kind: str, why: str) -> dict[str, Any]:
    return {
        "trial": index,
        "kind": kind,
        "ok": False,
        "problems": [why],
        "lost": None,
        "corrupt": None,
        "resumed": False,
        "orphans_gone_s": None,
        "pool_gone_s": None,
        "join_race": [],
        "logs": [],
        "seconds": 0.0,
    }


def run_trials(
    trials: int,
    seed: int,
    workdir: Path,
    report: Callable[[dict[str, Any]], None] | None = None,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Run ``trials`` crash trials under ``workdir``; kills alternate between server and worker.

    The trials run in a child process against a copy of the code taken now (under
    ``workdir/code``), so the servers, their workers and the in-process loads all run one version
    of it even while the working tree is being edited.

    Args:
        trials: how many trials.
        seed: seeds the first kind and every trial's kill moment and victim.
        workdir: a directory for the code copy, data dirs, logs and the reference store.
        report: called with each trial's result as soon as it is known.
        echo: print the child's output (a line per trial).

    Returns:
        One result per trial (``ok`` says whether it passed, ``problems`` why not).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    code = _snapshot(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    env["PYTHONPATH"] = str(code)
    command = [
        sys.executable,
        "-m",
        "tests.e2e.chaos",
        "--child",
        "--trials",
        str(trials),
        "--seed",
        str(seed),
        "--workdir",
        str(workdir),
    ]
    child = subprocess.Popen(
        command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for text in child.stdout:
            lines.put(text)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    results: dict[int, dict[str, Any]] = {}
    tail: list[str] = []
    deadline = time.monotonic() + 120 + 60 * trials
    ended = False
    while not ended and time.monotonic() < deadline:
        try:
            text = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if text is None:
            ended = True
        elif text.startswith(RESULT_MARK):
            result = json.loads(text[len(RESULT_MARK) :])
            results[result["trial"]] = result
            if report:
                report(result)
        else:
            tail = [*tail[-40:], text.rstrip()]
            if echo:
                print(text, end="", flush=True)
    if not ended:
        tail.append(f"the trial runner (pid {child.pid}) ran past its deadline: stopped")
        child.terminate()  # its SIGTERM handler stops the servers it started
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=10)
    why = f"the trial runner exited {child.returncode} before this trial:\n" + "\n".join(tail)
    return [results.get(i) or _placeholder(i, _kind(seed, i), why) for i in range(trials)]


# -- the command ------------------------------------------------------------------------------


def _line(result: dict[str, Any]) -> str:
    orphans = (
        result.get("orphans_gone_s") if result["kind"] == "server" else result.get("pool_gone_s")
    )
    gone = "-" if orphans is None else f"{orphans:.2f}s"
    return (
        f"trial {result['trial']:2d} {'PASS' if result['ok'] else 'FAIL'} kill {result['kind']:6s}"
        f" at {result.get('kill_at_s', float('nan')):.2f}s ({result.get('kill_point', '?')}, "
        f"{result.get('state_at_kill', '?')}, {result.get('stored_before_kill', '?')}/"
        f"{result.get('total_batches', '?')} stored) "
        f"{'orphans' if result['kind'] == 'server' else 'pool'} gone {gone}, "
        f"first {result.get('first_prime', '?')}, resume {result.get('resume_state', '?')}, "
        f"lost {result['lost']}, corrupt {result['corrupt']}, {result['seconds']:.1f}s"
    )


def summarize(results: list[dict[str, Any]], seconds: float) -> str:
    """The summary table of a run."""

    def count(key: str, value: Any) -> int:
        return sum(1 for r in results if r.get(key) == value)

    orphan = [r["orphans_gone_s"] for r in results if r.get("orphans_gone_s") is not None]
    pool = [r["pool_gone_s"] for r in results if r.get("pool_gone_s") is not None]
    rows = [
        ("trials", str(len(results))),
        ("passed", str(count("ok", True))),
        ("kills: server / worker", f"{count('kind', 'server')} / {count('kind', 'worker')}"),
        (
            "kills landing while priming",
            str(
                sum(
                    1
                    for r in results
                    if r.get("state_at_kill") == "running"
                    and r.get("stored_before_kill", 0) < r.get("total_batches", 0)
                )
            ),
        ),
        (
            "lost batches",
            str(sum(r["lost"] or 0 for r in results))
            + ("" if all(r["lost"] is not None for r in results) else " (some not verified)"),
        ),
        ("corrupt batches", str(sum(r["corrupt"] or 0 for r in results))),
        ("max s until orphans gone (server kill)", f"{max(orphan):.2f}" if orphan else "-"),
        ("max s until pool gone (worker kill)", f"{max(pool):.2f}" if pool else "-"),
        ("resumes completed", f"{count('resumed', True)} / {len(results)}"),
        (
            "re-primes joining a finished job (race)",
            str(sum(1 for r in results if r.get("join_race"))),
        ),
        (
            "transient .tmp (writes in flight) seen",
            str(sum(len(r.get("transient_tmp", [])) for r in results)),
        ),
        (
            "processes left after a graceful stop",
            str(sum(len(r.get("left_after_stop", [])) for r in results)),
        ),
        ("total time", f"{seconds:.1f}s"),
    ]
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 14)
    return "\n".join([rule, *(f"{name:<{width}}  {value:>10}" for name, value in rows), rule])


def _child(trials: int, seed: int, workdir: Path) -> int:
    """The trial runner in the code copy: a marked JSON line per result on stdout."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds every trial's finally: its servers are stopped

    signal.signal(signal.SIGTERM, stop)
    import batchstash.service

    where = Path(batchstash.service.__file__).resolve()
    if not where.is_relative_to(REPO_ROOT.resolve()):
        print(f"the trial runner imports batchstash from {where}, not the copy in {REPO_ROOT}")
        return 2

    def report(result: dict[str, Any]) -> None:
        print(RESULT_MARK + json.dumps(result, default=str), flush=True)

    _run_here(trials, seed, workdir, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the trials, print a line each and a summary; non-zero exit if any failed."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="default: a new temporary directory (kept, printed)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="batchstash-chaos-"))
    if args.child:
        return _child(args.trials, seed, workdir)
    print(f"chaos: {args.trials} trials, seed {seed}, workdir {workdir}", flush=True)

    def report(result: dict[str, Any]) -> None:
        print(_line(result), flush=True)
        for problem in result["problems"]:
            print(f"    problem: {problem}", flush=True)
        if not result["ok"]:
            print(f"    logs: {', '.join(result['logs'])}", flush=True)

    began = time.monotonic()
    results = run_trials(args.trials, seed, workdir, report, echo=True)
    print(summarize(results, time.monotonic() - began))
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    failed = [r["trial"] for r in results if not r["ok"]]
    if failed:
        print(f"FAILED trials: {failed} (seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
