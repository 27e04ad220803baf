"""Importing TensorFlow where shards needs it: lazily, once, with its C++ start-up chatter muted.

shards itself imports without TensorFlow; only the TFRecord format, the tf.data/Keras adapters
and training load it, in the processes that use them.
"""

from __future__ import annotations

import os
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, with TF_CPP_MIN_LOG_LEVEL=2 unless the user chose otherwise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf
