"""The ``trt`` marker: a test that needs a TensorRT backend says so with ``@pytest.mark.trt``
(or a module's ``pytestmark``), and this hook decides before it runs.

Without a backend the test is skipped, saying how to install one; with
``FUSEKIT_REQUIRE_TRT=1`` (CI sets it) it fails instead, so a backend that stops importing
cannot turn dozens of tests into silent skips.
"""

from __future__ import annotations

import functools
import os

import pytest

REQUIRE_ENV = "FUSEKIT_REQUIRE_TRT"


@functools.cache
def _missing() -> str | None:
    """Why no TensorRT backend imports, or None when one does (asked once per session)."""
    from fusekit.builder import backend as backends
    from fusekit.errors import BackendMissingError

    try:
        backends.load()
    except BackendMissingError as exc:
        return str(exc)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("trt") is None:
        return
    why = _missing()
    if why is None:
        return
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{REQUIRE_ENV} is set and {why}", pytrace=False)
    pytest.skip(why)
