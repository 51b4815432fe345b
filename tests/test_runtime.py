"""The interpreter runtime: backends, accuracy through the runtime, and every way a model fails.

Run with EDGE_AGENT_TEST_INTERPRETER=tflite-runtime (CI does, in a NumPy < 2 environment)
to prove the same behaviour on the other interpreter package.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER

from edge_agent.config import ModelConfig
from edge_agent.errors import DelegateError, ModelError
from edge_agent.runtime.backends import PREFERENCE, select_backend
from edge_agent.runtime.loader import load_model, read_model_file
from edge_agent.runtime.tensors import TensorInfo, dequantize

MANIFEST = json.loads((BUNDLED / "manifest.json").read_text())
FRAMES = sorted((BUNDLED / "digits_frames").glob("*.png"))


def cfg(path: Path | str, **kw: object) -> ModelConfig:
    return ModelConfig(path=str(path), interpreter=INTERPRETER, **kw)  # type: ignore[arg-type]


def test_reported_interpreter_is_the_one_asked_for() -> None:
    model = load_model(cfg(BUNDLED / "digits_float.tflite"))
    if INTERPRETER == "auto":
        # auto takes the first package of the preference order that imports
        first = next(n for n in PREFERENCE if _imports(n))
        assert model.backend.name == first
    else:
        assert model.backend.name == INTERPRETER
    assert model.backend.version and model.backend.version != "unknown"


def _imports(name: str) -> bool:
    try:
        select_backend(name)
    except ModelError:
        return False
    return True


def test_unavailable_interpreter_is_one_clear_line() -> None:
    missing = next((n for n in ("tensorflow", "tflite-runtime", "ai-edge-litert") if not _imports(n)), None)
    if missing is None:
        pytest.skip("every interpreter package is installed here; nothing is missing to test")
    with pytest.raises(ModelError) as exc:
        select_backend(missing)
    assert exc.value.reason == "no_interpreter"
    assert f"model.interpreter = '{missing}' cannot be imported" in str(exc.value)
    assert "\n" not in str(exc.value)


def imagenet_prepare(frame_bgr: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB).astype(np.float64)
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    return ((rgb / 255.0 - mean) / std)[None]


@pytest.mark.parametrize("name", ["digits_float", "digits_uint8"])
def test_digits_accuracy_through_the_runtime(name: str) -> None:
    """Fed correctly (the manifest's training transform), ≥ 95% of held-out frames are right."""
    model = load_model(cfg(BUNDLED / f"{name}.tflite", threads=1))
    info = model.inputs[0]
    correct = 0
    for f in FRAMES:
        x = imagenet_prepare(cv2.imread(str(f)))
        if info.is_integer:
            q = np.clip(np.sign(x / info.scale) * np.floor(np.abs(x / info.scale) + 0.5) + info.zero_point, 0, 255)
            model.set_input(0, q.astype(info.dtype))
        else:
            model.set_input(0, x.astype(np.float32))
        model.invoke()
        out = model.output(0)
        assert np.isfinite(out).all()
        correct += int(np.argmax(out)) == int(f.stem.split("_")[1])
    assert len(FRAMES) >= 300
    accuracy = correct / len(FRAMES)
    assert accuracy >= 0.95, f"{name}: {accuracy:.3f}"
    assert accuracy == pytest.approx(MANIFEST["models"][name]["measured"]["accuracy"], abs=0.01)


def test_uint8_output_is_dequantized() -> None:
    model = load_model(cfg(BUNDLED / "digits_uint8.tflite"))
    out_info = model.outputs[0]
    assert out_info.dtype == np.uint8 and out_info.scale == pytest.approx(1 / 256)
    model.set_input(0, np.full(model.inputs[0].shape, 128, np.uint8))
    model.invoke()
    raw = model.raw_output(0)
    real = model.output(0)
    np.testing.assert_allclose(real, (raw.astype(np.float32) - out_info.zero_point) * out_info.scale)
    assert real.sum() == pytest.approx(1.0, abs=0.05)  # a softmax


def test_per_channel_dequantization() -> None:
    info = TensorInfo(
        "t",
        0,
        (1, 2, 3),
        np.dtype(np.int8),
        0.5,
        0,
        scales=(0.5, 1.0, 2.0),
        zero_points=(0, 1, -1),
        quantized_dimension=2,
    )
    raw = np.array([[[2, 2, 2], [-4, 0, 4]]], dtype=np.int8)
    out = dequantize(info, raw)
    np.testing.assert_allclose(out, [[[1.0, 1.0, 6.0], [-2.0, -1.0, 10.0]]])


def test_input_view_is_zero_copy_and_released() -> None:
    model = load_model(cfg(BUNDLED / "digits_float.tflite"))
    fn = model.input_view(0)
    view = fn()
    view[...] = 0.25
    del view  # invoke() refuses to run while a view of the tensor is alive
    model.invoke()
    np.testing.assert_array_equal(model.interpreter.get_tensor(model.inputs[0].index), 0.25)


# ---- every way a model fails gets its own clear, one-line error ----------------------------


def expect_model_error(config: ModelConfig, reason: str) -> str:
    with pytest.raises(ModelError) as exc:
        load_model(config)
    assert exc.value.reason == reason, str(exc.value)
    assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)
    return str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    msg = expect_model_error(cfg(tmp_path / "absent.tflite"), "missing")
    assert msg == f"model file not found: {tmp_path / 'absent.tflite'}"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in expect_model_error(cfg(tmp_path), "unreadable")


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, b"\x00" * 4096])
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.tflite"
    p.write_bytes(content)
    msg = expect_model_error(cfg(p), "corrupt")
    assert msg.startswith(f"{p} is not a usable TFLite model: ")


