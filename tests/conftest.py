"""Shared fixtures: the Coral test data, the bundled models, a real mosquitto broker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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
