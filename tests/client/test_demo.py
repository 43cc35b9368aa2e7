"""The demo trainer: model sizing from metadata, and full runs against fake and iris servers."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import httpx
import pytest
import torch

import batchstash.client as bc
from batchstash.client import (
    BatchClient,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    RetryPolicy,
    VectorizerMetadata,
    demo,
)
from batchstash.client.demo import ModelSizes, build_model, inputs, model_sizes
from batchstash.client.frames import frame_prefix

from .fakeserver import URL, FakeServer, make_client, make_metadata


def metadata(fields: dict[str, VectorizerMetadata], label: str | None = "label") -> BatchMetadata:
    mapping = BatchFeatureMapping(
        label,
        [
            ManagerFeatureMapping(
                "m", tuple(FieldFeatureMapping(a, v.feature_id) for a, v in fields.items())
            )
        ],
    )
    by_attr = {a: BatchFieldMetadata(mapping.field(a), v) for a, v in fields.items()}
    return BatchMetadata("P", "B", mapping, by_attr)


def test_model_sizes_of_the_fake_metadata() -> None:
    assert model_sizes(make_metadata()) == ModelSizes(("x",), "label", 3, 3)


def test_model_sizes_skip_labels_ints_and_variable_widths() -> None:
    meta = metadata(
        {
            "label": VectorizerMetadata("l", "Category", dtype="int64", classes=("a", "b")),
            "dims": VectorizerMetadata("d", "Series", shape=(4,)),
            "scalar": VectorizerMetadata("s", "Series", dtype="float64", shape=()),
            "tokens": VectorizerMetadata("t", "TokenIds", dtype="int64", shape=(-1,)),
            "emb": VectorizerMetadata("e", "Embed", shape=(-1, 8)),
        }
    )
    assert model_sizes(meta) == ModelSizes(("dims", "scalar"), "label", 5, 2)


def test_model_sizes_refuses_unusable_metadata() -> None:
    with pytest.raises(bc.BatchError, match="no label"):
        model_sizes(metadata({"x": VectorizerMetadata("x", "S", shape=(2,))}, label=None))
    only_tokens = {
        "label": VectorizerMetadata("l", "Category", dtype="int64", classes=("a",)),
        "tokens": VectorizerMetadata("t", "TokenIds", dtype="int64", shape=(-1,)),
    }
    with pytest.raises(bc.BatchError, match="no fixed-width float feature"):
        model_sizes(metadata(only_tokens))


def test_build_model_standardizes_and_sizes_the_output() -> None:
    sizes = ModelSizes(("x",), "label", 3, 4)
    model = build_model(sizes, hidden=8, mean=torch.tensor([1.0, 2.0, 3.0]), std=torch.ones(3) * 2)
    assert model(torch.zeros(5, 3)).shape == (5, 4)
    standardize = model[0]
    assert torch.equal(
        standardize(torch.tensor([[3.0, 2.0, 1.0]])), torch.tensor([[1.0, 0.0, -1.0]])
    )
    assert sum(p.numel() for p in model.parameters()) == 3 * 8 + 8 + 8 * 4 + 4


def test_inputs_concatenate_features_and_take_class_indices() -> None:
    sizes = ModelSizes(("a", "b"), "label", 3, 2)
    batch = bc.Batch.from_payload(
        bc.wire.Payload(
            {
                "a": torch.ones(2, 2, dtype=torch.float64),
                "b": torch.zeros(2),
                "label": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),  # one-hot labels
            },
            {"batchstash.split": "train", "batchstash.batch_id": "0"},
        )
    )
    x, y = inputs(batch, sizes)
    assert x.dtype == torch.float32 and x.shape == (2, 3)
    assert y.tolist() == [1, 0]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer({"train": range(6), "dev": range(1), "test": range(2)}, rows=16)
    monkeypatch.setattr(
        demo, "BatchClient", lambda url, token=None, **kwargs: make_client(server, token=token)
    )
    return server


def test_main_trains_and_reports(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--url", URL, "--epochs", "5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "model: 3 inputs ['x'] -> 3 classes" in out
    lines = re.findall(r"epoch +(\d+)/5 +loss ([\d.]+) +test acc ([\d.]+) +dev acc ([\d.]+)", out)
    assert [int(e) for e, *_ in lines] == [1, 2, 3, 4, 5]
    assert float(lines[-1][1]) < float(lines[0][1])  # the loss falls
    assert float(re.search(r"final test accuracy ([\d.]+)", out).group(1)) >= 0.9  # type: ignore[union-attr]
    train = [
        r.url.params.get("attributes")
        for r in fake.requests
        if "/train/batches/" in r.url.path or r.url.path.endswith("/train/payloads")
    ]
    assert set(train) == {"label,x"}


def test_main_waits_for_the_prime(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake.primed = False
    fake.states = ["running", "done"]
    assert demo.main(["--url", URL, "--epochs", "1", "--wait", "5"]) == 0
    assert "waiting up to 5s" in capsys.readouterr().out


def test_the_retry_budget_is_an_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeServer({"train": range(6), "dev": range(1), "test": range(2)}, rows=16)
    budgets: list[float] = []

    def client(url: str, token: str | None = None, retry: RetryPolicy | None = None) -> Any:
        assert retry is not None
        budgets.append(retry.budget)
        return make_client(server, token=token, retry=retry)

    monkeypatch.setattr(demo, "BatchClient", client)
    assert demo.main(["--url", URL, "--epochs", "1", "--retry-budget", "120"]) == 0
    assert demo.main(["--url", URL, "--epochs", "1"]) == 0
    assert budgets == [120.0, RetryPolicy().budget]
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    assert "--retry-budget SECONDS" in capsys.readouterr().out


# secrets.token_urlsafe can start with "-" (1 time in 64): argparse took such a separate value
# for an option ("argument --token: expected one argument")
DASH_TOKEN = "-Rk3_dash-first-token"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--token", DASH_TOKEN], {}),
        ([f"--token={DASH_TOKEN}"], {}),
        ([], {"BATCHSTASH_TOKEN": DASH_TOKEN}),
        (["--token", DASH_TOKEN], {"BATCHSTASH_TOKEN": "another"}),  # the option wins
    ],
    ids=["separate", "joined", "env", "option-over-env"],
)
def test_a_token_starting_with_a_dash_is_accepted(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str]
) -> None:
    server = FakeServer(
        {"train": range(2), "test": range(1)}, rows=16, token=DASH_TOKEN, read_token=True
    )
    tokens: list[str | None] = []

    def client(url: str, token: str | None = None, **kwargs: Any) -> Any:
        tokens.append(token)
        return make_client(server, token=token, **kwargs)

    monkeypatch.setattr(demo, "BatchClient", client)
    monkeypatch.delenv("BATCHSTASH_TOKEN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert demo.main(["--url", URL, *argv, "--epochs", "1", "--device", "cpu"]) == 0
    assert tokens == [DASH_TOKEN]
    assert server.requests and all(
        r.headers["Authorization"] == f"Bearer {DASH_TOKEN}" for r in server.requests
    )


def test_a_wrong_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeServer({"train": range(2)}, rows=16, token=DASH_TOKEN, read_token=True)
    monkeypatch.setattr(
        demo, "BatchClient", lambda url, token=None, **kw: make_client(server, token=token, **kw)
    )
    assert demo.main(["--url", URL, "--token", DASH_TOKEN[1:], "--epochs", "1"]) == 1
    assert "AuthError" in capsys.readouterr().err


def test_main_reports_errors(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake.primed = False
    fake.states = ["failed"]
    assert demo.main(["--url", URL, "--epochs", "1"]) == 1
    assert "error: VectorizerError: prime failed: bad row" in capsys.readouterr().err


class EngineHandler:
    """Serves the ``/v1`` read API straight from an engine ``BatchStash`` (no FastAPI)."""

    def __init__(self, stash: Any) -> None:
        self.stash = stash

    def __call__(self, request: httpx.Request) -> httpx.Response:
        stash, parts = self.stash, request.url.path.strip("/").split("/")[1:]
        if parts == ["metadata"]:
            body = {"fingerprint": stash.config_hash, "metadata": stash.batch_metadata.to_dict()}
        elif parts == ["splits"]:
            body = {
                "fingerprint": stash.config_hash,
                "primed": stash.is_primed,
                "splits": stash.split_counts(),
            }
        elif len(parts) == 3 and parts[2] == "batches":
            body = {
                "split": parts[1],
                "fingerprint": stash.config_hash,
                "batch_ids": stash.keys(parts[1]),
            }
        else:
            raw = request.url.params.get("attributes")
            names = None if raw is None else raw.split(",")
            if parts[2] == "payloads":
                frames = []
                for batch_id in request.url.params["ids"].split(","):
                    payload = b"".join(stash.payload(parts[1], int(batch_id), names))
                    frames += [frame_prefix(len(payload)), payload]
                return httpx.Response(200, content=b"".join(frames))
            return httpx.Response(
                200, content=b"".join(stash.payload(parts[1], int(parts[3]), names))
            )
        return httpx.Response(200, content=json.dumps(body).encode())


@pytest.mark.slow
def test_demo_reaches_090_on_iris(
    make_iris: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("batchstash.service")
    stash = make_iris()
    stash.prime()
    transport = httpx.MockTransport(EngineHandler(stash))
    monkeypatch.setattr(demo, "BatchClient", functools.partial(BatchClient, transport=transport))
    assert demo.main(["--url", URL, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "model: 4 inputs ['flower_dims'] -> 3 classes" in out
    assert "train (6 batches)" in out
    accuracy = float(re.search(r"final test accuracy ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy >= 0.9
