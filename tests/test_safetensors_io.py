"""Tests for safetensors_io: round trips, the byte layout on disk, interop with the official library, a
loader that answers every malformed or pickle-based file with SafetensorsError, and atomic writes."""
import json
import mmap
import os
import pickle
import re
import struct
import tracemalloc
import warnings
import zipfile
from datetime import timedelta

import numpy as np
import pytest
from conftest import require_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

import safetensors_io
from safetensors_io import SafetensorsError, load_file, read_metadata, save_file

# Written out here rather than taken from the module, so that a wrong entry there shows up as a failure.
NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "C64": np.complex64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
SHAPES = [(), (0,), (2, 0, 3), (5,), (3, 4), (2, 3, 4)]
LAYOUTS = ["contiguous", "big_endian", "strided", "fortran"]


def random_array(dtype, shape, rng):
    """Random bit patterns (NaN payloads, subnormals and infinities included); bools are 0 or 1."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    count = int(np.prod(shape))
    return rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8).view(dtype).reshape(shape)


def with_layout(array, layout):
    """The same values as `array` (a native C-order array) in another byte order or memory layout.

    Built from bytes and same-dtype copies only, which never alter a bit, not from dtype conversions.
    """
    if layout == "contiguous":
        return array
    if layout == "big_endian":
        return array.byteswap().view(array.dtype.newbyteorder(">"))
    if layout == "strided":
        wider = np.zeros(array.shape + (2,), dtype=array.dtype)
        wider[..., 1] = array
        return wider[..., 1]
    if layout == "fortran":
        return array.copy(order="F")
    raise AssertionError(layout)


def assert_same_bits(loaded, original):
    """Same shape, same little-endian dtype, and the same bytes as the native little-endian original."""
    assert loaded.shape == original.shape
    assert loaded.dtype == original.dtype.newbyteorder("<")
    assert loaded.tobytes() == original.tobytes()


def safetensors_bytes(header, data=b""):
    """A file built by hand: length field, header (a dict to JSON-encode, or raw bytes), then data."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def entry(dtype="F32", shape=(1,), data_offsets=(0, 4)):
    """One header entry, by default a float32 tensor of one element at the start of the data section."""
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(data_offsets)}


def one_tensor_file(data=bytes(4), **fields):
    """A file holding tensor "a", whose entry is entry() with `fields` replaced by the given JSON values."""
    return safetensors_bytes({"a": {**entry(), **fields}}, data)


def parse_file_by_hand(path):
    """A file's header length, header text, tensor entries in file order, and (last) data section.

    Reads the format directly, without the module under test.
    """
    blob = path.read_bytes()
    (header_length,) = struct.unpack("<Q", blob[:8])
    header_text = blob[8 : 8 + header_length].decode("utf-8")
    entries = [(name, dict(value)) for name, value in json.loads(header_text, object_pairs_hook=list)]
    tensor_entries = [(name, value) for name, value in entries if name != "__metadata__"]
    return header_length, header_text, tensor_entries, blob[8 + header_length :]


def random_tensors(dtype_name, seed):
    """One tensor of each shape in SHAPES, named t0, t1, ..."""
    rng = np.random.default_rng(seed)
    dtype = NUMPY_DTYPES[dtype_name]
    return {f"t{index}": random_array(dtype, shape, rng) for index, shape in enumerate(SHAPES)}


# ----------------------------------------------------------------------------------------------------------
# Round trips and layout


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype_name", list(NUMPY_DTYPES))
def test_round_trip_keeps_every_bit(tmp_path, dtype_name, layout):
    originals = random_tensors(dtype_name, seed=list(NUMPY_DTYPES).index(dtype_name))
    path = tmp_path / "model.safetensors"
    save_file({name: with_layout(array, layout) for name, array in originals.items()}, path)

    for use_mmap in (True, False):
        loaded = load_file(path, mmap=use_mmap)
        assert sorted(loaded) == sorted(originals)
        for name, original in originals.items():
            assert_same_bits(loaded[name], original)
    _, _, entries, _ = parse_file_by_hand(path)
    assert {value["dtype"] for _, value in entries} == {dtype_name}


