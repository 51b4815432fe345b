"""Config files: valid examples load; every bad input gets one line naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config, parse_config
from edge_agent.demo import demo_config
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = '[model]\npath = "m.tflite"\n'


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    return exc.value.problems


@pytest.mark.parametrize("name", ["agent.example.toml", "demo.toml"])
def test_example_configs_are_valid(name: str) -> None:
    cfg = load_config(REPO / "config" / name)
    assert cfg.model.path.endswith(".tflite")


def test_demo_toml_matches_the_embedded_demo(tmp_path: Path) -> None:
    from_file = load_config(REPO / "config" / "demo.toml")
    embedded = parse_config(demo_config(state_dir=str(tmp_path), port=1883, protocol="5"))
    assert from_file.preprocess == embedded.preprocess
    assert Path(from_file.model.path).name == Path(embedded.model.path).name
    assert Path(from_file.model.path).resolve() == Path(embedded.model.path).resolve()


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.model.path == str(tmp_path / "m.tflite")  # relative to the config file
    assert cfg.mqtt.port == 1883 and cfg.mqtt.topic_prefix == "edge" and cfg.mqtt.events_qos == 1
    assert cfg.preprocess is None  # → taken from model metadata
    assert cfg.model.interpreter == "auto"
    assert cfg.device.id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be less than or equal to 65535, got 70000"),
        ("[mqtt]\nbogus = 1\n", "mqtt.bogus: unknown key"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
        ("[mqtt]\nprotocol = 4\n", "mqtt.protocol: must be '5' or '3.1.1', got 4"),
        ('[mqtt]\ntopic_prefix = "edge/#"\n', "mqtt.topic_prefix: must be a topic without wildcards"),
        ("[mqtt]\nresults_qos = 3\n", "mqtt.results_qos: must be less than or equal to 2, got 3"),
        ('[mqtt.tls]\ncert = "c.pem"\n', "mqtt.tls: cert and key must be given together"),
        ('[mqtt]\npassword_file = "pw"\n', "mqtt.password_file: needs mqtt.username"),
        ('[device]\nid = "a/b"\n', "device.id: must be 1-64 characters"),
        ('[device]\ngroups = ["g", "g"]\n', "device.groups: group names must be unique"),
        ('[source]\nkind = "images"\n', "source.path: required when source.kind = 'images'"),
        ('[source]\nkind = "webcam"\n', "source.kind: must be 'picamera2', 'opencv'"),
        ("[source]\nfps = 0\n", "source.fps: must be greater than 0, got 0"),
        ('[source]\nkind = "opencv"\n', "source: kind 'opencv' needs exactly one of path, url or device"),
        ('[source]\nkind = "opencv"\nurl = "ftp://x"\n', "source.url: must start with rtsp://"),
        ('[model]\npath = "m.tflite"\nthreads = 0\n', "model.threads: must be greater than or equal to 1, got 0"),
        ('[model]\npath = "m.tflite"\nsha256 = "abc"\n', "model.sha256: must be 64 hexadecimal characters"),
        ('[model]\npath = "m.tflite"\ninterpreter = "onnx"\n', "model.interpreter: must be 'auto', 'ai-edge-litert'"),
        (
            '[model]\npath = "m.tflite"\ndelegate = "edgetpu"\nedgetpu_device = "usb0"\n',
            "model.edgetpu_device: must be 'usb', 'usb:N', 'pci' or 'pci:N', got 'usb0'",
        ),
        (
            '[model]\npath = "m.tflite"\nedgetpu_device = "usb"\n',
            "model.edgetpu_device: only meaningful with model.delegate = 'edgetpu'",
        ),
        ("[preprocess]\nstd = [1, 0, 2]\n", "preprocess.std: every value must be > 0"),
        ("[preprocess]\nmean = [1, 2]\n", "preprocess.mean: must hold 1 value or 3 (one per channel), got 2"),
        ('[preprocess]\ncolor = "gray"\nmean = [1, 2, 3]\n', "preprocess: color = 'gray' takes one mean and one std"),
        ("[preprocess]\nscale = -1\n", "preprocess.scale: must be greater than 0, got -1"),
        ("[preprocess]\nscale = nan\n", "preprocess.scale: must be greater than 0, got nan"),
        ('[[preprocess.features]]\nname = "t"\nstd = 0\n', "preprocess.features.0.std: must be greater than 0, got 0"),
        (
            '[[preprocess.features]]\nname = "t"\nmin = 5\nmax = 1\n',
            "preprocess.features.0: min (5.0) must be less than max (1.0)",
        ),
        (
            '[[preprocess.features]]\nname = "t"\n[[preprocess.features]]\nname = "t"\n',
            "preprocess.features: feature names must be unique, repeated: t",
        ),
        ('[[preprocess.features]]\nname = "t"\nimpute = "median"\n', "preprocess.features.0.impute"),
        ("[postprocess]\ntop_k = 0\n", "postprocess.top_k: must be greater than or equal to 1, got 0"),
        ("[postprocess]\nthreshold = 1.5\n", "postprocess.threshold: must be less than or equal to 1, got 1.5"),
        (
            '[postprocess]\ninclude_labels = ["a"]\nexclude_labels = ["a"]\n',
            "postprocess: labels both included and excluded: a",
        ),
        ("[remote]\nenabled = true\n", "remote.hmac_key_file: required when remote.enabled = true"),
        ('[remote]\nallowed = ["mqtt.host"]\n', "remote.allowed: may not include the broker link or remote.* itself"),
        ('[service]\nlog_level = "loud"\n', "service.log_level: must be 'debug', 'info', 'warning' or 'error'"),
        ("[service]\nstats_interval_s = 0\n", "service.stats_interval_s: must be greater than or equal to 1, got 0"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, expected: str) -> None:
    base = MINIMAL if "[model]" not in text else ""
    lines = problems(tmp_path, base + text)
    assert any(line.startswith(expected) for line in lines), lines
    assert all("\n" not in line for line in lines)


def test_missing_model_section_is_named(tmp_path: Path) -> None:
    assert problems(tmp_path, "[mqtt]\nport = 1883\n") == ["model: required"]


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    lines = problems(tmp_path, MINIMAL + "[mqtt]\nport = 0\nkeepalive = 1\nfoo = 2\n")
    assert len(lines) == 3
    assert {line.split(":")[0] for line in lines} == {"mqtt.port", "mqtt.keepalive", "mqtt.foo"}


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    lines = problems(tmp_path, "[model\npath = 1\n")
    assert len(lines) == 1 and "invalid TOML" in lines[0] and "line 1" in lines[0]


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_protocol_number_is_accepted(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + "[mqtt]\nprotocol = 5\n")).mqtt.protocol == "5"
    assert load_config(write(tmp_path, MINIMAL + '[mqtt]\nprotocol = "3.1.1"\n')).mqtt.protocol == "3.1.1"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
def test_cli_validate_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + "[mqtt]\nport = 70000\nbogus = true\n")
    r = run_cli("config", "validate", str(p))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "mqtt.port: must be less than or equal to 65535, got 70000",
        "mqtt.bogus: unknown key",
    ]


@pytest.mark.e2e
def test_cli_validate_ok_and_run_with_invalid_config(tmp_path: Path) -> None:
    good = write(tmp_path, MINIMAL)
    r = run_cli("config", "validate", str(good))
    assert r.returncode == 0 and "valid" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = -1\n")
    for cmd in (("run", "-c", str(bad)), ("check", "-c", str(bad))):
        r = run_cli(*cmd)
        assert r.returncode == 2, cmd
        assert "Traceback" not in r.stderr
        assert "mqtt.port: must be greater than or equal to 1, got -1" in r.stderr
        assert "model: required" in r.stderr


@pytest.mark.e2e
def test_config_path_from_environment(tmp_path: Path) -> None:
    bad = write(tmp_path, "[mqtt]\nport = -1\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"EDGE_AGENT_CONFIG": str(bad), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2 and "mqtt.port" in r.stderr


def test_password_without_tls_is_refused_unless_allowed(tmp_path: Path) -> None:
    base = MINIMAL + '[mqtt]\nusername = "edge"\npassword_file = "pw"\n'
    lines = problems(tmp_path, base)
    assert any(ln.startswith("mqtt.password_file: a password would cross the network in clear text") for ln in lines)
    assert load_config(write(tmp_path, base + "allow_plaintext_password = true\n")).mqtt.username == "edge"
