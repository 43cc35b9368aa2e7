"""Several hosts, faults on the wire: Ray priming into S3 and two replicas, each on its own host.

One trial, in a lab of six hosts (``tests/e2e/netlab.py``): ``s3`` (moto's S3 server), ``head``
(the Ray head and the prime job's driver), ``worker`` (a Ray worker), ``rep1`` and ``rep2``
(``batchstash serve --role serve``) and ``trainer`` (a client of both replicas). Faults:

* mid-prime, the Ray worker's host is killed: every process in its namespace gets SIGKILL;
* the trainer's link is shaped to 1 Gbit/s with 2 % packet loss, in both directions;
* mid-epoch, ``rep1``'s link is cut for 20 s, then restored.

A trial passes when the prime exits 0, every one of the trainer's epochs has every batch exactly
once, each equal to what a replica serves after the trial, and every object in the bucket is a
whole one the store's layout expects. Run trials with ``python -m tests.e2e.netlab_trials
--trials 3`` (root); ``tests/e2e/test_netlab.py`` runs one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .netlab import REPO_ROOT, Lab, wait_log, wait_port

HOSTS = ["s3", "head", "worker", "rep1", "rep2", "trainer"]
BUCKET = "batchstash"
FACTORY = "tests.e2e.factories:slow_iris"
OPTIONS = '{"delay": 0.3, "batch_size": 5}'  # 30 batches, about 1.5 s of sleep each
TOKEN = "netlab-token"
RAY_TOKEN = secrets.token_hex(32)
EPOCHS = 3
STEP_S = 0.5  # the trainer's time per batch: 21 train batches, about 10 s an epoch
CUT_S = 20.0


def _env(lab: Lab, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSTASH_", "AWS_", "RAY_"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        AWS_ENDPOINT_URL=f"http://{lab.addresses['s3']}:9000",
        AWS_ACCESS_KEY_ID="netlab",
        AWS_SECRET_ACCESS_KEY="netlab-secret",
        AWS_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray's token auth on every node and the driver, as compose.scale.yaml runs it
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=RAY_TOKEN,
    )
    env.update(extra)
    return env


def _digest(batch: Any) -> str:
    h = hashlib.sha256(repr(batch.data_point_ids).encode())
    for name in sorted(batch.attributes):
        h.update(name.encode() + batch[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def trainer(urls: list[str], out: Path) -> int:
    """The trainer's process: ``EPOCHS`` epochs of train, one line of JSON a batch into ``out``."""
    import logging

    from batchstash.client import BatchClient, RetryPolicy

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with (
        BatchClient(urls, token=TOKEN, timeout=5, retry=RetryPolicy(budget=120)) as client,
        out.open("a") as sink,
    ):
        for epoch in range(EPOCHS):
            for batch in client.iter_batches("train", epoch=epoch, prefetch=2):
                sink.write(
                    json.dumps({"epoch": epoch, "id": batch.id, "digest": _digest(batch)}) + "\n"
                )
                sink.flush()
                time.sleep(STEP_S)
    return 0


def _bucket_problems(lab: Lab) -> tuple[int, list[str]]:
    """Every object in the bucket: (count, the ones that are not whole or not expected)."""
    import boto3
    from safetensors import safe_open

    s3 = boto3.client("s3", **_boto(lab))
    keys, problems = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="store/"):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    batches = [k for k in keys if k.startswith("store/batches/")]
    other = sorted(set(keys) - set(batches))
    if not set(other) <= {
        f"store/{n}"
        for n in ("store.json", "plan.json", "manifest.json", "job.json", "demand.json")
    }:
        problems.append(f"unexpected keys {other}")
    generations = {k.split("/")[2] for k in batches}
    if len(generations) != 1:
        problems.append(f"{len(generations)} generations")
    for key in batches:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        path = Path(f"/tmp/netlab-object-{os.getpid()}.safetensors")
        path.write_bytes(body)
        try:
            with safe_open(str(path), "pt") as f:
                for name in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                    f.get_tensor(name)
        except Exception as exc:  # a torn object does not parse
            problems.append(f"{key}: {type(exc).__name__}")
        finally:
            path.unlink(missing_ok=True)
    for key in other:
        json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return len(keys), problems


def _boto(lab: Lab) -> dict[str, str]:
    env = _env(lab)
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


def run_trial(index: int, workdir: Path) -> dict[str, Any]:
    """One trial in a new lab; the lab is destroyed after it, pass or fail."""
    workdir.mkdir(parents=True, exist_ok=True)
    lab = Lab.create(f"bs{secrets.token_hex(3)}", HOSTS)
    result: dict[str, Any] = {"trial": index, "lab": lab.name}
    try:
        _trial(lab, workdir, result)
    finally:
        lab.destroy()
        if "ray_temp" in result:
            shutil.rmtree(result.pop("ray_temp"), ignore_errors=True)
    return result


