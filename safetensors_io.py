"""Read and write the safetensors format with NumPy alone.

A safetensors file has three parts:

    8 bytes   N, the length of the header, an unsigned little-endian integer
    N bytes   the header, a UTF-8 JSON object:
                  {name: {"dtype": "F32", "shape": [768, 2304], "data_offsets": [begin, end]}, ...,
                   "__metadata__": {str: str}}            (the metadata entry is optional)
    the rest  the data section: every tensor's raw little-endian bytes, in C order;
              data_offsets count from the start of this section

Unlike a pickle-based checkpoint (pytorch_model.bin, *.pt), a safetensors file contains no code, so
loading one from an untrusted source can at worst be refused. The loader checks every header field before
it touches the data, and raises SafetensorsError, never a bare KeyError or a huge allocation, for anything
malformed. It follows the official implementation's rules: the header is at most 100 MB, and the tensors'
byte ranges, sorted by offset, must cover the data section exactly, with no overlaps, gaps or trailing
bytes. It is stricter in two places: a tensor name given twice in the header is an error (the official
library keeps the last one), and so is a BOOL byte other than 0 or 1. Names and metadata must be valid
Unicode (no lone surrogates such as "\\ud800"), so that they encode as UTF-8, on reading as on writing.

Data types: F64, F32, F16, BF16, C64, I64, I32, I16, I8, U64, U32, U16, U8 and BOOL. NumPy has no
bfloat16, so BF16 tensors load widened to float32 (exactly: bfloat16 is the top half of a float32), and
save_file writes a float tensor as BF16 only when its name is listed in `bf16_names`.

Memory: load_file(path, mmap=True) maps the file read-only and returns arrays that are read-only views
into the map, so even a 500 MB checkpoint is never copied; BF16 tensors are the exception, since widening
them makes new float32 arrays. The views stay valid after load_file returns (each keeps the map alive),
but the file must not be modified or truncated while they are in use. With mmap=False the data section is
read once into memory and the arrays are writable views of that copy.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import reprlib
import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from atomic_files import atomic_output

# The official implementation refuses headers above 100 MB; a bigger length field means a corrupt file.
MAX_HEADER_BYTES = 100_000_000

# NumPy 1.x supports at most 32 dimensions (NumPy 2 allows 64); no real checkpoint comes close.
MAX_NDIM = 32

# How each safetensors dtype lies in the data section. BF16 stays raw 16-bit patterns until it is widened.
_STORAGE_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "C64": np.dtype("<c8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# The reverse map for writing, keyed by (kind, itemsize) so that byte order does not matter.
_DTYPE_NAMES = {
    (dtype.kind, dtype.itemsize): name for name, dtype in _STORAGE_DTYPES.items() if name != "BF16"
}

# Largest element count accepted in a shape. NumPy refuses arrays whose element count times itemsize
# exceeds sys.maxsize, even when a zero dimension makes them empty, so the loader checks this first
# (ignoring zero dimensions, with room for 8-byte items).
_MAX_ELEMENTS = sys.maxsize // 8

_METADATA_KEY = "__metadata__"

# Files that `torch.save` produces. Since PyTorch 1.6 they are zip archives; before, a bare pickle stream.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO_OPCODE = 0x80  # pickle protocols 2 to 5 open with this byte followed by the protocol number


class SafetensorsError(ValueError):
    """A file that is not valid safetensors, or tensors that the format cannot store."""


class TensorSpec(NamedTuple):
    """What the header declares about one tensor: its safetensors dtype name ("F32", "BF16", ...) and shape."""

    dtype: str
    shape: tuple[int, ...]


class _TensorInfo(NamedTuple):
    """One validated header entry; begin and end are byte offsets into the data section."""

    name: str
    dtype_name: str
    shape: tuple[int, ...]
    begin: int
    end: int


class _Layout(NamedTuple):
    """Everything the header says about a file, after validation."""

    tensors: list[_TensorInfo]
    metadata: dict[str, str]
    data_start: int  # file offset of the data section
    data_size: int


# ----------------------------------------------------------------------------------------------------------
# Writing


def save_file(
    tensors: dict[str, np.ndarray],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    *,
    bf16_names: Iterable[str] = (),
) -> None:
    """Write `tensors` to `path` in safetensors format, atomically.

    tensors:    name -> array. Any byte order and memory layout is accepted; the file stores little-endian
                C order.
    metadata:   optional free-form str -> str pairs stored in the header under "__metadata__".
    bf16_names: names of floating-point tensors to store as BF16, rounded to nearest, ties to even (values
                pass through float32 first, as bfloat16 is its top half). Other tensors keep their dtype.

    Tensors are laid out in the data section in name order, one after another, and the header is padded
    with spaces to a multiple of 8 bytes so that the data section starts aligned. The file is written under a
    temporary name in the same directory and renamed over `path` only when complete and flushed to disk, so
    a failure at any point leaves an earlier file at `path` untouched.
    """
    if isinstance(bf16_names, str):  # a lone name would be read as a set of one-letter names
        raise TypeError(f"bf16_names must be a collection of tensor names, got the str {bf16_names!r}")
    dtype_names = _stored_dtype_names(tensors, frozenset(bf16_names))
    _check_metadata_types(metadata)

    header: dict[str, object] = {}
    if metadata:
        header[_METADATA_KEY] = dict(metadata)
    names = sorted(tensors)
    offset = 0
    for name in names:
        tensor = tensors[name]
        nbytes = tensor.size * _STORAGE_DTYPES[dtype_names[name]].itemsize
        header[name] = {
            "dtype": dtype_names[name],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes

    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)

    with atomic_output(path) as output:
        output.write(struct.pack("<Q", len(header_bytes)))
        output.write(header_bytes)
        for name in names:  # one converted tensor in memory at a time
            output.write(_stored_bytes(tensors[name], dtype_names[name]))


def _stored_dtype_names(tensors, bf16_names):
    """name -> safetensors dtype for each tensor; refuses, before any file is touched, what cannot be stored."""
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> numpy array, got {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if not _encodes_as_utf8(name):
            raise SafetensorsError(f"tensor name {name!r} is not valid Unicode (it holds a lone surrogate), so it "
                                   "cannot be stored as UTF-8")
        if name == _METADATA_KEY:
            raise SafetensorsError(f"{_METADATA_KEY!r} is reserved for the metadata and cannot name a tensor")
        if not isinstance(tensor, np.ndarray):
            raise TypeError(f"tensor {name!r} must be a numpy array, got {type(tensor).__name__}")
        if name in bf16_names and tensor.dtype.kind != "f":
            raise SafetensorsError(f"tensor {name!r} is in bf16_names but has dtype {tensor.dtype}")
    unknown = bf16_names - tensors.keys()
    if unknown:
        raise SafetensorsError(f"bf16_names lists tensors that are not being saved: {sorted(unknown)}")
    return {name: "BF16" if name in bf16_names else _dtype_name(tensor) for name, tensor in tensors.items()}


def _check_metadata_types(metadata):
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise TypeError(f"metadata must be a dict of str -> str, got {reprlib.repr(metadata)}")
    for key, value in metadata.items():
        if not (_encodes_as_utf8(key) and _encodes_as_utf8(value)):
            raise SafetensorsError(f"metadata {key!r}: {value!r} is not valid Unicode (it holds a lone surrogate), "
                                   "so it cannot be stored as UTF-8")


def _encodes_as_utf8(text):
    """False for a str holding a lone surrogate ("\\ud800"): Python allows those, UTF-8 and JSON files do not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dtype_name(tensor):
    """The safetensors name of a tensor's dtype, whatever its byte order."""
    try:
        return _DTYPE_NAMES[tensor.dtype.kind, tensor.dtype.itemsize]
    except KeyError:
        raise SafetensorsError(f"safetensors has no dtype for numpy {tensor.dtype}") from None


