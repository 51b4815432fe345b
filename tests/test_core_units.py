"""The agent's decisions, tested in memory with fakes: no broker, no agent process, no model.

Retry schedules, the status, leases, escalation, the model supervisor (load and retry, Edge TPU
loss and return, the guard's reload), the inference lanes, the inbox, the accelerator watch and
background builds."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge_agent.accelerator import AcceleratorWatch
from edge_agent.background import BackgroundBuild
from edge_agent.config import AgentConfig, ModelConfig, parse_config
from edge_agent.core.lane import InlineLane
from edge_agent.core.lease import Lease, LeaseError
from edge_agent.core.models import Built, ModelSupervisor
from edge_agent.core.retry import Backoff, RetrySchedule
from edge_agent.core.status import Status, compute_state
from edge_agent.core.watchdog import Watchdog
from edge_agent.errors import ModelError
from edge_agent.escalation import Escalation
from edge_agent.pipeline import Inference
from edge_agent.postprocess.results import Classification
from edge_agent.service import Notifier
from edge_agent.sources.base import Frame

# ---- retry -------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_bound_and_a_success_starts_over() -> None:
    r = RetrySchedule(Backoff(0.5, 4.0))
    assert r.due(0.0)
    assert [r.failed(10.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert not r.due(13.9) and r.due(14.0)
    r.succeeded()
    assert r.failed(20.0) == 0.5
    r.now()
    assert r.due(0.0)


def test_a_fixed_backoff_and_invalid_ones() -> None:
    r = RetrySchedule(Backoff.fixed(30.0))
    assert [r.failed(0.0) for _ in range(3)] == [30.0, 30.0, 30.0]
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0, 2.0, 0.5)):
        with pytest.raises(ValueError, match="invalid backoff"):
            Backoff(*bad)


# ---- status, leases, escalation, watchdog ----------------------------------------------------


def test_the_status_is_online_only_with_a_model_a_source_and_no_persistent_faults() -> None:
    assert compute_state(model_loaded=True, source_open=True, faulty=False) == "online"
    for m, s, f in ((False, True, False), (True, False, False), (True, True, True)):
        assert compute_state(model_loaded=m, source_open=s, faulty=f) == "degraded"
    published: list[str] = []
    st = Status(published.append)
    assert not st.update("degraded")  # the initial state: nothing to say
    assert st.update("online") and not st.update("online") and st.update("degraded")
    assert published == ["online", "degraded"]


def frame(seq: int = 1) -> Frame:
    return Frame(seq=seq, ts=0.0, mono=0.0, source="t", values=None, pixels=None)


def test_a_lease_is_released_exactly_once() -> None:
    given: list[int] = []
    lease = Lease(frame(7), lambda f: given.append(f.seq))
    with lease:
        pass
    assert given == [7] and lease.released
    with pytest.raises(LeaseError, match="frame 7 from t was released twice"):
        lease.release()
    other = Lease(frame(8), lambda f: given.append(f.seq))
    with other:
        other.release()  # released inside: the context does not release again
    assert given == [7, 8]


def test_escalation_degrades_acts_and_recovers() -> None:
    e = Escalation(degrade_after=2, act_after=4, recover_after=3)
    assert [e.fault() for _ in range(4)] == [None, "degrade", None, "act"]
    assert e.degraded
    assert [e.good() for _ in range(3)] == [None, None, "recover"] and not e.degraded
    e.fault()
    assert e.good() is None and e.faults == 0  # one good frame ends a streak


def test_the_watchdog_pings_only_while_frames_flow_or_idle_by_design() -> None:
    sent: list[str] = []

    class FakeNotifier(Notifier):
        def watchdog(self) -> None:
            sent.append("WATCHDOG=1")

    notifier = FakeNotifier({})
    notifier.watchdog_interval_s = 1.0  # as WATCHDOG_USEC=2000000 for this process gives
    w = Watchdog(notifier)
    assert not w.tick(100.0, fps=None, idle_by_design=False)  # no inference yet, not idle
    assert w.tick(100.0, fps=None, idle_by_design=True)
    w.inferred(100.5)
    assert not w.tick(100.6, fps=None, idle_by_design=False)  # not due yet
    assert w.tick(101.0, fps=None, idle_by_design=False)  # flowing: the last inference is recent
    assert not w.tick(104.0, fps=None, idle_by_design=False)  # 3.5 s without inference: a hang
    assert w.tick(104.0, fps=0.5, idle_by_design=False)  # at 0.5 fps, 6 s between frames is normal
    w.off = True
    assert not w.tick(200.0, fps=None, idle_by_design=True)
    assert len(sent) == 3


# ---- the model supervisor, with fake pipelines ----------------------------------------------


@dataclass
class FakeFile:
    sha256: str = "0" * 64


@dataclass
class FakeBackend:
    name: str = "fake"
    version: str = "1"


@dataclass
class FakeModel:
    name: str
    delegate: str
    file: FakeFile = field(default_factory=FakeFile)
    backend: FakeBackend = field(default_factory=FakeBackend)
    notes: tuple[str, ...] = ()
    threads: int = 1


class FakePipeline:
    def __init__(self, name: str, delegate: str = "cpu") -> None:
        self.model = FakeModel(name, delegate)
        self.warnings: list[str] = []
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


OK = Inference(Classification(()), {"total": 1.0})


class Harness:
    """A ModelSupervisor whose builds are answered by the test, one at a time."""

    def __init__(self, **model: Any) -> None:
        doc = {
            "device": {"id": "d", "state_dir": "/tmp/unused"},
            "source": {"kind": "synthetic"},
            "model": {
                "path": "m.tflite",
                "retry_interval_s": 30,
                "delegate_lost_after": 2,
                "edgetpu_retry_s": 60,
                **model,
            },
        }
        self.cfg: AgentConfig = parse_config(doc)
        self.events: list[tuple[str, str, str]] = []
        self.swaps: list[tuple[str | None, str | None]] = []
        self.settled = 0
        self.asked: list[tuple[str, str]] = []  # (path, delegate) of each build
        self.answers: list[FakePipeline | ModelError] = []
        self.sup = ModelSupervisor(
            self.cfg,
            lambda kind, sev, msg, detail=None: self.events.append((kind, sev, msg)),
            settle=self._settle,
            on_swap=lambda old, new: self.swaps.append((name_of(old), name_of(new))),
            builder=self._build,
        )

    def _settle(self) -> None:
        self.settled += 1

    def _build(self, cfg: AgentConfig, model_cfg: ModelConfig | None, gate: str) -> Built:
        m = model_cfg or cfg.model
        self.asked.append((m.path, m.delegate))
        answer = self.answers.pop(0)
        if isinstance(answer, ModelError):
            raise answer
        return Built(answer, OK)  # type: ignore[arg-type]

    def step(self, now: float) -> None:
        """One housekeeping pass that starts a build, then the one that collects it."""
        self.sup.housekeeping(now)
        job = self.sup._job
        if job is not None:
            job.build.wait(5.0)
            self.sup.housekeeping(now)

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.events]


def name_of(p: Any) -> str | None:
    return None if p is None else p.model.name


def test_a_model_that_fails_to_load_is_retried_at_its_interval() -> None:
    h = Harness()
    h.answers = [ModelError("m.tflite: not a model", reason="invalid_model")]
    h.step(0.0)
    assert h.sup.pipeline is None and h.kinds() == ["model_error"]
    assert "retrying every 30 s" in h.events[0][2]
    h.step(10.0)  # not due, and the file did not change
    assert len(h.asked) == 1
    h.answers = [FakePipeline("m.tflite")]  # type: ignore[list-item]
    h.step(30.0)
    assert name_of(h.sup.pipeline) == "m.tflite" and h.swaps == [(None, "m.tflite")]
    assert h.sup.selftest_ok


def test_the_edge_tpu_lost_then_found_again() -> None:
    h = Harness(delegate="edgetpu", fallback_path="cpu.tflite")
    tpu = FakePipeline("m_edgetpu.tflite", "edgetpu")
    h.answers = [tpu]  # type: ignore[list-item]
    h.step(0.0)
    err = ModelError("USB transfer error", reason="invoke_failed")
    assert not h.sup.inference_failed(err)  # one failure: not yet
    h.sup.inference_ok()  # a success in between starts the count again
    assert not h.sup.inference_failed(err)
    cpu = FakePipeline("cpu.tflite")
    h.answers = [cpu]  # type: ignore[list-item]
    assert h.sup.inference_failed(err)  # the second in a row: left at once
    assert h.sup.pipeline is None and tpu.closed == 1
    h.step(1.0)
    assert h.asked[-1] == ("cpu.tflite", "cpu")
    assert name_of(h.sup.pipeline) == "cpu.tflite" and h.kinds() == ["delegate_lost"]
    assert "switched from m_edgetpu.tflite to the CPU model cpu.tflite" in h.events[-1][2]
    h.step(30.0)  # the Edge TPU is retried every 60 s, not before
    assert len(h.asked) == 2
    h.answers = [ModelError("no Coral", reason="delegate_unavailable")]
    h.step(61.0)
    assert name_of(h.sup.pipeline) == "cpu.tflite" and h.asked[-1] == ("m.tflite", "edgetpu")
    back = FakePipeline("m_edgetpu.tflite", "edgetpu")
    h.answers = [back]  # type: ignore[list-item]
    h.step(121.0)
    assert h.sup.pipeline is back and cpu.closed == 1 and h.kinds()[-1] == "delegate_restored"
    assert not h.sup.tpu_wanted


def test_the_guards_reload_runs_off_the_loop_one_at_a_time() -> None:
    h = Harness()
    first = FakePipeline("m.tflite")
    h.answers = [first]  # type: ignore[list-item]
    h.step(0.0)
    gate = threading.Event()
    fresh = FakePipeline("m.tflite")

    def slow(cfg: AgentConfig, model_cfg: ModelConfig | None, g: str) -> Built:
        gate.wait(5.0)
        return Built(fresh, OK)  # type: ignore[arg-type]

    h.sup._builder = slow
    h.sup.renew("reload", 10)
    h.sup.renew("reload", 20)  # a second request while building: ignored
    h.sup.housekeeping(1.0)
    assert h.sup.pipeline is first, "the running pipeline serves frames while the new one is built"
    gate.set()
    h.sup._job.build.wait(5.0)  # type: ignore[union-attr]
    h.sup.housekeeping(2.0)
    assert h.sup.pipeline is fresh and first.closed == 1
    assert h.events[-1][0] == "model_reloaded" and h.events[-1][2].startswith("10 consecutive faulty frames")


def test_a_build_for_a_config_replaced_meanwhile_is_thrown_away() -> None:
    h = Harness()
    gate = threading.Event()
    late = FakePipeline("m.tflite")

    def slow(cfg: AgentConfig, model_cfg: ModelConfig | None, g: str) -> Built:
        gate.wait(5.0)
        return Built(late, OK)  # type: ignore[arg-type]

    h.sup._builder = slow
    h.sup.housekeeping(0.0)
    new_cfg = h.cfg.model_copy(update={"model": h.cfg.model.model_copy(update={"path": "other.tflite"})})
    other = FakePipeline("other.tflite")
    h.sup.adopt(new_cfg, other)  # type: ignore[arg-type]
    gate.set()
    h.sup._job.build.wait(5.0)  # type: ignore[union-attr]
    h.sup.housekeeping(1.0)
    assert h.sup.pipeline is other and late.closed == 1


# ---- lanes ----------------------------------------------------------------------------------


class ProcessingPipeline(FakePipeline):
    def __init__(self, fail: bool = False) -> None:
        super().__init__("m.tflite")
        self.fail = fail

    def process(self, f: Frame) -> Inference:
        if self.fail:
            raise ModelError("invoke() raised", reason="invoke_failed")
        return OK


def test_the_inline_lane_concludes_each_frame_and_releases_it_once() -> None:
    got: list[tuple[int, Any]] = []
    released: list[int] = []
    lane = InlineLane(lambda f, p, outcome: got.append((f.seq, outcome)))
    lane.run(Lease(frame(1), lambda f: released.append(f.seq)), ProcessingPipeline())  # type: ignore[arg-type]
    lane.run(Lease(frame(2), lambda f: released.append(f.seq)), ProcessingPipeline(fail=True))  # type: ignore[arg-type]
    assert got[0] == (1, OK) and isinstance(got[1][1], ModelError) and released == [1, 2]
    assert not lane.busy


# ---- the inbox's neighbours ------------------------------------------------------------------


def test_the_accelerator_watch_counts_consecutive_failures_and_schedules_retries() -> None:
    a = AcceleratorWatch(lose_after=3, retry_s=10.0)
    assert not a.failure() and not a.failure()
    a.success()
    assert [a.failure() for _ in range(3)] == [False, False, True]
    a.on_cpu(100.0)
    assert a.failures == 0 and not a.retry_due(109.9) and a.retry_due(110.0)


def test_a_background_build_hands_over_its_value_or_its_error() -> None:
    ok = BackgroundBuild(lambda: 42, name="t")
    assert ok.wait(5.0) and ok.result() == 42
    bad = BackgroundBuild(lambda: 1 / 0, name="t")
    assert bad.wait(5.0)
    with pytest.raises(ZeroDivisionError):
        bad.result()
    gate = threading.Event()
    slow = BackgroundBuild(lambda: gate.wait(5.0), name="t")
    assert not slow.done()
    with pytest.raises(RuntimeError, match="still running"):
        slow.result()
    gate.set()
    assert slow.wait(5.0) and slow.result() is True


# ---- probation and rollback, with fakes ------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.config_state_due = False

    def answer_update(self, payload: dict[str, Any]) -> None:
        self.answers.append(payload)

    def raise_event(self, kind: str, severity: str, message: str, detail: Any = None) -> None:
        self.events.append((kind, message))


class FakeRemote:
    def __init__(self) -> None:
        self.rolled_back: list[int] = []

    def roll_back(self, version: int, overlay: dict[str, Any], why: str) -> None:
        self.rolled_back.append(version)


class FakeModels:
    def __init__(self, pipeline: FakePipeline, cfg: AgentConfig) -> None:
        self.pipeline = pipeline
        self.cfg = cfg

    def detail(self) -> dict[str, Any]:
        return {}


from edge_agent.core.config import ConfigController  # noqa: E402
from edge_agent.remote.probation import Probation  # noqa: E402


def controller_on_probation(frames: int, faults: int) -> tuple[Any, FakePublisher, FakeRemote, list[Any], FakePipeline]:

    h = Harness()
    old, new = FakePipeline("old.tflite"), FakePipeline("new.tflite")
    pub, remote, adopted = FakePublisher(), FakeRemote(), []
    c = ConfigController(
        remote,  # type: ignore[arg-type]
        FakeModels(new, h.cfg),  # type: ignore[arg-type]
        pub,  # type: ignore[arg-type]
        Notifier({}),
        lambda cfg, p, keep: adopted.append((cfg, p, keep)),
        config_path=None,
    )
    c.probation = Probation(7, frames, faults, old, h.cfg)  # type: ignore[arg-type]
    return c, pub, remote, adopted, old


def test_a_model_update_that_faults_too_often_on_probation_is_rolled_back() -> None:
    c, pub, remote, adopted, old = controller_on_probation(frames=10, faults=2)
    for faulty in (False, True, False, True):
        c.watch(faulty=faulty)
    assert c.probation is not None and not adopted  # 2 faults: at the limit, not over it
    c.watch(faulty=True)
    assert c.probation is None and remote.rolled_back == [7]
    assert adopted and adopted[0][1] is old and adopted[0][2] is False  # the old pipeline back
    assert (
        pub.answers[0]["applied"] is False and "rolled back: 3 faulty frames" in pub.answers[0]["errors"][0]["message"]
    )
    assert pub.events[0][0] == "model_error" and "new.tflite rolled back to old.tflite" in pub.events[0][1]
    assert old.closed == 0


def test_a_model_update_that_passes_its_probation_closes_the_old_model() -> None:
    c, pub, remote, adopted, old = controller_on_probation(frames=5, faults=1)
    for faulty in (True, False, False, False, False):
        c.watch(faulty=faulty)
    assert c.probation is None and old.closed == 1 and not remote.rolled_back and not pub.answers
    c.watch(faulty=True)  # after the probation: nothing is watched
    assert not adopted
