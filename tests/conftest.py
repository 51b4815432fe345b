"""Shared fixtures: the Coral test data, the bundled models, a real mosquitto broker.

The `e2e` marker: a test that starts a broker or an agent process (`python -m edge_agent ...`).
A test using a broker fixture is marked here; a module whose tests start agents or brokers of
their own says `pytestmark = pytest.mark.e2e`. `scripts/test --fast` leaves e2e tests out, so
a test that starts one of those processes unmarked fails (see `_e2e_marked`): the fast lane
stays fast and the marker stays true.
"""

from __future__ import annotations

import multiprocessing.util
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from mqtt_helpers import Collector, device_id

from edge_agent.broker import LocalBroker, free_port, start_mosquitto

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "edge_agent" / "bundled"
TESTDATA = REPO.parent / "shared" / "testdata"
CORAL = TESTDATA / "coral"

# The interpreter the runtime tests ask for; CI runs the suite a second time with
# tflite-runtime forced (in an environment with NumPy < 2).
INTERPRETER = os.environ.get("EDGE_AGENT_TEST_INTERPRETER", "auto")

# fixtures that start a broker (those depending on one, like `col`, are covered through it)
BROKER_FIXTURES = frozenset({"mosquitto", "amqtt_broker", "secure"})
_started: list[list[str]] = []  # the command lines of the processes the running test started


def _record_process(event: str, args: tuple[object, ...]) -> None:
    if event == "subprocess.Popen":
        argv = args[1]
        if isinstance(argv, str | bytes | os.PathLike):
            _started.append([os.fsdecode(argv)])
        elif isinstance(argv, Sequence):
            _started.append([os.fsdecode(a) if isinstance(a, bytes | os.PathLike) else str(a) for a in argv])


TRIAL_MODULE = "edge_agent.runtime.trial"


def project_process(argv: list[str]) -> bool:
    """Whether a command line is one of the project's processes: a broker, the agent or its CLI,
    Python running the package's code, or one of the repository's scripts."""
    if not argv:
        return False
    exe = Path(argv[0]).name
    if exe in ("mosquitto", "amqtt", "edge-agent"):
        return True
    if exe.startswith("python") or argv[0] == sys.executable:
        if TRIAL_MODULE in argv[1:]:
            # the trial load every model file gets (runtime/trial.py): part of loading a model, like a
            # library call, about 0.15 s once per file and process, not an agent or a broker
            return False
        # -m edge_agent ..., -c "import edge_agent...", or a model worker (multiprocessing's spawn_main:
        # only the project's worker is started that way; the resource tracker is not a worker)
        return any("edge_agent" in a or "multiprocessing.spawn" in a for a in argv[1:])
    return any(a.startswith(str(REPO / "scripts")) for a in argv)


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_record_process)  # audit hooks cannot be removed: it only appends to a list
    # a model worker (runtime/worker.py) is started with multiprocessing's "spawn", which raises
    # no audit event: its launcher is wrapped to record it as well
    launch = multiprocessing.util.spawnv_passfds

    def recorded(path: bytes, args: Sequence[str], passfds: Sequence[int]) -> int:
        _started.append([os.fsdecode(path), *map(str, args[1:])])
        return launch(path, args, passfds)

    multiprocessing.util.spawnv_passfds = recorded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _e2e_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that starts an agent or a broker must be marked e2e (the fast lane runs none)."""
    _started.clear()
    yield
    if request.node.get_closest_marker("e2e") is None:
        project = [" ".join(argv)[:120] for argv in _started if project_process(argv)]
        if project:
            pytest.fail(f"this test started {project[0]!r} but is not marked e2e: add pytest.mark.e2e")


@pytest.fixture(scope="session")
def coral() -> Path:
    if not CORAL.is_dir():
        pytest.skip(f"Coral test data not found at {CORAL} (it lives in shared/testdata beside the repository)")
    return CORAL


@pytest.fixture(scope="session")
def bundled() -> Path:
    return BUNDLED


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[LocalBroker]:
    """A real mosquitto on a free loopback port, for the whole test session."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: scripts/test installs it (apt-get install mosquitto)")
    broker = start_mosquitto(free_port())
    yield broker
    broker.stop()


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """A device id unique to the test, so that tests sharing a broker never see each other."""
    return device_id(request.node.name)


@pytest.fixture
def col(mosquitto: LocalBroker, device: str) -> Iterator[Collector]:
    """Everything the agent publishes on edge/<device>/#, recorded from before it starts."""
    c = Collector(mosquitto.port, f"edge/{device}/#")
    yield c
    c.close()
