"""Load a page in a real headless browser (Debian's chromium): its console messages, its DOM
after load, and a screenshot. In CI (``CI`` set) a missing browser fails the test, never
skips it; elsewhere the test is skipped with the install command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
_CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\] (.*)")


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        message = "no chromium: apt-get update && apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Loaded:
    dom: str
    console: list[str]  # every console message (the pages tested have no script: each one is an error)
    screenshot: Image.Image


def load(page: Path, tmp_path: Path, size: tuple[int, int] = (1400, 1600)) -> Loaded:
    browser, url = chromium(), Path(page).resolve().as_uri()
    common = [browser, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0"]
    dumped = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    png = tmp_path / "screenshot.png"
    shot = subprocess.run([*common, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    console = [m.group(1) for err in (dumped.stderr, shot.stderr) for m in _CONSOLE.finditer(err)]
    return Loaded(dumped.stdout, console, Image.open(png).convert("RGB"))


def ink(image: Image.Image) -> float:
    """The share of pixels that are not (near) white."""
    grey = image.convert("L")
    return sum(count for value, count in enumerate(grey.histogram()) if value < 240) / (image.width * image.height)


def distinct_colours(image: Image.Image) -> int:
    return len(image.getcolors(maxcolors=1 << 24) or [])
