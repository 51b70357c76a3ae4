"""Write the README's pass table from the registry: the output of ``fusekit passes --markdown``
(name, stage, priority, on by default, and each pass's docstring's first sentence, in
pipeline order) between the README's two ``fusekit passes --markdown`` markers.

    python tools/readme_passes.py            # rewrite README.md's table
    python tools/readme_passes.py --check    # exit 1 if README.md's table is not the registry's

``tests/test_readme.py`` fails when they differ.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- BEGIN fusekit passes --markdown (tools/readme_passes.py writes this table) -->"
END = "<!-- END fusekit passes --markdown -->"
TABLE = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)


def generated_table() -> str:
    """What ``fusekit passes --markdown`` prints."""
    from fusekit.cli import main

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["passes", "--markdown"])
    if code != 0:
        raise SystemExit(f"fusekit passes --markdown exited {code}")
    return text.getvalue()


def readme_table(readme: str) -> str:
    """The table between the markers of ``readme`` (the README's text)."""
    found = TABLE.search(readme)
    if found is None:
        raise SystemExit(f"{README}: no table between {BEGIN!r} and {END!r}")
    return found.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether README.md is up to date")
    args = parser.parse_args(argv)
    readme, table = README.read_text(), generated_table()
    if readme_table(readme) == table:
        print(f"{README}: pass table up to date")
        return 0
    if args.check:
        print(f"{README}: pass table differs from `fusekit passes --markdown`; run python tools/readme_passes.py")
        return 1
    README.write_text(TABLE.sub(lambda _: f"{BEGIN}\n{table}{END}", readme))
    print(f"{README}: pass table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
