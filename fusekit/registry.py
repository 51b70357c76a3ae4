"""Find passes through the ``fusekit.passes`` entry-point group (built-in ones included),
and plugin specs through ``fusekit.plugins``, with one discovery function for any group.

Finding is separate from loading: entry points are listed in a stable order with
duplicates removed, then each is loaded and checked. A package that fails to import or
exports something that is not a valid pass produces a warning naming the package and the
entry point, and is skipped (``strict=True`` raises instead). Setting
``FUSEKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only fusekit's own passes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable, Mapping

from fusekit.errors import InputError
from fusekit.pass_infra import Option, Pass, Stage

log = logging.getLogger(__name__)

PASS_GROUP = "fusekit.passes"
DISABLE_AUTOLOAD_ENV = "FUSEKIT_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "fusekit"


@dataclass(frozen=True)
class PassInfo:
    """A discovered pass: its class and where it came from."""

    name: str
    cls: type[Pass]
    package: str
    entry_point: str

    @property
    def summary(self) -> str:
        """The docstring's first sentence, whole (its lines joined), as ``fusekit passes`` shows it."""
        return first_sentence(self.cls.__doc__ or "")


def first_sentence(doc: str) -> str:
    """The first sentence of ``doc``'s first paragraph, its lines joined: it ends at a
    '.', '!' or '?' outside parentheses followed by a capitalised word (not "e.g.", "i.e."
    or an ellipsis), or at the paragraph's end."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    for end in _SENTENCE_MARKS.finditer(paragraph):
        opened = paragraph.count("(", 0, end.start()) - paragraph.count(")", 0, end.start())
        if opened <= 0:
            return paragraph[:end.end()]
    return paragraph


_SENTENCE_MARKS = re.compile(r"(?<!\.\.)(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s+[A-Z])")


@dataclass
class Registry:
    passes: dict[str, PassInfo]
    problems: list[str]

    def select(self, enable: Iterable[str] | None = None, skip: Iterable[str] = (),
               options: Mapping[str, Any] | None = None) -> list[PassInfo]:
        """The passes to run: ``enable`` (or every default-on pass) minus ``skip``, plus every
        other pass (not skipped) that is given one of its ``options`` with a value other
        than the default (``plugins="auto"`` turns substitute-plugins on)."""
        enable = list(enable) if enable is not None else None
        skip = list(skip)
        unknown = [n for n in (enable or []) + skip if n not in self.passes]
        if unknown:
            raise InputError(f"unknown pass {', '.join(unknown)}; known passes: {', '.join(sorted(self.passes))}")
        chosen = enable if enable is not None else [n for n, i in self.passes.items() if i.cls.enabled_by_default]
        given = options or {}
        chosen += [n for n, i in self.passes.items() if n not in chosen
                   and any(o.name in given and o.convert(given[o.name]) != o.default for o in i.cls.options)]
        return [self.passes[n] for n in chosen if n not in skip]

    def pipeline_options(self, selected: Iterable[PassInfo], given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` less the options of passes left out of ``selected`` that are given their
        default (harmless); such an option given another value is an InputError. Options no
        pass declares are kept, for the manager to refuse."""
        taken = {o.name for info in selected for o in info.cls.options}
        kept = {}
        for name, value in given.items():
            owners = {i.name: o for i in self.passes.values() for o in i.cls.options if o.name == name}
            if name in taken or not owners:
                kept[name] = value
            elif any(o.convert(value) != o.default for o in owners.values()):
                raise InputError(f"option {name}: {', '.join(owners)}, which takes it, is not in the pipeline")
        return kept


def _distribution_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "<unknown package>"


def list_entry_points(group: str = PASS_GROUP) -> list[tuple[str, EntryPoint]]:
    """(package, entry point) pairs in a stable order, fusekit's own first, duplicates removed."""
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in entry_points(group=group):
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            found.append((_distribution_name(ep), ep))
    found.sort(key=lambda pair: (pair[0] != OWN_DISTRIBUTION, pair[0], pair[1].name))
    return found


