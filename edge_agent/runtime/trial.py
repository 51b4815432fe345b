"""A trial load of a model file in a short-lived child process, before the agent loads it.

The static checks of `tflite_file` catch what is known to crash the interpreter, but a corrupt or
hostile file can still find a path through a kernel's Prepare() or Eval() that dies with SIGSEGV,
aborts, loops, or allocates until the kernel's OOM killer steps in — and with the default
`model.isolation = "inline"` that would take the agent down (under systemd: a crash loop instead of
`degraded`). So every model file, before it reaches the in-process interpreter, is built,
allocated and invoked once on zeroed inputs by a child (`python -m edge_agent.runtime.trial`, the
bytes on its stdin, so it checks exactly what will be loaded). If the child dies, does not finish
in time, or takes more memory than the budget (a one-byte change of an input's shape made a
27 KB model take 11 GB), the file is refused with a `ModelError`; Python-level errors in the
child are not a verdict (the in-process load raises them again, with its own clear message).

The verdict is cached by the file's sha256 (and the interpreter package), so a reload or a retry
of the same file costs nothing; a refused file is not retried in a child every retry interval.

The child starts as one more Python with the interpreter package imported: ~0.1-0.2 s on x86,
more on a Pi, once per new model file. `isolation = "process"` runs the model in a child anyway
and skips the trial (its worker is the contained load); it remains the choice for Edge TPU crashes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.bounded import quote_part
from edge_agent.errors import ModelError

TRIAL_TIMEOUT_S = 60.0  # a real model builds, allocates and runs once in well under this on a Pi
MAX_TRIAL_MEMORY = 2 << 30  # the most a trial may take, whatever the machine (see memory_budget)
_BUDGET_WORDS = f"the budget: half this machine's memory, at most {MAX_TRIAL_MEMORY >> 20} MB"
_POLL_S = 0.02  # how often the child's memory is looked at while it runs
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CACHE_SIZE = 64
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding edge_agent/

_lock = threading.Lock()
_verdicts: OrderedDict[tuple[str, str, str], ModelError | None] = OrderedDict()


def _cached(key: tuple[str, str, str]) -> tuple[bool, ModelError | None]:
    with _lock:
        if key in _verdicts:
            _verdicts.move_to_end(key)
            return True, _verdicts[key]
    return False, None


def _remember(key: tuple[str, str, str], verdict: ModelError | None) -> None:
    with _lock:
        _verdicts[key] = verdict
        while len(_verdicts) > _CACHE_SIZE:
            _verdicts.popitem(last=False)


def forget_verdicts() -> None:
    """Drop every cached verdict (tests; or after the interpreter package was upgraded in place)."""
    with _lock:
        _verdicts.clear()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_words(stderr: bytes) -> str:
    """The child's last line on stderr, if it said anything but TFLite's INFO lines about delegates."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("INFO:")]
    return f" (its last words: {quote_part(lines[-1])})" if lines else ""


def memory_budget() -> int:
    """Bytes the trial child may hold at its peak: half this machine's memory, at most 2 GiB. A
    model that needs more would push the agent (and whatever else runs on a Pi) into the OOM
    killer once loaded in-process; a real one needs far less (mobilenet_v2 ~30 MB beyond the
    runtime's own ~60 MB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 4 << 30
    return min(total // 2, MAX_TRIAL_MEMORY)


def _rss(pid: int) -> int:
    """The resident memory of a running process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:  # noqa: PTH123 - hot loop, one small read
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def trial_load(
    data: bytes, *, sha256: str, name: str, interpreter: str, version: str, timeout_s: float = TRIAL_TIMEOUT_S
) -> None:
    """Raise ModelError if building, allocating or invoking `data` kills, hangs or bloats a child.

    `interpreter` names the package (backends.PREFERENCE); `version` is part of the cache key."""
    key = (sha256, interpreter, version)
    known, verdict = _cached(key)
    if known:
        if verdict is not None:
            raise ModelError(str(verdict), reason=verdict.reason)
        return
    verdict, final = _run_child(data, name=name, interpreter=interpreter, timeout_s=timeout_s)
    if final:  # a verdict on the file, not on the moment (an OOM kill, a child that could not start)
        _remember(key, verdict)
    if verdict is not None:
        raise verdict