def _stored_bytes(tensor, dtype_name):
    """The tensor's bytes as the file stores them: little-endian, C order. Returns a flat uint8 array."""
    if dtype_name == "BF16":
        stored = _float_to_bf16_bits(tensor)
    else:
        # Converting to the little-endian variant of its own dtype only byte-swaps, so every bit is kept.
        stored = np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<"))
    return stored.reshape(-1).view(np.uint8)


def _float_to_bf16_bits(tensor):
    """Round floats to bfloat16 (nearest, ties to even) and return the 16-bit patterns as '<u2'."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes infinity, as in bfloat16
        values = np.ascontiguousarray(tensor, dtype=np.float32)
    bits = values.view(np.uint32)
    # Adding 0x7FFF, plus 1 when the lowest kept bit is set, carries into the kept half exactly when the
    # dropped half is above one half, or equal to it with an odd kept half: round to nearest, ties to even.
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    # A NaN whose payload sits only in the dropped half would round to infinity: store a quiet NaN, same sign.
    quiet_nan = ((bits >> 16) & 0x8000) | 0x7FC0
    return np.where(np.isnan(values), quiet_nan, rounded).astype("<u2")


# ----------------------------------------------------------------------------------------------------------
# Reading


def load_file(path: str | os.PathLike, mmap: bool = True) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors file, in header order.

    mmap=True:  arrays are read-only views into a read-only memory map of the file (BF16: new float32 arrays).
    mmap=False: the data section is read into memory once; arrays are writable views of that copy.
    Raises SafetensorsError for a malformed file, and for pickle-based checkpoints, which are never unpickled.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        layout = _read_layout(file, path)
        data = _map_data_section(file, layout, path) if mmap else _read_data_section(file, layout, path)
    return {info.name: _tensor_from_bytes(data, info, path) for info in layout.tensors}


def read_header(path: str | os.PathLike) -> dict[str, TensorSpec]:
    """name -> TensorSpec(dtype, shape) for every tensor of a safetensors file, in header order, without
    reading or mapping the data section.

    The header is validated as load_file validates it, so the declared tensors are known to tile the data
    section exactly: a caller can trust that each declared shape is backed by that many bytes of file.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        return {info.name: TensorSpec(info.dtype_name, info.shape) for info in _read_layout(file, path).tensors}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The "__metadata__" pairs of a safetensors file ({} if it has none), after validating the header."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        return _read_layout(file, path).metadata


