"""The event loop (authz.loops): a clean fall back to asyncio's own when uvloop cannot be imported,
and a one-line refusal when it is required. (Each loop and engine through a real Envoy:
test_grpc_engine.py.)"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from authz.dev import harness


def test_without_uvloop_auto_falls_back_and_uvloop_refuses_in_one_line(tmp_path: pathlib.Path) -> None:
    """uvloop made unimportable for real: a package of that name that fails to import comes first."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("uvloop is not available on this machine")\n')
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    config = pathlib.Path(__file__).parents[2] / "examples" / "policies"
    process = harness.TollgateProcess(
        config, extra=["--grpc-engine", "aio", "--event-loop", "auto"], env=env, log_to=tmp_path / "log"
    )
    process.start()
    assert process.stop() == 0
    assert "event loop: asyncio (uvloop cannot be imported: uvloop is not available" in (tmp_path / "log").read_text()
    refused = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config), "--event-loop", "uvloop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "tollgate: --event-loop uvloop: uvloop cannot be imported (uvloop is not available on this machine)"
    ]