def _run_child(data: bytes, *, name: str, interpreter: str, timeout_s: float) -> tuple[ModelError | None, bool]:
    """The verdict (None: the child survived) and whether it is one on the file itself."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    budget = memory_budget()
    # the child's output goes to files, not pipes: nothing it prints can fill a pipe and stall it
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
                [sys.executable, "-m", "edge_agent.runtime.trial", interpreter],
                stdin=subprocess.PIPE,
                stdout=out_f,
                stderr=err_f,
                env=env,
            )
        except OSError as err:
            return ModelError(
                f"{name}: cannot start the trial load in a child process: {err}", reason="trial_failed"
            ), False
        feeder = threading.Thread(target=_feed, args=(proc.stdin, data), name="trial-feed", daemon=True)
        feeder.start()
        bloated, timed_out = _watch(proc, budget, time.monotonic() + timeout_s)
        feeder.join(5.0)
        out, errout = _tail(out_f), _tail(err_f)
    return _verdict(
        name,
        proc.returncode,
        bloated=bloated,
        timed_out=timed_out,
        out=out,
        errout=errout,
        budget=budget,
        timeout_s=timeout_s,
    )


def _verdict(
    name: str, code: int, *, bloated: bool, timed_out: bool, out: bytes, errout: bytes, budget: int, timeout_s: float
) -> tuple[ModelError | None, bool]:
    mb = budget >> 20
    if bloated:
        return ModelError(
            f"{name}: a trial load in a child process took more than {mb} MB of memory ({_BUDGET_WORDS}): the file is "
            "corrupt or not a model for this device; not loading it in the agent",
            reason="too_much_memory",
        ), True
    if timed_out:
        return ModelError(
            f"{name}: a trial load in a child process did not finish within {timeout_s:g} s: the TFLite runtime "
            "hangs on this file (corrupt or hostile); not loading it in the agent",
            reason="loader_hang",
        ), True
    return _exit_verdict(name, code, out, errout, budget)


def _exit_verdict(name: str, code: int, out: bytes, errout: bytes, budget: int) -> tuple[ModelError | None, bool]:
    """The verdict of a child that ended by itself (neither killed for its memory nor its time)."""
    if code == 0:
        peak = _reported_peak(out)
        if peak > budget:  # a spike between two looks
            return ModelError(
                f"{name}: a trial load in a child process took {peak >> 20} MB of memory, more than {budget >> 20} MB "
                f"({_BUDGET_WORDS}): the file is corrupt or not a model for this device; not loading it in the agent",
                reason="too_much_memory",
            ), True
        return None, True
    if code == -signal.SIGKILL:
        # killed from outside, most likely by the kernel's OOM killer: not a verdict on the file
        return ModelError(
            f"{name}: the trial load of the model in a child process was killed (SIGKILL; out of memory?); "
            "not loading it in the agent",
            reason="loader_crash",
        ), False
    if code < 0:
        return ModelError(
            f"{name}: the TFLite runtime crashed ({_signal_name(-code)}) on a trial load in a child process: the file "
            f"is corrupt or hostile; not loading it in the agent{_last_words(errout)}",
            reason="loader_crash",
        ), True
    return ModelError(
        f"{name}: the trial load of the model in a child process failed (exit status {code}){_last_words(errout)}",
        reason="trial_failed",
    ), False


def _tail(f: Any, limit: int = 64 << 10) -> bytes:
    """The last `limit` bytes of a file the child wrote (a runtime may log without end)."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    data: bytes = f.read()
    return data


def _feed(pipe: Any, data: bytes) -> None:
    """Hand the model to the child (a thread: a 100 MB model does not fit in a pipe's buffer)."""
    with contextlib.suppress(OSError), pipe:  # OSError: the child died or was killed before reading it all
        pipe.write(data)


def _watch(proc: subprocess.Popen[bytes], budget: int, deadline: float) -> tuple[bool, bool]:
    """Wait for the child, looking at its memory (a runaway is stopped before the OOM killer must)
    and the time; kill it on either. Returns (took too much memory, took too long)."""
    while True:
        try:
            proc.wait(timeout=min(_POLL_S, max(0.0, deadline - time.monotonic())))
            return False, False
        except subprocess.TimeoutExpired:
            bloated = _rss(proc.pid) > budget
            timed_out = time.monotonic() >= deadline
            if bloated or timed_out:
                proc.kill()
                proc.wait()
                return bloated, timed_out


def _reported_peak(out: bytes) -> int:
    """The peak resident memory the child reported on its last line, 0 if it did not."""
    try:
        return int(json.loads(out.decode().strip().splitlines()[-1])["peak_rss"])
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return 0


def _child(interpreter: str) -> int:  # pragma: no cover - runs in the child
    """Build, describe, allocate, invoke on zeros, read the outputs; report the errors and the peak
    memory. Exceptions are not crashes: the parent cares whether this process survives, and how big."""
    import resource  # noqa: PLC0415 - POSIX only, and only the child needs it

    import numpy as np  # noqa: PLC0415

    from edge_agent.runtime.backends import select_backend  # noqa: PLC0415

    if sys.platform == "linux":  # if memory runs out, the OOM killer takes this child, not the agent
        with contextlib.suppress(OSError):
            Path("/proc/self/oom_score_adj").write_text("1000")
    data = sys.stdin.buffer.read()
    errors: list[str] = []

    def attempt(stage: str, step: Callable[[], object]) -> bool:
        # every step the agent or `inspect` may take is tried, whatever an earlier one raised:
        # the in-process code goes on past some errors (inspect reports a failed allocate)
        try:
            step()
        except Exception as err:  # noqa: BLE001 - any Python error is an answer, not a crash
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            errors.append(f"{stage}: {type(err).__name__}: {first}")
            return False
        return True

    backend = select_backend(interpreter)
    built: list[Any] = []
    if attempt("build", lambda: built.append(backend.interpreter_class(model_content=data, num_threads=1))):
        interp = built[0]
        inputs: list[dict[str, Any]] = []
        attempt("inputs", lambda: inputs.extend(interp.get_input_details()))
        attempt("outputs", interp.get_output_details)
        attempt("signatures", interp.get_signature_list)
        if attempt("allocate", interp.allocate_tensors):
            for d in inputs:
                zeros = np.zeros(d["shape"], dtype=d["dtype"])
                attempt("input", functools.partial(interp.set_tensor, d["index"], zeros))
            if attempt("invoke", interp.invoke):
                for d in interp.get_output_details():
                    attempt("output", functools.partial(interp.get_tensor, d["index"]))
    # ru_maxrss: KiB on Linux; the parent compares the peak with its budget
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sys.stdout.write(json.dumps({"errors": errors, "peak_rss": peak}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - the child
    raise SystemExit(_child(sys.argv[1]))