def _read_layout(file, path):
    """Read and validate the header; every error message names the file."""
    try:
        return _parse_layout(file, path)
    except SafetensorsError as error:
        raise SafetensorsError(f"{path}: {error}") from None


def _parse_layout(file, path):
    """Validate the header of an open file, checking each length against the file size before reading."""
    file_size = os.fstat(file.fileno()).st_size
    head = file.read(9)  # the length field and the first header byte, enough to recognise a pickle
    if _looks_like_pickle(head, path):
        raise SafetensorsError(
            "this looks like a PyTorch/pickle checkpoint, not a safetensors file, and is refused because "
            "unpickling can execute arbitrary code. Convert it once, in an environment you trust, e.g. with "
            "transformers: GPT2LMHeadModel.from_pretrained(model_dir).save_pretrained(model_dir, "
            "safe_serialization=True), or with torch: "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
        )
    if file_size < 8:
        raise SafetensorsError(f"file is {file_size} bytes, shorter than the 8-byte header length field")

    (header_size,) = struct.unpack("<Q", head[:8])
    if header_size > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {header_size} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_size > file_size:
        raise SafetensorsError(f"header length {header_size} runs past the end of the {file_size}-byte file")
    file.seek(8)
    header = _parse_header_json(file.read(header_size))

    metadata = _validated_metadata(header.pop(_METADATA_KEY, None))
    tensors = [_validated_entry(name, entry) for name, entry in header.items()]
    data_size = file_size - 8 - header_size
    _check_tensors_tile_data_section(tensors, data_size)
    return _Layout(tensors, metadata, 8 + header_size, data_size)


def _looks_like_pickle(head, path):
    """True for what torch.save writes: a zip archive, a pickle stream, or a file named like a checkpoint.

    A safetensors file may itself begin with 0x80 (a header length of 640 does), so a file with "{" where a
    safetensors header starts is always treated as safetensors.
    """
    if head[8:9] == b"{":
        return False
    is_zip = head.startswith(_ZIP_MAGIC)
    is_pickle = len(head) >= 2 and head[0] == _PICKLE_PROTO_OPCODE and 2 <= head[1] <= 5
    return is_zip or is_pickle or path.lower().endswith(_PICKLE_SUFFIXES)


