"""CLI flags generated from the options passes declare (:class:`fusekit.pass_infra.Option`).

A command made with ``cls=PassOptionsCommand`` takes one flag per option of every
registered pass (``--plugins``, ``--fold-max-bytes``, ...), listed under "Pass options"
in its help. The flags are built when that command parses its arguments or shows its
help, not when the CLI is built: finding the passes imports them (and onnx), which
``fusekit --help`` and ``--version`` must not. They are made by typer itself, from a
signature written from the declarations. A flag left out is not given (the pass's default
applies); the command gets the values given from :func:`given`.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Optional

import typer

from fusekit import registry
from fusekit.cli_help import HelpCommand
from fusekit.pass_infra import Option

_META_KEY = "fusekit.pass_options"
_DEST = "pass_option__"  # keeps the generated flags' values apart from the command's own


def _parameter(option: Option, owners: list[str]) -> inspect.Parameter:
    flag = option.cli_flag
    text = f"{option.help} (pass {', '.join(owners)}; default {option.default})"
    if option.type is bool and option.parse is None:
        info = typer.Option(f"{flag}/--no-{flag[2:]}", help=text, rich_help_panel="Pass options")
        kind: type = bool
    else:
        kind = option.type if option.parse is None and option.type in (int, float, str) else str
        info = typer.Option(flag, help=text, metavar=option.metavar or option.name.upper(),
                            rich_help_panel="Pass options")
    return inspect.Parameter(_DEST + option.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], info])


def _flags() -> tuple:
    """Typer's parameters for every registered pass's options (one per option name); made
    afresh each time (a few ms), since the passes found depend on sys.path."""
    declared: dict[str, tuple[Option, list[str]]] = {}
    for info in registry.discover().passes.values():
        for option in info.cls.options:
            declared.setdefault(option.name, (option, []))[1].append(info.name)

    def options() -> None: ...

    options.__signature__ = inspect.Signature([_parameter(o, owners) for o, owners in declared.values()])
    holder = typer.Typer()
    holder.command()(options)
    return tuple(typer.main.get_command(holder).params)


class PassOptionsCommand(HelpCommand):
    """A command that also takes every registered pass's options as flags (help as every command's)."""

    def get_params(self, ctx: typer.Context) -> list:
        own = {opt for p in self.params for opt in p.opts}
        generated = [p for p in _flags() if not own & set(p.opts)]
        params = super().get_params(ctx)
        return params[:len(self.params)] + generated + params[len(self.params):]

    def invoke(self, ctx: typer.Context) -> Any:
        ctx.meta[_META_KEY] = {key[len(_DEST):]: ctx.params.pop(key) for key in list(ctx.params)
                               if key.startswith(_DEST)}
        return super().invoke(ctx)


def given(ctx: typer.Context) -> dict[str, Any]:
    """The pass options given on the command line (flags left out are absent)."""
    return {name: value for name, value in ctx.meta.get(_META_KEY, {}).items() if value is not None}
