"""Importing TensorFlow where shards needs it: lazily, once, with its C++ start-up chatter muted.

shards itself imports without TensorFlow; only the TFRecord format, the tf.data/Keras adapters
and training load it, in the processes that use them.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from shards.tf.devices import grow_gpu_memory


def import_tensorflow(*, quiet: bool = False) -> ModuleType:
    """`import tensorflow`, with TF_CPP_MIN_LOG_LEVEL=2 unless the user chose otherwise, and GPU
    memory growth on (see `shards.tf.devices.grow_gpu_memory`).

    With `quiet`, what TensorFlow's C++ side writes to stderr while it loads (absl's "All log
    messages before absl::InitializeLog()", the oneDNN and CPU-feature notices, which ignore
    TF_CPP_MIN_LOG_LEVEL) is discarded: the descriptor is pointed at /dev/null for the import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    if not quiet:
        import tensorflow as tf

        grow_gpu_memory(tf)
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            grow_gpu_memory(tf)
            tf.constant(0)  # the CPU-feature notice comes with the first op, not the import
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf
