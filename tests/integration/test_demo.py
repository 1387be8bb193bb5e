"""`DEMO_ONESHOT=1 make demo` works, and so does the README's tour after it, line by line."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from authz.dev import harness

pytestmark = pytest.mark.envoy

ROOT = pathlib.Path(__file__).parents[2]
TOLLGATE = pathlib.Path(sys.executable).with_name("tollgate")


def _tour() -> list[str]:
    """The command lines of the README's "Try the tools yourself" block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("Try the tools yourself", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_demo_oneshot_then_the_readme_tour(tmp_path: pathlib.Path) -> None:
    demo_dir = tmp_path / ".tollgate-demo"
    env = {
        **os.environ,
        "DEMO_ONESHOT": "1",
        "DEMO_DIR": str(demo_dir),
        "DEMO_ENVOY_PORT": str(harness.free_port()),
        "DEMO_TOLLGATE_PORT": str(harness.free_port()),
        "DEMO_METRICS_PORT": str(harness.free_port()),
        "DEMO_UI_PORT": str(ui_port := harness.free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "authz.dev.demo"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "all samples decided as expected" in out and "UNEXPECTED" not in out
    assert "Audit log verified offline: intact" in out
    # The auditors' web view: offered, and behind Tollgate only the auditor got in.
    assert f"open http://127.0.0.1:{ui_port}/ in a browser" in out
    assert re.search(r"200.*GET    audit.example.com/.*as dana \(auditors\)", out)
    assert re.search(r"403.*GET    audit.example.com/.*as alice \(staff\)", out)
    assert re.search(
        r"alert firing.*: auth_failures_by_source, source_ip [0-9a-f]{12}… \(a pseudonym\), 20 failures", out
    )
    assert (
        f"audit log     {demo_dir / 'audit'}" in out
        and f"verifier key  {demo_dir / 'audit-keys' / 'verifier.key'}" in out
    )
    # The header counts what is listed under it, and each line names what would have decided.
    header = re.search(r"(\d+) decision records .*; the (\d+) a DryRun policy also judged:", out)
    assert header is not None
    listed = [line for line in out.splitlines() if "with the DryRun policies enforced: would" in line]
    assert len(listed) == int(header.group(2)) > 0
    assert any("would deny (default_deny, web/www-readonly)" in line for line in listed)

    commands = _tour()
    assert len(commands) >= 8
    for line in commands:
        command, _, comment = line.partition("  # ")
        argv = shlex.split(command.replace(".tollgate-demo", str(demo_dir)))
        assert argv[0] == ".venv/bin/tollgate"
        ran = subprocess.run(
            [str(TOLLGATE), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        expected = 1 if "exit 1" in comment else 0
        assert ran.returncode == expected, (line, ran.stdout, ran.stderr)
        assert "Traceback" not in ran.stderr
