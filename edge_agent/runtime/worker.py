"""Inference in a child process, so that a crashing or hanging accelerator library cannot take
the agent down (`[model] isolation = "process"`).

libedgetpu can abort() the whole process on a USB error, or hang inside invoke(). `WorkerModel`
is an `InferenceModel` (runtime.model) like `LoadedModel`, but the interpreter lives in a child
process started with the "spawn" context (the child calls `load_model` itself). Input and output
tensors are exchanged through `multiprocessing.shared_memory`: the parent's preprocessing writes
the frame straight into shared memory (no copy on the parent side), the child copies it into its
input tensor (one memcpy), invokes, and copies each output into shared memory, which the parent
reads without a copy. invoke() sends one byte over a Pipe and waits for the answer with a deadline:

- the child died (exitcode < 0: SIGABRT, SIGSEGV, ...) → ModelError(reason="inference_crash");
- no answer within `invoke_timeout_s` → the child is killed, ModelError(reason="inference_hang");
- the child is restarted after a backoff (0.5 s doubling to 30 s, reset by a successful
  invoke); more than `restart_limit` restarts within `restart_window_s` →
  ModelError(reason="inference_crash_loop") until the window has passed.

A restart never blocks the caller: while the backoff runs, and while the new child loads its
model, invoke() raises ModelError(reason="inference_restarting") at once, so the agent's loop
keeps serving the broker and the watchdog. A child that does not load within LOAD_TIMEOUT_S
(a hung accelerator) is killed and the restart counts as a failure.

TEST-ONLY fault hook: the environment variable EDGE_AGENT_TEST_WORKER_FAULT, read in the child
only, makes the child misbehave on purpose: "abort-after:N" calls os.abort() on the invoke after N
successful ones, "hang-after:N" sleeps forever there. It exists for the test suite; never set it
on a device.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.runtime.backends import Backend, select_backend
from edge_agent.runtime.loader import LoadedModel, ModelFile, load_model
from edge_agent.runtime.model import InferenceModel
from edge_agent.runtime.tensors import TensorInfo, dequantize

FAULT_ENV = "EDGE_AGENT_TEST_WORKER_FAULT"
BackendFactory = Callable[[], Backend]
LOAD_TIMEOUT_S = 60.0
_INVOKE = b"i"
_QUIT = b"q"
_OK = b"ok"
PR_SET_PDEATHSIG = 1


class _SpawnKeeper:
    """Starts worker processes from one thread that lives as long as the agent.

    The worker asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so that it
    never outlives an agent killed with SIGKILL. But "parent" there is the *thread* that forked
    it: a worker started from a short-lived thread (a model built off the loop) would be killed
    as soon as that thread ends. So every start goes through this thread, which never ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event, list[BaseException]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="worker-spawner", daemon=True)
                self._thread.start()
        done, errors = threading.Event(), list[BaseException]()
        self._jobs.put((fn, done, errors))
        done.wait()
        if errors:
            raise errors[0]

    def _serve(self) -> None:
        while True:
            fn, done, errors = self._jobs.get()
            try:
                fn()
            except BaseException as err:  # noqa: BLE001 - handed back to the caller
                errors.append(err)
            finally:
                done.set()


_KEEPER = _SpawnKeeper()


def _nbytes(info: TensorInfo) -> int:
    return max(1, int(np.prod(info.shape, dtype=np.int64)) * np.dtype(info.dtype).itemsize)


def _shm_array(shm: SharedMemory, info: TensorInfo) -> npt.NDArray[Any]:
    return np.ndarray(info.shape, dtype=info.dtype, buffer=shm.buf)


