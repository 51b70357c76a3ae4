"""Optimization profiles: the one owner of "which sizes may each dynamic dim take".

TensorRT builds an engine for a range of sizes per dynamic dim (an optimization profile:
min, opt, max). fusekit takes ranges from the command line, keeps them in the model, and
resolves them to per-input shapes for the builder. No TensorRT import here.

Command line (``--dynamic``, repeatable)::

    --dynamic batch=1:8:32          # every dim named "batch" (its ONNX dim_param)
    --dynamic images:0=1:8:32       # axis 0 of input "images" (for a dim with no name)

A key whose text after the last ``:`` is an integer is ``INPUT:AXIS`` (input names may
themselves contain ``:``, e.g. ``input_1:0:0``); any other key is a dim name. An axis
range wins over a name range for the same dim. Sizes are ``MIN:OPT:MAX`` with
``0 <= MIN <= OPT <= MAX``.

Stored form: the model's ``metadata_props`` entry ``fusekit.profiles`` holds this JSON
(schema: ``fusekit/schemas/profiles.schema.json``)::

    {"version": 1,
     "ranges": [{"dim": "batch", "min": 1, "opt": 8, "max": 32},
                {"input": "images", "axis": 2, "min": 224, "opt": 640, "max": 1280}]}

Each range has either ``dim`` (a dim_param name) or ``input`` and ``axis``; ``version``
is 1. Ranges given on the command line replace stored ranges with the same key.
:func:`resolve` turns ranges into ``{input: (min_shape, opt_shape, max_shape)}`` and lists
every dynamic dim left without a range, with a suggested ``--dynamic`` for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import onnx

from fusekit.errors import InputError

PROFILES_KEY = "fusekit.profiles"
FORMAT_VERSION = 1
# What fusekit suggests for a dim with no range: a guess, to be edited by the user.
SUGGESTED_RANGE = (1, 8, 32)

Dim = int | str | None  # a size, a dim_param name, or unknown


@dataclass(frozen=True)
class DimRange:
    """The sizes one dynamic dim may take: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class RangeSpec:
    """A range for a named dim (``axis is None``, ``key`` is the dim name) or for one
    axis of one input (``key`` is the input name)."""

    key: str
    axis: int | None
    range: DimRange

    @property
    def target(self) -> str:
        return self.key if self.axis is None else f"{self.key}:{self.axis}"

    def flag(self) -> str:
        return f"--dynamic {self.target}={self.range}"

    def to_json(self) -> dict:
        where = {"dim": self.key} if self.axis is None else {"input": self.key, "axis": self.axis}
        return {**where, "min": self.range.min, "opt": self.range.opt, "max": self.range.max}


ShapeRange = tuple[list[int], list[int], list[int]]  # (min, opt, max) shapes of one input


@dataclass(frozen=True)
class MissingRange:
    """A dynamic dim with no range, where it occurs, and the ``--dynamic`` to add."""

    name: str | None  # the dim_param, or None for an unnamed dim
    where: tuple[tuple[str, int], ...]  # (input, axis) pairs
    suggestion: str

    def describe(self) -> str:
        places = ", ".join(f"{i} axis {a}" for i, a in self.where)
        what = f"dim {self.name!r}" if self.name else "unnamed dim"
        return f"{what} ({places}): add {self.suggestion}"


@dataclass
class Resolution:
    """Per-input (min, opt, max) shapes, and what could not be resolved."""

    shapes: dict[str, ShapeRange] = field(default_factory=dict)
    missing: list[MissingRange] = field(default_factory=list)
    unknown_rank: list[str] = field(default_factory=list)
    unused: list[tuple[RangeSpec, str]] = field(default_factory=list)  # ranges that apply nowhere, why
    dim_names: list[str] = field(default_factory=list)  # every dim_param of the inputs

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unknown_rank

    def to_json(self) -> list[dict]:
        """The profile as the engine sidecar and build report record it."""
        return [{"input": name, "min": s[0], "opt": s[1], "max": s[2]} for name, s in self.shapes.items()]


