"""The wire format: golden bytes, safetensors interop, round trips and malformed input."""

from __future__ import annotations

import ctypes
import json
import struct

import numpy
import pytest
import safetensors.torch
import torch
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchstash.client import ChecksumError, PayloadError, wire

DTYPES = [
    (torch.bool, "BOOL"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (torch.int16, "I16"),
    (torch.int32, "I32"),
    (torch.int64, "I64"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.float32, "F32"),
    (torch.float64, "F64"),
]


def _checksum(name: str, code: str, shape: list[int], data: bytes) -> str:
    prefix = f"{name}\0{code}\0{','.join(map(str, shape))}\0".encode()
    return xxhash.xxh3_128(prefix + data).hexdigest()


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _identity(split="", batch_id="", fingerprint="", ids="") -> str:
    return xxhash.xxh3_128(f"{split}\0{batch_id}\0{fingerprint}\0{ids}".encode()).hexdigest()


def _assemble(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_golden_bytes():
    tensors = {
        "x": torch.tensor([1, 2], dtype=torch.int16),
        "a": torch.tensor([7, 8, 9], dtype=torch.uint8),
        "z": torch.tensor([1.0], dtype=torch.float64),
    }
    z, x, a = struct.pack("<d", 1.0), struct.pack("<hh", 1, 2), bytes([7, 8, 9])
    checksums = {
        "a": _checksum("a", "U8", [3], a),
        "x": _checksum("x", "I16", [2], x),
        "z": _checksum("z", "F64", [1], z),
    }
    # written by hand: sorted keys, compact separators, 8-byte dtypes first so z is aligned
    header = (
        '{"__metadata__":{'
        f'"batchstash.checksum.a":"{checksums["a"]}",'
        f'"batchstash.checksum.x":"{checksums["x"]}",'
        f'"batchstash.checksum.z":"{checksums["z"]}",'
        '"batchstash.format":"2",'
        f'"batchstash.identity_checksum":"{_identity("train")}",'
        '"batchstash.split":"train"},'
        '"a":{"data_offsets":[12,15],"dtype":"U8","shape":[3]},'
        '"x":{"data_offsets":[8,12],"dtype":"I16","shape":[2]},'
        '"z":{"data_offsets":[0,8],"dtype":"F64","shape":[1]}}'
    ).encode()
    header += b" " * (-(8 + len(header)) % 8)
    expected = struct.pack("<Q", len(header)) + header + z + x + a

    got = wire.encode(tensors, {"batchstash.split": "train"})

    assert got == expected
    assert (8 + len(header)) % 8 == 0
    assert wire.encode(dict(reversed(tensors.items())), {"batchstash.split": "train"}) == got


def test_payload_is_readable_by_safetensors(tmp_path):
    tensors = {
        "ids": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "mask": torch.tensor([True, False, True]),
        "x": torch.linspace(0, 1, 6, dtype=torch.float32).reshape(2, 3),
        "h": torch.tensor([0.5, -2.0], dtype=torch.bfloat16),
    }
    payload = wire.encode(tensors, {"batchstash.split": "dev", "batchstash.batch_id": "3"})

    loaded = safetensors.torch.load(payload)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)

    path = tmp_path / "p.safetensors"
    path.write_bytes(payload)
    with safetensors.safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["batchstash.split"] == "dev"
    assert meta["batchstash.format"] == "2"
    assert meta["batchstash.checksum.x"] == _checksum("x", "F32", [2, 3], _raw(tensors["x"]))


def test_safetensors_file_with_our_metadata_decodes():
    tensors = {
        "b": torch.tensor([[1.5, 2.5]], dtype=torch.float64),
        "a": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "c": torch.tensor([True, False]),
    }
    meta = {"batchstash.format": "2", "batchstash.split": "test", "batchstash.batch_id": "7"}
    meta["batchstash.identity_checksum"] = _identity("test", "7")
    for name, t in tensors.items():
        code = dict(DTYPES)[t.dtype]
        meta[f"batchstash.checksum.{name}"] = _checksum(name, code, list(t.shape), _raw(t))

    payload = wire.decode(safetensors.torch.save(tensors, metadata=meta))

    assert payload.split == "test"
    assert payload.batch_id == 7
    assert set(payload.tensors) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(payload.tensors[name], t)


def test_payload_metadata_properties():
    meta = {
        "batchstash.split": "train",
        "batchstash.batch_id": "12",
        "batchstash.data_point_ids": '["a",3]',
        "batchstash.fingerprint": "abc",
        "other": "kept",
    }
    payload = wire.decode(wire.encode({"x": torch.zeros(2)}, meta))
    assert (payload.split, payload.batch_id, payload.fingerprint) == ("train", 12, "abc")
    assert payload.data_point_ids == ["a", 3]
    assert payload.metadata["other"] == "kept"
    assert wire.decode(wire.encode({}, {})).batch_id == -1


@st.composite
def tensor_maps(draw):
    names = draw(
        st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True), max_size=5, unique=True)
    )
    tensors = {}
    for name in names:
        dtype, _ = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        numel = 1
        for dim in shape:
            numel *= dim
        size = numel * dtype.itemsize
        raw = torch.frombuffer(
            bytearray(draw(st.binary(min_size=size, max_size=size))) or bytearray(1),
            dtype=torch.uint8,
        )[:size]
        if dtype == torch.bool:
            tensors[name] = (raw % 2).bool().reshape(shape)
        else:
            tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


