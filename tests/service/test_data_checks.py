"""What priming checks of the data: content fingerprints, declared shapes and dtypes, the label
attribute, and class labels of any type (through ``BatchStash``, the API and the CLI)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    BatchMetadata,
    ConfigBatchFeatureMapping,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    NotPrimedError,
    StaleStoreError,
    VectorizerError,
)
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    DataPoint,
    FeatureVectorizer,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
    OneHotEncodedFeatureVectorizer,
)
from batchstash.service import cli as cli_module
from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.examples import IRIS_MAPPINGS
from batchstash.service.store.lease import JobState, read_job
from batchstash.service.store.records import StoreInfo, read_record

from .factories import (
    MisdeclaredVectorizer,
    PaddedDigitsVectorizer,
    iris_with,
    misdeclared_iris,
)


@dataclass
class RowVectorizer(FeatureVectorizer):
    """A numpy row as a float32 tensor."""

    DESCRIPTION: ClassVar[str] = "numpy row"

    width: int = 3072

    def encode(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.width,)


@dataclass
class RecordPoint(DataPoint):
    raw: dict[str, Any]

    @property
    def x(self) -> Any:
        return self.raw["x"]

    @property
    def label(self) -> Any:
        return self.raw.get("label")


ROWS = BatchFeatureMapping(None, [ManagerFeatureMapping("m", (FieldFeatureMapping("x", "row"),))])


def _row_stash(path: Path, records: dict[int, Any]) -> BatchStash:
    container = MemorySplitStashContainer(records, {"train": list(records)})
    managers = [FeatureVectorizerManager("m", [RowVectorizer("row")])]
    return BatchStash(path, container, managers, ROWS, RecordPoint, batch_size=4)


# 1. the data's fingerprint ----------------------------------------------------------------


def test_changed_array_values_make_the_store_stale_never_served(tmp_path):
    records = {i: {"x": np.zeros(3072)} for i in range(8)}
    primed = _row_stash(tmp_path / "store", records)
    primed.prime()
    assert primed.load("train", 0)["x"][:, 1536].tolist() == [0.0] * 4
    for record in records.values():  # one column of every row, in the middle numpy's repr elides
        record["x"][1536] = 99.0

    stash = _row_stash(tmp_path / "store", records)
    assert stash.config_hash != primed.config_hash
    assert stash.is_stale and not stash.is_primed
    with pytest.raises(StaleStoreError, match="was encoded with configuration"):
        stash.load("train", 0)
    with pytest.raises(StaleStoreError, match="clear it and prime again"):
        stash.prime()

    stash.clear_all()
    assert stash.prime() == 2
    assert stash.load("train", 0)["x"][:, 1536].tolist() == [99.0] * 4


def test_an_unfingerprintable_record_fails_when_the_container_is_made(tmp_path):
    class Blob:
        pass

    records: dict[int, Any] = {i: {"x": np.zeros(3072)} for i in range(8)}
    records[3]["extra"] = Blob()
    with pytest.raises(BatchError, match=r"^cannot fingerprint a value of type .*Blob in record 3"):
        _row_stash(tmp_path / "store", records)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_vectorizer_field_that_cannot_be_described_fails_at_construction(tmp_path):
    class Tokenizer:
        pass

    @dataclass
    class Tokenized(RowVectorizer):
        tokenizer: Any = None

    container = MemorySplitStashContainer({0: {"x": np.zeros(3072)}}, {"train": [0]})
    managers = [FeatureVectorizerManager("m", [Tokenized("row", tokenizer=Tokenizer())])]
    with pytest.raises(BatchError, match=r"Tokenizer in vectorizer 'row' field 'tokenizer'"):
        BatchStash(tmp_path / "store", container, managers, ROWS, RecordPoint)


def test_the_csv_example_still_primes_and_keeps_its_fingerprint(make_iris):
    stash = make_iris()
    assert stash.config_hash == make_iris().config_hash
    assert stash.prime() == 9 and make_iris().is_primed


# 2. declared shapes and dtypes -------------------------------------------------------------


def _where(stash: BatchStash, data_point_id: str) -> tuple[str, int]:
    for id_set in stash.batch_data_point_sets:
        if data_point_id in id_set.data_point_ids:
            return id_set.split_name, id_set.batch_id
    raise AssertionError(data_point_id)


def test_a_tensor_of_another_shape_than_declared_fails_the_prime(tmp_path):
    stash = misdeclared_iris(str(tmp_path / "s"))
    with pytest.raises(VectorizerError) as info:
        stash.prime()
    message = info.value.message
    assert re.fullmatch(
        r"train batch \d+, field 'extra' \(vectorizer 'img'\): encoded \(20, 64\) float32, "
        r"declared \(N=20, 1, 8, 8\) float32",
        message,
    )
    record, _ = read_job(stash.backend)
    assert record is not None and record.state == JobState.FAILED
    assert record.error == {"code": "vectorizer_error", "message": message}
    assert not stash.is_primed
    assert sum(c["stored"] for c in stash.split_counts().values()) == 0


def test_the_failed_batch_is_not_stored_and_the_others_stay_valid(tmp_path):
    bad_id = "42"
    stash = misdeclared_iris(
        str(tmp_path / "s"),
        bad_id=bad_id,
        bad_shape=None,
        bad_dtype="float64",
        groups=[["extra", "label"]],
    )
    split, batch_id = _where(stash, bad_id)
    size = len(
        stash.batch_data_point_sets[
            [(s.split_name, s.batch_id) for s in stash.batch_data_point_sets].index(
                (split, batch_id)
            )
        ].data_point_ids
    )
    with pytest.raises(
        VectorizerError,
        match=rf"^{split} batch {batch_id}, field 'extra' \(vectorizer 'img'\): encoded "
        rf"\({size}, 1, 8, 8\) float64, declared \(N={size}, 1, 8, 8\) float32$",
    ):
        stash.prime()
    assert not (tmp_path / "s" / "manifest.json").exists() and not stash.is_primed
    assert not list((tmp_path / "s" / "batches").glob(f"*/{split}/{batch_id}/*"))
    with pytest.raises(NotPrimedError):
        stash.load(split, batch_id)
    stored = [
        (s.split_name, s.batch_id)
        for s in stash.batch_data_point_sets
        if stash.get(s.split_name, s.batch_id) is not None
    ]
    assert stored and (split, batch_id) not in stored  # those encoded before it verify
    for s, b in stored:
        batch = stash.load(s, b)
        assert batch["extra"].shape[1:] == (1, 8, 8) and batch["extra"].dtype == torch.float32


def test_data_points_of_different_shapes_are_one_clear_error(tmp_path):
    stash = misdeclared_iris(str(tmp_path / "s"), bad_id="42")
    split, batch_id = _where(stash, "42")
    with pytest.raises(
        VectorizerError,
        match=rf"^split '{split}', batch {batch_id}, data points, field 'extra' \(vectorizer "
        r"'img'\): tensors of different shapes do not stack: '\d+' gave \(1, 8, 8\), '42' gave "
        r"\(64,\)$",
    ):
        stash.prime()


def test_a_dtype_other_than_declared_fails_the_prime(tmp_path):
    vectorizer = MisdeclaredVectorizer("img", bad_shape=None, bad_dtype="float64")
    stash = iris_with(str(tmp_path / "s"), vectorizer)
    with pytest.raises(VectorizerError, match=r"encoded \(20, 1, 8, 8\) float64, declared "):
        stash.prime()


def test_an_agg_field_is_checked_and_its_varying_dimension_may_vary(tmp_path):
    stash = iris_with(str(tmp_path / "ok"), PaddedDigitsVectorizer("digits"), is_agg=True)
    assert stash.prime() == 9
    for id_set in stash.batch_data_point_sets:  # the longest id of a batch sets its width
        width = max(len(i) for i in id_set.data_point_ids)
        extra = stash.load(id_set.split_name, id_set.batch_id)["extra"]
        assert extra.shape == (len(id_set.data_point_ids), width)
    stored = read_record(stash.backend, StoreInfo)
    assert stored is not None
    meta = BatchMetadata.from_dict(json.loads(json.dumps(stored.metadata)))
    assert meta.fields_by_attribute["extra"].shape == (-1,)  # declared None, stored -1

    short = iris_with(str(tmp_path / "bad"), PaddedDigitsVectorizer("digits", True), is_agg=True)
    with pytest.raises(VectorizerError, match=r"encoded \(19, \d\) int64, declared \(N=20, -1\) "):
        short.prime()


@pytest.fixture
def failing_server(tmp_path: Path) -> Iterator[TestClient]:
    settings = build_settings(
        data_dir=tmp_path / "data",
        workers=0,
        dataset="tests.service.factories:misdeclared_iris",
    )
    with TestClient(create_app(settings)) as client:
        yield client


EXPECTED = "field 'extra' (vectorizer 'img'): encoded (20, 64) float32, declared (N=20, 1, 8, 8)"


def test_the_shape_error_reaches_the_status_endpoint(failing_server):
    assert failing_server.post("/v1/admin/prime").status_code == 202
    assert failing_server.app.state.batchstash.job.wait(timeout=60)
    status = failing_server.get("/v1/admin/status").json()
    assert status["state"] == "failed"
    assert status["error"]["code"] == "vectorizer_error"
    assert EXPECTED in status["error"]["message"]
    assert status["primed"] is False


class _TestClientAdmin:
    """What the CLI calls on its client, answered by the in-process app."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def prime(self) -> dict[str, Any]:
        body: dict[str, Any] = self.client.post("/v1/admin/prime").json()
        self.client.app.state.batchstash.job.wait(timeout=60)
        return body

    def status(self) -> dict[str, Any]:
        return dict(self.client.get("/v1/admin/status").json())