_RANGE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_dynamic(text: str) -> RangeSpec:
    """``batch=1:8:32`` or ``images:0=1:8:32`` -> :class:`RangeSpec` (InputError if malformed)."""
    key, sep, sizes = text.rpartition("=")
    key = key.strip()
    match = _RANGE.match(sizes)
    if not sep or not key or not match:
        raise InputError(f"--dynamic {text!r}: expected DIM=MIN:OPT:MAX (e.g. batch=1:8:32) "
                         f"or INPUT:AXIS=MIN:OPT:MAX (e.g. images:0=1:8:32)")
    dim_range = _checked_range(*(int(g) for g in match.groups()), where=f"--dynamic {text!r}")
    name, colon, axis = key.rpartition(":")
    if colon and name and re.fullmatch(r"\d+", axis.strip()):
        return RangeSpec(name, int(axis), dim_range)
    return RangeSpec(key, None, dim_range)


def parse_dynamic_args(texts: Iterable[str]) -> list[RangeSpec]:
    """Parse repeated ``--dynamic`` values; the same dim given twice differently is an error."""
    specs: dict[tuple[str, int | None], RangeSpec] = {}
    for text in texts:
        spec = parse_dynamic(text)
        old = specs.get((spec.key, spec.axis))
        if old is not None and old.range != spec.range:
            raise InputError(f"--dynamic {spec.target}: given twice ({old.range} and {spec.range})")
        specs[(spec.key, spec.axis)] = spec
    return list(specs.values())


