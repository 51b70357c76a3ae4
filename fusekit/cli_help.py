"""How ``fusekit --help`` and every command's help read: plain text wrapped at word
boundaries whatever the terminal's width (typer's rich panels cut option names and pass
names with an ellipsis at 80 columns, and show a stray ``<bool>`` for flags), usage lines
that name arguments (``MODEL...``, not ``{models}``), and each command listed with the
whole first sentence of its help. ``typer.Typer(cls=HelpGroup, rich_markup_mode=None)``."""

from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from fusekit.registry import first_sentence

_NO_BREAK = "\u2011"  # a non-breaking hyphen: the wrapper never breaks a line after it


class _HelpFormatter(typer.Context.formatter_class):
    """click's help formatter, except that a hyphenated word (``--in-place``, ``comma-separated``)
    is never broken at its hyphen: lines break between words only."""

    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _NO_BREAK))

    def write_dl(self, rows, *args, **kwargs) -> None:
        super().write_dl([(a.replace("-", _NO_BREAK), b.replace("-", _NO_BREAK)) for a, b in rows], *args, **kwargs)

    def getvalue(self) -> str:
        return super().getvalue().replace(_NO_BREAK, "-")


class _Context(typer.Context):
    formatter_class = _HelpFormatter


class HelpCommand(TyperCommand):
    """A command whose usage line names its arguments as click does: MODEL, [MODELS]...
    (typer writes ``{model}``)."""

    context_class = _Context

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class HelpGroup(TyperGroup):
    """Help as plain text wrapped at word boundaries, never cut (typer's rich panels cut
    option names at 80 columns); each command listed with its whole first sentence."""

    context_class = _Context

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            if type(command) is TyperCommand:
                command.__class__ = HelpCommand  # every command, whoever adds it

    def format_commands(self, ctx: typer.Context, formatter: _HelpFormatter) -> None:
        rows = [(name, first_sentence(command.help or "")) for name, command in self.commands.items()
                if not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