def _test_fault() -> tuple[str, int] | None:
    """The test-only fault hook (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, n = spec.partition(":")
    if kind in ("abort-after", "hang-after") and n.isdigit():
        return kind, int(n)
    return None


def _child_main(
    conn: Connection, cfg: ModelConfig, backend_factory: BackendFactory | None = None
) -> None:  # pragma: no cover - runs in the child
    """The worker: load the model, attach the shared memory, then answer invoke requests."""
    _child_detach()
    try:
        backend = backend_factory() if backend_factory is not None else None
        # this process is the contained load: a crash here is a worker crash, not the agent's
        model = load_model(cfg.model_copy(update={"isolation": "inline"}), backend=backend, trial=False)
    except ModelError as err:
        conn.send(("error", str(err), err.reason))
        return
    conn.send(
        (
            "ready",
            model.file,
            model.backend.name,
            model.delegate,
            model.inputs,
            model.outputs,
            model.threads,
            model.notes,
        )
    )
    names_in, names_out = conn.recv()
    shms = [SharedMemory(name=n) for n in (*names_in, *names_out)]
    ins = [_shm_array(s, i) for s, i in zip(shms[: len(names_in)], model.inputs, strict=True)]
    outs = [_shm_array(s, o) for s, o in zip(shms[len(names_in) :], model.outputs, strict=True)]
    conn.send(("attached",))
    _child_serve(conn, model, ins, outs)


def _child_detach() -> None:  # pragma: no cover - runs in the child
    """The parent (or SIGKILL) decides when the worker ends, and it never outlives its agent."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform == "linux":  # even an agent killed with SIGKILL takes its worker along
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _child_serve(
    conn: Connection, model: LoadedModel, ins: list[npt.NDArray[Any]], outs: list[npt.NDArray[Any]]
) -> None:  # pragma: no cover - runs in the child
    """Answer invoke requests until told to quit or the parent is gone."""
    fault = _test_fault()
    done = 0
    while True:
        try:
            cmd = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if cmd == _QUIT:
            return
        if fault is not None and done >= fault[1]:
            if fault[0] == "abort-after":
                os.abort()
            time.sleep(1e9)
        try:
            _child_invoke(model, ins, outs)
        except ModelError as err:
            conn.send_bytes(json.dumps(["error", str(err), err.reason]).encode())
            continue
        done += 1
        conn.send_bytes(_OK)


def _child_invoke(
    model: LoadedModel, ins: list[npt.NDArray[Any]], outs: list[npt.NDArray[Any]]
) -> None:  # pragma: no cover - runs in the child
    """Shared memory into the input tensors, invoke, the output tensors into shared memory."""
    interp = model.interpreter
    for info, src in zip(model.inputs, ins, strict=True):
        np.copyto(interp.tensor(info.index)(), src)
    model.invoke()
    for info, dst in zip(model.outputs, outs, strict=True):
        view = interp.tensor(info.index)()
        if view.shape != dst.shape:
            raise ModelError(
                f"model {model.name}: output shape {view.shape} differs from {dst.shape}; "
                'dynamic output shapes need isolation = "inline"',
                reason="invoke_failed",
            )
        np.copyto(dst, view)
        del view