def _trial(lab: Lab, workdir: Path, result: dict[str, Any]) -> None:
    import boto3

    from batchstash.client import BatchClient

    a = lab.addresses
    env = _env(lab)
    lab.start(
        "s3",
        [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", "9000"],
        workdir / "s3.log",
        env,
    )
    wait_port(a["s3"], 9000, 60)
    boto3.client("s3", **_boto(lab)).create_bucket(Bucket=BUCKET)
    store = f"s3://{BUCKET}/store"
    # Ray's sockets live under its temp dir: a short path (AF_UNIX allows 107 bytes)
    temp = Path(tempfile.mkdtemp(prefix="bsray-", dir="/tmp"))
    result["ray_temp"] = str(temp)
    ray = [sys.executable, "-m", "ray.scripts.scripts"]  # this interpreter's Ray, not a script's
    lab.start(
        "head",
        [
            *ray,
            "start",
            "--head",
            f"--node-ip-address={a['head']}",
            "--port=6379",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--block",
        ],
        workdir / "head.log",
        env,
    )
    wait_port(a["head"], 6379, 120)
    worker = lab.start(
        "worker",
        [
            *ray,
            "start",
            f"--address={a['head']}:6379",
            f"--node-ip-address={a['worker']}",
            "--num-cpus=2",
            "--disable-usage-stats",
            "--block",
        ],
        workdir / "worker.log",
        env,
    )
    wait_log(workdir / "worker.log", "Ray runtime started", 120, worker)
    serve = [
        sys.executable,
        "-m",
        "batchstash.service.cli",
        "serve",
        "--data-dir",
        store,
        "--token",
        TOKEN,
    ]
    prime_env = _env(lab, BATCHSTASH_DATASET_OPTIONS=OPTIONS, BATCHSTASH_LOG_LEVEL="info")
    driver = lab.start(
        "head",
        [
            *serve,
            "--role",
            "prime",
            "--executor",
            "ray",
            "--ray-address",
            f"{a['head']}:6379",
            "--workers",
            "3",
            "--dataset",
            FACTORY,
        ],
        workdir / "prime.log",
        prime_env,
    )
    for rep in ("rep1", "rep2"):
        lab.start(
            rep,
            [*serve, "--role", "serve", "--host", "0.0.0.0", "--port", "8000"],
            workdir / f"{rep}.log",
            _env(lab, BATCHSTASH_LOG_LEVEL="info"),
        )
    # mid-prime: some batches stored, then the worker's host dies
    wait_log(workdir / "prime.log", "primed ", 180, driver)
    time.sleep(1.0)
    assert driver.poll() is None, "the prime ended before the fault"
    result["worker_processes_killed"] = lab.kill_host("worker")
    result["prime_exit"] = driver.wait(timeout=600)
    prime_log = (workdir / "prime.log").read_text(errors="replace")
    done = re.findall(r"prime done: .*", prime_log)
    result["prime"] = done[-1] if done else "no 'prime done' line"
    # training over a shaped link, with a replica's cable pulled for a while mid-epoch
    for rep in ("rep1", "rep2"):
        wait_port(a[rep], 8000, 60)
    lab.shape("trainer", "--rate", "1gbit", "--loss", "2%")
    out = workdir / "trainer.jsonl"
    urls = ",".join(f"http://{a[r]}:8000" for r in ("rep1", "rep2"))
    train = lab.start(
        "trainer",
        [
            sys.executable,
            "-m",
            "tests.e2e.netlab_trials",
            "trainer",
            "--urls",
            urls,
            "--out",
            str(out),
        ],
        workdir / "trainer.log",
        env,
    )
    deadline = time.monotonic() + 120
    while not out.exists() or len(out.read_text().splitlines()) < 5:
        assert train.poll() is None and time.monotonic() < deadline, (
            workdir / "trainer.log"
        ).read_text()
        time.sleep(0.2)
    lab.cut("rep1")
    time.sleep(CUT_S)
    lab.restore("rep1")
    result["trainer_exit"] = train.wait(timeout=600)
    lab.shape("trainer")
    # what the trainer got, against what a replica serves now, and the bucket
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with BatchClient(f"http://{a['rep2']}:8000", token=TOKEN) as client:
        ids = client.batch_ids("train")
        served = {b.id: _digest(b) for b in client.iter_batches("train", epoch=0)}
    lost = duplicated = wrong = 0
    for epoch in range(EPOCHS):
        got = [r["id"] for r in rows if r["epoch"] == epoch]
        lost += len(set(ids) - set(got))
        duplicated += len(got) - len(set(got))
        wrong += sum(r["digest"] != served[r["id"]] for r in rows if r["epoch"] == epoch)
    result.update(epochs=EPOCHS, batches=len(ids), lost=lost, duplicated=duplicated, wrong=wrong)
    result["objects"], result["half_written"] = _bucket_problems(lab)
    result["logs"] = {
        name: _warnings(workdir / f"{name}.log") for name in ("prime", "rep1", "rep2", "trainer")
    }


def _warnings(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    # warnings and errors, and Ray's line for each task lost with its node (then retried)
    pattern = r"\b(WARNING|ERROR)\b|Task \w+ failed"
    return [
        re.sub(r"\x1b\[[0-9;]*m", "", line)
        for line in text.splitlines()
        if re.search(pattern, line)
    ]


def passed(result: dict[str, Any]) -> bool:
    return (
        result.get("prime_exit") == 0
        and result.get("trainer_exit") == 0
        and result.get("lost") == result.get("duplicated") == result.get("wrong") == 0
        and result.get("half_written") == []
        and result.get("worker_processes_killed", 0) > 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.netlab_trials", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run trials (the default)")
    run.add_argument("--trials", type=int, default=1)
    run.add_argument("--workdir", type=Path, default=Path("/tmp/batchstash-netlab"))
    one = sub.add_parser("trainer", help="the trainer's process, inside the lab")
    one.add_argument("--urls", required=True)
    one.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:] or ["run"])
    if args.command == "trainer":
        return trainer(args.urls.split(","), args.out)
    results = []
    for index in range(args.trials):
        result = run_trial(index, args.workdir / f"trial-{index}")
        results.append(result)
        print(json.dumps(result), flush=True)
    lost = sum(r.get("lost", 0) for r in results)
    duplicated = sum(r.get("duplicated", 0) for r in results)
    ok = sum(passed(r) for r in results)
    print(f"trials {len(results)}, passed {ok}, lost {lost}, duplicated {duplicated}")
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
