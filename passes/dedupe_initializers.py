"""Make identical initializers one: consumers of a duplicate read the first copy.

Rewrites: constants with equal dtype, shape and bytes (compared exactly after a hash;
strings compare as strings). -0.0 and 0.0, or two NaNs with different payloads, differ.
Only tensors of the same dtype and shape are hashed, first from a sample of their bytes,
so unique weights are not read whole.

Must not: merge tensors that differ in dtype or shape, even with equal bytes.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, held_values, rewire_consumers
from fusekit.pass_infra import Match, Pass, PassContext, Stage


class DigestCache:
    """Digests of constants' bytes, kept while the same tensor holds the same value object.

    Two digests per constant: of a sample (a few spaced chunks of its bytes, which is all
    most weights ever need: unequal weights differ there) and of all its bytes (only when
    samples are equal). Weak references only: a constant dropped from the graph is not
    kept alive by the cache.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, bool], tuple[weakref.ref, weakref.ref, bytes]] = {}

    def digest(self, tensor: gs.Constant, sample: bool = False) -> bytes:
        values = held_values(tensor)
        entry = self._entries.get((id(tensor), sample))
        if entry is not None and entry[0]() is tensor and entry[1]() is values:
            return entry[2]
        content = _content(np.asarray(constant_array(tensor)))
        digest = hashlib.blake2b(_sample(content) if sample else content, digest_size=16).digest()
        try:
            self._entries[(id(tensor), sample)] = (weakref.ref(tensor), weakref.ref(values), digest)
        except TypeError:  # a value object that takes no weak reference is hashed every time
            pass
        return digest


def duplicate_groups(graph: gs.Graph, cache: DigestCache | None = None) -> list[list[gs.Constant]]:
    """Groups (first = kept) of constants with the same dtype, shape and bytes."""
    cache = cache or DigestCache()
    by_meta: dict[tuple, list[gs.Constant]] = defaultdict(list)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.outputs:
            by_meta[(str(tensor.dtype), tuple(tensor.shape))].append(tensor)
    groups = []
    for candidates in by_meta.values():
        for same_sample in _split(candidates, lambda t: cache.digest(t, sample=True)):
            for same_hash in _split(same_sample, cache.digest):
                first, *rest = same_hash
                first_content = _content(np.asarray(constant_array(first)))
                group = [first] + [t for t in rest if _content(np.asarray(constant_array(t))) == first_content]
                if len(group) > 1:
                    groups.append(group)
    return groups


def _split(tensors: list[gs.Constant], key) -> list[list[gs.Constant]]:
    """The groups of two or more of ``tensors`` with equal ``key`` (in order)."""
    if len(tensors) < 2:
        return []
    by_key: dict[bytes, list[gs.Constant]] = defaultdict(list)
    for tensor in tensors:
        by_key[key(tensor)].append(tensor)
    return [group for group in by_key.values() if len(group) > 1]


_SAMPLE_CHUNKS, _CHUNK_BYTES = 16, 256


def _sample(content: memoryview | bytes) -> bytes:
    """Up to 16 chunks of 256 bytes spread over ``content`` (all of it when that is short);
    few pages of a memory-mapped weight are read."""
    size = len(content)
    if size <= _SAMPLE_CHUNKS * _CHUNK_BYTES:
        return bytes(content)
    step = (size - _CHUNK_BYTES) // (_SAMPLE_CHUNKS - 1)
    return b"".join(bytes(content[i * step:i * step + _CHUNK_BYTES]) for i in range(_SAMPLE_CHUNKS))


def _content(values: np.ndarray) -> memoryview | bytes:
    """What makes two constants equal: their bytes (strings: each one, length-prefixed)."""
    if values.dtype.kind == "O":
        items = (v if isinstance(v, bytes) else str(v).encode() for v in values.ravel())
        return b"".join(len(b).to_bytes(8, "little") + b for b in items)
    return memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


class DedupeInitializersPass(Pass):
    """Replace each duplicate initializer by the first identical one."""

    name = "dedupe-initializers"
    stage = Stage.CLEANUP
    priority = 30

    def __init__(self) -> None:
        super().__init__()
        self._digests = DigestCache()  # one instance runs every round of a pipeline

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        merged = 0
        for kept, *duplicates in duplicate_groups(graph, self._digests):
            for dup in duplicates:
                rewire_consumers(dup, kept)
                merged += 1
        return merged

    def inspect(self, graph: gs.Graph, ctx: PassContext):
        for kept, *duplicates in duplicate_groups(graph):
            for dup in duplicates:
                for consumer in dup.outputs:
                    yield self.finding(consumer, Match(f"read initializer {kept.name!r} instead of its copy {dup.name!r}"))
