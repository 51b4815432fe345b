"""Hostile and unlucky config files (issue 16, items 3, 11, 12b): every one is refused by
`config validate` and `run` with exit 2 and one line naming what is wrong, never a traceback, a
hang or unbounded memory; the files the agent keeps or reads beside its config (secrets, the
applied-update record, the discovery state, update files) are read within the same bounds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import Collector, run_agent, write_config

from edge_agent.bounded import MAX_CONFIG_BYTES
from edge_agent.broker import LocalBroker
from edge_agent.config import load_config
from edge_agent.config._types import MAX_DEPTH
from edge_agent.errors import ConfigError
from edge_agent.ha_discovery import Discovery
from edge_agent.mqtt.topics import Topics
from edge_agent.push import PushError, load_settings, load_update_file
from edge_agent.remote.store import AppliedStore, state_dir_problem
from edge_agent.secrets import read_secret

REPO = Path(__file__).resolve().parents[1]
MINIMAL = '[model]\npath = "m.tflite"\n'
CLI_TIMEOUT_S = 60  # a hang (a FIFO read) fails the test instead of blocking the suite


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env
    )


def assert_one_line_exit_2(r: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and expected in lines[0], lines[:5]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# text of a config file → the one line it must get
BAD_CONFIGS: list[tuple[str, str, str]] = [
    ("empty host", MINIMAL + '[mqtt]\nhost = ""\n', "mqtt.host: must not be empty"),
    ("host with a space", MINIMAL + '[mqtt]\nhost = "broker .lan"\n', "mqtt.host: must be a host name or an IP"),
    ("NUL in model.path", '[model]\npath = "m\\u0000.tflite"\n', "model.path: holds a NUL byte at position 1"),
    ("NUL in ~ path", '[model]\npath = "~\\u0000/m.tflite"\n', "model.path: holds a NUL byte"),
    ("NUL in a label", MINIMAL + '[postprocess]\ninclude_labels = ["a\\u0000"]\n', "postprocess.include_labels.0"),
    ("newline in a column", MINIMAL + '[source]\ncolumns = ["a\\nb"]\n', "a control character ('\\n')"),
    ("NUL in a key", MINIMAL + '[postprocess.units]\n"a\\u0000" = "kg"\n', "a key holds a control character"),
    ("empty state_dir", MINIMAL + '[device]\nstate_dir = ""\n', "device.state_dir: must not be empty"),
    ("empty labels path", '[model]\npath = "m.tflite"\nlabels = ""\n', "model.labels: must not be empty"),
    ("empty TLS CA", MINIMAL + '[mqtt.tls]\nca = ""\n', "mqtt.tls.ca: must not be empty"),
    ("path beyond PATH_MAX", f'[model]\npath = "{"a" * 5000}"\n', "more than the 4096 a path may have"),
    ("array nested 500 deep", MINIMAL + f"[source]\ncolumns = {nested(500)}\n", "nested too deeply to be parsed"),
    ("array nested 20 deep", MINIMAL + f"[source]\ncolumns = {nested(20)}\n", f"nested more than {MAX_DEPTH} levels"),
    ("table nested 20 deep", MINIMAL + "[postprocess]\nunits = " + "{a = " * 20 + "1" + "}" * 20 + "\n", "nested"),
    ("integer of 5000 digits", MINIMAL + f"[source]\nseed = {'9' * 5000}\n", "invalid TOML"),
    (
        "1000 groups",
        MINIMAL + "[device]\ngroups = [" + ", ".join(f'"g{i}"' for i in range(1000)) + "]\n",
        "at most 100",
    ),
    ("negative seed", MINIMAL + "[source]\nseed = -1\n", "source.seed: must be greater than or equal to 0"),
    ("huge max_frames", MINIMAL + f"[source]\nmax_frames = {2**70}\n", "source.max_frames: must be less than"),
    ("infinite max_abs_z", MINIMAL + "[guard]\nmax_abs_z = inf\n", "guard.max_abs_z: must be less than"),
    (
        "non-finite impute",
        MINIMAL + '[preprocess]\n[[preprocess.features]]\nname = "a"\nimpute = nan\n',
        "a number in raw units must be finite",
    ),
    ("blank feature name", MINIMAL + '[preprocess]\n[[preprocess.features]]\nname = " "\n', "must not be blank"),
    ("non-ASCII fourcc", MINIMAL + '[source]\nopencv_fourcc = "MJ\\u00e9G"\n', "source.opencv_fourcc"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
@pytest.mark.e2e
def test_bad_config_strings_and_nesting_are_one_line_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert len(exc.value.problems) == 1 and expected in exc.value.problems[0], exc.value.problems
    assert_one_line_exit_2(cli("config", "validate", str(p)), expected)


@pytest.mark.parametrize(
    "text",
    [
        MINIMAL + '[mqtt]\nhost = ""\n',
        '[model]\npath = "m\\u0000.tflite"\n',
        MINIMAL + f"[source]\ncolumns = {nested(500)}\n",
    ],
    ids=["empty host", "NUL in a path", "nested 500 deep"],
)
@pytest.mark.e2e
def test_run_refuses_them_before_starting(tmp_path: Path, text: str) -> None:
    """They passed `config validate` and crashed `run` with a traceback: now both stop at the config."""
    p = tmp_path / "agent.toml"
    p.write_text(text)
    r = cli("run", "-c", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_good_strings_still_pass(tmp_path: Path) -> None:
    """What real configs hold stays valid: a tab delimiter, IPv6 and container host names, labels
    with spaces and non-ASCII letters."""
    for host in ("localhost", "192.168.1.10", "::1", "fe80::1%eth0", "mqtt_broker.lan", "[::1]"):
        p = tmp_path / "agent.toml"
        p.write_text(
            MINIMAL + f'[mqtt]\nhost = "{host}"\n[source]\nkind = "csv"\npath = "r.csv"\ndelimiter = "\\t"\n'
            '[postprocess]\ninclude_labels = ["Straße", "traffic light"]\n'
        )
        cfg = load_config(p)
        assert cfg.mqtt.host == host and cfg.source.delimiter == "\t"


def unending_paths(tmp_path: Path) -> dict[str, Path]:
    """Paths that are not regular files, or are too large, each named `*.toml` (a symlink for the
    device): each must be refused without reading it."""
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would block forever
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    return {
        "is a character device": zero,
        "is a FIFO (named pipe)": fifo,
        "is a directory": folder,
        "more than the": big,
    }


@pytest.mark.e2e
def test_a_config_path_that_never_ends_is_one_line_exit_2(tmp_path: Path) -> None:
    """`config validate /dev/zero` raised MemoryError; a FIFO hung."""
    for expected, path in {**unending_paths(tmp_path), "is a character device": Path("/dev/zero")}.items():
        assert_one_line_exit_2(cli("config", "validate", str(path)), expected)
        assert_one_line_exit_2(cli("run", "-c", str(path)), expected)


def test_secret_update_and_push_config_files_are_read_within_bounds(tmp_path: Path) -> None:
    for expected, path in unending_paths(tmp_path).items():
        with pytest.raises(ConfigError) as secret:
            read_secret(str(path))
        as_json = path.with_suffix(".json")
        as_json.symlink_to(path)
        with pytest.raises(PushError) as update:
            load_update_file(str(as_json))
        with pytest.raises(PushError) as settings:
            load_settings(str(path))
        for err in (str(secret.value), str(update.value), str(settings.value)):
            assert expected in err and "\n" not in err, err


def test_the_agents_own_records_are_read_within_bounds(tmp_path: Path) -> None:
    """state_dir/applied.json and state_dir/ha_discovery.json as FIFOs: a one-line problem, no hang."""
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "applied.json")
    applied, problem = AppliedStore(state).load()
    assert applied.version == 0 and problem is not None and "FIFO" in problem and "\n" not in problem
    (state / "applied.json").unlink()
    (state / "applied.json").write_text('{"version": ' + "9" * 5000 + ', "overlay": {}}')
    applied, problem = AppliedStore(state).load()
    assert applied.version == 0 and problem is not None and "5000 digits" in problem
    os.mkfifo(state / "ha_discovery.json")
    p = tmp_path / "ha.toml"
    p.write_text(MINIMAL + "[homeassistant]\nenabled = true\n")
    ha = load_config(p).homeassistant
    d = Discovery(ha, Topics("edge", "d"), state, version="0", publish=lambda *a, **k: None)
    assert d.remembered == frozenset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"postprocess": {"top_k": ' + "9" * 5000 + "}}", "holds a number of 5000 digits"),
        ('{"postprocess": {"threshold": 1e999}}', "out of a double's range"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"postprocess": {"include_labels": ["a\\u0000"]}}', "holds a NUL byte"),
    ],
    ids=["5000 digits", "1e999", "100000 brackets", "NUL"],
)
def test_a_hostile_update_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "update.json"
    f.write_text(text)
    with pytest.raises(PushError) as exc:
        load_update_file(str(f))
    assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)[:300]


def test_state_dir_that_is_no_folder_is_said_at_validate_time_never(tmp_path: Path) -> None:
    """Validation reads no file: /dev/null as state_dir is a valid config; the agent says it at start."""
    p = tmp_path / "agent.toml"
    p.write_text(MINIMAL + '[device]\nstate_dir = "/dev/null"\n')
    assert load_config(p).device.state_dir == "/dev/null"
    problem = state_dir_problem("/dev/null")
    assert problem is not None and "is a character device, not a directory" in problem
    assert state_dir_problem(tmp_path) is None and state_dir_problem(tmp_path / "not-yet") is None


def test_state_dir_dev_null_is_a_storage_error_not_a_rejected_update(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """`state_dir = "/dev/null"` raised config_rejected though no update was sent."""
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "synthetic", "width": 28, "height": 28, "max_frames": 5, "exit_when_done": True},
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
        },
    )
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "state"), "/dev/null"))
    r = run_agent(cfg)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "storage_error", 15, "a storage_error")
    events = col.on("events")
    assert not [e for e in events if e["kind"] == "config_rejected"], events
    said = [e["message"] for e in events if e["kind"] == "storage_error"]
    assert any("device.state_dir /dev/null is a character device, not a directory" in m for m in said), said
    assert len(col.on("results")) == 5  # and it ran: the results went out from memory
