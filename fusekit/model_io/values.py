"""Lazy values of constants: memory-mapped file slices, copy-on-use protos, stubs."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import ExternalDataInfo
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.graph_edit import held_values


class MappedValues(LazyValues):
    """Values of an external-data tensor, memory-mapped from its file when loaded."""

    def __init__(self, tensor: onnx.TensorProto, path: Path) -> None:
        super().__init__(tensor)
        self.path = path
        info = ExternalDataInfo(tensor)
        self.offset = info.offset or 0
        self.length = info.length or self.nbytes

    def load(self) -> np.ndarray:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(self.tensor.data_type)
        if np_dtype.kind in "OV" or self.tensor.data_type in _PACKED_TYPES:
            return onnx.numpy_helper.to_array(_inline_copy(self.tensor, self.read_bytes()))
        # copy-on-write: a pass that edits the array in place gets private pages, the file stays
        array = np.memmap(self.path, dtype=np_dtype, mode="c", offset=self.offset,
                          shape=tuple(self.shape))
        return array.view(np.ndarray) if array.ndim else np.array(array)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)

    def copy_to(self, out: BinaryIO) -> None:
        """Stream the tensor's bytes into ``out``: file to file in the kernel where it can
        (no page of them enters this process), else in chunks."""
        with open(self.path, "rb") as f:
            if _copy_file_range(f, out, self.offset, self.length):
                return
            f.seek(self.offset)
            for start in range(0, self.length, _CHUNK):
                out.write(f.read(min(_CHUNK, self.length - start)))


_CHUNK = 16 << 20


def _copy_file_range(src: BinaryIO, out: BinaryIO, offset: int, length: int) -> bool:
    """Copy ``length`` bytes of ``src`` from ``offset`` to ``out``'s position with
    ``os.copy_file_range``; False (nothing written) where that is not available."""
    if not hasattr(os, "copy_file_range"):
        return False
    try:
        target = out.fileno()
        out.flush()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src.fileno(), target, length - done, offset + done)
        except OSError as exc:
            if done == 0 and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise
        if n == 0:
            raise OSError(errno.EIO, f"{src.name}: ends before the tensor's {length} bytes at offset {offset}")
        done += n
    out.seek(0, os.SEEK_END)
    return True


_PACKED_TYPES = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


class FileSliceValues(MappedValues):
    """Values of an initializer stored in the model file itself (its ``raw_data``),
    memory-mapped from that file: loading the model never copies them."""


# In-file initializers with at least this many bytes of raw_data are memory-mapped from
# the model file instead of parsed (above WEIGHTLESS_INLINE_MAX_BYTES: checks never see them).
MAPPED_MIN_BYTES = 4096


def _set_location(proto: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del proto.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value
    proto.data_location = onnx.TensorProto.EXTERNAL


class _CopyOnUseValues(LazyValues):
    """Lazy values whose ``TensorProto`` is copied from the caller's model when first
    exported; reading the values needs no copy."""

    def __init__(self, values: LazyValues) -> None:  # noqa: super().__init__ would read the tensor
        self._source, self._own = values.tensor, None
        self.shape, self.dtype, self.nbytes = values.shape, values.dtype, values.nbytes

    @property
    def tensor(self) -> onnx.TensorProto:
        if self._own is None:
            self._own = _copy(self._source)
        return self._own

    @tensor.setter
    def tensor(self, value: onnx.TensorProto) -> None:
        self._source, self._own = value, value

    def load(self) -> np.ndarray:  # reading needs no copy of the proto
        return np.array(onnx.numpy_helper.to_array(self._own if self._own is not None else self._source))


def values_nbytes(values) -> int:
    """Bytes of a constant's values (lazy or an array), from their metadata: nothing is read."""
    return int(values.nbytes) if isinstance(values, LazyValues) or hasattr(values, "nbytes") else 0


def plain_array(tensor: gs.Constant) -> np.ndarray | None:
    """The constant's values as a C-contiguous array when they are written as their own
    bytes (a numeric NumPy array that onnx-graphsurgeon exports as it is), else None."""
    values = held_values(tensor)
    if isinstance(values, np.ndarray) and values.dtype.kind in "biufc" and tensor.data_location is None \
            and getattr(tensor, "export_dtype", values.dtype) == values.dtype:
        return np.require(values, requirements="C")
    return None


def array_header(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A tensor proto with the name, dims and type of ``array`` and no data."""
    return onnx.TensorProto(name=name, dims=array.shape, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


def inline_header(proto: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of an external tensor's proto without its external-data reference."""
    header = _copy(proto)
    del header.external_data[:]
    header.ClearField("data_location")
    return header


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


# Weightless exports point large constants at this (empty) file; constants at or below
# WEIGHTLESS_INLINE_MAX_BYTES keep their bytes, so shape inference still folds shape arithmetic.
WEIGHTLESS_PLACEHOLDER = "weightless.bin"
WEIGHTLESS_INLINE_MAX_BYTES = 1024


class _StubValues(LazyValues):
    """Stands in for a large constant during a weightless export: dims and type only."""

    def __init__(self, original: LazyValues | np.ndarray, name: str) -> None:
        dtype = onnx.helper.np_dtype_to_tensor_dtype(original.dtype) if isinstance(original, np.ndarray) \
            else original.tensor.data_type
        stub = onnx.TensorProto(name=name, dims=original.shape, data_type=dtype)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=WEIGHTLESS_PLACEHOLDER)
        super().__init__(stub)


def _inline_copy(proto: onnx.TensorProto, data: bytes) -> onnx.TensorProto:
    copy = onnx.TensorProto(name=proto.name, dims=proto.dims, data_type=proto.data_type)
    copy.raw_data = data
    return copy