def test_metadata_round_trip(tmp_path):
    metadata = {"format": "np", "note": "héllo ✓", "empty": "", "json-like": '{"a": [1]}'}
    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones(3, np.float32)}, path, metadata=metadata)
    assert read_metadata(path) == metadata

    save_file({"w": np.ones(3, np.float32)}, path)
    assert read_metadata(path) == {}


def test_header_is_padded_to_8_and_tensors_are_contiguous_in_header_order(tmp_path):
    rng = np.random.default_rng(0)
    # Odd byte counts, so that any padding or misplaced offset between tensors would show.
    tensors = {
        "c_int8": rng.integers(-100, 100, size=3).astype(np.int8),
        "a_half": rng.standard_normal(5).astype(np.float16),
        "b_double": rng.standard_normal((2, 3)),
        "d_scalar": np.array(7, np.int16),
        "e_empty": np.zeros((0, 4), np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"k": "v"})
    header_length, header_text, entries, data = parse_file_by_hand(path)

    assert (8 + header_length) % 8 == 0
    closing_brace = header_text.rindex("}")
    assert set(header_text[closing_brace + 1 :]) <= {" "}, "the header may be padded with spaces only"
    assert len(header_text) - closing_brace - 1 < 8

    assert sorted(name for name, _ in entries) == sorted(tensors)
    position = 0
    for name, value in entries:
        begin, end = value["data_offsets"]
        assert begin == position, f"{name} does not start where the previous tensor ends"
        assert data[begin:end] == tensors[name].tobytes()
        assert value["shape"] == list(tensors[name].shape)
        position = end
    assert position == len(data)


def test_bf16_values_are_stored_as_the_top_16_bits(tmp_path):
    # Exactly representable in bfloat16, so the round trip must be exact; patterns worked out by hand.
    largest_bf16 = (2 - 2.0**-7) * 2.0**127
    values = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, np.inf, -np.inf, 2.0**-133, largest_bf16], np.float32)
    patterns = [0x0000, 0x8000, 0x3F80, 0xC020, 0x4049, 0x7F80, 0xFF80, 0x0001, 0x7F7F]
    path = tmp_path / "model.safetensors"
    save_file({"x": values, "y": values.astype(np.float64)}, path, bf16_names={"x", "y"})

    _, _, entries, data = parse_file_by_hand(path)
    for name, value in entries:
        assert value["dtype"] == "BF16"
        begin, end = value["data_offsets"]
        assert np.frombuffer(data[begin:end], "<u2").tolist() == patterns, name
    loaded = load_file(path)
    for name in ("x", "y"):
        assert loaded[name].dtype == np.float32
        assert loaded[name].view(np.uint32).tolist() == values.view(np.uint32).tolist()


def test_bf16_rounds_to_nearest_even_and_keeps_nan(tmp_path):
    float32_bits = {
        0x3F808000: 0x3F80,  # exactly half way, kept half even: stays
        0x3F818000: 0x3F82,  # exactly half way, kept half odd: rounds up to even
        0x3F808001: 0x3F81,  # just above half way
        0x3F807FFF: 0x3F80,  # just below half way
        0x7F7FFFFF: 0x7F80,  # largest float32 rounds to infinity
        0x00000001: 0x0000,  # smallest float32 subnormal rounds to zero
    }
    nan_bits = [0x7F800001, 0xFFC00000, 0x7FFFFFFF]  # payload only in the dropped half, negative, all ones
    values = np.array(list(float32_bits) + nan_bits, np.uint32).view(np.float32)
    path = tmp_path / "model.safetensors"
    save_file({"x": values}, path, bf16_names=["x"])

    stored = np.frombuffer(parse_file_by_hand(path)[-1], "<u2")
    assert stored[: len(float32_bits)].tolist() == list(float32_bits.values())
    stored_nans = stored[len(float32_bits) :]
    assert np.all(stored_nans & 0x7F80 == 0x7F80) and np.all(stored_nans & 0x007F != 0), "NaN must stay NaN"