metadata_maps = st.dictionaries(
    st.text(max_size=8).filter(lambda k: not k.startswith("batchstash.")), st.text(max_size=8)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=tensor_maps(), metadata=metadata_maps)
def test_round_trip(tensors, metadata):
    payload = wire.encode(tensors, metadata)
    decoded = wire.decode(bytearray(payload))

    assert set(decoded.tensors) == set(tensors)
    for name, tensor in tensors.items():
        got = decoded.tensors[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert _raw(got) == _raw(tensor)  # bit-exact, NaNs included
        if tensor.numel():
            assert got.data_ptr() % tensor.dtype.itemsize == 0
    assert {k: v for k, v in decoded.metadata.items() if not k.startswith("batchstash.")} == {
        str(k): str(v) for k, v in metadata.items()
    }
    # equal input, equal bytes, and decode(encode(x)) re-encodes to the same payload
    assert wire.encode(decoded.tensors, decoded.metadata) == payload


def test_encode_parts_are_the_payload_without_copying_tensors():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    label = torch.tensor([1, 2, 3])
    parts = wire.encode_parts({"x": x, "label": label}, {"k": "v"})
    assert b"".join(parts) == wire.encode({"x": x, "label": label}, {"k": "v"})
    # the tensor parts view the tensors' memory: storing a batch copies nothing first
    addresses = {numpy.frombuffer(p, dtype=numpy.uint8).ctypes.data for p in parts[1:]}
    assert addresses == {x.data_ptr(), label.data_ptr()}


FIXTURE_CHECK = HealthCheck.function_scoped_fixture


def _decode_only_payload_errors(data) -> None:
    try:
        wire.decode(data)
    except PayloadError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_payload_error(data):
    _decode_only_payload_errors(data)
    _decode_only_payload_errors(struct.pack("<Q", len(data)) + data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
entry_specs = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([c for _, c in DTYPES] + ["C64", 3]),
        "shape": st.lists(st.sampled_from([0, 1, 2, 2**31, 2**40, 2**63, -1]), max_size=4)
        | json_values,
        "data_offsets": st.just([0, 0])
        | st.lists(st.integers(0, 64), min_size=2, max_size=2)
        | json_values,
    }
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.dictionaries(st.text(max_size=4), entry_specs | json_values, max_size=3),
    metadata=json_values,
    data=st.binary(max_size=64),
)
def test_malformed_headers_only_raise_payload_error(entries, metadata, data):
    header = dict(entries)
    header["__metadata__"] = metadata
    raw = json.dumps(header, allow_nan=True).encode()
    _decode_only_payload_errors(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture
def sample_payload() -> bytes:
    return wire.encode(
        {
            "x": torch.arange(8, dtype=torch.float32).reshape(2, 4),
            "ids": torch.tensor([3, 1, 2]),
            "m": torch.tensor([True, False]),
        },
        {"batchstash.split": "train", "batchstash.batch_id": "0"},
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_payload_only_raises_payload_error(sample_payload, data):
    buf = bytearray(sample_payload)
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)), max_size=4)
    )
    for pos, value in edits:
        buf[pos] = value
    cut = data.draw(st.integers(0, len(buf)))
    tail = data.draw(st.binary(max_size=8))
    _decode_only_payload_errors(bytes(buf[:cut]) + tail)


