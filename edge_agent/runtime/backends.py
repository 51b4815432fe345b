"""Which TFLite interpreter package to use, and how to load a delegate with it.

Preference order (SPEC): ai-edge-litert (maintained, NumPy 2), tflite-runtime (needs
NumPy < 2), tensorflow. Imports happen only when asked, never at module import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import ModelError

PREFERENCE = ("ai-edge-litert", "tflite-runtime", "tensorflow")


@dataclass(frozen=True)
class Backend:
    name: str
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]


def _import_backend(name: str) -> Backend:
    if name == "ai-edge-litert":
        mod = importlib.import_module("ai_edge_litert.interpreter")
        version = _dist_version("ai-edge-litert")
        return Backend(name, version, mod.Interpreter, mod.load_delegate)
    if name == "tflite-runtime":
        mod = importlib.import_module("tflite_runtime.interpreter")
        return Backend(name, _dist_version("tflite-runtime"), mod.Interpreter, mod.load_delegate)
    if name == "tensorflow":
        tf = importlib.import_module("tensorflow")
        return Backend(name, str(tf.__version__), tf.lite.Interpreter, tf.lite.experimental.load_delegate)
    raise ModelError(f"model.interpreter: unknown interpreter {name!r}", reason="no_interpreter")


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


_HINTS = {
    "ai-edge-litert": "pip install ai-edge-litert",
    "tflite-runtime": "pip install 'edge-agent[tflite]' (tflite-runtime needs numpy<2)",
    "tensorflow": "pip install tensorflow",
}


def select_backend(requested: str = "auto") -> Backend:
    """Return the requested interpreter package, or with "auto" the first that imports."""
    names = PREFERENCE if requested == "auto" else (requested,)
    reasons: list[str] = []
    for name in names:
        try:
            return _import_backend(name)
        except ModelError:
            raise
        # An import can fail in more ways than ImportError: tflite-runtime under NumPy 2
        # raises "returned a result with an exception set" (a SystemError) or AttributeError.
        except Exception as err:  # noqa: BLE001
            reasons.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if requested == "auto":
        raise ModelError(
            "no TFLite interpreter is installed (tried " + "; ".join(reasons) + "): pip install ai-edge-litert",
            reason="no_interpreter",
        )
    raise ModelError(
        f"model.interpreter = {requested!r} cannot be imported ({reasons[0]}): {_HINTS[requested]}",
        reason="no_interpreter",
    )
