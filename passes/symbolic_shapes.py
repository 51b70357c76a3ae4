"""Write the shapes symbolic analysis finds onto the graph: one dim, one name, everywhere.

Rewrites no node. After ``infer-shapes`` (ONNX shape inference), it completes and
corrects the shapes stored on tensors with what the analysis of ``passes/_shapes/``
computes through shape arithmetic:

- a dim ONNX inference could only name (``unk__0``) gets its real name wherever it
  occurs: ``Reshape(x, Concat(Gather(Shape(x), 0), [4, 16]))`` on x ``[batch, 64]`` is
  ``[batch, 4, 16]``, and every tensor that carried ``unk__0`` now carries ``batch``;
- a dim that is a function of named dims is named by its expression, written the same
  way everywhere (``4*batch*seq``, ``floor(seq/2)``, ``min(512,seq)``), so equal dims
  have equal names;
- a dim written as a negative number, or as a 0 the computation contradicts, is
  replaced (by what is computed, or left unknown); an output of unknown rank gets the
  rank found.

Must not: change graph inputs; make a dim static unless it follows from static facts
(a declared static dim stays, a named dim never becomes a number by guess); rename a
graph output's dim that the model names itself (only ``unk__N`` names and unknown
dims of outputs are filled in).
"""

from __future__ import annotations

import re

import onnx_graphsurgeon as gs

from fusekit.pass_infra import Pass, PassContext, Stage
from fusekit.passes._shapes.analysis import Analysis

_MADE_UP = re.compile(r"unk__\d+")  # names ONNX shape inference invents


class SymbolicShapesPass(Pass):
    """Propagate dim names through shape arithmetic; one name per dim across the graph."""

    name = "symbolic-shapes"
    stage = Stage.SHAPES
    priority = 5

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        analysis = Analysis(graph)
        inputs = {id(t) for t in graph.inputs}
        outputs = {id(t) for t in graph.outputs}
        changed = 0
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) or id(tensor) in inputs:
                continue
            dims = analysis.shapes.get(id(tensor))
            if dims is None:
                continue
            new = [analysis.final(d).render() for d in dims]
            old = tensor.shape
            if old is not None and len(old) == len(new):
                new = [_keep_declared(o, n, id(tensor) in outputs) for o, n in zip(old, new)]
            if old is None or list(old) != new:
                tensor.shape = new
                changed += 1
        return changed


def _keep_declared(old, new, is_output: bool):
    """The dim to write, given the stored one: names the model gave its outputs stay."""
    if is_output and isinstance(old, str) and old and not _MADE_UP.fullmatch(old) and not isinstance(new, int):
        return old
    if new is None and isinstance(old, str) and old:
        return old
    return new
