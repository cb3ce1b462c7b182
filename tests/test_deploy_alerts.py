"""The live-accuracy alerts of deploy/cellmfg-rules.yml (issue 25) under `promtool test rules`: the firing and the
quiet cases in deploy/prometheus/live-accuracy.test.yml (live MAPE against 1.5x the test-MAPE band with at least 20
outcomes, interval coverage under 0.8, input drift)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from testkit.processes import PROJECT_ROOT


def test_live_accuracy_alerts_fire_and_stay_quiet_as_their_promtool_tests_say() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "test", "rules", "deploy/prometheus/live-accuracy.test.yml"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_live_gauge_an_alert_reads_is_one_the_service_exports() -> None:
    from service.engine import metrics

    rules = (PROJECT_ROOT / "deploy" / "cellmfg-rules.yml").read_text()
    exported = {metrics.LIVE_MAPE._name, metrics.TEST_MAPE_UPPER._name, metrics.LIVE_OUTCOMES._name,
                metrics.LIVE_COVERAGE._name, metrics.DRIFT_OUTSIDE._name, metrics.DRIFT_PSI._name}
    assert all(name in rules for name in exported), sorted(n for n in exported if n not in rules)
