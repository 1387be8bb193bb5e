"""`DEMO_ONESHOT=1 make demo` works: every sample decided as expected and the audit log verifies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from authz.dev import harness

pytestmark = pytest.mark.envoy


def test_demo_oneshot() -> None:
    env = {
        **os.environ,
        "DEMO_ONESHOT": "1",
        "DEMO_ENVOY_PORT": str(harness.free_port()),
        "DEMO_TOLLGATE_PORT": str(harness.free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "authz.dev.demo"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all samples decided as expected" in result.stdout
    assert "Audit log verified offline: intact" in result.stdout
    assert "dry-run web/www-readonly: would deny" in result.stdout
    assert "UNEXPECTED" not in result.stdout
