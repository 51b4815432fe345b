"""`edge-agent inspect` on real models, and on files that are not models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED, INTERPRETER

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)


def inspect(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "inspect", str(path), "--interpreter", INTERPRETER],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_coral_mobilenet(coral: Path) -> None:
    r = inspect(coral / "mobilenet_v2_1.0_224_quant.tflite")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "input  uint8  1×224×224×3  quantization: scale 0.0078125, zero point 128" in out
    assert "uint8  1×1001  quantization: scale 0.00390625, zero point 0" in out
    assert "normalization: mean [127.5] std [127.5]" in out
    assert "associated file: imagenet_labels.txt (TENSOR_AXIS_LABELS, packed in the file (21686 bytes))" in out
    assert "edge tpu ops: none" in out
    assert "sha256: 7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776" in out


def test_edgetpu_model_is_described_though_it_cannot_run(coral: Path) -> None:
    r = inspect(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert r.returncode == 0, r.stderr
    assert "edge tpu ops: yes (edgetpu-custom-op)" in r.stdout
    assert "note: compiled for the Edge TPU" in r.stdout
    assert "uint8  1×128×128×3" in r.stdout


def test_bundled_uint8_model_metadata() -> None:
    r = inspect(BUNDLED / "digits_uint8.tflite")
    assert r.returncode == 0, r.stderr
    assert "normalization: mean [123.675, 116.28, 103.53] std [58.395, 57.12, 57.375]" in r.stdout
    assert "digits_labels.txt" in r.stdout


def test_model_without_metadata() -> None:
    r = inspect(BUNDLED / "digits_float.tflite")
    assert r.returncode == 0 and "metadata: none" in r.stdout
    assert "float32  1×32×32×3  quantization: none" in r.stdout


def test_unreadable_models_exit_2_with_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model" * 20)
    for path, phrase in ((garbage, "not a TFLite model"), (tmp_path / "absent.tflite", "model file not found")):
        r = inspect(path)
        assert r.returncode == 2
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO:")]
        assert len(lines) == 1 and phrase in lines[0], r.stderr
        assert "Traceback" not in r.stderr
