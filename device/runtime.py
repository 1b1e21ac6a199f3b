"""The TFLite runtime: ai-edge-litert first, tflite-runtime on old systems, tensorflow.lite last."""
from __future__ import annotations

import importlib
from pathlib import Path

# (module, what to call it in messages); the first that imports wins.
RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow.lite"),
)


class RuntimeMissingError(RuntimeError):
    pass


def runtime_module():
    """(interpreter module, name) of the first TFLite runtime installed."""
    for module, name in RUNTIMES:
        try:
            return importlib.import_module(module), name
        except ImportError:
            continue
    raise RuntimeMissingError("no TFLite runtime installed: pip install ai-edge-litert "
                              "(or tflite-runtime on 32-bit Arm)")


def runtime_name() -> str:
    return runtime_module()[1]


def make_interpreter(path: str | Path, num_threads: int = 2):
    """A TFLite Interpreter for `path`, tensors allocated, using `num_threads` CPU threads."""
    module, _ = runtime_module()
    interpreter = module.Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter
