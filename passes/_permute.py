"""Axis permutations: a Transpose's perm, and the elementwise ops that commute with one.

Shared by merge-transposes, push-transposes and linear-to-pointwise-conv. Not a pass.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

# Elementwise ops that commute with any transpose of their (one) data input.
UNARY = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "Ceil", "Celu", "Cos", "Cosh", "Elu",
    "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log",
    "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus",
    "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
})
# Binary elementwise ops that commute with a transpose applied to every operand alike.
BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "PRelu"})


def resolve_perm(node: gs.Node, rank: int | None) -> list[int] | None:
    """The node's perm, or the reversed axes when it has none (None if the rank is unknown)."""
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    if rank is None and node.inputs[0].shape is not None:
        rank = len(node.inputs[0].shape)
    return None if rank is None else list(reversed(range(rank)))
