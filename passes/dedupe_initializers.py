"""Make identical initializers one: consumers of a duplicate read the first copy.

Rewrites: constants with equal dtype, shape and bytes (compared exactly after a hash;
strings compare as strings). -0.0 and 0.0, or two NaNs with different payloads, differ.
Only tensors of the same dtype and shape are ever hashed, so unique weights are not read.
Must not: merge tensors that differ in dtype or shape, even with equal bytes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, rewire_consumers
from fusekit.pass_infra import Match, Pass, PassContext, Stage


def duplicate_groups(graph: gs.Graph) -> list[list[gs.Constant]]:
    """Groups (first = kept) of constants with the same dtype, shape and bytes."""
    by_meta: dict[tuple, list[gs.Constant]] = defaultdict(list)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.outputs:
            by_meta[(str(tensor.dtype), tuple(tensor.shape))].append(tensor)
    groups = []
    for candidates in by_meta.values():
        if len(candidates) < 2:
            continue
        by_hash: dict[bytes, list[tuple[gs.Constant, memoryview | bytes]]] = defaultdict(list)
        for tensor in candidates:
            content = _content(np.asarray(constant_array(tensor)))
            by_hash[hashlib.blake2b(content, digest_size=16).digest()].append((tensor, content))
        for same_hash in by_hash.values():
            first, first_content = same_hash[0]
            group = [first] + [t for t, c in same_hash[1:] if c == first_content]
            if len(group) > 1:
                groups.append(group)
    return groups


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

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        merged = 0
        for kept, *duplicates in duplicate_groups(graph):
            for dup in duplicates:
                rewire_consumers(dup, kept)
                merged += 1
        return merged

    def inspect(self, graph: gs.Graph, ctx: PassContext):
        for kept, *duplicates in duplicate_groups(graph):
            for dup in duplicates:
                for consumer in dup.outputs:
                    yield self.finding(consumer, Match(f"read initializer {kept.name!r} instead of its copy {dup.name!r}"))
