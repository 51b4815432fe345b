"""The Prometheus endpoint: the real agent on a real mosquitto, /metrics scraped over HTTP on
loopback, parsed with prometheus_client's own parser and compared with the stats topic."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Collector, write_config
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.broker import LocalBroker, free_port
from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.metrics import StatsCollector

DIGITS_PREPROCESS = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
WAIT_S = 30.0


def agent_config(tmp_path: Path, bundled: Path, device: str, port: int, metrics: dict[str, Any]) -> Path:
    return write_config(
        tmp_path,
        device=device,
        port=port,
        sections={
            "source": {"kind": "images", "path": str(bundled / "digits_frames"), "loop": True, "fps": 20},
            "model": {
                "path": str(bundled / "digits_float.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": DIGITS_PREPROCESS,
            "service": {"stats_interval_s": 1, "watchdog": False},
            "metrics": metrics,
        },
    )


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, as Prometheus would store them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    types = {}
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    # counters are counters, the rest gauges (Prometheus' rate() relies on it)
    assert types["edge_agent_frames"] == types["edge_agent_results"] == types["edge_agent_faults"] == "counter"
    assert types["edge_agent_fps"] == types["edge_agent_stage_latency_seconds"] == "gauge"
    return out


def test_metrics_match_the_stats_topic(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    port = free_port()
    cfg = agent_config(tmp_path, bundled, device, mosquitto.port, {"enabled": True, "port": port})
    with AgentProcess(cfg) as agent:
        col.wait_for(
            lambda m: (
                m.leaf == "stats" and not m.retain and m.payload["results"] > 0 and "invoke" in m.payload["stages"]
            ),
            WAIT_S,
            "stats after results",
        )
        got = scrape(port)
        ts = got[("edge_agent_stats_timestamp_seconds", ())]
        # the snapshot the endpoint serves is the one the stats topic carried
        stats = col.wait_for(lambda m: m.leaf == "stats" and m.payload["ts"] == ts, 5, f"stats with ts {ts}").payload
        info = [k for k in got if k[0] == "edge_agent_info"]
        assert info == [("edge_agent_info", (("device", device), ("version", agent_version())))]
        # and the counters move: a later scrape, after the next stats, counts more frames
        col.wait_for(lambda m: m.leaf == "stats" and m.payload["ts"] > ts, WAIT_S, "the next stats")
        later = scrape(port)
        assert later[("edge_agent_frames_total", ())] > got[("edge_agent_frames_total", ())]
        assert later[("edge_agent_results_total", ())] > got[("edge_agent_results_total", ())]
        agent.proc.terminate()
        agent.wait(20)

    assert got[("edge_agent_frames_total", ())] == stats["frames"] > 0
    assert got[("edge_agent_results_total", ())] == stats["results"] > 0
    assert got[("edge_agent_dropped_frames_total", ())] == stats["dropped_frames"]
    assert got[("edge_agent_fps", ())] == stats["fps"]
    assert got[("edge_agent_uptime_seconds", ())] == stats["uptime_s"]
    assert stats["stages"], stats
    for stage, q in stats["stages"].items():
        assert got[("edge_agent_stage_latency_seconds", (("quantile", "0.5"), ("stage", stage)))] == pytest.approx(
            q["p50_ms"] / 1000
        )
        assert got[("edge_agent_stage_latency_seconds", (("quantile", "0.99"), ("stage", stage)))] == pytest.approx(
            q["p99_ms"] / 1000
        )
    faults = {dict(k[1])["kind"]: v for k, v in got.items() if k[0] == "edge_agent_faults_total"}
    assert faults == stats["faults"]
    ob = stats["outbox"]
    assert got[("edge_agent_outbox_messages", ())] == ob["depth"]
    assert got[("edge_agent_outbox_bytes", ())] == ob["bytes"]
    assert got[("edge_agent_outbox_in_flight_messages", ())] == ob["in_flight"]
    assert got[("edge_agent_outbox_on_disk", ())] == int(ob["on_disk"])
    assert (("edge_agent_outbox_oldest_age_seconds", ()) in got) == (ob["oldest_age_s"] is not None)
    assert got[("edge_agent_resident_memory_bytes", ())] == pytest.approx(stats["rss_mb"] * 1e6)
    if stats["cpu_temp_c"] is None:
        assert ("edge_agent_cpu_temperature_celsius", ()) not in got
    else:
        assert got[("edge_agent_cpu_temperature_celsius", ())] == stats["cpu_temp_c"]
    assert got[("edge_agent_broker_connected", ())] == int(stats["broker_connected"]) == 1
    states = {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "edge_agent_state"}
    assert states == {"online": 1.0, "degraded": 0.0, "offline": 0.0} and stats["state"] == "online"


def agent_version() -> str:
    from edge_agent import __version__  # noqa: PLC0415

    return __version__


def test_port_in_use_is_one_line_and_the_agent_goes_on(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = agent_config(tmp_path, bundled, device, mosquitto.port, {"enabled": True, "port": port})
        with AgentProcess(cfg) as agent:
            ev = col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "metrics_error", WAIT_S).payload
            col.wait_for(lambda m: m.leaf == "results", WAIT_S, "results despite the failed endpoint")
            assert agent.running()
            agent.proc.terminate()
            assert agent.wait(20) == 0
            log = agent.log_path.read_text()
    msg = ev["message"]
    assert "\n" not in msg
    assert msg.startswith(f"metrics: cannot serve /metrics on 127.0.0.1:{port}: Address already in use"), msg
    assert msg.endswith("going on without /metrics")
    assert ev["severity"] == "error" and ev["detail"] == {"bind": "127.0.0.1", "port": port}
    assert "Traceback" not in log
    assert col.wait_status("online", 1)


def test_collector_before_the_first_snapshot_says_only_who_it_is() -> None:
    c = StatsCollector(device="d1", version="9.9")
    families = list(c.collect())
    assert [f.name for f in families] == ["edge_agent"]
    assert families[0].samples[0].labels == {"device": "d1", "version": "9.9"}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"bind": "localhost"}, "metrics.bind: must be an IP address such as 127.0.0.1"),
        ({"port": 0}, "metrics.port: must be greater than or equal to 1, got 0"),
        ({"enable": True}, "metrics.enable: unknown key"),
        ({"discovery_prefix": "home/#"}, "homeassistant.discovery_prefix: must be a topic of segments"),
        ({"name": "  "}, "homeassistant.name: must not be blank"),
    ],
)
def test_bad_settings_are_one_line_errors(section: dict[str, Any], expected: str) -> None:
    which = "homeassistant" if set(section) & {"discovery_prefix", "name"} else "metrics"
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"path": "m.tflite"}, which: section})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(expected), err.value.problems


def test_defaults_are_off_and_local() -> None:
    cfg = parse_config({"model": {"path": "m.tflite"}})
    assert (cfg.metrics.enabled, cfg.metrics.bind, cfg.metrics.port) == (False, "127.0.0.1", 9808)
    assert (cfg.homeassistant.enabled, cfg.homeassistant.discovery_prefix) == (False, "homeassistant")
