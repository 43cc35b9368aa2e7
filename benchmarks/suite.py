"""The benchmark run: builds the stores, measures every section, returns the results as data."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from . import baselines, ceiling, gpu, memory, priming, ray_priming, s3, status
from .consumers import ConsumerPool, LoadTask
from .profiles import Profile
from .servers import batchstash_server, child_env, free_port, prime, subprocess_server
from .synthetic import batch_bytes, factory

__all__ = ["run"]

logger = logging.getLogger(__name__)


class Suite:
    """One run's state: the profile, directories, the consumer pool and the results."""

    def __init__(self, profile: Profile, work: Path, logs: Path, device: str) -> None:
        self.profile, self.work, self.logs, self.device = profile, work, logs, device
        self.results: dict[str, Any] = {}
        self.pool: ConsumerPool | None = None
        self.files: list[Path] = []
        self.stores: dict[str, Any] = {}

    @property
    def consumers(self) -> ConsumerPool:
        """The consumer pool (started by :func:`run`)."""
        if self.pool is None:
            raise RuntimeError("the consumer pool is not started")
        return self.pool

    def options(self, size: str, batches: int | None = None) -> dict[str, Any]:
        """Factory keyword arguments of the large or small synthetic store."""
        p = self.profile
        dims = p.large_dims if size == "large" else p.small_dims
        count = p.large_batches if size == "large" else p.small_batches
        return {"rows": p.rows, "dims": dims, "batches": batches or count}

    def step(self, name: str, action: Callable[[], Any]) -> Any:
        """Run one measurement, logging its duration."""
        logger.info("%s ...", name)
        start = time.perf_counter()
        result = action()
        logger.info("%s done in %.1fs", name, time.perf_counter() - start)
        return result

    def load(self, url: str, kind: str, consumers: int, prefetch: int = 4,
             split: str = "train", ids: tuple[int, ...] = ()) -> dict[str, Any]:
        """One bounded load run on the consumer pool."""
        p = self.profile
        task = LoadTask(url, kind, consumers, p.max_batches, p.max_seconds, prefetch, split, ids)
        return self.consumers.run(task)

    # -- sections -----------------------------------------------------------------------------

    def ceilings(self) -> None:
        p = self.profile
        self.results["ceiling"] = {
            mode: self.step(f"ceiling {mode}",
                            lambda m=mode: ceiling.measure(m, p.ceiling_messages, p.max_seconds))
            for mode in ("stream", "request")
        }

    def priming(self) -> None:
        p = self.profile
        store = self.work / "prime-store"
        options = self.options("large", p.prime_batches)
        rates = {}
        for workers in (1, 2):
            with batchstash_server(store, options, self.logs / f"prime-{workers}w.log",
                                   workers=workers) as server:
                rates[f"workers_{workers}"] = self.step(
                    f"prime {p.prime_batches} large batches, {workers} worker(s)",
                    lambda s=server: prime(s.url, p.prime_timeout))
                if workers == 1:  # the 2-worker prime starts from an empty store again
                    httpx.post(f"{server.url}/v1/admin/clear", timeout=60).raise_for_status()
        breakdown = {
            vec: self.step(f"priming breakdown ({vec})", lambda v=vec: priming.breakdown(
                self.work / f"breakdown-{v}", {**options, "vectorizer": v}, p.breakdown_sample))
            for vec in ("series", "tensor")
        }
        self.results["priming"] = {"batches": p.prime_batches, **rates, "breakdown": breakdown}

    def build(self, size: str) -> None:
        """Prime the large or small store through a server with 2 workers."""
        options = self.options(size)
        with batchstash_server(self.work / f"{size}-store", options,
                               self.logs / f"build-{size}.log", workers=2) as server:
            self.stores[size] = self.step(
                f"prime the {size} store ({options['batches']} batches)",
                lambda: prime(server.url, self.profile.prime_timeout))

    PREFETCH = {"large": 24, "small": 96}
    """``iter_batches`` prefetch per batch size, chosen by measurement: with the default
    ``batches_per_request = prefetch // 3`` one group is being yielded and two requests are in
    flight (8 and 32 batches a request); small batches need deep requests to amortize the
    per-request cost."""

    def serving(self, size: str) -> None:
        options = self.options(size)
        prefetch = self.PREFETCH[size]
        with batchstash_server(self.work / f"{size}-store", options,
                               self.logs / f"serve-{size}.log") as server:
            runs = {}
            for kind in ("iter", "seq"):
                for consumers in (1, 4):
                    runs[f"{kind}_{consumers}"] = self.step(
                        f"batchstash {size}: {kind}, {consumers} consumer(s)",
                        lambda k=kind, c=consumers: self.load(server.url, k, c, prefetch))
            port = free_port()
            argv = [sys.executable, "-m", "benchmarks.floor_server", "--port", str(port),
                    "--store", str(self.work / f"{size}-store"), "--from-url", server.url]
            with subprocess_server(argv, port, self.logs / f"floor-{size}.log",
                                   child_env()) as floor:
                for consumers in (1, 4):
                    runs[f"floor_{consumers}"] = self.step(
                        f"I/O floor server {size}: iter, {consumers} consumer(s)",
                        lambda c=consumers: self.load(floor.url, "iter", c, prefetch))
        self.results[f"batchstash_{size}"] = {
            "prefetch": prefetch,
            "batch_bytes": batch_bytes(options["rows"], options["dims"]),
            "store_batches": options["batches"], "prime": self.stores[size], **runs}

    def local_baselines(self) -> None:
        p = self.profile
        stash = factory(path=str(self.work / "large-store"), **self.options("large"))
        files = self.step("write torch.save and pickle files",
                          lambda: baselines.write_files(stash, self.work / "files",
                                                        p.baseline_files))
        self.files = files["torch"]
        cycle = [files["torch"][i % len(files["torch"])] for i in range(p.max_batches)]
        pickles = [files["pickle"][i % len(files["pickle"])] for i in range(p.max_batches)]
        self.results["baselines"] = {
            "files": len(files["torch"]),
            "dataloader_0": self.step("DataLoader num_workers=0", lambda: baselines.dataloader(
                cycle, 0, p.max_batches, p.max_seconds)),
            "dataloader_2": self.step("DataLoader num_workers=2", lambda: baselines.dataloader(
                cycle, 2, p.max_batches, p.max_seconds)),
            "pickle": self.step("pickled files", lambda: baselines.pickled(
                pickles, p.max_batches, p.max_seconds)),
        }

    def naive(self) -> None:
        p = self.profile
        port = free_port()
        limit = min(p.baseline_files, p.large_batches, p.small_batches)
        argv = [sys.executable, "-m", "benchmarks.naive_server", "--port", str(port),
                "--limit", str(limit), "--store", f"large={self.work / 'large-store'}",
                "--store", f"small={self.work / 'small-store'}"]
        ids = tuple(range(limit))
        with subprocess_server(argv, port, self.logs / "naive.log", child_env()) as server:
            self.results["naive"] = {
                "payloads": limit,
                "large_1": self.step("naive FastAPI, large, 1 consumer", lambda: self.load(
                    server.url, "naive", 1, split="large", ids=ids)),
                "large_4": self.step("naive FastAPI, large, 4 consumers", lambda: self.load(
                    server.url, "naive", 4, split="large", ids=ids)),
                "small_1": self.step("naive FastAPI, small, 1 consumer", lambda: self.load(
                    server.url, "naive", 1, split="small", ids=ids)),
            }

    def memory(self) -> None:
        p = self.profile
        result: dict[str, Any] = {}
        stores = (("small", "prime-store", p.prime_batches), ("large", "large-store", None))
        for name, directory, count in stores:
            options = self.options("large", count)
            with batchstash_server(self.work / directory, options,
                                   self.logs / f"memory-{name}.log") as server:
                result[f"server_{name}_store"] = self.step(
                    f"server RSS, {name} store ({options['batches']} batches)",
                    lambda s=server, o=options: memory.server_peak(
                        s, self.consumers, o["batches"], p.memory_reads, p.max_seconds))
                if name != "large":
                    continue
                size = batch_bytes(options["rows"], options["dims"])
                result["client"] = [
                    self.step(f"client RSS, prefetch {depth}",
                              lambda d=depth, s=server, b=size: memory.client_growth(
                                  s.url, d, b, p.max_batches, p.max_seconds))
                    for depth in p.prefetch_depths
                ]
        self.results["memory"] = result

    def status_cost(self) -> None:
        sizes = status.SIZES[self.profile.name]
        self.results["status"] = self.step(f"status cost, {sizes[0]} vs {sizes[1]} batch stores",
                                           lambda: status.measure(self.work, sizes))

    def ray(self) -> None:
        """Priming on Ray vs the process pool, in process; Ray shut down after."""
        p = self.profile
        self.results["ray"] = ray_priming.measure(
            self.work, self.options("large", p.ray_batches), self.step)

    def s3_store(self) -> None:
        """Priming into and serving from moto vs a directory, with the large serving client."""
        p = self.profile
        prefetch = self.PREFETCH["large"]
        options = self.options("large", p.s3_batches)
        result = s3.measure(self.work, self.logs, options,
                            lambda url: self.load(url, "iter", 1, prefetch), p.prime_timeout,
                            self.step)
        self.results["s3"] = {**result, "prefetch": prefetch,
                              "batch_bytes": batch_bytes(options["rows"], options["dims"])}

    def cuda(self) -> None:
        if self.device != "cuda":
            self.results["gpu"] = {"skipped": "run with --device cuda to measure"}
            return
        if not torch.cuda.is_available():
            self.results["gpu"] = {"skipped": "torch.cuda.is_available() is false"}
            return
        from batchstash.client.http import BatchClient

        p = self.profile
        options = self.options("large")
        with batchstash_server(self.work / "large-store", options,
                               self.logs / "gpu.log") as server, BatchClient(server.url) as client:
            it = client.iter_batches("train", prefetch=4, device="cuda")
            try:
                wait = self.step("trainer data wait", lambda: gpu.trainer_wait(
                    it, self.files, options["dims"], p.max_batches, p.max_seconds))
            finally:
                it.close()
        self.results["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "copy": self.step("host-to-device copies", lambda: gpu.copy_bandwidth(
                batch_bytes(options["rows"], options["dims"]))),
            "trainer": wait,
        }


def run(profile: Profile, work: Path, logs: Path, device: str) -> dict[str, Any]:
    """Measure every section; servers and consumers are stopped whatever happens."""
    suite = Suite(profile, work, logs, device)
    suite.ceilings()
    suite.priming()
    suite.build("large")
    suite.build("small")
    suite.status_cost()  # in process: before the consumer pool, whose processes would share CPUs
    suite.ray()  # priming too: before the consumer pool
    with ConsumerPool(4) as pool:  # started after priming: its start-up would slow priming

        suite.pool = pool
        suite.serving("large")
        suite.serving("small")
        suite.local_baselines()
        suite.naive()
        suite.memory()
        suite.s3_store()  # serving needs the consumers; they are idle while it primes
        suite.cuda()
    return suite.results