def test_the_shape_error_reaches_the_cli(failing_server, monkeypatch):
    monkeypatch.setattr(cli_module, "_client", lambda url, token: _TestClientAdmin(failing_server))
    result = CliRunner().invoke(cli_module.app, ["prime", "--wait"])
    assert result.exit_code == 1
    assert "prime failed:" in result.output and EXPECTED in " ".join(result.output.split())
    status = CliRunner().invoke(cli_module.app, ["status"])
    assert "last error:" in status.output and EXPECTED in " ".join(status.output.split())


# 3. the label attribute --------------------------------------------------------------------


def test_an_unmapped_label_attribute_is_a_construction_error(make_iris):
    typo = BatchFeatureMapping("lable", IRIS_MAPPINGS.manager_mappings)
    with pytest.raises(
        BatchError,
        match=r"^label attribute 'lable' is not mapped; mapped attributes: 'label', 'flower_dims' "
        r"\(label_attribute_name=None for unlabelled data\)$",
    ):
        make_iris(mappings=typo)
    with pytest.raises(BatchError, match="label attribute 'lable' is not mapped"):
        ConfigBatchFeatureMapping("lable", IRIS_MAPPINGS.manager_mappings)
    unlabelled = make_iris(mappings=BatchFeatureMapping(None, IRIS_MAPPINGS.manager_mappings))
    assert unlabelled.batch_feature_mappings.label_field is None
    edited = ConfigBatchFeatureMapping(
        "label", IRIS_MAPPINGS.manager_mappings, field_keep=frozenset({"flower_dims"})
    )
    assert make_iris(mappings=edited).batch_feature_mappings.attributes == ("flower_dims",)