def test_bf16_from_float64_beyond_float32_range_is_infinity_without_warning(tmp_path):
    path = tmp_path / "model.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_file({"x": np.array([1e300, -1e300, 1.0])}, path, bf16_names=["x"])
    assert np.frombuffer(parse_file_by_hand(path)[-1], "<u2").tolist() == [0x7F80, 0xFF80, 0x3F80]


def test_bf16_file_loads_as_float32_values(tmp_path):
    patterns = [0x3F80, 0xC000, 0x3F00, 0x7F80, 0x0001, 0x8000]
    expected = [1.0, -2.0, 0.5, np.inf, 2.0**-133, -0.0]
    path = tmp_path / "model.safetensors"
    data = np.array(patterns, "<u2").tobytes() + np.array(0x4040, "<u2").tobytes()
    header = {"v": entry("BF16", (2, 3), (0, 12)), "s": entry("BF16", (), (12, 14))}
    path.write_bytes(safetensors_bytes(header, data))

    loaded = load_file(path)
    assert loaded["v"].dtype == np.float32 and loaded["v"].shape == (2, 3)
    np.testing.assert_array_equal(loaded["v"].ravel(), np.array(expected, np.float32))
    assert np.signbit(loaded["v"].ravel()[-1])
    assert isinstance(loaded["s"], np.ndarray) and loaded["s"].shape == () and loaded["s"] == 3.0


def test_mmap_load_returns_read_only_views_of_the_map(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(2, np.bool_)}, path)

    mapped = load_file(path, mmap=True)
    for array in mapped.values():
        assert not array.flags.writeable
        owner = array.base
        while isinstance(owner, np.ndarray):
            owner = owner.base
        if isinstance(owner, memoryview):  # NumPy records the buffer it was given, whose .obj is the exporter
            owner = owner.obj
        assert isinstance(owner, mmap.mmap), "the array should be backed by a memory map"

    in_memory = load_file(path, mmap=False)
    in_memory["w"][0, 0] = 42.0  # writable, and a copy: the file keeps its value
    assert load_file(path)["w"][0, 0] == 0.0


def test_header_order_need_not_follow_offset_order(tmp_path):
    data = np.array([1.0, 2.0], "<f4").tobytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes({"second": entry(data_offsets=(4, 8)), "first": entry()}, data))
    loaded = load_file(path)
    assert loaded["first"].tolist() == [1.0] and loaded["second"].tolist() == [2.0]


# ----------------------------------------------------------------------------------------------------------
# Interop with the official library


@pytest.mark.parametrize("dtype_name", list(NUMPY_DTYPES))
def test_our_files_load_bit_exactly_in_the_official_library(tmp_path, dtype_name):
    official = require_oracle("safetensors.numpy")
    originals = random_tensors(dtype_name, seed=100 + list(NUMPY_DTYPES).index(dtype_name))
    path = tmp_path / "ours.safetensors"
    save_file(originals, path, metadata={"written_by": "safetensors_io"})

    loaded = official.load_file(str(path))
    assert sorted(loaded) == sorted(originals)
    for name, original in originals.items():
        assert_same_bits(loaded[name], original)
    safetensors = require_oracle("safetensors")
    with safetensors.safe_open(str(path), framework="np") as file:
        assert file.metadata() == {"written_by": "safetensors_io"}


@pytest.mark.parametrize("dtype_name", list(NUMPY_DTYPES))
def test_official_files_load_bit_exactly_here(tmp_path, dtype_name):
    official = require_oracle("safetensors.numpy")
    originals = random_tensors(dtype_name, seed=200 + list(NUMPY_DTYPES).index(dtype_name))
    path = tmp_path / "official.safetensors"
    official.save_file(originals, str(path), metadata={"written_by": "safetensors"})

    loaded = load_file(path)
    assert sorted(loaded) == sorted(originals)
    for name, original in originals.items():
        assert_same_bits(loaded[name], original)
    assert read_metadata(path) == {"written_by": "safetensors"}


