"""Prime the built-in iris example with two worker processes and load a batch, as a library.

Run ``python examples/iris_library.py [store dir]`` (default ``data/iris-library``).
"""

import sys

from batchstash.service import BatchStash


def main() -> None:
    """Prime, then load and dump one batch of each split."""
    path = sys.argv[1] if len(sys.argv) > 1 else "data/iris-library"
    stash = BatchStash.from_factory("batchstash.service.examples:iris", path=path, workers=2)
    encoded = stash.prime(progress=lambda split, done, total: print(f"{split}: {done}/{total}"))
    print(f"encoded {encoded} batches; primed: {stash.is_primed}")
    for split in ("train", "dev", "test"):
        batch = stash.load(split, 0)
        batch.write()
        print("  labels:", batch.get_label_classes()[:5])
    only_dims = stash.load("train", 0, attributes=["flower_dims"])  # reads one group file only
    print("decoded attributes:", sorted(only_dims.attributes))


if __name__ == "__main__":
    main()