class WorkerModel:
    """A model whose interpreter runs in a child process; see the module docstring."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        backend: Backend | None = None,
        backend_factory: BackendFactory | None = None,
        invoke_timeout_s: float | None = None,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        restart_limit: int = 5,
        restart_window_s: float = 60.0,
    ) -> None:
        self.cfg = cfg
        # the child builds its own interpreter: it selects the same package by name, or calls the
        # factory (a module-level function, pickled by reference for the "spawn" start method)
        self._backend_factory = backend_factory
        self.backend = backend or (backend_factory() if backend_factory else select_backend(cfg.interpreter))
        if backend is not None:
            cfg = self.cfg = cfg.model_copy(update={"interpreter": backend.name})
        self.invoke_timeout_s = invoke_timeout_s if invoke_timeout_s is not None else cfg.invoke_timeout_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.restart_limit, self.restart_window_s = restart_limit, restart_window_s
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._shms: list[SharedMemory] = []
        self._in_arrays: list[npt.NDArray[Any]] = []
        self._raw_buffers: list[npt.NDArray[Any]] = []
        self._out_buffers: list[npt.NDArray[np.float32]] = []
        self._next_backoff = backoff_s
        self._restart_at = 0.0  # monotonic time the next start may begin (after a backoff)
        self._loading: tuple[Any, Connection, float] | None = None  # (process, pipe, deadline) of a start under way
        self._restarts: list[float] = []
        self.restarts = 0
        self.file: ModelFile
        self.delegate = "cpu"
        self.inputs: tuple[TensorInfo, ...] = ()
        self.outputs: tuple[TensorInfo, ...] = ()
        self.threads = 0
        self.notes: tuple[str, ...] = ()
        self._start(first=True)

    # ---- the InferenceModel protocol (runtime.model) ---------------------------------------
    @property
    def name(self) -> str:
        return self.file.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def input_view(self, i: int = 0) -> Callable[[], npt.NDArray[Any]]:
        """A function returning input i's shared memory (zero-copy), valid across restarts."""
        return lambda: self._in_arrays[i]

    def set_input(self, i: int, value: npt.NDArray[Any]) -> None:
        np.copyto(self._in_arrays[i], value)

    def read_input(self, i: int = 0) -> npt.NDArray[Any]:
        """A copy of input i as it was last fed (the shared memory the child reads)."""
        return self._in_arrays[i].copy()

    def raw_output(self, i: int = 0) -> npt.NDArray[Any]:
        return self._raw_buffers[i].copy()

    def output(self, i: int = 0) -> npt.NDArray[np.float32]:
        return self.fetch_outputs()[1][i]

    def fetch_outputs(self) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[np.float32]]]:
        """The raw outputs are the shared memory itself (changed only by the next invoke())."""
        for info, raw, out in zip(self.outputs, self._raw_buffers, self._out_buffers, strict=True):
            dequantize(info, raw, out=out)
        return self._raw_buffers, self._out_buffers

    def invoke(self) -> None:
        if self._proc is None:
            self._restart()  # raises "inference_restarting" until the new child is ready
        conn = self._conn
        assert conn is not None
        try:
            conn.send_bytes(_INVOKE)
            answered = conn.poll(self.invoke_timeout_s)
            msg = conn.recv_bytes() if answered else b""
        except (EOFError, OSError):
            raise self._crashed() from None
        if not answered:
            self._kill()
            self._schedule_restart()
            raise ModelError(
                f"model {self.name}: invoke() did not return within {self.invoke_timeout_s:g} s "
                f"(model.invoke_timeout_s); the inference worker was killed and will be restarted",
                reason="inference_hang",
            )
        if msg != _OK:
            _, message, reason = json.loads(msg)
            raise ModelError(message, reason=reason)
        self._next_backoff = self.backoff_s

    def close(self) -> None:
        """Stop the worker and release the shared memory."""
        conn, proc = self._conn, self._proc
        if conn is not None and proc is not None and proc.is_alive():
            with contextlib.suppress(OSError):
                conn.send_bytes(_QUIT)
            proc.join(2.0)
        self._kill()
        self._abandon_loading()
        self._in_arrays, self._raw_buffers = [], []
        for shm in self._shms:
            with contextlib.suppress(BufferError):  # a caller still holds a view: the mapping goes with it
                shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        self._shms = []

    def __enter__(self) -> WorkerModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the worker's life ----------------------------------------------------------------
    def _spawn(self) -> tuple[Any, Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main,
            args=(child, self.cfg, self._backend_factory),
            name="edge-agent-inference",
            daemon=True,
        )
        _KEEPER.run(proc.start)
        child.close()
        return proc, parent

    def _start(self, *, first: bool) -> None:
        """The first start: blocking, since there is nothing to serve before the model is loaded."""
        proc, parent = self._spawn()
        self._proc, self._conn = proc, parent
        try:
            self._attach(parent, self._expect(parent, LOAD_TIMEOUT_S), first=first)
        except ModelError:
            if first:
                self.close()
            raise

    def _attach(self, parent: Connection, msg: Any, *, first: bool) -> None:
        """Take the child's "ready" answer, hand it the shared memory, wait until it is attached."""
        if msg[0] == "error":
            self._kill()
            raise ModelError(msg[1], reason=msg[2])
        _, mf, _backend, delegate, inputs, outputs, threads, notes = msg
        if first:
            self.file, self.delegate, self.inputs, self.outputs = mf, delegate, inputs, outputs
            self.threads, self.notes = threads, notes
            self._make_shm()
        elif (inputs, outputs) != (self.inputs, self.outputs):
            self._kill()
            raise ModelError(f"model {mf.name} changed its tensors across a worker restart", reason="load_failed")
        parent.send(([s.name for s in self._shms[: len(inputs)]], [s.name for s in self._shms[len(inputs) :]]))
        self._expect(parent, LOAD_TIMEOUT_S)

    def _expect(self, conn: Connection, timeout: float) -> Any:
        try:
            if conn.poll(timeout):
                return conn.recv()
        except (EOFError, OSError):
            raise self._crashed() from None
        self._kill()
        raise ModelError(f"the inference worker did not load the model within {timeout:g} s", reason="inference_hang")

    def _make_shm(self) -> None:
        for info in (*self.inputs, *self.outputs):
            self._shms.append(SharedMemory(create=True, size=_nbytes(info)))
        n = len(self.inputs)
        self._in_arrays = [_shm_array(s, i) for s, i in zip(self._shms[:n], self.inputs, strict=True)]
        self._raw_buffers = [_shm_array(s, o) for s, o in zip(self._shms[n:], self.outputs, strict=True)]
        self._out_buffers = [np.empty(o.shape, dtype=np.float32) for o in self.outputs]

    def _restart(self) -> None:
        """One step of a restart, never waiting: start the child once the backoff is over, then
        attach it once it has loaded the model. Until then, raise "inference_restarting"."""
        now = time.monotonic()
        if self._loading is None:
            if now < self._restart_at:
                raise self._restarting(f"restarts in {self._restart_at - now:.1f} s")
            self._restarts = [t for t in self._restarts if now - t < self.restart_window_s]
            if len(self._restarts) >= self.restart_limit:
                raise ModelError(
                    f"the inference worker for {self.name} crashed {len(self._restarts)} times within "
                    f"{self.restart_window_s:g} s: not restarting it until the window has passed",
                    reason="inference_crash_loop",
                )
            self._restarts.append(now)
            self.restarts += 1
            proc, conn = self._spawn()
            self._loading = (proc, conn, now + LOAD_TIMEOUT_S)
        proc, conn, deadline = self._loading
        try:
            ready = conn.poll(0)
        except (EOFError, OSError):
            ready = True  # the child died while loading: recv() below says how
        if not ready:
            if now < deadline:
                raise self._restarting("loading the model")
            self._abandon_loading()
            self._schedule_restart()
            raise ModelError(
                f"the inference worker for {self.name} did not load the model within {LOAD_TIMEOUT_S:g} s; "
                "it was killed and will be restarted",
                reason="inference_hang",
            )
        self._loading = None
        self._proc, self._conn = proc, conn
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            raise self._crashed() from None
        self._attach(conn, msg, first=False)

    def _restarting(self, what: str) -> ModelError:
        return ModelError(f"the inference worker for {self.name} is restarting ({what})", reason="inference_restarting")

    def _schedule_restart(self) -> None:
        self._restart_at = time.monotonic() + self._next_backoff
        self._next_backoff = min(self._next_backoff * 2, self.backoff_max_s)

    def _abandon_loading(self) -> None:
        if self._loading is not None:
            proc, conn, _ = self._loading
            self._loading = None
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
            conn.close()

    def _crashed(self) -> ModelError:
        proc = self._proc
        code = None
        if proc is not None:
            proc.join(2.0)
            code = proc.exitcode
        self._kill()
        self._schedule_restart()
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        return ModelError(
            f"the inference worker for {self.cfg.path} {how} (a crash inside the runtime or the accelerator "
            "library); it will be restarted",
            reason="inference_crash",
        )

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
            with contextlib.suppress(ValueError):
                proc.close()
        if conn is not None:
            conn.close()


def open_model(
    cfg: ModelConfig, *, backend: Backend | None = None, backend_factory: BackendFactory | None = None
) -> InferenceModel:
    """`load_model`, or a `WorkerModel` when cfg.isolation = "process". `backend_factory` makes
    the interpreter package (tests use it to stand in for a Coral); it must be picklable."""
    if cfg.isolation == "process":
        return WorkerModel(cfg, backend=backend, backend_factory=backend_factory)
    if backend is None and backend_factory is not None:
        backend = backend_factory()
    return load_model(cfg, backend=backend)
