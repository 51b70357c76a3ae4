"""Test configuration: hypothesis profiles, chosen by the HYPOTHESIS_PROFILE env var.

- ``ci`` (default): few examples, derandomized and without the example database, so a
  CI run is deterministic and quick.
- ``fuzz``: thousands of random examples, for hunting bugs locally
  (``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_property_optimize.py``).

Tests that need TensorRT are marked ``trt``; :mod:`tests.trt_marker` skips them without a
backend, or fails them when ``FUSEKIT_REQUIRE_TRT=1``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.trt_marker"]

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
