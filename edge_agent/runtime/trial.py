"""A trial load of a model file in a short-lived child process, before the agent loads it.

The static checks of `tflite_file` catch what is known to crash the interpreter, but a corrupt or
hostile file can still find a path through a kernel's Prepare() or Eval() that dies with SIGSEGV,
aborts, loops, or allocates until the kernel's OOM killer steps in — and with the default
`model.isolation = "inline"` that would take the agent down (under systemd: a crash loop instead of
`degraded`). So every model file, before it reaches the in-process interpreter, is built,
allocated and invoked once on zeroed inputs by a child (`python -m edge_agent.runtime.trial`, the
bytes on its stdin, so it checks exactly what will be loaded). If the child dies or does not
finish in time, the file is refused with a `ModelError`; Python-level errors in the child are not
a verdict (the in-process load raises them again, with its own clear message).

The verdict is cached by the file's sha256 (and the interpreter package), so a reload or a retry
of the same file costs nothing; a refused file is not retried in a child every retry interval.

The child starts as one more Python with the interpreter package imported: ~0.1-0.2 s on x86,
more on a Pi, once per new model file. `isolation = "process"` runs the model in a child anyway
and skips the trial (its worker is the contained load); it remains the choice for Edge TPU crashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edge_agent.bounded import quote_part
from edge_agent.errors import ModelError

TRIAL_TIMEOUT_S = 60.0  # a real model builds, allocates and runs once in well under this on a Pi
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


def _last_line(stderr: bytes) -> str:
    """The child's last line of its own: TFLite's INFO lines about delegates say nothing."""
    lines = [ln for ln in stderr.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("INFO:")] or lines
    return quote_part(lines[-1].strip()) if lines else "nothing on stderr"


def trial_load(
    data: bytes, *, sha256: str, name: str, interpreter: str, version: str, timeout_s: float = TRIAL_TIMEOUT_S
) -> None:
    """Raise ModelError if building, allocating or invoking `data` kills or hangs a child process.

    `interpreter` names the package (backends.PREFERENCE); `version` is part of the cache key."""
    key = (sha256, interpreter, version)
    known, verdict = _cached(key)
    if known:
        if verdict is not None:
            raise ModelError(str(verdict), reason=verdict.reason)
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "edge_agent.runtime.trial", interpreter]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
            cmd, input=data, capture_output=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        verdict = ModelError(
            f"{name}: a trial load in a child process did not finish within {timeout_s:g} s: the TFLite runtime "
            "hangs on this file (corrupt or hostile); not loading it in the agent",
            reason="loader_hang",
        )
        _remember(key, verdict)
        raise verdict from None
    except OSError as err:
        raise ModelError(
            f"{name}: cannot start the trial load of the model in a child process: {err}", reason="trial_failed"
        ) from None
    code = done.returncode
    if code == 0:
        _remember(key, None)
        return
    if code < 0:
        how = _signal_name(-code)
        if -code == signal.SIGKILL:
            # killed from outside, most likely by the kernel's OOM killer: not a verdict on the file
            raise ModelError(
                f"{name}: the trial load of the model in a child process was killed (SIGKILL; out of memory?); "
                "not loading it in the agent",
                reason="loader_crash",
            )
        verdict = ModelError(
            f"{name}: the TFLite runtime crashed ({how}) on a trial load in a child process: the file is corrupt "
            f"or hostile; not loading it in the agent (last words: {_last_line(done.stderr)})",
            reason="loader_crash",
        )
        _remember(key, verdict)
        raise verdict
    raise ModelError(
        f"{name}: the trial load of the model in a child process failed (exit status {code}): {_last_line(done.stderr)}",
        reason="trial_failed",
    )


def _child(interpreter: str) -> int:  # pragma: no cover - runs in the child
    """Build, allocate, invoke on zeros; report how far it got. Exceptions are not crashes: the
    parent only cares whether this process survives."""
    import numpy as np  # noqa: PLC0415

    from edge_agent.runtime.backends import select_backend  # noqa: PLC0415

    if sys.platform == "linux":  # if memory runs out, the OOM killer takes this child, not the agent
        with contextlib.suppress(OSError):
            Path("/proc/self/oom_score_adj").write_text("1000")
    data = sys.stdin.buffer.read()
    stage, error = "build", ""
    try:
        backend = select_backend(interpreter)
        interp: Any = backend.interpreter_class(model_content=data, num_threads=1)
        stage = "details"
        inputs = interp.get_input_details()
        interp.get_output_details()
        interp.get_signature_list()
        stage = "allocate"
        interp.allocate_tensors()
        stage = "invoke"
        for d in inputs:
            interp.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        interp.invoke()
        stage = "done"
    except Exception as err:  # noqa: BLE001 - any Python error is an answer, not a crash
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    sys.stdout.write(json.dumps({"stage": stage, "error": error}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - the child
    raise SystemExit(_child(sys.argv[1]))
