"""`edge-agent bench`: the agent against the bare invoke loop, on the bundled digits model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.broker import LocalBroker, free_port
from edge_agent.cli import main

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)

STAGES = ("capture_wait", "preprocess", "invoke", "guard", "postprocess", "publish")


def write_config(tmp_path: Path, bundled: Path, port: int) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "bench-test"
state_dir = "{tmp_path / "state"}"
[source]
kind = "synthetic"
width = 160
height = 120
[model]
path = "{bundled / "digits_uint8.tflite"}"
labels = "{bundled / "digits_labels.txt"}"
task = "classification"
threads = 1
[preprocess]
color = "rgb"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[mqtt]
host = "127.0.0.1"
port = {port}
"""
    )
    return cfg


def bench_json(capsys: pytest.CaptureFixture[str], cfg: Path) -> dict[str, Any]:
    rc = main(["bench", "-c", str(cfg), "--frames", "30", "--warmup", "5", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    report: dict[str, Any] = json.loads(out)
    return report


def test_bench_reports_positive_figures(
    tmp_path: Path, bundled: Path, mosquitto: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    r = bench_json(capsys, write_config(tmp_path, bundled, mosquitto.port))
    assert r["frames"] == 30
    assert set(r["stages"]) == set(STAGES)
    for stage in ("preprocess", "invoke", "publish"):
        assert r["stages"][stage]["p50_ms"] > 0
        assert r["stages"][stage]["p99_ms"] >= r["stages"][stage]["p50_ms"]
    assert r["capture_to_publish"]["p99_ms"] > 0
    assert r["fps"] > 0 and r["bare_fps"] > 0 and r["ratio"] > 0
    assert r["cpu_outside_invoke_us"]["loop_thread"] > 0
    assert r["cpu_outside_invoke_us"]["process"] > 0
    assert r["allocated"]["frames"] > 1
    assert r["rss_mb"]["start"] > 0 and r["rss_mb"]["end"] > 0
    assert r["settings"]["broker"] == f"127.0.0.1:{mosquitto.port}"
    assert r["notes"] == []
    # nothing was written to the configured state_dir: the run has its own
    assert not (tmp_path / "state").exists()


def test_bench_starts_a_broker_when_the_configured_one_is_away(
    tmp_path: Path, bundled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = bench_json(capsys, write_config(tmp_path, bundled, free_port()))
    assert r["frames"] == 30
    assert "(started)" in r["settings"]["broker"]
    assert any("does not answer" in n for n in r["notes"])


def test_bench_table(tmp_path: Path, bundled: Path, mosquitto: LocalBroker, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, bundled, mosquitto.port)
    assert main(["bench", "-c", str(cfg), "--frames", "20", "--warmup", "5"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out
    assert "ratio" in out and "RSS" in out
