"""`edge-agent config push` against real agents on the real broker.

One fleet for the module (agents start in parallel): three devices in group `g1` and one
alone, each with its own state_dir, all sharing one update key. The tests run in file order
on it: the group push first (every member at version 0), then the single-device ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import REPO, AgentProcess, Collector, retained, subprocess_env, write_config

from edge_agent.broker import LocalBroker, free_port

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)

KEY = "fleet-update-key-0123456789abcdef\n"
GROUP = "g1"
DIGITS_PREPROCESS = {
    "resize": "stretch",
    "interpolation": "linear",
    "color": "rgb",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


@dataclass
class Fleet:
    port: int
    members: list[str]  # in GROUP
    alone: str  # in no group
    configs: dict[str, Path]
    key_file: Path
    agents: dict[str, AgentProcess]
    work: Path


def _agent_config(tmp: Path, device: str, port: int, key_file: Path, groups: list[str]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    return write_config(
        tmp,
        device=device,
        port=port,
        sections={
            "device": {"id": device, "state_dir": str(tmp / "state"), "groups": groups},
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 10},
            "model": {
                "path": str(BUNDLED / "digits_uint8.tflite"),
                "labels": str(BUNDLED / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": DIGITS_PREPROCESS,
            "postprocess": {"top_k": 3},
            "remote": {"enabled": True, "hmac_key_file": str(key_file)},
        },
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, mosquitto: LocalBroker) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("push")
    key_file = work / "update.key"
    key_file.write_text(KEY)
    run = uuid.uuid4().hex[:6]
    members = [f"t-push-{run}-{i}" for i in range(3)]
    alone = f"t-push-{run}-alone"
    configs = {d: _agent_config(work / d, d, mosquitto.port, key_file, [GROUP]) for d in members}
    configs[alone] = _agent_config(work / alone, alone, mosquitto.port, key_file, [])
    states = Collector(mosquitto.port, "edge/+/config/state")
    agents = {d: AgentProcess(c) for d, c in configs.items()}
    try:
        # config/state is published after the agent subscribed to its config topics
        for d in configs:
            states.wait_for(lambda m, d=d: m.topic == f"edge/{d}/config/state", 30, f"{d}'s config/state")
        yield Fleet(mosquitto.port, members, alone, configs, key_file, agents, work)
    finally:
        states.close()
        for a in agents.values():
            a.close()
    for d, a in agents.items():
        out = a.log_path.read_text(errors="replace")
        assert "Traceback" not in out, f"{d}:\n{out[-4000:]}"


def push(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "config", "push", *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rows(out: str) -> dict[str, list[str]]:
    """The answer table: device -> [applied, version, errors/notes]."""
    table: dict[str, list[str]] = {}
    for line in out.splitlines()[2:]:
        parts = line.split(None, 3)
        if len(parts) >= 3:
            table[parts[0]] = parts[1:]
    return table


def test_group_push_collects_every_answer_and_the_agents_apply_it(fleet: Fleet) -> None:
    update = fleet.work / "top1.json"
    update.write_text(json.dumps({"postprocess": {"top_k": 1}}))
    results = Collector(fleet.port, "edge/+/results")
    try:
        cfg = str(fleet.configs[fleet.members[0]])
        p = push("--group", GROUP, "--expect", "3", "-c", cfg, str(update))
        assert p.returncode == 0, p.stdout + p.stderr
        table = rows(p.stdout)
        assert set(table) == set(fleet.members), p.stdout
        # every member was at version 0: the version picked is 1
        assert all(r[:2] == ["yes", "1"] for r in table.values()), p.stdout
        assert "version 1 to edge/group/g1/config/set: 3 answer(s), 3 applied" in p.stdout

        mark = results.mark()
        for d in fleet.members:
            r = results.wait_for(
                lambda m, d=d: m.topic == f"edge/{d}/results" and len(m.payload["top"]) == 1,
                15,
                f"a result of {d} with top_k 1",
                start=mark,
            )
            assert len(r.payload["top"]) == 1
        # the device outside the group still answers with three
        r = results.wait_for(lambda m: m.topic == f"edge/{fleet.alone}/results", 15, "the lone device", start=mark)
        assert len(r.payload["top"]) == 3
        for d in fleet.members:
            state = retained(fleet.port, f"edge/{d}/config/state")
            assert state["version"] == 1 and state["config"]["postprocess"]["top_k"] == 1, state

        # the same document again: answered applied, "already applied", nothing changes; without
        # --expect, the push waits for the members named by the retained states
        p = push("--group", GROUP, "--version", "1", "-c", cfg, str(update))
        assert p.returncode == 0, p.stdout + p.stderr
        table = rows(p.stdout)
        assert set(table) == set(fleet.members), p.stdout
        assert all(r == ["yes", "1", "already applied"] for r in table.values()), p.stdout
        assert "3 answer(s), 3 applied, 3 expected" in p.stdout

        # more answers expected than there are members: exit 3, listing those that came
        p = push("--group", GROUP, "--expect", "4", "--timeout", "1.5", "--version", "1", "-c", cfg, str(update))
        assert p.returncode == 3, p.stdout + p.stderr
        assert set(rows(p.stdout)) == set(fleet.members), p.stdout
        assert "3 answer(s), 3 applied, 4 expected" in p.stdout
    finally:
        results.close()


def test_wrong_key_is_rejected_and_printed(fleet: Fleet) -> None:
    wrong = fleet.work / "wrong.key"
    wrong.write_text("not-the-fleet-key-but-long-enough\n")
    update = fleet.work / "threshold.toml"
    update.write_text("[postprocess]\nthreshold = 0.5\n")
    dev = fleet.members[1]
    p = push("--device", dev, "--key", str(wrong), "--port", str(fleet.port), "--host", "127.0.0.1", str(update))
    assert p.returncode == 1, p.stdout + p.stderr
    row = rows(p.stdout)[dev]
    assert row[0] == "no" and row[2].startswith("sig: signature does not match"), p.stdout
    assert retained(fleet.port, f"edge/{dev}/config/state")["config"]["postprocess"]["threshold"] == 0.0


def test_a_device_that_does_not_exist_gets_no_answer(fleet: Fleet) -> None:
    update = fleet.work / "top2.json"
    update.write_text('{"postprocess": {"top_k": 2}}')
    t0 = time.monotonic()
    p = push("--device", "t-push-nobody", "--timeout", "2", "-c", str(fleet.configs[fleet.alone]), str(update))
    elapsed = time.monotonic() - t0
    assert p.returncode == 3, p.stdout + p.stderr
    assert rows(p.stdout)["t-push-nobody"] == ["-", "-", "no answer within 2 s"], p.stdout
    assert "version 1 to edge/t-push-nobody/config/set" in p.stdout  # no retained state: version 1
    assert elapsed < 2 + 1.5 + 8, elapsed  # timeout, the wait for a retained state, the interpreter's start


def test_version_follows_the_retained_config_state(fleet: Fleet) -> None:
    cfg = str(fleet.configs[fleet.alone])
    versions = []
    for top_k in (2, 1):
        update = fleet.work / f"alone-{top_k}.toml"
        update.write_text(f"[postprocess]\ntop_k = {top_k}\n")
        p = push("--device", fleet.alone, "-c", cfg, str(update))
        assert p.returncode == 0, p.stdout + p.stderr
        row = rows(p.stdout)[fleet.alone]
        assert row[0] == "yes", p.stdout
        versions.append(int(row[1]))
    assert versions == [1, 2]
    assert retained(fleet.port, f"edge/{fleet.alone}/config/state")["version"] == 2


def test_no_broker_is_one_line_and_exit_3(tmp_path: Path) -> None:
    update = tmp_path / "u.json"
    update.write_text("{}")
    key = tmp_path / "k"
    key.write_text(KEY)
    p = push("--device", "x", "--key", str(key), "--host", "127.0.0.1", "--port", str(free_port()), str(update))
    assert p.returncode == 3, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0] and "nothing was sent" in lines[0], p.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "[postprocess\ntop_k = 1\n", "invalid TOML"),
        ("bad.json", '{"postprocess": ', "invalid JSON"),
        ("nan.json", '{"postprocess": {"threshold": NaN}}', "invalid JSON"),
        ("list.json", "[1, 2]", "must hold an object"),
        ("update.yaml", "postprocess: {}", "must end in .toml or .json"),
    ],
)
def test_an_unreadable_update_file_is_one_line_and_exit_2(tmp_path: Path, name: str, text: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    key = tmp_path / "k"
    key.write_text(KEY)
    # port 1: nothing is listening, and nothing is tried: the file is read first
    p = push("--device", "x", "--key", str(key), "--port", "1", str(f))
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in p.stderr, p.stderr
