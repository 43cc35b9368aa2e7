"""A remote trainer: sizes a small MLP from the server's metadata and trains on pulled batches.

Run ``python -m batchstash.client.demo --url http://127.0.0.1:8000`` against a primed server (the
built-in iris example reaches a test accuracy above 0.9 within the default epochs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .batch import Batch
from .errors import BatchError, BatchstashError
from .http import BatchClient
from .metadata import BatchMetadata, MetadataNetworkSettings
from .policy import RetryPolicy

__all__ = [
    "ModelSizes",
    "Standardize",
    "Trainer",
    "build_model",
    "inputs",
    "main",
    "model_sizes",
]

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}


@dataclass(frozen=True)
class ModelSizes:
    """What the demo model is sized from.

    Attributes:
        features: the float, fixed-width, non-label attributes concatenated as the input.
        label: the label attribute.
        input_width: the width of the concatenated features.
        num_labels: the number of label classes (output width).
    """

    features: tuple[str, ...]
    label: str
    input_width: int
    num_labels: int


def model_sizes(meta: BatchMetadata) -> ModelSizes:
    """Pick the input features and size the model from batch metadata.

    Raises:
        BatchError: no label with classes, or no usable float feature.
    """
    mapping = meta.mapping
    label = mapping.label_attribute_name
    if label is None:
        raise BatchError("the batches have no label to train on")
    features = tuple(
        f.attr
        for f in mapping.fields
        if not mapping.is_label_field(f)
        and meta.fields_by_attribute[f.attr].dtype in _FLOAT_DTYPES
        and all(d >= 0 for d in meta.fields_by_attribute[f.attr].shape)
    )
    if not features:
        raise BatchError("the batches have no fixed-width float feature for an MLP")
    settings = MetadataNetworkSettings(meta)
    return ModelSizes(features, label, settings.input_width(features), settings.num_labels)


class Standardize(nn.Module):
    """Subtracts a per-column mean and divides by a per-column standard deviation."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone().clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize ``x`` column by column."""
        return (x - self.mean) / self.std


