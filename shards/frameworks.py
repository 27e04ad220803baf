"""Importing the training frameworks where shards needs them: lazily, once, and with one line
naming the extra to install when one is missing.

The base install (`pip install imageshards`) preprocesses and reads with NumPy alone; each
consumer comes with its extra: `[tf]` (TensorFlow and Keras), `[gpu]` (TensorFlow with CUDA),
`[torch]`, `[jax]` (Keras 3 on JAX). A user who calls `to_torch()` without torch, or trains on
TensorFlow without it, is told that in one line (`training needs TensorFlow: pip install
'imageshards[tf]'`) instead of reading an ImportError traceback from deep inside shards.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
from types import ModuleType
from typing import Any

from shards.errors import ConfigError, MissingExtraError

logger = logging.getLogger(__name__)

#: The backends Keras 3 knows (`KERAS_BACKEND`).
KERAS_BACKENDS = ("jax", "numpy", "openvino", "tensorflow", "torch")

#: The extra that brings each framework (Keras on JAX comes with `[jax]`).
_EXTRAS = {"tensorflow": ("TensorFlow", "tf"), "torch": ("PyTorch", "torch"), "jax": ("JAX", "jax")}


def require(module: str, needed_for: str) -> ModuleType:
    """`import module`, or one line saying which extra brings it.

    Args:
        module: the top-level module to import (a framework, or keras).
        needed_for: what needs it, as the message begins ("training", "to_torch()").

    Raises:
        MissingExtraError: the module is not installed (an ImportError raised inside an
            installed package, a broken install, is not hidden behind this message).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module:
            raise
        raise missing(module, needed_for) from None


def check_installed(module: str, needed_for: str) -> None:
    """Refuse, without importing it (seconds for a framework), a module that is not installed.

    Raises:
        MissingExtraError: as `require` says it.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a None left in sys.modules
        found = False
    if not found:
        raise missing(module, needed_for)


def missing(module: str, needed_for: str) -> MissingExtraError:
    """The one-line error for a module this install lacks, naming the extra that brings it."""
    if module == "keras":
        return MissingExtraError(f"{needed_for} needs Keras 3: {install_hint('jax')} (or the tf or torch extra)")
    name, extra = _EXTRAS.get(module, (module, module))
    return MissingExtraError(f"{needed_for} needs {name}: {install_hint(extra)}")


def install_hint(extra: str) -> str:
    """How to add `extra`: from PyPI, or from a clone of the repository (in its folder)."""
    return f"pip install 'imageshards[{extra}]' (from a clone: pip install '.[{extra}]')"


def import_tensorflow(*, quiet: bool = False, needed_for: str = "this") -> ModuleType:
    """`import tensorflow`, with TF_CPP_MIN_LOG_LEVEL=2 unless the user chose otherwise, and GPU
    memory growth on (see `grow_gpu_memory`).

    With `quiet`, what TensorFlow's C++ side writes to stderr while it loads (absl's "All log
    messages before absl::InitializeLog()", the oneDNN and CPU-feature notices, which ignore
    TF_CPP_MIN_LOG_LEVEL) is discarded: the descriptor is pointed at /dev/null for the import.

    Raises:
        MissingExtraError: TensorFlow is not installed (`needed_for` begins the message).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    if not quiet:
        tf = require("tensorflow", needed_for)
        grow_gpu_memory(tf)
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            tf = require("tensorflow", needed_for)
            grow_gpu_memory(tf)
            tf.constant(0)  # the CPU-feature notice comes with the first op, not the import
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


def grow_gpu_memory(tf: Any) -> None:
    """Let TensorFlow take GPU memory as it needs it rather than all at once, so two processes
    on one GPU (a trainer and a predictor, two Ray workers sharing a device) both start. Must
    run before TensorFlow first touches a GPU."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:  # already initialised: too late, say so
            logger.warning("cannot turn on memory growth for %s: %s", gpu.name, exc)


def keras_backend() -> str:
    """The backend Keras runs on in this process, as Keras chooses it: the loaded Keras' own,
    else `KERAS_BACKEND`, else `backend` in `$KERAS_HOME/keras.json` (~/.keras), else tensorflow.

    Raises:
        ConfigError: a backend Keras does not know, in one line with the ones it does.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        return str(keras.backend.backend())
    chosen = os.environ.get("KERAS_BACKEND")
    where = "KERAS_BACKEND"
    if not chosen:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        config = os.path.join(home, "keras.json")
        try:
            with open(config, encoding="utf-8") as handle:
                chosen, where = json.load(handle).get("backend"), config
        except (OSError, ValueError, AttributeError):
            chosen = None
    chosen = chosen or "tensorflow"
    if chosen not in KERAS_BACKENDS:
        raise ConfigError(f"{where} {chosen!r} is not a Keras backend (one of {', '.join(KERAS_BACKENDS)})")
    return chosen


def import_keras(needed_for: str = "this") -> ModuleType:
    """`import keras` on the backend `keras_backend()` names, with that backend's framework
    checked first, so a missing one is named with its extra.

    Raises:
        ConfigError: an unknown `KERAS_BACKEND`.
        MissingExtraError: Keras, or its backend's framework, is not installed.
    """
    if sys.modules.get("keras") is not None:
        return sys.modules["keras"]
    backend = keras_backend()
    if backend == "tensorflow":
        import_tensorflow(quiet=True, needed_for=f"{needed_for} (KERAS_BACKEND tensorflow)")
    elif backend in ("jax", "torch"):
        require(backend, f"{needed_for} (KERAS_BACKEND {backend})")
    return require("keras", needed_for)


def import_torch(needed_for: str = "this") -> ModuleType:
    """`import torch`, or one line naming the `[torch]` extra.

    Raises:
        MissingExtraError: PyTorch is not installed.
    """
    return require("torch", needed_for)
