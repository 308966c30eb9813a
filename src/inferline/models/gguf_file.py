"""A small GGUF reader: metadata, tensor directory and zero-copy views of the tensor bytes.

Design note: `gguf.GGUFReader` builds one numpy memmap slice per string while it parses, and a
tokenizer's vocabulary and merges are ~100,000 strings; on the default model that costs 1.7 s of a
3 s load budget. The format is simple (GGUF v2/v3, little-endian: header, key/values, tensor
infos, aligned data), so this reader parses the header with `struct` over a memoryview (~50 ms)
and leaves the tensor data in a copy-on-write memmap until it is dequantized. The type tables
(`GGMLQuantizationType`, block sizes) still come from the `gguf` package, and a test checks this
reader against `GGUFReader` on the default model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inferline.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF value type id -> struct format of one scalar (strings and arrays are handled apart).
_SCALAR_FORMATS: dict[int, str] = {
    0: "<B",  # UINT8
    1: "<b",  # INT8
    2: "<H",  # UINT16
    3: "<h",  # INT16
    4: "<I",  # UINT32
    5: "<i",  # INT32
    6: "<f",  # FLOAT32
    7: "<?",  # BOOL
    10: "<Q",  # UINT64
    11: "<q",  # INT64
    12: "<d",  # FLOAT64
}
_NUMPY_DTYPES: dict[int, str] = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING = 8
_ARRAY = 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's directory entry and its raw (possibly quantized) bytes."""

    name: str
    shape: tuple[int, ...]
    """GGUF order: fastest-varying dimension first (the reverse of PyTorch's)."""
    ggml_type: GGMLQuantizationType
    data: np.ndarray
    """uint8 view of the tensor's bytes inside the file (copy-on-write memmap)."""

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """The shape in PyTorch / Hugging Face order."""
        return tuple(reversed(self.shape))


@dataclass(frozen=True)
class GGUFFile:
    """The parsed contents of a .gguf file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    """Key -> value; arrays of numbers become lists, arrays of strings lists of str."""
    tensors: dict[str, GGUFTensor]
    """Name -> tensor, in file order."""


class _Cursor:
    """Sequential little-endian reads over a bytes buffer."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def scalar(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        (length,) = struct.unpack_from("<Q", self.buf, self.pos)
        start = self.pos + 8
        self.pos = start + length
        if self.pos > len(self.buf):
            raise struct.error(f"a string runs past the end of the file at byte {start}")
        # errors="replace": a few vocabularies carry invalid UTF-8 pieces; they must not stop the load.
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row: a vocabulary's 49k pieces and merges, in one tight loop (item by item
        through `string` they took a quarter of a second of the default model's load)."""
        buf, pos, unpack, end = self.buf, self.pos, struct.unpack_from, len(self.buf)
        values = []
        append = values.append
        for _ in range(count):
            (length,) = unpack("<Q", buf, pos)
            start, pos = pos + 8, pos + 8 + length
            if pos > end:
                raise struct.error(f"a string runs past the end of the file at byte {start}")
            append(str(buf[start:pos], "utf-8", "replace"))
        self.pos = pos
        return values

    def value(self, type_id: int) -> Any:
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(type_id)
        if fmt is None:
            raise ModelLoadError(f"{self.path}: unknown GGUF value type {type_id} at byte {self.pos}")
        return self.scalar(fmt)

    def array(self) -> list[Any]:
        item_type = self.scalar("<I")
        count = self.scalar("<Q")
        dtype = _NUMPY_DTYPES.get(item_type)
        if dtype is not None:
            # Numeric arrays (token types, scores) are read in one numpy call, not item by item.
            values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += values.nbytes
            return values.tolist()
        if item_type == _STRING:
            return self.strings(count)
        return [self.value(item_type) for _ in range(count)]


def read_gguf(path: Path) -> GGUFFile:
    """Parse a GGUF file's header and map its tensor data without reading it."""
    path = Path(path)
    try:
        file_bytes = np.memmap(path, mode="c")  # "c": writable views, so torch.from_numpy does not warn
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot open GGUF file {path}: {exc}") from exc
    if bytes(file_bytes[:4]) != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (its first bytes are {bytes(file_bytes[:4])!r})")
    version, num_tensors, num_kv = struct.unpack_from("<IQQ", file_bytes, 4)
    if version not in SUPPORTED_VERSIONS:
        raise ModelLoadError(
            f"{path}: GGUF version {version} is not supported (supported: {SUPPORTED_VERSIONS}; "
            "big-endian files are not supported); re-convert it with a recent llama.cpp"
        )
    try:
        return _parse(path, file_bytes, version, num_tensors, num_kv)
    except (struct.error, ValueError) as exc:
        raise ModelLoadError(f"{path}: GGUF header is truncated or corrupt ({exc})") from exc


def _parse(path: Path, file_bytes: np.ndarray, version: int, num_tensors: int, num_kv: int) -> GGUFFile:
    # A memoryview slices without numpy's per-slice overhead; nothing is copied but the strings.
    header = memoryview(file_bytes)
    cursor = _Cursor(header, path)
    cursor.pos = 24
    metadata: dict[str, Any] = {}
    for _ in range(num_kv):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(num_tensors):
        name = cursor.string()
        num_dims = cursor.scalar("<I")
        shape = struct.unpack_from(f"<{num_dims}Q", header, cursor.pos)
        cursor.pos += 8 * num_dims
        type_id = cursor.scalar("<I")
        offset = cursor.scalar("<Q")
        infos.append((name, shape, type_id, offset))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, shape, type_id, offset in infos:
        ggml_type = _ggml_type(path, name, type_id)
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        num_elements = int(np.prod(shape))
        start = data_start + offset
        end = start + num_elements // block_size * type_size
        if end > len(file_bytes):
            raise ModelLoadError(f"{path}: tensor {name} runs past the end of the file (truncated download?)")
        tensors[name] = GGUFTensor(name, tuple(int(d) for d in shape), ggml_type, file_bytes[start:end])
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors)


def _ggml_type(path: Path, name: str, type_id: int) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(type_id)
    except ValueError:
        raise ModelLoadError(
            f"{path}: tensor {name} has ggml type {type_id}, unknown to gguf (upgrade the `gguf` package)"
        ) from None
