"""The measurements of one run: a :class:`Suite` method a section, results kept as data.

Each section builds the stores it reads on first use (:meth:`Suite.store`); which sections run
and in which order is :mod:`benchmarks.runner`'s.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from . import (
    baselines,
    ceiling,
    compression,
    dataloader,
    dealcost,
    gpu,
    link,
    memory,
    own_data,
    placement,
    priming,
    rawclient,
    ray_priming,
    rebatch,
    rebatch_memory,
    reference_prime,
    s3,
    status,
)
from .consumers import ConsumerPool, LoadTask
from .profiles import Profile
from .servers import (
    Server,
    auto_way,
    batchstash_server,
    child_env,
    free_port,
    prime,
    subprocess_server,
)
from .serving import (
    BATCHSTASH_RUNS,
    FLOOR_RUNS,
    FORCED_RUNS,
    PER_REQUEST,
    PREFETCH,
    Run,
    floor_server,
)
from .synthetic import batch_bytes, factory

__all__ = ["Suite"]

logger = logging.getLogger(__name__)

NO_DATA_PORT = {"skipped": f"the server sends no {rawclient.DATA_PORT_HEADER} header"}


class Suite:
    """One run's state: the profile, directories, the consumer pool and the results."""

    def __init__(self, profile: Profile, work: Path, logs: Path, device: str) -> None:
        self.profile, self.work, self.logs, self.device = profile, work, logs, device
        self.results: dict[str, Any] = {"builds": {}}
        self.pool: ConsumerPool | None = None
        self.files: dict[str, list[Path]] = {}
        self.built: set[str] = set()

    @property
    def consumers(self) -> ConsumerPool:
        """The consumer pool (started by :func:`benchmarks.runner.run`)."""
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

    def load(
        self,
        server: Server,
        kind: str,
        consumers: int,
        max_batches: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """One bounded load run on the consumer pool, ``server``'s process tree's CPU accounted.

        ``options`` are further :class:`LoadTask` fields.
        """
        p = self.profile
        task = LoadTask(
            server.url, kind, consumers, max_batches or p.max_batches, p.max_seconds, **options
        )
        return self.consumers.run(task, (server.pid,))

    # -- stores and files ---------------------------------------------------------------------

    def store_options(self, name: str) -> dict[str, Any]:
        """Factory arguments of a store: ``large``, ``small``, or ``prime`` (priming's)."""
        if name == "prime":
            return self.options("large", self.profile.prime_batches)
        return self.options(name)

    def directory(self, name: str) -> Path:
        """Where a store lies (primed or not)."""
        return self.work / f"{name}-store"

    def store(self, name: str) -> Path:
        """The store's directory, primed through a server with 2 workers on first use."""
        directory = self.directory(name)
        if name in self.built:
            return directory
        options = self.store_options(name)
        with batchstash_server(
            directory, options, self.logs / f"build-{name}.log", workers=2
        ) as server:
            built = self.step(
                f"prime the {name} store ({options['batches']} batches)",
                lambda: prime(server.url, self.profile.prime_timeout),
            )
        self.results["builds"][name] = {
            **built,
            "store_batches": options["batches"],
            "batch_bytes": batch_bytes(options["rows"], options["dims"]),
        }
        self.built.add(name)
        return directory

    def torch_files(self) -> dict[str, list[Path]]:
        """The large store's first batches as ``torch.save`` and pickle files (written once)."""
        if not self.files:
            stash = factory(path=str(self.store("large")), **self.options("large"))
            self.files = self.step(
                "write torch.save and pickle files",
                lambda: baselines.write_files(
                    stash, self.work / "files", self.profile.baseline_files
                ),
            )
        return self.files

    # -- sections -----------------------------------------------------------------------------

    def priming(self) -> None:
        """Prime the priming store with 1 and with 2 workers; the persisting breakdown."""
        p = self.profile
        directory = self.directory("prime")
        options = self.store_options("prime")
        rates = {}
        for workers in (1, 2):
            with batchstash_server(
                directory, options, self.logs / f"prime-{workers}w.log", workers=workers
            ) as server:
                # each prime starts from an empty store (a kept --work-dir holds a primed one)
                httpx.post(f"{server.url}/v1/admin/clear", timeout=60).raise_for_status()
                rates[f"workers_{workers}"] = self.step(
                    f"prime {p.prime_batches} large batches, {workers} worker(s)",
                    lambda s=server: prime(s.url, p.prime_timeout),
                )
                # again on the same server: its workers are warm (what a server's next prime
                # pays; the first one spawned them)
                httpx.post(f"{server.url}/v1/admin/clear", timeout=60).raise_for_status()
                rates[f"warm_{workers}"] = self.step(
                    f"prime again, {workers} warm worker(s)",
                    lambda s=server: prime(s.url, p.prime_timeout),
                )
        self.built.add("prime")  # the memory section's small store
        breakdown = {
            vec: self.step(
                f"priming breakdown ({vec})",
                lambda v=vec: priming.breakdown(
                    self.work / f"breakdown-{v}", {**options, "vectorizer": v}, p.breakdown_sample
                ),
            )
            for vec in ("series", "tensor")
        }
        self.results["priming"] = {"batches": p.prime_batches, **rates, "breakdown": breakdown}

    def ceilings(self) -> None:
        """The raw-TCP ceiling rows (:data:`benchmarks.ceiling.RUNS`), one sender for all."""
        runs = {**ceiling.RUNS, **ceiling.FILE_RUNS}
        with ceiling.sender(self.logs / "ceiling.log", files=self.store("large")) as sender:
            self.results["ceiling"] = {
                name: self.step(
                    f"ceiling {name}",
                    lambda k=kind, c=pairs: self.load(
                        sender, k, c, max_batches=self.profile.ceiling_messages
                    ),
                )
                for name, (kind, pairs) in runs.items()
            }

    def serving(self) -> None:
        """Every serving run on the large and on the small batches."""
        for size in ("large", "small"):
            self.serve(size)

    def _runs(self, server: Server, table: dict[str, Run], size: str) -> dict[str, Any]:
        sized = {"prefetch": PREFETCH[size], "per_request": PER_REQUEST[size]}
        return {
            key: self.step(
                f"{size}: {key} ({kind}, {consumers} consumer(s))",
                lambda k=kind, c=consumers, e=extra: self.load(server, k, c, **sized, **e),
            )
            for key, (kind, consumers, extra) in table.items()
        }

    def warm(self, server: Server, size: str) -> None:
        """Serve every batch once, untimed.

        Each row then measures a server that has verified its objects, as one that has served
        an epoch has.
        """
        self.step(
            f"{size}: warm-up read of every batch",
            lambda: rawclient.warm(server.url, "train", PER_REQUEST[size]),
        )

    def serve(self, size: str) -> None:
        """Serve one store by batchstash and by the I/O floor server, to each client."""
        directory, options = self.store(size), self.options(size)
        with batchstash_server(directory, options, self.logs / f"serve-{size}.log") as server:
            self.warm(server, size)
            advertised = rawclient.data_port(server.url, "train")
            skipped = (
                {}
                if advertised is not None
                else {key: NO_DATA_PORT for key, r in BATCHSTASH_RUNS.items() if r[0] == "raw_data"}
            )
            table = {key: r for key, r in BATCHSTASH_RUNS.items() if key not in skipped}
            runs = {**skipped, **self._runs(server, table, size)}
            way = auto_way(server.url)
            with floor_server(directory, server.url, self.logs / f"floor-{size}.log") as floor:
                runs.update(self._runs(floor, FLOOR_RUNS, size))
        for name, (setting, forced) in FORCED_RUNS.items():
            with batchstash_server(
                directory,
                options,
                self.logs / f"serve-{size}-{name}.log",
                BATCHSTASH_DATA_SENDFILE=setting,
            ) as server:
                self.warm(server, size)
                table = {
                    k: r for k, r in forced.items() if advertised is not None or r[0] != "raw_data"
                }
                runs.update({k: NO_DATA_PORT for k in forced if k not in table})
                runs.update(self._runs(server, table, size))
        self.results[f"batchstash_{size}"] = {
            "prefetch": PREFETCH[size],
            "per_request": PER_REQUEST[size],
            "data_port": advertised,
            "batch_bytes": batch_bytes(options["rows"], options["dims"]),
            "store_batches": options["batches"],
            "auto_way": way,
            **runs,
        }

    def local_baselines(self) -> None:
        """A local DataLoader over torch.save files, pickled files: the same batches."""
        p = self.profile
        files = self.torch_files()
        cycle = [files["torch"][i % len(files["torch"])] for i in range(p.max_batches)]
        pickles = [files["pickle"][i % len(files["pickle"])] for i in range(p.max_batches)]
        self.results["baselines"] = {
            "files": len(files["torch"]),
            "dataloader_0": self.step(
                "DataLoader num_workers=0",
                lambda: baselines.dataloader(cycle, 0, p.max_batches, p.max_seconds),
            ),
            "dataloader_2": self.step(
                "DataLoader num_workers=2",
                lambda: baselines.dataloader(cycle, 2, p.max_batches, p.max_seconds),
            ),
            "pickle": self.step(
                "pickled files", lambda: baselines.pickled(pickles, p.max_batches, p.max_seconds)
            ),
        }

    def dataloader(self) -> None:
        """``DataLoader(BatchDataset)``, 0 and 2 workers, against ``iter_batches`` in process."""
        directory, options = self.store("large"), self.options("large")
        with batchstash_server(directory, options, self.logs / "serve-dataloader.log") as server:
            self.warm(server, "large")
            p = self.profile
            self.results["dataloader"] = {
                "batch_bytes": batch_bytes(options["rows"], options["dims"]),
                **dataloader.compare(
                    server.url, PREFETCH["large"], p.max_batches, p.max_seconds, step=self.step
                ),
            }

    def naive(self) -> None:
        """The minimal FastAPI endpoint returning payload bytes from memory."""
        p = self.profile
        port = free_port()
        limit = min(p.baseline_files, p.large_batches, p.small_batches)
        argv = [
            sys.executable,
            "-m",
            "benchmarks.naive_server",
            "--port",
            str(port),
            "--limit",
            str(limit),
            "--store",
            f"large={self.store('large')}",
            "--store",
            f"small={self.store('small')}",
        ]
        runs = {"large_1": ("large", 1), "large_4": ("large", 4), "small_1": ("small", 1)}
        with subprocess_server(argv, port, self.logs / "naive.log", child_env()) as server:
            self.results["naive"] = {
                "payloads": limit,
                **{
                    key: self.step(
                        f"naive FastAPI, {split}, {n} consumer(s)",
                        lambda s=split, c=n: self.load(
                            server, "naive", c, split=s, batch_ids=tuple(range(limit))
                        ),
                    )
                    for key, (split, n) in runs.items()
                },
            }

    def memory(self) -> None:
        """Server peak RSS on two store sizes; a fresh client's RSS growth by prefetch."""
        p = self.profile
        result: dict[str, Any] = {}
        for name, store in (("small", "prime"), ("large", "large")):
            options = self.store_options(store)
            with batchstash_server(
                self.store(store), options, self.logs / f"memory-{name}.log"
            ) as server:
                result[f"server_{name}_store"] = self.step(
                    f"server RSS, {name} store ({options['batches']} batches)",
                    lambda s=server, o=options: memory.server_peak(
                        s, self.consumers, o["batches"], p.memory_reads, p.max_seconds
                    ),
                )
                if name != "large":
                    continue
                size = batch_bytes(options["rows"], options["dims"])
                result["client"] = [
                    self.step(
                        f"client RSS, prefetch {depth}",
                        lambda d=depth, s=server, b=size: memory.client_growth(
                            s.url, d, b, p.max_batches, p.max_seconds
                        ),
                    )
                    for depth in p.prefetch_depths
                ]
        self.results["memory"] = result

    def rebatch(self) -> None:
        """Re-dealt epochs against stored batches (both stores); bucketing on the text example."""
        p, sizes = self.profile, ("large", "small")
        size_bytes = {
            s: batch_bytes(self.options(s)["rows"], self.options(s)["dims"]) for s in sizes
        }
        with contextlib.ExitStack() as stack:
            servers = {
                s: stack.enter_context(
                    batchstash_server(
                        self.store(s), self.options(s), self.logs / f"rebatch-{s}.log"
                    )
                )
                for s in sizes
            }
            for s in sizes:
                self.warm(servers[s], s)

            def load(size: str, window: int) -> dict[str, Any]:
                return self.load(
                    servers[size], "iter", 1, prefetch=PREFETCH[size], shuffle_window=window
                )

            def client_memory() -> dict[str, Any]:
                url, count = servers["large"].url, min(p.max_batches, p.large_batches)
                runs = {
                    f"w{w}": rebatch_memory.growth(url, w, 4, count) for w in (0, rebatch.WINDOW)
                }
                # with no link-sized requests beyond prefetch: the bound's own terms alone
                runs[f"w{rebatch.WINDOW}_floor"] = rebatch_memory.growth(
                    url, rebatch.WINDOW, 4, count, in_flight_bytes=0
                )
                return {"prefetch": 4, "batch_bytes": size_bytes["large"], **runs}

            result = rebatch.measure_all(
                servers["small"].url,
                load,
                client_memory,
                PREFETCH["small"],
                size_bytes,
                self.step,
                large=(servers["large"].url, min(p.max_batches, 1000)),
            )
            # the building alone, on batches read from the same stores, and the ratio the
            # machine's CPUs leave for it against the stored speed runs above
            result["building"] = {
                s: self.step(
                    f"re-dealt epochs: building alone, {s} batches",
                    lambda s=s: dealcost.measure(
                        servers[s].url, rebatch.WINDOW, p.placement_windows
                    ),
                )
                for s in sizes
            }
        # with the servers stopped: the re-deal's pass over the bytes alone, on a socketpair
        row_bytes = {s: 4 * self.options(s)["dims"] for s in sizes}
        result["placement"] = {
            s: self.step(
                f"re-dealt rows' placement, {s} rows",
                lambda b=row_bytes[s]: placement.measure(b, p.placement_windows),
            )
            for s in sizes
        }
        work = self.work / "rebatch"  # with the servers stopped: priming times in process
        result["bucketing"] = self.step(
            "length bucketing: text example", lambda: rebatch.bucketing(work)
        )
        self.results["rebatch"] = result

    def status_cost(self) -> None:
        """Status and split counts on a small and a large store, in process."""
        sizes = status.SIZES[self.profile.name]
        self.results["status"] = self.step(
            f"status cost, {sizes[0]} vs {sizes[1]} batch stores",
            lambda: status.measure(self.work, sizes),
        )

    def ray(self) -> None:
        """Priming on Ray vs the process pool, in process; Ray shut down after."""
        p = self.profile
        self.results["ray"] = ray_priming.measure(
            self.work, self.options("large", p.ray_batches), self.step
        )

    def own_data(self) -> None:
        """A Parquet file primed by 2 workers that read their rows vs reading the whole table."""
        p = self.profile
        self.results["own_data"] = self.step(
            f"own data: {p.parquet_rows:,} Parquet rows of {p.parquet_dims} floats",
            lambda: own_data.measure(
                self.work / "own_data", p.parquet_rows, p.parquet_dims, p.prime_timeout
            ),
        )

    def compression(self) -> None:
        """Stores primed none, zstd and auto: bytes a batch, client CPU, and over a link."""
        p = self.profile
        self.results["compression"] = self.step(
            f"compression: {p.compression_batches} batches of tokens and of floats, 3 codecs",
            lambda: compression.measure(
                self.work / "compression", p.compression_batches, p.compression_link
            ),
        )

    def reference_prime(self) -> None:
        """In-process priming on the reference's workload vs an encode-and-write baseline."""
        p = self.profile
        self.results["reference_prime"] = self.step(
            f"priming {p.reference_points:,} reference-shaped points in process vs a baseline",
            lambda: reference_prime.compare(
                self.work / "reference_prime",
                p.reference_points,
                repeats=p.reference_repeats,
            ),
        )

    def link(self) -> None:
        """Raw TCP and ``iter_batches`` between two network namespaces over shaped links."""
        stores = {size: (self.store(size), self.store_options(size)) for size in ("large", "small")}
        self.results["link"] = self.step(
            "across a link: server and trainer in two network namespaces",
            lambda: link.measure(
                self.logs, stores, PREFETCH, self.profile.link_seconds, self.profile.link_loss
            ),
        )

    def s3_store(self) -> None:
        """Priming into and serving from moto vs a directory, with the large serving client."""
        p = self.profile
        prefetch = PREFETCH["large"]
        options = self.options("large", p.s3_batches)
        result = s3.measure(
            self.work,
            self.logs,
            options,
            lambda server: self.load(server, "iter", 1, prefetch=prefetch),
            p.prime_timeout,
            self.step,
        )
        self.results["s3"] = {
            **result,
            "prefetch": prefetch,
            "batch_bytes": batch_bytes(options["rows"], options["dims"]),
        }

    def cuda(self) -> None:
        """``--device cuda``: host-to-device copies and a trainer's data wait."""
        if self.device != "cuda":
            self.results["gpu"] = {"skipped": "run with --device cuda to measure"}
            return
        if not torch.cuda.is_available():
            self.results["gpu"] = {"skipped": "torch.cuda.is_available() is false"}
            return
        from batchstash.client.http import BatchClient

        p = self.profile
        options = self.options("large")
        files = self.torch_files()["torch"]
        with (
            batchstash_server(self.store("large"), options, self.logs / "gpu.log") as server,
            BatchClient(server.url) as client,
        ):
            it = client.iter_batches("train", prefetch=4, device="cuda")
            try:
                wait = self.step(
                    "trainer data wait",
                    lambda: gpu.trainer_wait(
                        it, files, options["dims"], p.max_batches, p.max_seconds
                    ),
                )
            finally:
                it.close()
            rate = self.step(
                "delivered to the GPU",
                lambda: gpu.delivered(
                    lambda device: client.iter_batches("train", prefetch=24, device=device),
                    batch_bytes(options["rows"], options["dims"]),
                    p.max_batches,
                    p.max_seconds,
                ),
            )
        self.results["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "copy": self.step(
                "host-to-device copies",
                lambda: gpu.copy_bandwidth(batch_bytes(options["rows"], options["dims"])),
            ),
            "trainer": wait,
            "delivered": rate,
        }