def validate_pass_class(obj: object) -> str | None:
    """Why ``obj`` is not a usable pass class, or None."""
    if not isinstance(obj, type) or not issubclass(obj, Pass):
        return f"{obj!r} is not a subclass of fusekit.pass_infra.Pass"
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        return f"{obj.__name__} has no name"
    if not isinstance(getattr(obj, "stage", None), Stage):
        return f"{obj.__name__} has no stage (one of {', '.join(s.name for s in Stage)})"
    if not isinstance(getattr(obj, "priority", None), int):
        return f"{obj.__name__}.priority is not an int"
    if obj.run is Pass.run:
        return f"{obj.__name__} does not implement run()"
    if not isinstance(obj.options, tuple) or not all(isinstance(o, Option) for o in obj.options):
        return f"{obj.__name__}.options is not a tuple of fusekit.pass_infra.Option"
    return None


def discover(strict: bool = False, group: str = PASS_GROUP) -> Registry:
    """Load every pass registered under ``group``; warn about (or, strict, raise on) broken ones.

    The result is cached per process for the same ``sys.path`` and environment, since
    listing entry points scans every installed package.
    """
    return _discover(strict, group, _autoload(), tuple(sys.path))


@functools.lru_cache(maxsize=8)
def _discover(strict: bool, group: str, autoload: bool, _path: tuple[str, ...]) -> Registry:
    found, problems = _discover_group(group, validate_pass_class, "pass", strict, autoload)
    passes = {name: PassInfo(name, e.obj, e.package, e.entry_point) for name, e in found.items()}
    return Registry(passes, problems)


@dataclass(frozen=True)
class Entry:
    """A discovered object of any entry-point group: what it is and where it came from."""

    name: str
    obj: object
    package: str
    entry_point: str


def _autoload() -> bool:
    """Whether third-party packages' entry points load (FUSEKIT_DISABLE_PLUGIN_AUTOLOAD unset or 0)."""
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")


def _discover_group(group: str, validate: Callable[[object], str | None], kind: str, strict: bool,
                    autoload: bool) -> tuple[dict[str, Entry], list[str]]:
    """Load every object registered under ``group`` that ``validate`` accepts (it returns
    why an object is unusable, or None), keyed by the object's ``name``; broken ones are
    warned about and skipped (``strict``: raised). Returns (entries, problems)."""
    found: dict[str, Entry] = {}
    problems: list[str] = []

    def problem(message: str) -> None:
        if strict:
            raise InputError(message)
        log.warning("%s", message)
        problems.append(message)

    for package, ep in list_entry_points(group):
        if package != OWN_DISTRIBUTION and not autoload:
            continue
        where = f"package {package!r}, entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except Exception as exc:  # a third-party import can raise anything
            problem(f"skipping {kind} from {where}: import failed: {type(exc).__name__}: {exc}")
            continue
        reason = validate(obj)
        if reason:
            problem(f"skipping {kind} from {where}: {reason}")
            continue
        if obj.name in found:
            problem(f"skipping {kind} from {where}: name {obj.name!r} already taken by "
                    f"package {found[obj.name].package!r}")
            continue
        found[obj.name] = Entry(obj.name, obj, package, f"{ep.name} = {ep.value}")
    return found, problems


PLUGIN_GROUP = "fusekit.plugins"


def discover_plugins(strict: bool = False) -> tuple[dict[str, Entry], list[str]]:
    """Plugin specs registered under ``fusekit.plugins`` (fusekit's own included); cached
    per process like :func:`discover`."""
    return _discover_plugins(strict, _autoload(), tuple(sys.path))


@functools.lru_cache(maxsize=8)
def _discover_plugins(strict: bool, autoload: bool, _path: tuple[str, ...]):
    from fusekit.plugin_infra import validate_spec_class

    return _discover_group(PLUGIN_GROUP, validate_spec_class, "plugin spec", strict, autoload)
