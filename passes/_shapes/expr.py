"""Integer polynomials over named dims (each >= 0), and what can be decided about them.

A result that is no polynomial (``seq // 3``, ``min(seq, 512)``) is an opaque name of its
own, made only when it is provably >= 0. What a ``min(a,b)`` name stands for is kept in a
:data:`Minima` table owned by the caller (one per analysis run), so that broadcasting it
against ``a`` or ``b`` can be decided.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

FRESH = "?"  # prefix of the names of unknown dims: never written to the model

Monomial = tuple[str, ...]
Minima = dict[str, tuple["Expr", "Expr"]]  # opaque min(...) name -> the two Exprs it is the minimum of


class Expr:
    """An integer polynomial over dim names (each >= 0). Immutable and hashable."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, int] | Iterable[tuple[Monomial, int]] = ()) -> None:
        items = terms.items() if isinstance(terms, Mapping) else terms
        merged: dict[Monomial, int] = {}
        for mono, coeff in items:
            merged[mono] = merged.get(mono, 0) + int(coeff)
        self.terms: tuple[tuple[Monomial, int], ...] = tuple(sorted((m, c) for m, c in merged.items() if c))

    @staticmethod
    def const(value: int) -> "Expr":
        return Expr({(): int(value)})

    @staticmethod
    def atom(name: str) -> "Expr":
        return Expr({(name,): 1})

    # -- queries --------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return all(not mono for mono, _ in self.terms)

    @property
    def value(self) -> int:
        """The constant (only when ``is_const``)."""
        return sum(c for _, c in self.terms)

    @property
    def nonneg(self) -> bool:
        """Provably >= 0: every coefficient is (every name is a size, so >= 0)."""
        return all(c >= 0 for _, c in self.terms)

    @property
    def atoms(self) -> set[str]:
        return {a for mono, _ in self.terms for a in mono}

    @property
    def fresh(self) -> bool:
        """Mentions an unknown dim: equal to itself only, never written out."""
        return any(a.startswith(FRESH) for a in self.atoms)

    def name(self) -> str | None:
        """The name if this is a single name (``batch``), else None."""
        if len(self.terms) == 1 and len(self.terms[0][0]) == 1 and self.terms[0][1] == 1:
            return self.terms[0][0][0]
        return None

    def render(self) -> int | str | None:
        """As a dim of an ONNX shape: an int, a dim_param (``4*batch*seq``), or None."""
        if self.is_const:
            return self.value
        if self.fresh:
            return None
        return str(self)

    def evaluate(self, env: Mapping[str, int]) -> int:
        """The value when every name has the value in ``env`` (tests)."""
        return sum(c * math.prod(env[a] for a in mono) for mono, c in self.terms)

    # -- arithmetic -----------------------------------------------------------------
    def __add__(self, other: "Expr") -> "Expr":
        return Expr(list(self.terms) + list(other.terms))

    def __neg__(self) -> "Expr":
        return Expr((m, -c) for m, c in self.terms)

    def __sub__(self, other: "Expr") -> "Expr":
        return self + (-other)

    def __mul__(self, other: "Expr") -> "Expr":
        return Expr((tuple(sorted(m1 + m2)), c1 * c2) for m1, c1 in self.terms for m2, c2 in other.terms)

    def div(self, other: "Expr") -> "Expr | None":
        """Integer division as ONNX Div (truncating), or None when unknown."""
        if other.is_const:
            d = other.value
            if d == 0:
                return None
            if self.is_const:
                q = abs(self.value) // abs(d)
                return Expr.const(q if (self.value >= 0) == (d > 0) else -q)
            if all(c % d == 0 for _, c in self.terms):
                return Expr((m, c // d) for m, c in self.terms)
        elif len(other.terms) == 1:  # by a monomial that divides every term exactly
            mono, coeff = other.terms[0]
            quotient = []
            for m, c in self.terms:
                rest = _remove(m, mono)
                if rest is None or c % coeff:
                    break
                quotient.append((rest, c // coeff))
            else:
                return Expr(quotient)
        if self.nonneg and other.nonneg:
            return opaque(f"floor({_paren(self)}/{_paren(other)})")
        return None

    def mod(self, other: "Expr") -> "Expr | None":
        """ONNX Mod with fmod=0 (the result takes the divisor's sign), or None."""
        if other.is_const and other.value != 0:
            d = other.value
            if self.is_const:
                return Expr.const(self.value % d)
            if d > 0 and all(c % d == 0 for _, c in self.terms):
                return Expr.const(0)
            if d > 0 and self.nonneg:
                return opaque(f"{_paren(self)}%{d}")
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(self.terms)

    def __repr__(self) -> str:
        return f"Expr({self})"

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for mono, coeff in sorted(self.terms, key=lambda t: (-len(t[0]), t[0])):
            body = "*".join(mono)
            if not body:
                text = str(abs(coeff))
            elif abs(coeff) == 1:
                text = body
            else:
                text = f"{abs(coeff)}*{body}"
            parts.append(("-" if coeff < 0 else "+") + text)
        out = "".join(parts)
        return out[1:] if out.startswith("+") else out

    def substitute(self, mapping: Mapping[str, "Expr"]) -> "Expr":
        if not mapping or not (self.atoms & mapping.keys()):
            return self
        total = Expr()
        for mono, coeff in self.terms:
            term = Expr.const(coeff)
            for a in mono:
                term = term * mapping.get(a, Expr.atom(a))
            total = total + term
        return total


def _remove(mono: Monomial, divisor: Monomial) -> Monomial | None:
    rest = list(mono)
    for a in divisor:
        if a not in rest:
            return None
        rest.remove(a)
    return tuple(rest)


def _paren(e: Expr) -> str:
    return str(e) if e.name() or e.is_const else f"({e})"


def opaque(text: str) -> Expr:
    """A name standing for a non-polynomial result; only ever made for values >= 0."""
    return Expr.atom(text)


def minimum(a: Expr, b: Expr, minima: Minima | None = None) -> Expr | None:
    """min(a, b): one of them when that is decided, else an opaque ``min(a,b)`` name (for
    values >= 0 only), whose meaning is recorded in ``minima`` when given."""
    known = relation(a, b)
    if "<=" in known or ">=" in known:
        return a if known.get("<=") or known.get(">=") is False else b
    if a.nonneg and b.nonneg:
        first, second = sorted((str(a), str(b)))
        name = f"min({first},{second})"
        if minima is not None:
            minima.setdefault(name, (a, b))
        return opaque(name)
    return None


def maximum(a: Expr, b: Expr) -> Expr | None:
    known = relation(a, b)
    if "<=" in known or ">=" in known:
        return a if known.get(">=") or known.get("<=") is False else b
    if a.nonneg or b.nonneg:
        first, second = sorted((str(a), str(b)))
        return opaque(f"max({first},{second})")
    return None


def compare(a: Expr, b: Expr) -> int | None:
    """-1, 0 or 1 if a <, =, > b whatever the dims are; None if that depends on them."""
    d = a - b
    if d.is_const:
        return (d.value > 0) - (d.value < 0)
    constant = sum(c for m, c in d.terms if not m)
    if d.nonneg and constant > 0:
        return 1
    if (-d).nonneg and constant < 0:
        return -1
    return None


def relation(a: Expr, b: Expr) -> dict[str, bool]:
    """Which of ``<``, ``<=``, ``==``, ``>=``, ``>`` are decided for a, b."""
    d = a - b
    order = compare(a, b)
    if order is not None:
        return {"<": order < 0, "<=": order <= 0, "==": order == 0, ">=": order >= 0, ">": order > 0}
    if d.nonneg:  # a >= b, maybe equal
        return {"<": False, ">=": True}
    if (-d).nonneg:
        return {">": False, "<=": True}
    return {}


def broadcast_dim(dims: Sequence[Expr], minima: Mapping[str, tuple[Expr, Expr]] | None = None) -> Expr | None:
    """The broadcast of dims (valid models only): 1s drop out, equal dims stay; ``minima``
    (what :func:`minimum` recorded) decides ``min(c,x)`` against ``x``."""
    rest = [d for d in dims if not (d.is_const and d.value == 1)]
    if not rest:
        return Expr.const(1)
    first = rest[0]
    if all(d == first for d in rest):
        return first
    constants = {d.value for d in rest if d.is_const}
    if len(constants) == 1:
        return Expr.const(constants.pop())  # a symbolic dim broadcast against c must be c (or 1)
    distinct = list(dict.fromkeys(rest))
    if len(distinct) == 2 and minima:
        for m, x in (distinct, distinct[::-1]):
            pair = minima.get(m.name() or "")
            if pair is not None and x in pair:
                c = pair[1] if x == pair[0] else pair[0]
                if c.is_const and c.value >= 1:
                    return x  # min(c, x) against x: equal when x <= c; when x > c only c == 1 is valid
    return None


_TERM = re.compile(r"([+-]?)([^+-]+)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_dim_param(name: str) -> Expr:
    """A dim_param as an Expr: ``4*batch*seq`` (as :meth:`Expr.render` writes) is read back
    as that polynomial; any other name is a name of its own."""
    if _IDENT.fullmatch(name) or not re.fullmatch(r"[A-Za-z0-9_*+\- ]+", name):
        return Expr.atom(name)
    total = Expr()
    text = name.replace(" ", "")
    if not text or text[-1] in "+-*" or "--" in text or "+-" in text or "-+" in text or "++" in text:
        return Expr.atom(name)
    for sign, body in _TERM.findall(text):
        term = Expr.const(-1 if sign == "-" else 1)
        for factor in body.split("*"):
            if factor.isdigit():
                term = term * Expr.const(int(factor))
            elif _IDENT.fullmatch(factor):
                term = term * Expr.atom(factor)
            else:
                return Expr.atom(name)
        total = total + term
    return total
