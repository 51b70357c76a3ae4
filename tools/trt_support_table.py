"""Make a shipped TensorRT support table (``fusekit/data/trt_support/tensorrt-X.Y.json``) from
one revision of onnx-tensorrt's ``docs/operators.md``.

    git clone https://github.com/onnx/onnx-tensorrt && cd onnx-tensorrt
    python /path/to/fusekit/tools/trt_support_table.py --repo . --commit release/10.1-GA --version 10.1 \\
        -o /path/to/fusekit/fusekit/data/trt_support/tensorrt-10.1.json
    python tools/trt_support_table.py --file operators.md --version 10.15 -o tensorrt-10.15.json

The table lists every operator the document marks ``Y`` (supported) or ``N``; restrictions
are the document's, with markdown removed. The opset range is read from the header ("TensorRT
X supports operators in the inclusive range of opset A to opset B"). ``--version`` names the
release when the header does not (the 10.1 GA revision still says 10.0). An op the document
does not list at all is "not in the support table" for fusekit, hence unsupported.

Made with it: tensorrt-10.0 (release/10.0-GA, eb43908) and tensorrt-10.1 (release/10.1-GA,
96e7811). tensorrt-10.15 was transcribed by hand before this script existed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HEADER = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators in the inclusive range of opset\s+(\d+)"
                    r"\s+to opset\s+(\d+)", re.IGNORECASE)
CUSTOM_DOMAINS = "looked up as plugins by op type; unsupported unless a creator is registered"


def _clean(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", text).replace("`", "").replace("\\.", ".")
    return re.sub(r"\s+", " ", text).strip(" |;")


def parse_operators_md(text: str) -> dict:
    """Header version and opset range, and op -> (supported, restriction) of the matrix."""
    header = HEADER.search(text)
    if header is None:
        raise ValueError("no 'TensorRT X supports operators in the inclusive range of opset A to opset B' header")
    ops: dict[str, tuple[bool, str]] = {}
    in_matrix = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_matrix = "Operator Support Matrix" in line
            continue
        if not in_matrix or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        op, mark = cells[0], cells[1] if len(cells) > 1 else ""
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", op) or op == "Operator":
            continue  # the column header and the |---| rule
        if not mark[:1] in ("Y", "N"):
            raise ValueError(f"{op}: supported column {mark!r} is neither Y nor N")
        restriction = _clean(cells[3]) if len(cells) > 3 else ""
        if mark.startswith("N") and not restriction and len(cells) > 2:
            restriction = _clean(cells[2])  # N rows put their note in the types column
        if op in ops and ops[op][0] != mark.startswith("Y"):
            raise ValueError(f"{op} is listed twice, as supported and as not")
        ops[op] = (mark.startswith("Y"), restriction)
    if not ops:
        raise ValueError("no Operator Support Matrix rows")
    return {"version": header.group(1), "opset": [int(header.group(2)), int(header.group(3))], "ops": ops}


def make_table(text: str, version: str | None, source: str, parsed: dict | None = None) -> dict:
    """The support table of ``text``; ``parsed``: its :func:`parse_operators_md`, if already made."""
    parsed = parse_operators_md(text) if parsed is None else parsed
    ops = parsed["ops"]
    return {
        "backend": "tensorrt",
        "version": version or parsed["version"],
        "opset": parsed["opset"],
        "source": source,
        "supported": sorted(op for op, (yes, _) in ops.items() if yes),
        "unsupported": sorted(op for op, (yes, _) in ops.items() if not yes),
        "restrictions": {op: note for op, (yes, note) in sorted(ops.items()) if yes and note},
        "custom_domains": CUSTOM_DOMAINS,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", type=Path, help="an operators.md file")
    where.add_argument("--repo", type=Path, help="an onnx-tensorrt git clone (with --commit)")
    ap.add_argument("--commit", help="the revision of docs/operators.md to read (with --repo)")
    ap.add_argument("--version", help="the TensorRT release (default: the document's header)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.repo is not None:
        if not args.commit:
            ap.error("--repo needs --commit")
        sha = subprocess.run(["git", "-C", str(args.repo), "rev-parse", args.commit], check=True,
                             capture_output=True, text=True).stdout.strip()
        text = subprocess.run(["git", "-C", str(args.repo), "show", f"{sha}:docs/operators.md"], check=True,
                              capture_output=True, text=True).stdout
        source = (f"onnx/onnx-tensorrt docs/operators.md at {args.commit} ({sha[:7]}); "
                  "made by tools/trt_support_table.py")
    else:
        text = args.file.read_text()
        source = f"onnx/onnx-tensorrt docs/operators.md ({args.file.name}); made by tools/trt_support_table.py"
    parsed = parse_operators_md(text)
    table = make_table(text, args.version, source, parsed)
    parsed_version = parsed["version"]
    if args.version and args.version != parsed_version:
        table["source"] += f"; the document's header says TensorRT {parsed_version}"
    args.output.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{args.output}: TensorRT {table['version']}, opset {table['opset'][0]}..{table['opset'][1]}, "
          f"{len(table['supported'])} supported, {len(table['unsupported'])} not", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