def test_official_bf16_files_load_as_the_same_float32_values(tmp_path):
    torch = require_oracle("torch")
    official_torch = require_oracle("safetensors.torch")
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "matrix": (torch.randn(4, 5, generator=generator) * 100).to(torch.bfloat16),
        "scalar": torch.tensor(-0.375, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3, dtype=torch.bfloat16),
        "special": torch.tensor([float("inf"), float("-inf"), 1e-40, -0.0], dtype=torch.bfloat16),
    }
    path = tmp_path / "official_bf16.safetensors"
    official_torch.save_file(tensors, str(path))

    loaded = load_file(path)
    for name, tensor in tensors.items():
        expected = tensor.float().numpy()
        assert loaded[name].dtype == np.float32 and loaded[name].shape == expected.shape
        assert loaded[name].tobytes() == expected.tobytes(), name


def test_our_bf16_rounding_matches_torch(tmp_path):
    torch = require_oracle("torch")
    official_torch = require_oracle("safetensors.torch")
    rng = np.random.default_rng(7)
    values = random_array(np.float32, (4096,), rng)  # random bit patterns: every exponent, NaNs, subnormals
    path = tmp_path / "ours_bf16.safetensors"
    save_file({"x": values}, path, bf16_names=["x"])

    ours = official_torch.load_file(str(path))["x"]
    expected = torch.from_numpy(values.copy()).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    is_nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(ours), is_nan)
    # torch's scalar and vectorised paths write different NaN patterns; all else must match bit for bit.
    assert torch.equal(ours.view(torch.int16)[~is_nan], expected.view(torch.int16)[~is_nan])


# ----------------------------------------------------------------------------------------------------------
# Malformed files

# Layouts that the official library rejects too (checked in test_official_library_also_rejects_bad_layouts).
BAD_LAYOUTS = {
    "gap": safetensors_bytes({"a": entry(), "b": entry(data_offsets=(8, 12))}, bytes(12)),
    "overlap": safetensors_bytes(
        {"a": entry(shape=(2,), data_offsets=(0, 8)), "b": entry(shape=(2,), data_offsets=(4, 12))}, bytes(12)
    ),
    "trailing bytes": one_tensor_file(data=bytes(8)),
    "outside": one_tensor_file(shape=[2], data_offsets=[0, 8]),
    "size mismatch": one_tensor_file(shape=[2]),
}
F32_ENTRY = b'{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'

