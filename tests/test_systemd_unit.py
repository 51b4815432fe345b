"""The unit file: `systemd-analyze verify` is clean and the offline security score is ≤ 2.0.

systemd is not PID 1 here, so the unit is judged on paper: whether the camera and a Coral
really work under DevicePolicy=closed and the DeviceAllow= list is for a Pi to verify.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edge-agent.service"


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    exe = Path(sys.executable).with_name("edge-agent")
    if not exe.exists():
        pytest.skip(f"{exe} is missing: the package is not installed in this environment")
    text = UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", str(exe))
    p = tmp_path / "edge-agent.service"
    p.write_text(text)
    return p


def test_verify_is_clean(unit: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if str(unit) in ln or "edge-agent.service" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_security_exposure_is_at_most_2(unit: Path) -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout[-3000:]


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=edge-agent",
        "ConfigurationDirectory=edge-agent",
        "LoadCredential=mqtt_password:",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
    ):
        assert line in text, line
