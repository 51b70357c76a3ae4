"""What the commands print reaches the user whole: at 80 columns every help text and
``fusekit passes`` wrap at word boundaries (no name or option cut, no ellipsis), rich
markup in model or pass text is printed as it is, and pass summaries are whole sentences."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import onnx
import pytest
import typer

from fusekit import registry
from fusekit.cli import app, main
from fusekit.manager import pipeline_key

WIDTH = 80


def _commands() -> dict[str, object]:
    return typer.main.get_command(app).commands


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """Every command's --help, the top-level help, ``fusekit passes`` and an optimize report
    with --verify and --trace, at 80 columns, in one process with COLUMNS=80 (as a user's
    terminal of that width)."""
    folder = tmp_path_factory.mktemp("text")
    model = folder / "a-model-with-a-rather-long-file-name-that-does-not-fit-in-one-table-cell.onnx"
    onnx.save(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) <float[3] c = {1.0, 2.0, 3.0}> { t = Identity(x)  y = Add(t, c) }"""), model)
    runs = {"-": ["--help"], **{name: [name, "--help"] for name in _commands()}, "passes-output": ["passes"],
            "optimize-output": ["optimize", str(model), "-o", str(folder / "o.onnx"), "--verify",
                                "--trace", "Identity_0"]}
    script = ("import json, sys\nfrom fusekit.cli import main\nfor key, argv in json.loads(sys.argv[1]).items():\n"
              "    print('=====', key, flush=True)\n    main(argv)\n    sys.stdout.flush()\n")
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    text = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], env=env,
                          capture_output=True, text=True, check=True).stdout
    parts = re.split(r"^===== (\S+)\n", text, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def _whole(text: str) -> str:
    return " ".join(text.split())


def test_every_help_fits_80_columns_and_cuts_nothing(rendered):
    assert set(rendered) == {"-", "passes-output", "optimize-output", *_commands()}
    for name, text in rendered.items():
        assert text.strip(), name
        for line in text.splitlines():
            # a path or trace line is printed whole and left to the terminal to wrap
            assert len(line) <= WIDTH or name == "optimize-output" and line.startswith(("fusekit optimize:",
                                                                                          "trace ", "wrote ")), \
                (name, line)
        assert "…" not in text and "<bool>" not in text, name
        # a line never ends inside a hyphenated word (--in-place, comma-separated)
        assert not re.search(r"[A-Za-z]-\n\s*[a-z]", text), name


def test_every_option_name_and_usage_metavar_appear_whole(rendered):
    for name, command in _commands().items():
        text = rendered[name]
        usage = text.splitlines()[0]
        assert "{" not in usage, usage
        for param in command.params:
            if param.param_type_name == "argument":
                assert (param.metavar or param.name.upper()) in usage, (name, usage)
            for opt in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (name, opt)
        assert _whole(first_line_of(command.help)) in _whole(rendered["-"]), name


def first_line_of(help_text: str) -> str:
    return registry.first_sentence(help_text or "")


def test_passes_text_shows_every_name_and_whole_summary_in_order(rendered):
    infos = sorted(registry.discover().passes.values(), key=lambda i: pipeline_key(i.cls))
    text = rendered["passes-output"]
    names = [line.split()[0] for line in text.splitlines()[1:] if line and not line.startswith(" ")]
    assert names == [i.name for i in infos]
    flat = _whole(text)
    for info in infos:
        assert _whole(info.summary) in flat, info.name
    assert "Turn a Reshape to [dim 0, -1] feeding Gemm into Flatten(axis=1)" in flat


def test_pass_summaries_are_whole_sentences_in_json(capsys):
    assert main(["passes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p["summary"] for p in listed}
    for name, summary in by_name.items():
        assert summary.endswith("."), (name, summary)
    assert by_name["fuse-activations"].endswith("becomes x * Clip(x + 3, 0, 6) / 6.")
    assert by_name["channels-last-mean"].endswith("as a ReduceMean over [1, 2] of its NHWC transpose.")
    assert "[dim 0, -1]" in by_name["flatten-before-gemm"]
    assert by_name["fuse-layer-norm"].endswith("(ReduceMean ... Sqrt, Div) into LayerNormalization.")


@pytest.mark.parametrize("doc, sentence", [
    ("Fold x.\n\nMore.", "Fold x."),
    ("Fold a HardSwish\n    into y (e.g. z). Then more.", "Fold a HardSwish into y (e.g. z)."),
    ("No full stop", "No full stop"),
    ("Fuse a (ReduceMean ... Sqrt, Div) chain. Then.", "Fuse a (ReduceMean ... Sqrt, Div) chain."),
    ("Fuse it, i.e. All of it... Really. Then.", "Fuse it, i.e. All of it... Really."),
    ("", ""),
])
def test_first_sentence(doc, sentence):
    assert registry.first_sentence(doc) == sentence


def test_model_text_with_markup_is_printed_as_it_is(tmp_path, capsys):
    """A node named like rich markup reaches the terminal unchanged in the report and trace."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) { t = Identity(x)  y = Relu(t) }""")
    model.graph.node[0].name = "[bold]id[/bold]"
    path = tmp_path / "[red]m.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--trace", "[bold]id[/bold]"]) == 0
    text = capsys.readouterr().out
    assert "[bold]id[/bold]" in text and "[red]m.onnx" in text