def _parse_header_json(header_bytes):
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SafetensorsError(f"header is not valid UTF-8 ({error})") from None
    try:
        header = json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
    except SafetensorsError:
        raise
    except RecursionError:
        raise SafetensorsError("header JSON is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer too long to convert
        raise SafetensorsError(f"header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def _object_without_duplicate_keys(pairs):
    """json's hook for every object: plain json.loads would silently keep only the last of two equal keys."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise SafetensorsError(f"header repeats the key {key!r}")
        result[key] = value
    return result


def _validated_metadata(metadata):
    if metadata is None:  # absent, or null as the official library accepts
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise SafetensorsError(f"{_METADATA_KEY} must map strings to strings, got {reprlib.repr(metadata)}")
    if not all(_encodes_as_utf8(key) and _encodes_as_utf8(value) for key, value in metadata.items()):
        raise SafetensorsError(f"{_METADATA_KEY} holds a lone surrogate escape (not valid Unicode)")
    return metadata


def _is_int(value):
    # JSON true and false arrive as bool, which is a subclass of int.
    return isinstance(value, int) and not isinstance(value, bool)


def _validated_entry(name, entry):
    where = f"tensor {name!r}"
    if not _encodes_as_utf8(name):
        raise SafetensorsError(f"{where}: the name holds a lone surrogate escape (not valid Unicode)")
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: entry must be a JSON object, got {reprlib.repr(entry)}")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise SafetensorsError(f"{where}: entry lacks {', '.join(missing)}")

    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in _STORAGE_DTYPES:
        supported = ", ".join(_STORAGE_DTYPES)
        raise SafetensorsError(f"{where}: unknown dtype {reprlib.repr(dtype_name)} (supported: {supported})")
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        raise SafetensorsError(
            f"{where}: shape must be a list of non-negative integers, got {reprlib.repr(shape)}"
        )
    if len(shape) > MAX_NDIM:
        raise SafetensorsError(f"{where}: shape has {len(shape)} dimensions, more than {MAX_NDIM}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(offset) for offset in offsets)):
        raise SafetensorsError(
            f"{where}: data_offsets must be a list of two integers, got {reprlib.repr(offsets)}"
        )
    begin, end = offsets
    if not 0 <= begin <= end:
        raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] must satisfy 0 <= begin <= end")

    nonzero_count = math.prod(dim for dim in shape if dim != 0)
    if nonzero_count > _MAX_ELEMENTS:
        raise SafetensorsError(f"{where}: shape {reprlib.repr(shape)} is too large for NumPy")
    element_count = nonzero_count if 0 not in shape else 0
    expected_bytes = element_count * _STORAGE_DTYPES[dtype_name].itemsize
    if end - begin != expected_bytes:
        raise SafetensorsError(
            f"{where}: shape {shape} of {dtype_name} needs {expected_bytes} bytes but data_offsets "
            f"[{begin}, {end}] span {end - begin}"
        )
    return _TensorInfo(name, dtype_name, tuple(shape), begin, end)


def _check_tensors_tile_data_section(tensors, data_size):
    """Sorted by offset, the byte ranges must follow each other without overlap or gap and end with the file.

    This is the official rule; the order of the entries in the JSON does not matter.
    """
    position = 0
    previous = None
    for info in sorted(tensors, key=lambda info: (info.begin, info.end)):
        where = f"tensor {info.name!r} with data_offsets [{info.begin}, {info.end}]"
        if info.end > data_size:
            raise SafetensorsError(f"{where} lies outside the {data_size}-byte data section")
        if info.begin < position:
            raise SafetensorsError(f"{where} overlaps tensor {previous!r}, which ends at {position}")
        if info.begin > position:
            raise SafetensorsError(f"{where} leaves a gap of {info.begin - position} unused bytes before it")
        position, previous = info.end, info.name
    if position != data_size:
        raise SafetensorsError(f"the last {data_size - position} bytes of the data section are in no tensor")


def _map_data_section(file, layout, path):
    """The data section as a read-only uint8 array backed by a memory map of the file."""
    mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mapping) != layout.data_start + layout.data_size:
        raise SafetensorsError(f"{path}: the file changed size while it was being read")
    return np.frombuffer(mapping, dtype=np.uint8)[layout.data_start :]


def _read_data_section(file, layout, path):
    """The data section read into a new writable uint8 array."""
    data = np.empty(layout.data_size, dtype=np.uint8)
    file.seek(layout.data_start)
    if file.readinto(data) != layout.data_size:
        raise SafetensorsError(f"{path}: the file changed size while it was being read")
    return data


def _tensor_from_bytes(data, info, path):
    """Interpret one tensor's byte range of the data section; a view unless the dtype needs converting."""
    byte_range = data[info.begin : info.end]
    if info.dtype_name == "BOOL" and np.any(byte_range > 1):
        # NumPy would accept such bytes, but comparisons and sums on them give inconsistent answers.
        raise SafetensorsError(f"{path}: BOOL tensor {info.name!r} holds bytes other than 0 and 1")
    stored = byte_range.view(_STORAGE_DTYPES[info.dtype_name]).reshape(info.shape)
    if info.dtype_name == "BF16":
        # bfloat16 is the top 16 bits of a float32: shift the pattern up and reinterpret the 32 bits.
        # (In place, because `<<` on a 0-d array would return a NumPy scalar instead of an array.)
        widened = stored.astype(np.uint32)
        widened <<= 16
        return widened.view(np.float32)
    return stored