def _checked_range(lo: int, opt: int, hi: int, where: str) -> DimRange:
    if not 0 <= lo <= opt <= hi:
        raise InputError(f"{where}: sizes must satisfy 0 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
    return DimRange(lo, opt, hi)


# -- stored form --------------------------------------------------------------------

def to_json(specs: Sequence[RangeSpec]) -> str:
    """The ``fusekit.profiles`` JSON text of ``specs``."""
    return json.dumps({"version": FORMAT_VERSION, "ranges": [s.to_json() for s in specs]}, sort_keys=True)


def from_json(text: str, where: str = "fusekit.profiles") -> list[RangeSpec]:
    """Parse ``fusekit.profiles`` JSON; InputError naming ``where`` if it is not valid."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("ranges"), list):
        raise InputError(f"{where}: expected {{\"version\": {FORMAT_VERSION}, \"ranges\": [...]}}")
    specs = []
    for i, item in enumerate(data["ranges"]):
        at = f"{where}: ranges[{i}]"
        if not isinstance(item, dict) or not all(_is_int(item.get(k)) for k in ("min", "opt", "max")):
            raise InputError(f"{at}: needs integer min, opt and max")
        dim_range = _checked_range(item["min"], item["opt"], item["max"], at)
        if isinstance(item.get("dim"), str) and item["dim"] and "input" not in item:
            specs.append(RangeSpec(item["dim"], None, dim_range))
        elif isinstance(item.get("input"), str) and _is_int(item.get("axis")) and item["axis"] >= 0 and "dim" not in item:
            specs.append(RangeSpec(item["input"], item["axis"], dim_range))
        else:
            raise InputError(f"{at}: needs either \"dim\" (a dim name) or \"input\" and \"axis\"")
    return specs


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_profiles(model: onnx.ModelProto, where: str = "model") -> list[RangeSpec]:
    """The ranges stored in ``model`` (empty if none)."""
    for prop in model.metadata_props:
        if prop.key == PROFILES_KEY:
            return from_json(prop.value, f"{where}: metadata {PROFILES_KEY}")
    return []


def write_profiles(model: onnx.ModelProto, specs: Sequence[RangeSpec]) -> None:
    """Store ``specs`` in ``model``'s metadata (replacing stored ranges; none removes the entry)."""
    kept = [p for p in model.metadata_props if p.key != PROFILES_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if specs:
        model.metadata_props.add(key=PROFILES_KEY, value=to_json(specs))


def merge(stored: Sequence[RangeSpec], given: Sequence[RangeSpec]) -> list[RangeSpec]:
    """``stored`` ranges overridden, key by key, by ``given`` ones."""
    merged = {(s.key, s.axis): s for s in stored}
    merged.update({(s.key, s.axis): s for s in given})
    return list(merged.values())


# -- resolution ---------------------------------------------------------------------

def model_inputs(model: onnx.ModelProto) -> list[tuple[str, list[Dim] | None]]:
    """The real inputs of ``model`` (not initializers listed as inputs) and their dims;
    ``None`` for an input of unknown rank, ``None`` for a dim with no size and no name."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            inputs.append((vi.name, None))
            continue
        dims: list[Dim] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            else:
                dims.append(d.dim_param or None)
        inputs.append((vi.name, dims))
    return inputs


def resolve(inputs: Sequence[tuple[str, Sequence[Dim] | None]], specs: Sequence[RangeSpec]) -> Resolution:
    """Shapes for every input; dynamic dims without a range are listed in ``missing``.

    Dims given as ``-1`` count as unnamed dynamic dims.
    """
    by_name = {s.key: s for s in specs if s.axis is None}
    by_axis = {(s.key, s.axis): s for s in specs if s.axis is not None}
    used: set[tuple[str, int | None]] = set()
    result = Resolution()
    missing: dict[tuple[str, bool], list[tuple[str, int]]] = {}  # (dim name or input:axis, named) -> places
    names = {name for name, _ in inputs}
    result.dim_names = dim_names(inputs)
    for name, dims in inputs:
        if dims is None:
            result.unknown_rank.append(name)
            continue
        lo, opt, hi = [], [], []
        resolved = True
        for axis, dim in enumerate(dims):
            spec = by_axis.get((name, axis))
            if spec is None and isinstance(dim, str):
                spec = by_name.get(dim)
            if isinstance(dim, int) and dim >= 0:
                if spec is not None and spec.axis is not None:
                    used.add((spec.key, spec.axis))
                    if spec.range != DimRange(dim, dim, dim):
                        result.unused.append((spec, f"axis {axis} of input {name!r} is fixed at {dim} in the model"))
                lo.append(dim), opt.append(dim), hi.append(dim)
            elif spec is not None:
                used.add((spec.key, spec.axis))
                lo.append(spec.range.min), opt.append(spec.range.opt), hi.append(spec.range.max)
            else:
                key = (dim, True) if isinstance(dim, str) else (f"{name}:{axis}", False)
                missing.setdefault(key, []).append((name, axis))
                resolved = False
        if resolved:
            result.shapes[name] = (lo, opt, hi)
    suggested = ":".join(map(str, SUGGESTED_RANGE))
    for (key, named), places in missing.items():
        result.missing.append(MissingRange(key if named else None, tuple(places),
                                           f"--dynamic {key}={suggested}"))
    for spec in specs:
        if (spec.key, spec.axis) in used or (spec.axis is None and spec.key in result.dim_names):
            continue
        if spec.axis is None:
            why = (f"the model's inputs have no dim named {spec.key!r} "
                   f"(dynamic dims: {', '.join(result.dim_names) or 'none'})")
        elif spec.key not in names:
            why = f"the model has no input {spec.key!r} (inputs: {', '.join(sorted(names)) or 'none'})"
        else:
            why = f"input {spec.key!r} has rank {len(dict(inputs)[spec.key] or [])}, no axis {spec.axis}"
        result.unused.append((spec, why))
    return result


def dim_names(inputs: Sequence[tuple[str, Sequence[Dim] | None]]) -> list[str]:
    """Every dim_param name used by ``inputs``, in order of first use."""
    seen: dict[str, None] = {}
    for _, dims in inputs:
        for d in dims or []:
            if isinstance(d, str):
                seen.setdefault(d)
    return list(seen)


def reject_unused_given(resolution: Resolution, given: Sequence[RangeSpec]) -> None:
    """Raise InputError if one of the ``given`` ranges (the user's own) applies nowhere."""
    for spec, why in resolution.unused:
        if spec in given:
            raise InputError(f"--dynamic {spec.target}={spec.range}: {why}")


def require_complete(resolution: Resolution, where: str, given: Sequence[RangeSpec] = ()) -> None:
    """Raise InputError if one of the ``given`` ranges (the user's own) applies nowhere,
    an input has unknown rank, or a dynamic dim has no range. Stored ranges that apply
    nowhere (e.g. the dim was fixed since) are left for the caller to warn about."""
    reject_unused_given(resolution, given)
    if resolution.unknown_rank:
        raise InputError(f"{where}: input {resolution.unknown_rank[0]!r} has no shape (unknown rank); "
                         "TensorRT needs one: fix it with fusekit optimize --input-shape NAME:DxDxD")
    if resolution.missing:
        count = len(resolution.missing)
        raise InputError(f"{where}: {count} dynamic dim{'s' if count > 1 else ''} without an optimization "
                         f"profile range (TensorRT needs one for each): "
                         + "; ".join(m.describe() for m in resolution.missing))