MALFORMED_FILES = [
    pytest.param(b"", "shorter than the 8-byte", id="empty file"),
    pytest.param(b"\x10\x00\x00", "shorter than the 8-byte", id="shorter than 8 bytes"),
    pytest.param(struct.pack("<Q", 1000) + b"{}", "past the end", id="header past the end"),
    pytest.param(struct.pack("<Q", 2**64 - 1) + b"{}", "limit", id="absurd header length"),
    pytest.param(struct.pack("<Q", 100_000_001) + b"{}", "limit", id="header just over the cap"),
    pytest.param(safetensors_bytes(b'{"\xff\xfe": 1}'), "UTF-8", id="header not UTF-8"),
    pytest.param(safetensors_bytes(b'{"a": '), "not valid JSON", id="header not JSON"),
    pytest.param(safetensors_bytes(b""), "not valid JSON", id="header empty"),
    pytest.param(safetensors_bytes(b'{"a": [' + b"9" * 5000 + b"]}"), "not valid JSON", id="5000 digits"),
    pytest.param(safetensors_bytes(b"[" * 100_000), "nested too deeply", id="JSON nested too deeply"),
    pytest.param(safetensors_bytes(b"[1, 2]"), "must be a JSON object", id="header a JSON list"),
    pytest.param(safetensors_bytes({"a": 5}), "entry must be a JSON object", id="entry not an object"),
    pytest.param(
        safetensors_bytes({"a": {"dtype": "F32", "shape": [1]}}), "lacks data_offsets", id="no data_offsets"
    ),
    pytest.param(
        safetensors_bytes({"a": {"data_offsets": [0, 0]}}), "lacks dtype, shape", id="no dtype and shape"
    ),
    pytest.param(one_tensor_file(dtype="F13"), "unknown dtype", id="unknown dtype"),
    pytest.param(one_tensor_file(dtype=4), "unknown dtype", id="dtype not a string"),
    pytest.param(one_tensor_file(dtype="f32"), "unknown dtype", id="lower-case dtype"),
    pytest.param(one_tensor_file(shape=1), "shape must be a list", id="shape not a list"),
    pytest.param(one_tensor_file(shape=[-1]), "shape must be a list", id="negative dimension"),
    pytest.param(one_tensor_file(shape=[1.0]), "shape must be a list", id="float dimension"),
    pytest.param(one_tensor_file(shape=[True]), "shape must be a list", id="boolean dimension"),
    pytest.param(one_tensor_file(shape=["1"]), "shape must be a list", id="string dimension"),
    pytest.param(one_tensor_file(shape=[1] * 33), "33 dimensions", id="33 dimensions"),
    pytest.param(
        one_tensor_file(data=b"", shape=[0, 2**62, 2**62], data_offsets=[0, 0]), "too large", id="empty huge"
    ),
    pytest.param(one_tensor_file(data_offsets=[0]), "two integers", id="one offset"),
    pytest.param(one_tensor_file(data_offsets=[0, 4, 8]), "two integers", id="three offsets"),
    pytest.param(one_tensor_file(data_offsets=4), "two integers", id="offsets not a list"),
    pytest.param(one_tensor_file(data_offsets=[0, "4"]), "two integers", id="string offset"),
    pytest.param(one_tensor_file(data_offsets=[0.0, 4.0]), "two integers", id="float offsets"),
    pytest.param(one_tensor_file(data_offsets=[False, 4]), "two integers", id="boolean offset"),
    pytest.param(one_tensor_file(shape=[0], data_offsets=[4, 0]), "begin <= end", id="begin after end"),
    pytest.param(one_tensor_file(data_offsets=[-4, 0]), "begin <= end", id="negative begin"),
    pytest.param(BAD_LAYOUTS["size mismatch"], "needs 8 bytes", id="shape disagrees with range"),
    pytest.param(one_tensor_file(shape=[2**20, 2**20]), "needs", id="huge shape, small range"),
    pytest.param(BAD_LAYOUTS["outside"], "outside the 4-byte data section", id="range outside the data"),
    pytest.param(BAD_LAYOUTS["overlap"], "overlaps tensor 'a'", id="overlapping ranges"),
    pytest.param(BAD_LAYOUTS["gap"], "gap of 4 unused bytes", id="gap between ranges"),
    pytest.param(BAD_LAYOUTS["trailing bytes"], "last 4 bytes", id="bytes after the last tensor"),
    pytest.param(safetensors_bytes({}, bytes(4)), "last 4 bytes", id="data but no tensors"),
    pytest.param(
        safetensors_bytes(b'{"a":' + F32_ENTRY + b',"a":' + F32_ENTRY + b"}", bytes(4)),
        "repeats the key 'a'",
        id="duplicate tensor name",
    ),
    pytest.param(
        safetensors_bytes(b'{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)),
        "repeats the key 'dtype'",
        id="duplicate key in an entry",
    ),
    pytest.param(
        safetensors_bytes({"__metadata__": {"k": 1}}), "must map strings to strings", id="metadata int value"
    ),
    pytest.param(safetensors_bytes({"__metadata__": ["k"]}), "map strings to strings", id="metadata list"),
]


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize(("blob", "message"), MALFORMED_FILES)
def test_malformed_file_raises_safetensors_error(tmp_path, blob, message, use_mmap):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(SafetensorsError, match=re.escape(message)):
        load_file(path, mmap=use_mmap)
    with pytest.raises(SafetensorsError, match=re.escape(message)):
        read_metadata(path)


@pytest.mark.parametrize("case", ["gap", "overlap", "trailing bytes", "outside", "size mismatch"])
def test_official_library_also_rejects_bad_layouts(case):
    official = require_oracle("safetensors.numpy")
    with pytest.raises(require_oracle("safetensors").SafetensorError):
        official.load(BAD_LAYOUTS[case])


def test_bool_bytes_other_than_0_and_1_are_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes({"mask": entry("BOOL", (3,), (0, 3))}, b"\x00\x01\x02"))
    with pytest.raises(SafetensorsError, match="BOOL tensor 'mask'"):
        load_file(path)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "named.safetensors"
    path.write_bytes(BAD_LAYOUTS["gap"])
    with pytest.raises(SafetensorsError, match="named.safetensors"):
        load_file(path)


