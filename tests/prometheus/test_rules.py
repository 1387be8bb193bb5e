"""The Prometheus alerting rules the chart ships (charts/tollgate/files/prometheus-rules.yaml):
valid for Debian's ``promtool check rules``, and behaving as their unit tests
(tests/prometheus/rules_test.yaml) say under ``promtool test rules``."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from authz.dev import monitoring

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "tollgate" / "files" / "prometheus-rules.yaml"

pytestmark = pytest.mark.skipif(
    bool(monitoring.missing(monitoring.PROMTOOL)),
    reason="needs promtool from Debian's prometheus package (make test installs it when run as root)",
)


def promtool(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_pass_promtool_check(tmp_path: pathlib.Path) -> None:
    result = promtool("check", "rules", str(RULES), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_the_rules_pass_their_unit_tests(tmp_path: pathlib.Path) -> None:
    shutil.copy(RULES, tmp_path / "rules.yaml")
    shutil.copy(pathlib.Path(__file__).with_name("rules_test.yaml"), tmp_path / "rules_test.yaml")
    result = promtool("test", "rules", "rules_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_can_fail(tmp_path: pathlib.Path) -> None:
    """A rule made blind (its threshold out of reach) fails its unit test: the tests test something."""
    (tmp_path / "rules.yaml").write_text(
        RULES.read_text().replace("(tollgate_alerts_active) > 0", "(tollgate_alerts_active) > 99")
    )
    shutil.copy(pathlib.Path(__file__).with_name("rules_test.yaml"), tmp_path / "rules_test.yaml")
    result = promtool("test", "rules", "rules_test.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "TollgateDetectorFiring" in result.stdout + result.stderr
