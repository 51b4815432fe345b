"""scripts/install.sh, judged without a Pi: what it would do (--dry-run), and its options.

Run for real it needs root, systemd as PID 1 and udev, none of which this machine has; the
actions it lists are what a Pi would run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"


def dry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
def test_install_actions() -> None:
    r = dry()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for expected in (
        "useradd --system",
        "usermod -a -G video edge-agent",
        "-m venv /opt/edge-agent/venv",
        "install -m 0644 systemd/edge-agent.service /etc/systemd/system/edge-agent.service",
        "/etc/udev/rules.d/71-edge-agent-coral.rules",
        "systemctl enable edge-agent.service",
        "systemctl restart edge-agent.service",
    ):
        assert expected in out, (expected, out)
    assert "mqtt_password" in out and "update.key" in out  # LoadCredential= sources exist


@pytest.mark.e2e
def test_no_start_and_uninstall_keep_data() -> None:
    no_start = dry("--no-start").stdout
    assert "systemctl enable edge-agent.service" in no_start and "systemctl restart" not in no_start
    r = dry("--uninstall")
    assert r.returncode == 0 and "rm -rf /opt/edge-agent" in r.stdout and "kept /etc/edge-agent" in r.stdout
    assert "userdel" not in r.stdout
    purge = dry("--uninstall", "--purge").stdout
    assert "rm -rf /etc/edge-agent /var/lib/edge-agent" in purge and "userdel edge-agent" in purge


@pytest.mark.e2e
def test_unknown_option_is_refused() -> None:
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr


def test_coral_rule_names_both_usb_ids() -> None:
    text = SCRIPT.read_text()
    assert 'ATTRS{idVendor}=="1a6e", ATTRS{idProduct}=="089a"' in text
    assert 'ATTRS{idVendor}=="18d1", ATTRS{idProduct}=="9302"' in text