def test_oversized_header_length_is_refused_without_reading_it(tmp_path):
    # Under the 100 MB cap but far past the end of this tiny file: the loader must not allocate for it.
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", 99_000_000) + b"{}")
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsError, match="past the end"):
            load_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


# ----------------------------------------------------------------------------------------------------------
# Random corruption never escapes as anything but SafetensorsError


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    """A small valid file's bytes, where its data starts, name -> (dtype, shape); and a scratch path."""
    directory = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(3)
    tensors = {
        "weight": rng.standard_normal((2, 3)).astype(np.float32),
        "bf16": np.array([1.5, -2.0], np.float32),
        "mask": np.array([True, False, True]),
        "step": np.array(7, np.int8),
        "empty": np.zeros((0, 2), np.float16),
        "ids": np.arange(4, dtype=np.uint8),
    }
    path = directory / "valid.safetensors"
    save_file(tensors, path, metadata={"k": "v"}, bf16_names=["bf16"])
    header_length, _, _, _ = parse_file_by_hand(path)
    expected = {name: (array.dtype, array.shape) for name, array in tensors.items()}  # BF16 loads as float32
    return path.read_bytes(), 8 + header_length, expected, directory / "scratch.safetensors"


FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    database=None,  # keep the working tree free of a .hypothesis folder
)


@FUZZ_SETTINGS
@given(
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
    use_mmap=st.booleans(),
)
def test_overwritten_bytes_load_or_raise_safetensors_error(valid_file, edits, use_mmap):
    blob, data_start, expected, scratch = valid_file
    corrupted = bytearray(blob)
    positions = [position % len(blob) for position, _ in edits]
    for position, (_, value) in zip(positions, edits):
        corrupted[position] = value
    scratch.write_bytes(bytes(corrupted))
    try:
        loaded = load_file(scratch, mmap=use_mmap)
    except SafetensorsError:
        assert corrupted != blob, "an unmodified file must load"
        return
    for array in loaded.values():
        array.tobytes()  # touch every byte
    if min(positions) >= data_start:
        assert {name: (array.dtype, array.shape) for name, array in loaded.items()} == expected


@FUZZ_SETTINGS
@given(cut=st.integers(min_value=0))
def test_truncated_file_always_raises_safetensors_error(valid_file, cut):
    blob, _, _, scratch = valid_file
    scratch.write_bytes(blob[: cut % len(blob)])
    with pytest.raises(SafetensorsError):
        load_file(scratch)


# ----------------------------------------------------------------------------------------------------------
# Atomic writes


def failing_conversion(monkeypatch):
    """Make the second tensor's conversion fail, after the header and first tensor are already written."""
    real_stored_bytes = safetensors_io._stored_bytes
    calls = []

    def stored_bytes(tensor, dtype_name):
        calls.append(dtype_name)
        if len(calls) == 2:
            raise RuntimeError("conversion failed")
        return real_stored_bytes(tensor, dtype_name)

    monkeypatch.setattr(safetensors_io, "_stored_bytes", stored_bytes)
    return RuntimeError


