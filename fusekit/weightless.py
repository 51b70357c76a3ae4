"""The values of an initializer stored without data (a weightless model, as weight-stripping
tools write): exported as they are, never read; a pass that reads them stops with an
InputError naming it."""

from __future__ import annotations

import inspect

from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.errors import InputError


class WeightlessValues(LazyValues):
    """Values of an initializer stored without data: exported as it is, never read."""

    def load(self):
        user = _running_pass()
        raise InputError(f"{f'pass {user}' if user else 'a rewrite'} needs the values of tensor "
                         f"{self.tensor.name!r}, which has no data (a weightless model); skip that pass "
                         f"(--skip {user or 'PASS'}) or give the model its weights")


def _running_pass() -> str | None:
    """The pass whose code is reading values now (the manager's ``ctx.current_pass``)."""
    frame = inspect.currentframe()
    while frame is not None:
        ctx = frame.f_locals.get("ctx")
        name = getattr(ctx, "current_pass", None)
        if isinstance(name, str) and name:
            return name
        frame = frame.f_back
    return None