def test_truncated_real_model(tmp_path: Path) -> None:
    data = (BUNDLED / "digits_float.tflite").read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[: len(data) // 2])
    expect_model_error(cfg(p), "corrupt")


def test_hash_mismatch_and_match() -> None:
    path = BUNDLED / "sensor.tflite"
    real = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = "0" * 64
    msg = expect_model_error(cfg(path, sha256=wrong), "hash_mismatch")
    assert real in msg and wrong in msg
    assert load_model(cfg(path, sha256=real.upper())).file.sha256 == real


def test_edgetpu_model_without_a_coral(coral: Path) -> None:
    msg = expect_model_error(cfg(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"), "edgetpu_required")
    assert "compiled for the Edge TPU" in msg and "cannot run on the CPU" in msg


def test_custom_op_the_runtime_lacks(coral: Path) -> None:
    msg = expect_model_error(cfg(coral / "model_invoking_error.tflite"), "unsupported_op")
    assert "fake-op-double" in msg and "does not provide" in msg


def test_model_failing_inside_invoke() -> None:
    model = load_model(cfg(BUNDLED / "invoke_error.tflite"))  # loads and allocates fine
    model.set_input(0, np.zeros(model.inputs[0].shape, dtype=model.inputs[0].dtype))
    with pytest.raises(ModelError) as exc:
        model.invoke()
    assert exc.value.reason == "invoke_failed"
    assert "failed inside invoke()" in str(exc.value) and "GATHER" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_edgetpu_delegate_policy_fail(coral: Path) -> None:
    """No libedgetpu here: with on_delegate_error = "fail" the load fails with one line."""
    config = cfg(
        coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
        delegate="edgetpu",
        edgetpu_device="usb",
        on_delegate_error="fail",
    )
    with pytest.raises(DelegateError) as exc:
        load_model(config)
    assert exc.value.reason == "delegate_unavailable"
    assert "Edge TPU delegate unavailable (libedgetpu.so.1, device usb)" in str(exc.value)


def test_edgetpu_delegate_policy_fallback(coral: Path) -> None:
    config = cfg(
        coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
        delegate="edgetpu",
        fallback_path=str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
    )
    model = load_model(config)
    assert model.delegate == "cpu"
    assert model.name == "mobilenet_v2_1.0_224_quant.tflite"
    assert any("falling back to the CPU" in n for n in model.notes)


def test_edgetpu_fallback_without_a_cpu_model(coral: Path) -> None:
    config = cfg(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", delegate="edgetpu")
    with pytest.raises(DelegateError, match="model.fallback_path is not set"):
        load_model(config)


def test_cpu_model_with_edgetpu_delegate_falls_back_to_itself() -> None:
    model = load_model(cfg(BUNDLED / "digits_float.tflite", delegate="edgetpu"))
    assert model.delegate == "cpu" and model.name == "digits_float.tflite" and model.notes


@pytest.mark.e2e
def test_failed_delegate_leaves_no_library_noise(coral: Path) -> None:
    """The library prints "Exception ignored in: Delegate.__del__" when load_delegate fails."""
    script = textwrap.dedent(f"""
        from edge_agent.config import ModelConfig
        from edge_agent.errors import DelegateError
        from edge_agent.runtime.loader import load_model
        try:
            load_model(ModelConfig(path={str(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")!r},
                                   interpreter={INTERPRETER!r}, delegate="edgetpu", on_delegate_error="fail"))
        except DelegateError as err:
            print("ERR", err)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR Edge TPU delegate unavailable")
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr


def test_read_model_file_reports_metadata(coral: Path) -> None:
    mf = read_model_file(str(coral / "mobilenet_v2_1.0_224_quant.tflite"))
    assert mf.info.metadata is not None
    assert mf.info.metadata.inputs[0].normalization_mean == (127.5,)