def failing_fsync(monkeypatch):
    """Make flushing to disk fail, as a full disk or an I/O error would."""

    def fsync(descriptor):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", fsync)
    return OSError


@pytest.mark.parametrize("inject_failure", [failing_conversion, failing_fsync])
def test_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, inject_failure):
    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(3, dtype=np.float32)}, path)
    before = path.read_bytes()

    expected_error = inject_failure(monkeypatch)
    new_tensors = {"a": np.ones(1000, np.float32), "b": np.ones(10, np.int64), "c": np.zeros(2, np.int8)}
    with pytest.raises(expected_error):
        save_file(new_tensors, path)

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"old": np.zeros(2, np.float32)}, path)
    save_file({"new": np.ones(3, np.int32)}, path)
    assert list(load_file(path)) == ["new"]
    assert os.listdir(tmp_path) == ["model.safetensors"]


@pytest.mark.parametrize(
    ("tensors", "options", "error"),
    [
        ({"x": np.array(["text"])}, {}, SafetensorsError),
        ({"x": np.zeros(2, np.complex128)}, {}, SafetensorsError),
        ({"x": np.array([None])}, {}, SafetensorsError),
        ({"__metadata__": np.zeros(2, np.float32)}, {}, SafetensorsError),
        ({"x": np.zeros(2, np.int32)}, {"bf16_names": ["x"]}, SafetensorsError),
        ({"x": np.zeros(2, np.float32)}, {"bf16_names": ["y"]}, SafetensorsError),
        ({"x": [1.0, 2.0]}, {}, TypeError),
        ({1: np.zeros(2, np.float32)}, {}, TypeError),
        ({"x": np.zeros(2, np.float32)}, {"metadata": {"k": 1}}, TypeError),
    ],
    ids=["strings", "complex128", "objects", "reserved name", "bf16 of ints", "bf16 of unknown name",
         "a list", "int name", "int metadata"],
)
def test_unstorable_input_is_refused_before_touching_the_file(tmp_path, tensors, options, error):
    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros(1, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(error):
        save_file(tensors, path, **options)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


# ----------------------------------------------------------------------------------------------------------
# Pickle-based checkpoints are refused, never unpickled


class CreatesFileWhenUnpickled:
    """Unpickling this object opens (and so creates) a file: proof of code execution if the file appears."""

    def __init__(self, marker_path):
        self.marker_path = marker_path

    def __reduce__(self):
        return (open, (self.marker_path, "w"))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_stream_is_refused_unopened(tmp_path, protocol):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.safetensors"  # the content gives it away, not the name
    path.write_bytes(pickle.dumps({"weight": CreatesFileWhenUnpickled(str(marker))}, protocol=protocol))
    with pytest.raises(SafetensorsError, match="pickle") as error:
        load_file(path)
    assert "save_pretrained" in str(error.value)
    assert not marker.exists()


def test_zip_archive_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0]}))
    with pytest.raises(SafetensorsError, match="pickle"):
        load_file(path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth"])
def test_checkpoint_names_are_refused_when_not_safetensors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SafetensorsError, match="pickle"):
        load_file(path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_files_are_refused(tmp_path, zip_format):
    torch = require_oracle("torch")
    path = tmp_path / "pytorch_model.safetensors"
    torch.save({"weight": torch.ones(3)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(SafetensorsError, match="pickle"):
        load_file(path)


def test_valid_file_that_starts_like_a_pickle_still_loads(tmp_path):
    # A header length of 640 is written 80 02 00 ..., the same two bytes that open a protocol-2 pickle.
    header = json.dumps({"w": entry()}).encode("utf-8")
    blob = safetensors_bytes(header.ljust(640), np.array([2.5], "<f4").tobytes())
    assert blob[:2] == b"\x80\x02"
    path = tmp_path / "pytorch_model.bin"  # a checkpoint name too: real safetensors content wins
    path.write_bytes(blob)
    assert load_file(path)["w"].tolist() == [2.5]
