"""A small safetensors reader and writer that needs only numpy.

File layout (https://github.com/huggingface/safetensors):

    [8 bytes]  little-endian unsigned 64-bit size n of the header
    [n bytes]  JSON object: {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                             ..., "__metadata__": {"<key>": "<string value>", ...}}
    [rest]     raw row-major little-endian tensor data; offsets are relative to the start of this
               region

API:

    load(path) -> (dict[str, np.ndarray], dict[str, str])
    save(path, tensors, metadata=None)

numpy has no bfloat16, so BF16 tensors are loaded as `BF16Array`, a uint16 ndarray subclass holding
the raw bits; `save` writes a `BF16Array` as BF16 (a plain uint16 array is written as U16).
`bf16_from_float32` rounds to nearest, ties to even; `bf16_to_float32` is exact.
"""

import json
import os
import struct

import numpy as np

__all__ = ["load", "save", "BF16Array", "bf16_from_float32", "bf16_to_float32", "MAX_HEADER_BYTES"]

# The reference implementation refuses headers above 100 MB; so does this one.
MAX_HEADER_BYTES = 100 * 1000 * 1000


class BF16Array(np.ndarray):
    """uint16 array whose elements are bfloat16 bit patterns."""

    def __new__(cls, bits):
        arr = np.asarray(bits)
        if arr.dtype != np.uint16:
            raise TypeError(f"BF16Array: expected uint16 bits, found dtype {arr.dtype}")
        return arr.view(cls)

    def __array_finalize__(self, obj):
        pass


def bf16_from_float32(a):
    """float32 (or anything castable) -> BF16Array, rounding to nearest, ties to even.

    NaN stays NaN (a quiet NaN with the input's sign); overflow rounds to +-inf as IEEE rounding
    requires."""
    f = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        sign = ((bits >> 16) & 0x8000).astype(np.uint16)
        rounded = np.where(nan, sign | np.uint16(0x7FC0), rounded).astype(np.uint16)
    return BF16Array(rounded.reshape(f.shape))


def bf16_to_float32(bits):
    """BF16 bits (uint16 array) -> float32, exactly."""
    b = np.ascontiguousarray(np.asarray(bits, dtype=np.uint16))
    return (b.astype(np.uint32) << 16).view(np.float32).reshape(b.shape)


# safetensors dtype name <-> numpy little-endian dtype (BF16 handled separately).
_NP_OF = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
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
_NAME_OF = {
    np.dtype("f8"): "F64",
    np.dtype("f4"): "F32",
    np.dtype("f2"): "F16",
    np.dtype("i8"): "I64",
    np.dtype("i4"): "I32",
    np.dtype("i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u8"): "U64",
    np.dtype("u4"): "U32",
    np.dtype("u2"): "U16",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}


def _fail(path, msg):
    raise ValueError(f"{path}: {msg}")


def load(path):
    """Reads a safetensors file. Returns (tensors, metadata): tensors maps each name to a fresh,
    writable, C-contiguous native-endian array (BF16 as BF16Array bits); metadata is the
    `__metadata__` map ({} when absent). Malformed files raise ValueError naming the problem."""
    with open(path, "rb") as fh:
        blob = fh.read()
    if len(blob) < 8:
        _fail(path, f"truncated file: expected at least 8 bytes for the header size, found {len(blob)}")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER_BYTES:
        _fail(path, f"header size {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + n > len(blob):
        _fail(path, f"header size {n} is larger than the file ({len(blob) - 8} bytes after the size field)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"corrupt header: not valid JSON ({e})")
    if not isinstance(header, dict):
        _fail(path, f"corrupt header: expected a JSON object, found {type(header).__name__}")
    data = memoryview(blob)[8 + n :]

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        _fail(path, "corrupt header: '__metadata__' must map strings to strings")

    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            _fail(path, f"tensor '{name}': expected an object with dtype, shape, data_offsets")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if dtype not in _NP_OF:
            _fail(path, f"tensor '{name}': unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            _fail(path, f"tensor '{name}': shape must be a list of non-negative integers, found {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offs)
            or offs[0] > offs[1]
        ):
            _fail(path, f"tensor '{name}': data_offsets must be [begin, end] with 0 <= begin <= end, found {offs!r}")
        npdt = _NP_OF[dtype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        want = count * npdt.itemsize
        if offs[1] - offs[0] != want:
            _fail(path, f"tensor '{name}': {dtype}{shape} needs {want} bytes, data_offsets span {offs[1] - offs[0]}")
        if offs[1] > len(data):
            _fail(path, f"tensor '{name}': data ends at byte {offs[1]} but the data region holds {len(data)} bytes (truncated file)")
        # frombuffer accepts any byte offset; copy() gives an aligned, writable, native-endian array.
        arr = np.frombuffer(data, dtype=npdt, count=count, offset=offs[0]).astype(npdt.newbyteorder("="))
        arr = arr.reshape(shape).copy()
        tensors[name] = BF16Array(arr) if dtype == "BF16" else arr
    return tensors, dict(metadata)


def save(path, tensors, metadata=None):
    """Writes `tensors` (name -> array; BF16Array for BF16) and the string map `metadata` to
    `path`. The header is padded with spaces to a multiple of 8 bytes. Written to a temporary file
    first, then renamed, so a failed write leaves no partial file."""
    header = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("save: metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    entries = []
    for name, value in tensors.items():
        if name == "__metadata__":
            raise ValueError("save: '__metadata__' is reserved and cannot name a tensor")
        if isinstance(value, BF16Array):
            dtype = "BF16"
            arr = np.asarray(value).view(np.uint16)
        else:
            arr = np.asarray(value)
            if arr.dtype.newbyteorder("=") not in _NAME_OF:
                raise TypeError(f"save: tensor '{name}' has unsupported dtype {arr.dtype}")
            dtype = _NAME_OF[arr.dtype.newbyteorder("=")]
        raw = np.ascontiguousarray(arr, dtype=_NP_OF[dtype]).tobytes()
        entries.append((name, dtype, [int(s) for s in arr.shape], raw))
    # Data is packed without gaps (readers such as the reference one reject gaps); widest
    # element type first, so with the 8-byte header padding every tensor is naturally aligned.
    chunks = []
    offset = 0
    for name, dtype, shape, raw in sorted(entries, key=lambda e: -_NP_OF[e[1]].itemsize):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(text)))
            fh.write(text)
            for c in chunks:
                fh.write(c)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
