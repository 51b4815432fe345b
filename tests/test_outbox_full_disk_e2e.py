"""The full-disk case of issue 16 end to end: the real agent, a real mosquitto, the state_dir on
a 300 KB tmpfs with persist_results and a 0.1 MB outbox. The disk fills mid-run, then the broker
goes away for a while and comes back while the disk is still full, then the disk gets room.

What a consumer relies on: every event raised arrives (in seq order of first arrival, no gap),
results missing only as counted drops, the outbox drains while the disk is still full (sending
never stops), and once the disk has room the outbox is back on it with nothing left behind.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import AgentProcess, Broker, write_config
from test_outbox_e2e import (
    RECONNECT_TIMEOUT_S,
    Recorder,
    assert_in_order,
    digits,
    fill,
    first_arrivals,
    gaps,
    mixed_folder,
    queued_events,
    small_tmpfs,
    stop_agent,
)

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)

OUTAGE_S = 12.0  # the agent's reconnect attempts come 1, 3, 7, 15 s after the link dropped
RSS_GROWTH_BOUND_MB = 40.0  # the memory queue holds at most outbox_max_mb (0.1 MB) of messages


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.stop()


class RssSampler:
    """The agent's resident set size, sampled every 0.2 s from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) / 1024)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
def test_a_disk_full_mid_run_then_a_broker_outage_loses_no_event(
    tmp_path: Path, broker: Broker, device: str, bundled: Path
) -> None:
    started = time.monotonic()
    folder = mixed_folder(bundled, tmp_path / "frames")  # a result per frame, a source_error every 5th
    broker.start()
    rec = Recorder(broker.port, device)
    try:
        with small_tmpfs(tmp_path / "state", "300k") as state:
            # other files on the card: removed at the end with the one that fills it, so that the
            # outbox then has room for a WAL's worth of messages (0.1 MB: 25 pages)
            ballast = state / "ballast"
            ballast.write_bytes(b"\0" * 120 * 1024)
            cfg = write_config(
                tmp_path,
                device=device,
                port=broker.port,
                sections=digits(bundled, folder, fps=20),
                mqtt_extra={"outbox_max_mb": 0.1, "persist_results": True, "results_qos": 1},
            )
            with AgentProcess(cfg) as agent:
                rss = RssSampler(agent.proc.pid)
                try:
                    rec.wait_until(lambda: sum(m.leaf == "events" for m in rec.messages) >= 5, 30, "events flowing")
                    baseline_mb = rss.samples[-1] if rss.samples else None
                    # 1. the disk fills (whatever statement of the outbox hits it first)
                    filler = fill(state)
                    rec.wait_for(  # (it may have filled already)
                        lambda m: m.leaf == "events" and m.payload["kind"] == "storage_error", 20, "storage_error"
                    )
                    # 2. the broker goes away, the disk still full: everything waits in memory (and the file)
                    subscribed = rec.subscriptions
                    broker.stop()
                    time.sleep(OUTAGE_S)
                    assert agent.running(), agent.output[-4000:]
                    down_mark = rec.mark()
                    agent.proc.send_signal(signal.SIGSTOP)  # the recorder first (see test_outbox_e2e)
                    try:
                        broker.start()
                        rec.wait_subscribed(subscribed)
                    finally:
                        agent.proc.send_signal(signal.SIGCONT)
                    online = rec.status(None, RECONNECT_TIMEOUT_S, start=down_mark)
                    assert not online.retain, "the agent reconnected before the recorder"
                    # 3. the backlog drains though the disk is still full: sending never stops
                    drained = rec.stats(
                        lambda s: s["broker_connected"] and s["outbox"]["depth"] <= 5 and not s["outbox"]["on_disk"],
                        30,
                        "the outbox drained with the disk still full",
                        start=down_mark,
                    )
                    # 4. the disk has room again: the outbox goes back to it
                    filler.unlink()
                    ballast.unlink()
                    room_mark = rec.mark()
                    back = rec.wait_for(
                        lambda m: m.leaf == "events" and m.payload["kind"] == "storage_recovered",
                        30,
                        "storage_recovered",
                        start=room_mark,
                    )
                    rec.stats(
                        lambda s: s["outbox"]["on_disk"],
                        10,
                        "stats with the outbox on disk",
                        start=back_index(rec, back),
                    )
                    stop_agent(agent, rec, rec.mark())
                finally:
                    rss.stop()
            left = queued_events(state / "outbox.sqlite")
    finally:
        rec.close()

    msgs = rec.snapshot()
    events = first_arrivals(msgs, "events")
    seqs = [e["seq"] for e, _ in events]
    assert_in_order(seqs, "events")
    assert seqs[0] == 1 and not gaps(seqs), f"missing event seqs: {gaps(seqs)[:20]}"
    assert left == [], f"events left behind in the outbox: {[e['seq'] for e in left]}"
    last_stats = [m.payload for m in msgs if m.leaf == "stats"][-1]
    faults = last_stats["faults"]
    kinds = [e["kind"] for e, _ in events]
    # every event raised was delivered: each fault counted in the stats arrived as an event
    assert kinds.count("source_error") == faults["source_error"], (kinds.count("source_error"), faults)
    assert "outbox_overflow" not in kinds and not faults.get("outbox_dropped_events"), faults
    results = first_arrivals(msgs, "results")
    res_seqs = [r["seq"] for r, _ in results]
    assert_in_order(res_seqs, "results")
    lost_results = gaps(res_seqs)
    # results may be dropped when over the bound, and then they are counted
    assert len(lost_results) == faults.get("outbox_dropped_results", 0), (len(lost_results), faults)
    peak = max(rss.samples)
    growth = peak - baseline_mb if baseline_mb is not None else 0.0
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS grew by {growth:.1f} MB (peak {peak:.1f} MB)"
    print(
        f"\n300 KB tmpfs, 0.1 MB outbox, full disk then a {OUTAGE_S:g} s outage: {len(seqs)} events raised and "
        f"delivered ({kinds.count('storage_error')} storage_error, {kinds.count('storage_recovered')} "
        f"storage_recovered); {len(res_seqs)} results delivered, {len(lost_results)} dropped and counted; "
        f"drained {drained.at - online.at:.1f} s after reconnecting with the disk still full; RSS peak {peak:.0f} MB "
        f"(+{growth:.1f} MB); {time.monotonic() - started:.0f} s"
    )


def back_index(rec: Recorder, msg: object) -> int:
    """The index of a recorded message (to look for what came after it)."""
    return rec.snapshot().index(msg)  # type: ignore[arg-type]
