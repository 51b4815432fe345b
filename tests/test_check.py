"""`edge-agent check`: exit 0 healthy, 1 a fault found, 2 invalid config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER

from edge_agent.check import audit_prepared
from edge_agent.config import parse_config
from edge_agent.pipeline import Pipeline
from edge_agent.sources.base import Frame

FRAMES = BUNDLED / "digits_frames"
IMAGENET = "scale = 0.00392156862745098\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
MANIFEST = json.loads((BUNDLED / "manifest.json").read_text())


def check(tmp_path: Path, config: str, *samples: Path) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "agent.toml"
    p.write_text(config)
    args = [sys.executable, "-m", "edge_agent", "check", "-c", str(p)]
    for s in samples:
        args += ["--sample", str(s)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def model_section(name: str, **extra: str) -> str:
    lines = [f'path = "{BUNDLED / name}"', f'interpreter = "{INTERPRETER}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "[model]\n" + "\n".join(lines) + "\n"


@pytest.mark.e2e
def test_healthy_digits_model_with_samples(tmp_path: Path) -> None:
    samples = sorted(FRAMES.glob("*.png"))[:5]
    cfg = (
        model_section("digits_float.tflite", labels=f'"{BUNDLED / "digits_labels.txt"}"') + "[preprocess]\n" + IMAGENET
    )
    r = check(tmp_path, cfg, *samples)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "preprocessing plan:" in out and "32×32×3 NHWC" in out
    assert "self-test:" in out and "verdict: healthy" in out
    for s in samples:
        line = next(ln for ln in out.splitlines() if ln.startswith(s.name))
        assert "guard: ok" in line
    # the digit in the file name is the label of most samples
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    right = sum(f"top: {words[int(s.stem.split('_')[1])]} " in out for s in samples)
    assert right >= 4


@pytest.mark.e2e
def test_nan_prone_model_fed_raw_pixels_is_a_fault(tmp_path: Path) -> None:
    sample = sorted(FRAMES.glob("*.png"))[0]
    r = check(tmp_path, model_section("nan_prone.tflite"), sample)
    assert r.returncode == 1, r.stdout
    assert "guard: FAULT nan_output" in r.stdout
    assert "raw 0-255 pixels" in r.stdout and "1/255" in r.stdout
    assert "verdict: FAULT found" in r.stdout
    # fed as trained, it is healthy
    r = check(tmp_path, model_section("nan_prone.tflite") + "[preprocess]\nscale = 0.00392156862745098\n", sample)
    assert r.returncode == 0, r.stdout


@pytest.mark.e2e
def test_sensor_rows_with_a_blank_cell(tmp_path: Path) -> None:
    feats = MANIFEST["models"]["sensor"]["transform"]["features"]
    cfg = (
        model_section("sensor.tflite", task='"regression"')
        + "".join(
            f'[[preprocess.features]]\nname = "{f["name"]}"\nmean = {f["mean"]}\nstd = {f["std"]}\n' for f in feats
        )
        + '[postprocess]\nvalue_names = ["progression"]\n'
    )
    rows = tmp_path / "rows.csv"
    rows.write_text("age,bmi,bp,s5\n61,25.8,90,4.9972\n74,,101,4.3944\n")
    r = check(tmp_path, cfg, rows)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rows.csv:2: values: progression=" in r.stdout
    assert "rows.csv:3: values: progression=" in r.stdout and "(imputed: bmi)" in r.stdout


@pytest.mark.e2e
def test_missing_model_and_bad_sample(tmp_path: Path) -> None:
    r = check(tmp_path, f'[model]\npath = "{tmp_path / "absent.tflite"}"\n')
    assert r.returncode == 1 and "model: FAULT: model file not found" in r.stdout
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    r = check(tmp_path, model_section("digits_float.tflite") + "[preprocess]\n" + IMAGENET, bad)
    assert r.returncode == 1
    assert "broken.png: FAULT: broken.png is not a decodable JPEG/PNG/BMP image" in r.stdout


@pytest.mark.e2e
def test_model_failing_inside_invoke(tmp_path: Path) -> None:
    r = check(tmp_path, model_section("invoke_error.tflite", task='"raw"'))
    assert r.returncode == 1
    assert "self-test: FAULT:" in r.stdout and "failed inside invoke()" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.e2e
def test_invalid_config_exits_2(tmp_path: Path) -> None:
    r = check(tmp_path, model_section("digits_float.tflite") + "[preprocess]\nstd = [0]\n")
    assert r.returncode == 2 and "preprocess.std: every value must be > 0" in r.stderr


@pytest.mark.e2e
def test_sample_audit_against_the_reference(tmp_path: Path, coral: Path) -> None:
    """`check --sample` prints per-channel statistics and compares the plan with the reference."""
    r = check(
        tmp_path,
        f'[model]\npath = "{coral / "mobilenet_v2_1.0_224_quant.tflite"}"\ninterpreter = "{INTERPRETER}"\n',
        coral / "cat.bmp",
    )
    assert r.returncode == 0, r.stdout
    out = r.stdout
    assert "top: Egyptian cat" in out
    assert "table differs from the identity by up to 1 step(s) on 127 of 256 values" in out
    assert "(from model metadata)" in out
    assert out.count("(the transform maps pixels 0..255 to [-1, 0.9922])") == 3
    assert "matches the reference transform" in out


def test_audit_flags_a_plan_that_does_not_reproduce_the_transform(tmp_path: Path) -> None:

    cfg = parse_config(
        {
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
            "preprocess": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        }
    )
    pipeline = Pipeline.load(cfg)
    pixels = cv2.imread(str(sorted(FRAMES.glob("*.png"))[0]))
    frame = Frame(1, 0.0, 0.0, "f.png", pixels=pixels, order="bgr")
    pipeline.process(frame)
    lines, ok = audit_prepared(pipeline, frame)
    assert ok, lines
    plan = pipeline.pre.plan_for(frame)
    plan._lut[...] = np.roll(plan._lut, 3, axis=1)  # a plan gone wrong: every pixel 3 levels off
    pipeline.process(frame)
    lines, ok = audit_prepared(pipeline, frame)
    assert not ok
    assert any("MISMATCH: the prepared input differs from the reference transform" in ln for ln in lines), lines
