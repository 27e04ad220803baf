"""Keras 3 on any backend (TensorFlow, JAX, PyTorch): the `PyDataset` adapter, the default
model, checkpoints of weights and reader state, and single-process training.

Nothing here imports TensorFlow: on `KERAS_BACKEND=jax` or `torch` a trainer needs only
`pip install 'imageshards[jax]'` (or `[torch]`). `shards.tf` builds the tf.data feeding and
multi-worker training on top of these pieces.
"""
