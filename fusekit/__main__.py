"""``python -m fusekit`` and the ``fusekit`` console script."""

import sys

from fusekit.cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
