"""Everything that needs TensorFlow (the only package of shards that imports it): the tf.data
adapters, the devices check, training one process or one rank (with the
MultiWorkerMirroredStrategy loop) and prediction. The trainer actor and the Ray Train entry point
that run it live in `shards.trainer`."""
