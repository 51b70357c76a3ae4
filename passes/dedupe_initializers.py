"""Make identical initializers one: consumers of a duplicate read the first copy.

Rewrites: constants with equal dtype, shape and bytes (compared exactly after a hash).
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
        by_hash: dict[bytes, list[tuple[gs.Constant, np.ndarray]]] = defaultdict(list)
        for tensor in candidates:
            values = np.ascontiguousarray(constant_array(tensor))
            by_hash[hashlib.blake2b(values.data, digest_size=16).digest()].append((tensor, values))
        for same_hash in by_hash.values():
            first, first_values = same_hash[0]
            group = [first] + [t for t, v in same_hash[1:] if np.array_equal(v, first_values, equal_nan=True)]
            if len(group) > 1:
                groups.append(group)
    return groups


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
