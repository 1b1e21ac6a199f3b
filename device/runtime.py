"""The TFLite runtime (ai-edge-litert first, tflite-runtime on old systems, tensorflow.lite last), and
the C library's memory settings for the long-running commands that load it."""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Printed by the C++ runtime on stderr for every interpreter, on every command: noise to a user.
BANNERS = (b"Created TensorFlow Lite XNNPACK delegate for CPU.",)

# (module, the pip distribution that installs it); the first that imports wins. `edgecap doctor`
# checks them in this order too.
RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


class RuntimeMissingError(RuntimeError):
    pass


_warned: set[str] = set()  # runtimes already reported as installed but broken


def runtime_module():
    """(interpreter module, name) of the first TFLite runtime installed.

    A runtime that is not installed is skipped quietly; one that is installed but fails to import (a
    missing shared library, a numpy built for another ABI) is skipped with a warning that names the
    error, and the final message repeats it: "not installed" would send the user the wrong way.
    """
    broken = []
    for module, name in RUNTIMES:
        try:
            return importlib.import_module(module), name
        except ModuleNotFoundError as e:
            if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
                continue  # not installed: try the next one
            broken.append(f"{name}: {e}")
        except ImportError as e:
            broken.append(f"{name}: {e}")
        if name not in _warned:  # once per process, not once per model file
            _warned.add(name)
            log.warning("TFLite runtime %s is installed but cannot be imported (%s); trying the next one",
                        name, broken[-1])
    if broken:
        raise RuntimeMissingError(f"no usable TFLite runtime ({'; '.join(broken)}): reinstall it "
                                  "(pip install --force-reinstall ai-edge-litert)")
    raise RuntimeMissingError("no TFLite runtime installed: pip install ai-edge-litert "
                              "(or tflite-runtime on 32-bit Arm)")


def make_interpreter(path: str | Path, num_threads: int = 2):
    """A TFLite Interpreter for `path`, tensors allocated, using `num_threads` CPU threads."""
    module, _ = runtime_module()
    with _without_banners():
        interpreter = module.Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


@contextlib.contextmanager
def _without_banners() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the runtime starts, then write back every
    line but its banners: C++ writes straight to the descriptor, below Python's sys.stderr."""
    try:
        tmp = tempfile.TemporaryFile()
    except OSError:  # no temporary folder to write: keep the banner rather than fail
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no descriptors to spare: the same
        tmp.close()
        yield
        return
    with tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().splitlines(keepends=True):
                if any(b in line for b in BANNERS):
                    log.debug("runtime: %s", line.decode("utf-8", "replace").strip())
                else:
                    os.write(2, line)


def tune_malloc() -> bool:
    """Keep a long-running process small under glibc: a fixed mmap threshold and two malloc arenas.

    glibc raises its mmap threshold after the first large free (JPEG buffers, TFLite arenas), after which
    big blocks come from the heap and are never returned; and each thread may get its own arena. On a
    Pi with 512 MB that costs ~10 MB of RSS for nothing (measured: 134 -> 125 MB steady state, no web).
    Same as MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2; a no-op on other C libraries.
    """
    import ctypes
    import ctypes.util

    if not (platform_libc := ctypes.util.find_library("c")) or "musl" in platform_libc:
        return False