@pytest.mark.parametrize("shape", [[2**63, 0], [2**40, 2**40, 0], [2**70, 0], [0, 2**64]], ids=str)
def test_overflowing_empty_shape_is_a_payload_error(shape):
    raw = json.dumps(
        {
            "__metadata__": {"batchstash.format": "2"},
            "t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]},
        }
    ).encode()
    with pytest.raises(PayloadError, match="overflows"):
        wire.decode(struct.pack("<Q", len(raw)) + raw)


def test_flipped_data_byte_is_a_checksum_error(sample_payload):
    header = wire.parse_header(sample_payload)
    entry = header.entries["x"]
    buf = bytearray(sample_payload)
    buf[header.data_start + entry.begin + 5] ^= 0x01

    with pytest.raises(ChecksumError, match="'x' fails its checksum"):
        wire.decode(buf)
    # the other tensors still verify, and verify=False skips the check
    assert torch.equal(wire.decode(buf, ["ids"]).tensors["ids"], torch.tensor([3, 1, 2]))
    assert wire.decode(buf, verify=False).tensors["x"].shape == (2, 4)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:7], "too short"),
        (lambda b: b[:-1], "header describes"),
        (lambda b: b + b"\0", "header describes"),
        (lambda b: struct.pack("<Q", 2**40) + b[8:], "exceeds the payload"),
        (
            lambda b: b.replace(b'"batchstash.format":"2"', b'"batchstash.format":"9"'),
            "unsupported payload format",
        ),
        (lambda b: b.replace(b'"dtype":"I64"', b'"dtype":"C64"'), "unsupported dtype"),
        (lambda b: b.replace(b'"dtype":"I64"', b'"dtype":["I64"]'), "unsupported dtype"),
        (lambda b: b.replace(b"batchstash.checksum.m", b"batchstash.checksum.q"), "no checksum"),
        (lambda b: b.replace(b'"shape":[3]', b'"shape":[4]'), "do not match dtype and shape"),
    ],
    ids=[
        "short",
        "truncated",
        "trailing",
        "huge-header",
        "format",
        "dtype",
        "list-dtype",
        "checksum",
        "shape",
    ],
)
def test_malformed_payload_messages(sample_payload, mutate, message):
    with pytest.raises(PayloadError, match=message):
        wire.decode(mutate(sample_payload))


def test_decode_unknown_name_and_bad_dtype(sample_payload):
    with pytest.raises(PayloadError, match="payload has no tensor 'nope'"):
        wire.decode(sample_payload, ["nope"])
    with pytest.raises(PayloadError, match="cannot be stored"):
        wire.encode({"c": torch.zeros(2, dtype=torch.complex64)}, {})


def test_non_contiguous_tensor_is_stored_in_c_order():
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3).t()
    got = wire.decode(wire.encode({"t": t}, {})).tensors["t"]
    assert got.shape == (3, 2)
    assert torch.equal(got, t)


def _group(tensors):
    return wire.encode(tensors, {"batchstash.split": "train", "batchstash.batch_id": "1"})


@pytest.mark.parametrize("names", [None, ["x"], ["ids", "m"], ["m", "x", "ids"], []], ids=str)
def test_compose_equals_encode_of_subset(names):
    tensors = {
        "x": torch.arange(8, dtype=torch.float32).reshape(2, 4),
        "ids": torch.tensor([3, 1, 2]),
        "m": torch.tensor([True, False]),
    }
    groups = [_group({"x": tensors["x"]}), _group({k: tensors[k] for k in ("ids", "m")})]
    sources = [(g, wire.parse_header(g)) for g in groups]
    meta = {"batchstash.split": "train", "batchstash.batch_id": "1"}

    composed = b"".join(bytes(c) for c in wire.compose(sources, names, meta))

    subset = tensors if names is None else {n: tensors[n] for n in names}
    assert composed == wire.encode(subset, meta)


def test_compose_missing_tensor():
    src = _group({"x": torch.zeros(1)})
    with pytest.raises(PayloadError, match="no stored tensor for y"):
        wire.compose([(src, wire.parse_header(src))], ["x", "y"], {})


def test_decode_is_zero_copy_on_a_bytearray(sample_payload):
    buf = bytearray(sample_payload)
    header = wire.parse_header(buf)
    decoded = wire.decode(buf).tensors
    base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))

    entry = header.entries["x"]
    assert decoded["x"].data_ptr() == base + header.data_start + entry.begin
    struct.pack_into("<f", buf, header.data_start + entry.begin, 42.0)
    assert decoded["x"][0, 0].item() == 42.0

    # read-only input is copied once: the bytes object is never aliased
    frozen = bytes(sample_payload)
    assert wire.decode(frozen).tensors["x"][0, 0].item() == 0.0


IDENTITY = {
    "batchstash.split": "train",
    "batchstash.batch_id": "4",
    "batchstash.fingerprint": "f" * 32,
    "batchstash.data_point_ids": "[10,11,12]",
}


@pytest.mark.parametrize(
    "old,new",
    [
        (b"[10,11,12]", b"[10,11,13]"),  # one digit of one data point id
        (b'"batchstash.batch_id":"4"', b'"batchstash.batch_id":"5"'),
        (b'"batchstash.split":"train"', b'"batchstash.split":"tests"'),
    ],
    ids=["data-point-id", "batch-id", "split"],
)
def test_a_changed_identity_fails_verify_and_decode(old, new):
    payload = wire.encode({"x": torch.arange(3)}, IDENTITY)
    tampered = payload.replace(old, new)
    assert len(tampered) == len(payload) and tampered != payload

    with pytest.raises(ChecksumError, match="identity"):
        wire.verify(tampered)
    with pytest.raises(ChecksumError, match="identity"):
        wire.decode(bytearray(tampered))
    assert wire.decode(bytearray(payload)).data_point_ids == [10, 11, 12]


def test_a_payload_without_identity_checksum_is_refused():
    payload = wire.encode({"x": torch.arange(3)}, IDENTITY)
    header = wire.parse_header(payload)
    meta = dict(header.metadata)
    del meta["batchstash.identity_checksum"]
    stripped = safetensors.torch.save({"x": torch.arange(3)}, metadata=meta)

    with pytest.raises(PayloadError, match="no identity checksum"):
        wire.decode(stripped)


def test_compose_keeps_the_sources_identity():
    first = wire.encode({"a": torch.arange(2)}, IDENTITY)
    second = wire.encode({"b": torch.ones(2)}, IDENTITY)
    sources = [(first, wire.parse_header(first)), (second, wire.parse_header(second))]
    identity = {
        k: v
        for k, v in sources[0][1].metadata.items()
        if not k.startswith(wire.CHECKSUM_PREFIX) and k != "batchstash.format"
    }

    composed = b"".join(wire.compose(sources, None, identity))

    decoded = wire.decode(bytearray(composed))
    assert set(decoded.tensors) == {"a", "b"}
    assert decoded.data_point_ids == [10, 11, 12]
    assert (
        decoded.metadata["batchstash.identity_checksum"] == identity["batchstash.identity_checksum"]
    )
