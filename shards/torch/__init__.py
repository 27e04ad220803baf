"""PyTorch: `to_torch()`, an IterableDataset of a rank's batches for `DataLoader` (workers read
disjoint batches), and the Ray Train `TorchTrainer` loop of `jobs/train_torch.py`.

Nothing here imports TensorFlow or Keras; torch itself comes with `pip install 'imageshards[torch]'`.
"""