def build_model(
    sizes: ModelSizes,
    hidden: int = 32,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> nn.Module:
    """A standardizing two-layer MLP from ``sizes.input_width`` features to the label logits.

    Args:
        sizes: the model sizes.
        hidden: the hidden layer width.
        mean: per-feature means (of the train split); 0 when not given.
        std: per-feature standard deviations; 1 when not given.
    """
    width = sizes.input_width
    return nn.Sequential(
        Standardize(
            torch.zeros(width) if mean is None else mean, torch.ones(width) if std is None else std
        ),
        nn.Linear(width, hidden),
        nn.ReLU(),
        nn.Linear(hidden, sizes.num_labels),
    )


def inputs(batch: Batch, sizes: ModelSizes) -> tuple[torch.Tensor, torch.Tensor]:
    """The concatenated float features and the class index targets of a batch."""
    parts = [batch[a].float().reshape(len(batch[a]), -1) for a in sizes.features]
    label = batch[sizes.label]
    targets = label.argmax(dim=-1) if label.dim() > 1 else label.long()
    return torch.cat(parts, dim=1), targets


class Trainer:
    """Trains the demo model on one server's batches.

    Args:
        client: the server's client.
        sizes: the model sizes (see :func:`model_sizes`).
        device: where the model runs and batches are copied.
        hidden: the hidden layer width.
        lr: the Adam learning rate.
        seed: the shuffle seed.
    """

    def __init__(
        self,
        client: BatchClient,
        sizes: ModelSizes,
        device: str = "cpu",
        hidden: int = 32,
        lr: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.client, self.sizes, self.device, self.seed = client, sizes, device, seed
        self.attributes = (*sizes.features, sizes.label)
        mean, std = self.feature_stats()
        self.model = build_model(sizes, hidden, mean, std).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()

    def _batches(self, split: str, epoch: int = 0, shuffle: bool = False) -> Iterator[Batch]:
        return self.client.iter_batches(
            split,
            epoch=epoch,
            shuffle=shuffle,
            seed=self.seed,
            rank=0,  # one process reads whole splits (stats, accuracy), whatever the env says
            world_size=1,
            attributes=self.attributes,
            device=self.device,
        )

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of each input column over the train split."""
        data = torch.cat([inputs(b, self.sizes)[0] for b in self._batches("train")])
        return data.mean(dim=0), data.std(dim=0)

    def train_epoch(self, epoch: int) -> float:
        """Train one shuffled epoch; return the mean batch loss."""
        self.model.train()
        losses = []
        for batch in self._batches("train", epoch, shuffle=True):
            x, y = inputs(batch, self.sizes)
            loss = self.loss_fn(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return sum(losses) / max(len(losses), 1)

    def accuracy(self, split: str) -> float:
        """The share of ``split``'s data points the model classifies correctly."""
        correct = total = 0
        self.model.eval()
        with torch.no_grad():
            for batch in self._batches(split):
                x, y = inputs(batch, self.sizes)
                correct += int((self.model(x).argmax(dim=-1) == y).sum())
                total += len(y)
        return correct / max(total, 1)


def _ensure_primed(client: BatchClient, timeout: float) -> dict[str, Any]:
    info = client.splits()
    if not info["primed"]:
        print(f"waiting up to {timeout:.0f}s for the server to prime ...", flush=True)  # noqa: T201
        client.wait_for_prime(timeout=timeout)
        info = client.splits()
    return dict(info["splits"])


def train(args: argparse.Namespace) -> float:
    """Train and evaluate each epoch, printing loss and accuracy; return the test accuracy."""
    torch.manual_seed(args.seed)
    retry = RetryPolicy(budget=args.retry_budget)
    with BatchClient(args.url, token=args.token, retry=retry) as client:
        splits = _ensure_primed(client, args.wait)
        sizes = model_sizes(client.metadata())
        counts = ", ".join(f"{name} ({info['batches']} batches)" for name, info in splits.items())
        print(  # noqa: T201
            f"model: {sizes.input_width} inputs {list(sizes.features)} -> "
            f"{sizes.num_labels} classes; splits: {counts}"
        )
        trainer = Trainer(client, sizes, args.device, args.hidden, args.lr, args.seed)
        accuracy = 0.0
        for epoch in range(args.epochs):
            loss = trainer.train_epoch(epoch)
            accuracy = trainer.accuracy("test")
            line = f"epoch {epoch + 1:3d}/{args.epochs}  loss {loss:.4f}  test acc {accuracy:.3f}"
            if "dev" in splits:
                line += f"  dev acc {trainer.accuracy('dev'):.3f}"
            print(line, flush=True)  # noqa: T201
        print(f"final test accuracy {accuracy:.3f}")  # noqa: T201
        return accuracy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchstash.client.demo", description=__doc__)
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the batchstash server (replicas of one store: comma separated URLs)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("BATCHSTASH_TOKEN") or None,
        help="bearer token, if the server needs one (default: $BATCHSTASH_TOKEN)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--hidden", type=int, default=32, help="hidden layer width")
    parser.add_argument("--seed", type=int, default=0, help="shuffle and init seed")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for a prime")
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=RetryPolicy().budget,
        metavar="SECONDS",
        help="how long a request keeps retrying while no server answers: the trainer rides out "
        "a restart or an outage of every server this long (default: %(default).0f)",
    )
    return parser


def _join_token(argv: Sequence[str]) -> list[str]:
    """``--token VALUE`` as ``--token=VALUE``.

    argparse reads a separate value that starts with ``-`` as an option (``expected one
    argument``); a URL-safe token does so 1 time in 64. Joined, any value is the token.
    """
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            out += [arg, *it]
            break
        if arg == "--token":
            value = next(it, None)
            out.append(arg if value is None else f"--token={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo trainer; return the process exit code (0 on success)."""
    args = _parser().parse_args(_join_token(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(args)
    except BatchstashError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