# 4. class labels of any type ---------------------------------------------------------------

LABELLED = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "m", (FieldFeatureMapping("label", "cls"), FieldFeatureMapping("x", "row"))
        )
    ],
)


def test_integer_labels_prime_load_and_round_trip_through_the_metadata(tmp_path):
    labels = [0, np.int64(2), 1, np.int32(2), 0, 1, 2, 0]
    records = {i: {"x": np.full(3072, float(i)), "label": y} for i, y in enumerate(labels)}
    container = MemorySplitStashContainer(records, {"train": list(records)})
    managers = [
        FeatureVectorizerManager(
            "m", [CategoryEncodableFeatureVectorizer("cls", (0, 1, 2)), RowVectorizer("row")]
        )
    ]
    stash = BatchStash(tmp_path / "s", container, managers, LABELLED, RecordPoint, batch_size=8)
    assert stash.prime() == 1
    batch = stash.load("train", 0)
    order = [int(x) for x in batch["x"][:, 0].tolist()]
    assert batch.get_label_classes() == [int(labels[i]) for i in order]
    assert all(type(c) is int for c in batch.get_label_classes())

    stored = read_record(stash.backend, StoreInfo)
    assert stored is not None
    served = BatchMetadata.from_dict(json.loads(json.dumps(stored.metadata)))
    assert served.label_classes == (0, 1, 2)
    assert all(type(c) is int for c in served.label_classes)


def test_a_string_label_for_integer_categories_is_an_error_naming_types(tmp_path):
    records = {i: {"x": np.zeros(3072), "label": str(i % 3)} for i in range(4)}
    container = MemorySplitStashContainer(records, {"train": list(records)})
    managers = [
        FeatureVectorizerManager(
            "m", [OneHotEncodedFeatureVectorizer("cls", (0, 1, 2)), RowVectorizer("row")]
        )
    ]
    mapping = BatchFeatureMapping(
        "label",
        [
            ManagerFeatureMapping(
                "m", (FieldFeatureMapping("label", "cls"), FieldFeatureMapping("x", "row"))
            )
        ],
    )
    stash = BatchStash(tmp_path / "s", container, managers, mapping, RecordPoint, batch_size=4)
    with pytest.raises(
        VectorizerError,
        # the batch's one-call path failed: value by value names the data point
        match=r"data point \d+, field 'label' \(vectorizer 'cls'\): BatchError\(\"unknown "
        r"class '\d' \(str\); known: 0 \(int\), 1 \(int\), 2 \(int\)",
    ):
        stash.prime()
